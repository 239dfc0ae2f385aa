"""keel-runtime's command line: runc's global options, commands and flags.

A small table-driven parser instead of argparse: argparse costs milliseconds of
imports on every invocation, and engines call the runtime several times per
container. Like runc (Go's flag package), `-flag` and `--flag`, `--flag=v` and
`--flag v` are accepted, and flag parsing stops at the first positional argument
for commands that take a command line (exec).
"""

import os
import sys

DEFAULT_ROOT = "/run/keel/runtime"
ROOT_ENV = "KEEL_RUNTIME_ROOT"

USAGE = """usage: keel-runtime [global options] COMMAND [options] [arguments]

An OCI runtime with runc's command line.

Global options:
  --root DIR           state directory (default /run/keel/runtime; rootless:
                       $XDG_RUNTIME_DIR/keel-runtime; env KEEL_RUNTIME_ROOT)
  --log FILE           write log lines to FILE
  --log-format FORMAT  text or json (default text)
  --debug              log debug lines
  --systemd-cgroup     use the systemd cgroup driver (not supported: an error)
  --version, -v        print the version
  --help, -h           this help

Commands:
  create    create a container (its init waits for start)
  start     start a created container
  run       create, start and wait for a container
  state     print a container's state as JSON
  kill      send a signal to a container's init (or all its processes)
  delete    delete a container
  list      list containers
  ps        list a container's processes
  exec      run a new process in a running container
  pause     freeze every process of a container
  resume    thaw a paused container
  update    change a running container's resource limits
  events    print a container's stats and OOM events as JSON lines
  spec      write a default config.json
  features  print what this runtime supports, as JSON

Run 'keel-runtime COMMAND --help' for a command's flags.
"""

# command -> {flag name: (dest, takes_value)}; aliases share a dest.
_B, _V = False, True
COMMANDS = {
    "create": {"bundle": ("bundle", _V), "b": ("bundle", _V), "console-socket": ("console_socket", _V),
               "pid-file": ("pid_file", _V), "no-pivot": ("no_pivot", _B),
               "no-new-keyring": ("no_new_keyring", _B), "preserve-fds": ("preserve_fds", _V)},
    "run": {"bundle": ("bundle", _V), "b": ("bundle", _V), "console-socket": ("console_socket", _V),
            "pid-file": ("pid_file", _V), "no-pivot": ("no_pivot", _B), "no-new-keyring": ("no_new_keyring", _B),
            "preserve-fds": ("preserve_fds", _V), "detach": ("detach", _B), "d": ("detach", _B),
            "keep": ("keep", _B)},
    "start": {},
    "state": {},
    "kill": {"all": ("all", _B), "a": ("all", _B)},
    "delete": {"force": ("force", _B), "f": ("force", _B)},
    "list": {"format": ("format", _V), "f": ("format", _V), "quiet": ("quiet", _B), "q": ("quiet", _B)},
    "ps": {"format": ("format", _V), "f": ("format", _V)},
    "exec": {"process": ("process", _V), "p": ("process", _V), "tty": ("tty", _B), "t": ("tty", _B),
             "console-socket": ("console_socket", _V), "detach": ("detach", _B), "d": ("detach", _B),
             "pid-file": ("pid_file", _V), "env": ("env", "list"), "e": ("env", "list"),
             "cwd": ("cwd", _V), "user": ("user", _V), "u": ("user", _V),
             "additional-gids": ("additional_gids", "list"), "g": ("additional_gids", "list"),
             "cap": ("cap", "list"), "c": ("cap", "list"), "no-new-privs": ("no_new_privs", _B),
             "preserve-fds": ("preserve_fds", _V), "apparmor": ("apparmor", _V),
             "process-label": ("process_label", _V), "ignore-paused": ("ignore_paused", _B)},
    "pause": {},
    "resume": {},
    "update": {"resources": ("resources", _V), "r": ("resources", _V),
               "memory": ("memory", _V), "memory-reservation": ("memory_reservation", _V),
               "memory-swap": ("memory_swap", _V), "kernel-memory": ("kernel_memory", _V),
               "kernel-memory-tcp": ("kernel_memory_tcp", _V), "cpu-period": ("cpu_period", _V),
               "cpu-quota": ("cpu_quota", _V), "cpu-share": ("cpu_share", _V),
               "cpu-shares": ("cpu_share", _V), "cpu-rt-period": ("cpu_rt_period", _V),
               "cpu-rt-runtime": ("cpu_rt_runtime", _V), "cpuset-cpus": ("cpuset_cpus", _V),
               "cpuset-mems": ("cpuset_mems", _V), "pids-limit": ("pids_limit", _V),
               "blkio-weight": ("blkio_weight", _V)},
    "events": {"stats": ("stats", _B), "interval": ("interval", _V)},
    "spec": {"bundle": ("bundle", _V), "b": ("bundle", _V), "rootless": ("rootless", _B)},
    "features": {},
}
ARGS = {  # command -> (min positional, max positional or None, usage)
    "create": (1, 1, "create [options] <container-id>"),
    "run": (1, 1, "run [options] <container-id>"),
    "start": (1, 1, "start <container-id>"),
    "state": (1, 1, "state <container-id>"),
    "kill": (1, 2, "kill [--all] <container-id> [signal]"),
    "delete": (1, 1, "delete [--force] <container-id>"),
    "list": (0, 0, "list [--format table|json] [--quiet]"),
    "ps": (1, None, "ps [--format table|json] <container-id> [ps options]"),
    "exec": (1, None, "exec [options] <container-id> [command [args...]]"),
    "pause": (1, 1, "pause <container-id>"),
    "resume": (1, 1, "resume <container-id>"),
    "update": (1, 1, "update [options] <container-id>"),
    "events": (1, 1, "events [--stats] [--interval 5s] <container-id>"),
    "spec": (0, 0, "spec [--bundle DIR] [--rootless]"),
    "features": (0, 0, "features"),
}
GLOBAL = {"root": ("root", _V), "log": ("log", _V), "log-format": ("log_format", _V),
          "debug": ("debug", _B), "systemd-cgroup": ("systemd_cgroup", _B),
          "criu": ("criu", _V), "rootless": ("rootless", _V)}
