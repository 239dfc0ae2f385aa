"""The `keel` command: podman's spelling and output shapes, daemonless.

Global options come first: `--root` (the store, default /var/lib/keel, env KEEL_ROOT) and
`--runroot` (run state, default /run/keel, env KEEL_RUNROOT). Errors are one line on
stderr and exit 125, as podman's; usage errors exit 2.
"""

import argparse
import os
import sys

DEFAULT_ROOT = "/var/lib/keel"
DEFAULT_RUNROOT = "/run/keel"
EXIT_ERROR = 125


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(2, f"keel: {message}\n")


_GLOBAL_WITH_VALUE = ("--root", "--runroot", "--registries-conf", "--network-config-dir")


def _command_word(argv):
    """The command word of `argv` (what follows the global options), or None."""
    i = 0
    while i < len(argv):
        a = argv[i]
        if a in _GLOBAL_WITH_VALUE:
            i += 2
        elif a.startswith("-"):
            i += 1
        else:
            return a
    return None


class _Skipped:
    """Stands in for the parser of a command that is not being run: accepts every call."""

    def __getattr__(self, name):
        return lambda *a, **k: self

    def add_subparsers(self, *a, **k):
        return _OnlyCommand(None, None)


class _OnlyCommand:
    """Subparsers that build only the parser of the command being run: argparse takes about
    30 ms to build all of keel's parsers, as long as the rest of a `keel run`'s own work."""

    def __init__(self, sub, wanted):
        self.sub, self.wanted = sub, wanted

    @property
    def choices(self):
        return self.sub.choices if self.sub is not None else {}

    def add_parser(self, name, **kw):
        if self.sub is not None and (name == self.wanted or self.wanted in kw.get("aliases", ())):
            return self.sub.add_parser(name, **kw)
        return _Skipped()


def build_parser(only=None):
    """The parser; with `only`, just that command's (others are skipped, see _OnlyCommand)."""
    from keel.cli import containers, images, networks, ops, system, volumes

    p = _Parser(prog="keel", description="keel: containers and images, daemonless, podman-style")
    p.add_argument("--root", default=os.environ.get("KEEL_ROOT", DEFAULT_ROOT),
                   help="storage root: blobs, snapshots, metadata (env KEEL_ROOT; default %(default)s)")
    p.add_argument("--runroot", default=os.environ.get("KEEL_RUNROOT", DEFAULT_RUNROOT),
                   help="run state (env KEEL_RUNROOT; default %(default)s)")
    p.add_argument("--registries-conf", default=os.environ.get("KEEL_REGISTRIES_CONF"),
                   help="registries.conf to use instead of /etc/keel, then /etc/containers")
    p.add_argument("--network-config-dir", default=os.environ.get("KEEL_NETWORK_CONFIG_DIR"),
                   help="CNI network configs (env KEEL_NETWORK_CONFIG_DIR; default /etc/keel/cni/net.d)")
    p.add_argument("--version", action="store_true", help="print the version")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    real = sub
    if only is not None:
        sub = _OnlyCommand(sub, only)
    images.register(sub)
    containers.register(sub)
    volumes.register(sub)
    networks.register(sub)
    ops.register(sub)
    system.register(sub)
    image = sub.add_parser("image", help="manage images (ls, rm, pull, push, prune, mount, ...)")
    isub = image.add_subparsers(dest="image_command", metavar="COMMAND", parser_class=_Parser)
    images.register(isub, group=True)
    if only is not None and only not in real.choices:
        return build_parser()   # an unknown command: the full parser names the known ones
    return p


def main(argv=None):
    from keel.errors import KeelError

    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(_command_word(argv))
    args = parser.parse_args(argv)
    if args.version:
        from keel import __version__

        print(f"keel version {__version__}")
        return 0
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return func(args) or 0
    except KeelError as e:
        sys.stderr.write(f"Error: {e}\n")
        return EXIT_ERROR
    except KeyboardInterrupt:
        sys.stderr.write("Error: interrupted\n")
        return 130
    except BrokenPipeError:
        return 0
    except OSError as e:
        where = f" {e.filename}" if e.filename else ""
        sys.stderr.write(f"Error:{where}: {(e.strerror or str(e)).lower()}\n")
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
