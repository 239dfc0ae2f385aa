"""`keel system prune`, `keel info` and `keel version` (also `keel system info`), podman's
flags and output shapes."""

import json
import sys

from keel.cli.containers import _engine, _strict


def register(sub):
    """Top-level `info` and `version`, and the `system` group."""
    def info_flags(p):
        p.add_argument("-f", "--format", help="json, or the default YAML-like text")
        p.set_defaults(func=cmd_info)

    info_flags(_strict(sub.add_parser("info", help="the host, the store and the runtimes")))
    p = _strict(sub.add_parser("version", help="keel's version"))
    p.add_argument("-f", "--format", help="json, or text (default)")
    p.set_defaults(func=cmd_version)

    system = _strict(sub.add_parser("system", help="system-wide commands (prune, info)"))
    from keel.cli.containers import _Parser

    ssub = system.add_subparsers(dest="system_command", metavar="COMMAND", parser_class=_Parser)
    p = _strict(ssub.add_parser("prune", help="remove stopped containers, unused networks and dangling images"))
    p.add_argument("-f", "--force", action="store_true", help="do not ask for confirmation")
    p.add_argument("-a", "--all", action="store_true", help="every image no container uses, not only dangling ones")
    p.add_argument("--volumes", action="store_true", help="also volumes no container uses")
    p.set_defaults(func=cmd_system_prune)
    info_flags(_strict(ssub.add_parser("info", help="the host, the store and the runtimes")))


def _format(fmt):
    from keel.engine.errors import EngineError

    f = (fmt or "text").lower()
    if f not in ("json", "text", "{{json .}}"):
        raise EngineError(f"--format {fmt!r}: json or text")
    return "json" if f != "text" else "text"


def _yaml(data, indent=0):
    """podman's default info output is YAML; this prints the same nesting."""
    pad = "  " * indent
    for k, v in data.items():
        if isinstance(v, dict):
            print(f"{pad}{k}:")
            _yaml(v, indent + 1)
        elif isinstance(v, list):
            print(f"{pad}{k}:")
            for item in v:
                print(f"{pad}- {item}")
        else:
            print(f"{pad}{k}: {v}")


def cmd_info(args):
    from keel.engine import ops

    fmt = _format(args.format)
    data = ops.info(_engine(args))
    if fmt == "json":
        print(json.dumps(data, indent=4))
    else:
        _yaml(data)


def cmd_version(args):
    from keel.engine import ops

    fmt = _format(args.format)
    v = ops.version()
    if fmt == "json":
        print(json.dumps({"Client": v}, indent=4))
        return
    for label, key in (("Version", "Version"), ("API Version", "APIVersion"),
                       ("Python Version", "PythonVersion"), ("OS/Arch", "OsArch")):
        print(f"{label + ':':<15}{v[key]}")


def _section(title, items):
    """podman's prune report: a heading, then one id or name a line (nothing when empty)."""
    if items:
        print(title)
        for i in items:
            print(i)


def cmd_system_prune(args):
    from keel.cli.ops import confirm
    from keel.engine import ops
    from keel.engine.stats import human_size

    what = ["all stopped containers", "all networks not used by at least one container",
            "all dangling images" if not args.all else
            "all images without at least one container associated to them"]
    if args.volumes:
        what.append("all volumes not used by at least one container")
    if not args.force and not confirm("WARNING! This command removes:\n" +
                                      "".join(f"\t- {w}\n" for w in what) +
                                      "\nAre you sure you want to continue?"):
        return 0
    eng = _engine(args)
    ids, freed = ops.prune_containers(eng)
    _section("Deleted Containers", ids)
    if args.volumes:
        vols, vfreed = ops.prune_volumes(eng)
        freed += vfreed
        _section("Deleted Volumes", vols)
    images, ifreed = ops.prune_images(eng, all=args.all)
    freed += ifreed
    _section("Deleted Images", images)
    from keel.engine import network

    _section("Deleted Networks", network.prune_networks(eng))
    print(f"Total reclaimed space: {human_size(freed)}")
    sys.stdout.flush()