_STOP_AT_POSITIONAL = {"exec", "ps"}


def default_root():
    """/run/keel/runtime for root; a rootless caller's own runtime dir otherwise (as runc)."""
    if os.geteuid() == 0:
        return DEFAULT_ROOT
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    return os.path.join(xdg, "keel-runtime") if xdg else f"/tmp/keel-runtime-{os.geteuid()}"


class UsageError(Exception):
    pass


class Options:
    def __init__(self):
        self.__dict__.update(root=None, log=None, log_format="text", debug=False, systemd_cgroup=False)

    def __getattr__(self, name):
        return None


def _parse(argv, table, opts, stop_at_positional):
    positional = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--":
            positional.extend(argv[i + 1:])
            break
        if a.startswith("-") and a != "-" and not positional:
            name, eq, value = a.lstrip("-").partition("=")
            if name in ("h", "help"):
                raise SystemExit(_help(table))
            if name not in table:
                raise UsageError(f"flag provided but not defined: -{name}")
            dest, kind = table[name]
            if kind is _B:
                if eq:
                    if value not in ("true", "false", "1", "0"):
                        raise UsageError(f"invalid boolean value {value!r} for flag -{name}")
                    setattr(opts, dest, value in ("true", "1"))
                else:
                    setattr(opts, dest, True)
            else:
                if not eq:
                    i += 1
                    if i >= len(argv):
                        raise UsageError(f"flag needs an argument: -{name}")
                    value = argv[i]
                if kind == "list":
                    cur = opts.__dict__.get(dest) or []
                    setattr(opts, dest, cur + [value])
                else:
                    setattr(opts, dest, value)
        elif a.startswith("-") and a != "-" and positional and not stop_at_positional:
            # Flags after positional arguments (runc allows `kill id --all`? no: keep strict order
            # except for commands whose arguments never start with '-').
            raise UsageError(f"flags must come before arguments: {a}")
        else:
            positional.append(a)
            if stop_at_positional:
                positional.extend(argv[i + 1:])
                break
        i += 1
    return positional


