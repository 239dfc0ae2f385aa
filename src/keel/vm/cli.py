"""keel-vm's command line: keel-runtime's (runc's) tables and parser, with keel-vm's dispatch."""

import os
import sys

from keel.runtime.cli import ARGS, COMMANDS, GLOBAL, UsageError, _parse, Options, _STOP_AT_POSITIONAL

USAGE = """usage: keel-vm [global options] COMMAND [options] [arguments]

An OCI runtime with runc's command line that runs each container in its own QEMU microVM.

Global options:
  --root DIR           state directory (default /run/keel/vm; env KEEL_VM_ROOT)
  --log FILE           write log lines to FILE
  --log-format FORMAT  text or json (default text)
  --debug              log debug lines (the accelerator chosen, boot path and times)
  --version, -v        print the version
  --help, -h           this help

Commands:
  create    boot a VM for a container; its process waits for start
  start     start a created container
  run       create, start and wait for a container
  state     print a container's state as JSON
  kill      send a signal to a container's process (in the guest)
  delete    stop the VM and delete the container
  list      list containers
  ps        list a container's processes (inside the guest; --format json: the host pid)
  exec      run a new process in a running container
  pause     stop the container's whole VM
  resume    continue a paused VM
  update    change the limits of the container's cgroup in the guest
  events    stats of the VM's host cgroup (QEMU and virtiofsd) as JSON
  spec      write a default config.json
  features  print what this runtime supports, as JSON

Environment: KEEL_VM_CACHE (guest kernel cache, default /var/cache/keel/vm), KEEL_VM_ACCEL
(kvm or tcg, instead of the probe), KEEL_VM_BOOT_TIMEOUT (seconds, default 60).
"""


def parse(argv):
    opts = Options()
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        name, eq, value = argv[i].lstrip("-").partition("=")
        if name in ("v", "version"):
            return "version", opts, []
        if name in ("h", "help"):
            return "help", opts, []
        if name not in GLOBAL:
            raise UsageError(f"flag provided but not defined: -{name}")
        dest, takes_value = GLOBAL[name]
        if not takes_value:
            setattr(opts, dest, value != "false" if eq else True)
        else:
            if not eq:
                i += 1
                if i >= len(argv):
                    raise UsageError(f"flag needs an argument: -{name}")
                value = argv[i]
            setattr(opts, dest, value)
        i += 1
    if i >= len(argv) or argv[i] == "help":
        return "help", opts, []
    cmd = argv[i]
    if cmd not in COMMANDS:
        raise UsageError(f"no such command: {cmd!r} (see keel-vm --help)")
    rest = argv[i + 1:]
    lo, hi, usage = ARGS[cmd]
    if rest[:1] and rest[0] in ("-h", "--help"):
        flags = ", ".join(sorted("--" + f if len(f) > 1 else "-" + f for f in COMMANDS[cmd]))
        print(f"usage: keel-vm {usage}\nflags: {flags or '(none)'}")
        raise SystemExit(0)
    try:
        positional = _parse(rest, COMMANDS[cmd], opts, cmd in _STOP_AT_POSITIONAL)
    except SystemExit:
        raise SystemExit(USAGE) from None
    if len(positional) < lo or (hi is not None and len(positional) > hi):
        raise UsageError(f"{cmd}: wrong number of arguments; usage: keel-vm {usage}")
    return cmd, opts, positional


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    from keel.errors import KeelError
    from keel.runtime import log

    log.PROG = "keel-vm"
    try:
        cmd, opts, args = parse(argv)
    except UsageError as e:
        sys.stderr.write(f"keel-vm: {e}\n")
        return 2
    if cmd == "help":
        sys.stdout.write(USAGE)
        return 0
    if cmd == "version":
        from keel import __version__
        from keel.vm import protocol

        print(f"keel-vm version {__version__}\nspec: 1.1.0\nagent protocol: {protocol.VERSION}")
        return 0
    if opts.log_format not in ("text", "json"):
        sys.stderr.write(f"keel-vm: --log-format: unknown format {opts.log_format!r} (text or json)\n")
        return 2
    try:
        log.configure(opts.log, opts.log_format, opts.debug)
    except OSError as e:
        sys.stderr.write(f"keel-vm: --log {opts.log}: {e.strerror.lower()}\n")
        return 2
    if opts.systemd_cgroup:
        log.error("--systemd-cgroup: the systemd cgroup driver is not supported by keel-vm")
        return 2
    opts.root = os.path.abspath(opts.root or os.environ.get("KEEL_VM_ROOT") or _default_root())
    log.debug(f"command {cmd} {args}")
    try:
        from keel.vm import commands

        return getattr(commands, "cmd_" + cmd)(opts, args) or 0
    except KeelError as e:
        log.error(str(e))
        return 1
    except KeyboardInterrupt:
        return 130


def _default_root():
    from keel.vm.state import default_root

    return default_root()
