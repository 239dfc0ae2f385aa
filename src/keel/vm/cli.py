"""keel-vm's command line: keel-runtime's (runc's) tables, parser and main, with keel-vm's usage,
version, root and commands."""

import sys

from keel.runtime import cli as runtime_cli

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


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    return runtime_cli.run_main(argv, "keel-vm", USAGE, _version, "KEEL_VM_ROOT", _default_root, _commands)


def _version():
    from keel import __version__
    from keel.vm import protocol

    return f"keel-vm version {__version__}\nspec: 1.1.0\nagent protocol: {protocol.VERSION}"


def _commands():
    from keel.vm import commands

    return commands


def _default_root():
    from keel.vm.state import default_root

    return default_root()