def _help(table):
    return USAGE


def parse(argv, prog="keel-runtime", usage=USAGE):
    """(command, options, positional arguments) of a runc-style command line; keel-vm passes its
    own program name and usage text."""
    opts = Options()
    i = 0
    # Global options come before the command.
    while i < len(argv) and argv[i].startswith("-"):
        name, eq, value = argv[i].lstrip("-").partition("=")
        if name in ("v", "version"):
            return "version", opts, []
        if name in ("h", "help"):
            return "help", opts, []
        if name not in GLOBAL:
            raise UsageError(f"flag provided but not defined: -{name}")
        dest, kind = GLOBAL[name]
        if kind is _B:
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
        raise UsageError(f"no such command: {cmd!r} (see {prog} --help)")
    rest = argv[i + 1:]
    lo, hi, cmd_usage = ARGS[cmd]
    if rest[:1] and rest[0] in ("-h", "--help"):
        flags = ", ".join(sorted("--" + f if len(f) > 1 else "-" + f for f in COMMANDS[cmd]))
        print(f"usage: {prog} {cmd_usage}\nflags: {flags or '(none)'}")
        raise SystemExit(0)
    try:
        positional = _parse(rest, COMMANDS[cmd], opts, cmd in _STOP_AT_POSITIONAL)
    except SystemExit:  # a -h after other flags: the program's whole usage
        raise SystemExit(usage) from None
    if len(positional) < lo or (hi is not None and len(positional) > hi):
        raise UsageError(f"{cmd}: wrong number of arguments; usage: {prog} {cmd_usage}")
    return cmd, opts, positional


def run_main(argv, prog, usage, version, root_env, default_root, load_commands):
    """The main() of keel-runtime and keel-vm: parse, help/version, logging, the --root default,
    then the command `load_commands().cmd_<command>(opts, args)`.

    version() returns the --version text; default_root() the root when neither --root nor
    $root_env gives one; load_commands() the module of cmd_ functions (imported only when a
    command runs, so --help and --version stay cheap)."""
    from keel.errors import KeelError
    from keel.runtime import log

    log.PROG = prog
    try:
        cmd, opts, args = parse(argv, prog, usage)
    except UsageError as e:
        sys.stderr.write(f"{prog}: {e}\n")
        return 2
    if cmd == "help":
        sys.stdout.write(usage)
        return 0
    if cmd == "version":
        print(version())
        return 0
    if opts.log_format not in ("text", "json"):
        sys.stderr.write(f"{prog}: --log-format: unknown format {opts.log_format!r} (text or json)\n")
        return 2
    try:
        log.configure(opts.log, opts.log_format, opts.debug)
    except OSError as e:
        sys.stderr.write(f"{prog}: --log {opts.log}: {e.strerror.lower()}\n")
        return 2
    if opts.systemd_cgroup:
        log.error(f"--systemd-cgroup: the systemd cgroup driver is not supported by {prog} (use cgroupfs paths)")
        return 2
    if opts.root is None:
        opts.root = os.environ.get(root_env) or default_root()
    opts.root = os.path.abspath(opts.root)
    log.debug(f"command {cmd} {args}")
    try:
        return getattr(load_commands(), "cmd_" + cmd)(opts, args) or 0
    except KeelError as e:
        log.error(str(e))
        return 1
    except KeyboardInterrupt:
        return 130


def _version():
    from keel import __version__
    from keel.runtime.features import OCI_VERSION_MAX

    return f"keel-runtime version {__version__}\nspec: {OCI_VERSION_MAX}"


def _commands():
    from keel.runtime import commands

    return commands


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    return run_main(argv, "keel-runtime", USAGE, _version, ROOT_ENV, default_root, _commands)
