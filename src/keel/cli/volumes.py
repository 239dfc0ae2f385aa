"""`keel volume create|ls|rm|inspect|prune`, with podman's flags and JSON shapes."""

import json
import sys


def register(sub):
    from keel.cli.containers import _strict

    grp = _strict(sub.add_parser("volume", help="manage volumes (create, ls, rm, inspect, prune)"))
    vsub = grp.add_subparsers(dest="volume_command", metavar="COMMAND", parser_class=type(grp))

    def add(name, func, help, aliases=()):
        p = _strict(vsub.add_parser(name, help=help, aliases=list(aliases)))
        p.set_defaults(func=func)
        return p

    p = add("create", cmd_create, "create a volume")
    p.add_argument("-d", "--driver", default="local", help="volume driver (only local)")
    p.add_argument("-l", "--label", action="append", default=[], metavar="KEY[=VALUE]", help="set a label")
    p.add_argument("-o", "--opt", action="append", default=[], metavar="KEY=VALUE", help="driver options")
    p.add_argument("--ignore", action="store_true", help="do nothing if the volume exists")
    p.add_argument("name", nargs="?", metavar="NAME")

    p = add("ls", cmd_ls, "list volumes", aliases=("list",))
    p.add_argument("-q", "--quiet", action="store_true", help="print only the names")
    p.add_argument("--format", help="json, or table (default)")
    p.add_argument("-f", "--filter", action="append", default=[], metavar="KEY=VALUE",
                   help="name=, label=KEY[=VALUE], driver=, anonymous=true|false, dangling=true|false")

    p = add("rm", cmd_rm, "remove volumes", aliases=("remove",))
    p.add_argument("-f", "--force", action="store_true", help="remove the containers using them first")
    p.add_argument("-a", "--all", action="store_true", help="every volume")
    p.add_argument("names", nargs="*", metavar="VOLUME")

    p = add("inspect", cmd_inspect, "print volumes' details as JSON")
    p.add_argument("--format", help="json (default)")
    p.add_argument("-a", "--all", action="store_true", help="every volume")
    p.add_argument("names", nargs="*", metavar="VOLUME")

    p = add("exists", cmd_exists, "exit 0 if the volume exists, 1 if not")
    p.add_argument("name", metavar="VOLUME")

    p = add("prune", cmd_prune, "remove every volume no container uses")
    p.add_argument("-f", "--force", action="store_true", help="do not ask for confirmation")
    p.add_argument("--filter", action="append", default=[], metavar="KEY=VALUE", help="as for ls")


def _engine(args):
    from keel.engine import Engine

    return Engine(args.root, args.runroot)


def cmd_create(args):
    from keel.engine.errors import EngineError

    labels, opts = {}, {}
    for item in args.label:
        k, _, v = item.partition("=")
        if not k:
            raise EngineError(f"--label {item!r}: empty key")
        labels[k] = v
    for item in args.opt:
        k, sep, v = item.partition("=")
        if not k or not sep:
            raise EngineError(f"--opt {item!r}: expected KEY=VALUE")
        opts[k] = v
    eng = _engine(args)
    rec = eng.volumes.create(args.name, labels=labels, driver=args.driver, options=opts,
                             ignore=args.ignore)
    print(rec["Name"])


def cmd_ls(args):
    from keel.cli.images import print_table
    from keel.engine import volumes
    from keel.engine.errors import EngineError

    fmt = (args.format or "table").lower()
    if fmt not in ("json", "table"):
        raise EngineError(f"--format {args.format!r}: json or table")
    eng = _engine(args)
    recs = volumes.list_volumes(eng, volumes.parse_filters(args.filter))
    if args.quiet:
        for r in recs:
            print(r["Name"])
    elif fmt == "json":
        print(json.dumps([volumes.inspect_entry(eng, r) for r in recs], indent=4))
    else:
        print_table([[r["Driver"], r["Name"]] for r in recs], ["DRIVER", "VOLUME NAME"])


def cmd_rm(args):
    from keel.engine import volumes
    from keel.engine.errors import EngineError

    if args.all == bool(args.names):
        raise EngineError("volume rm: give volume names or --all, not both or neither")
    eng = _engine(args)
    names = [r["Name"] for r in eng.volumes.all()] if args.all else args.names
    failed = False
    for name in names:
        try:
            print(volumes.remove(eng, name, force=args.force))
        except EngineError as e:
            sys.stderr.write(f"Error: {e}\n")
            failed = True
    return 125 if failed else 0


def cmd_inspect(args):
    from keel.engine import volumes
    from keel.engine.errors import EngineError

    if args.format is not None and args.format.lower() != "json":
        raise EngineError(f"--format {args.format!r}: only json is supported")
    if args.all == bool(args.names):
        raise EngineError("volume inspect: give volume names or --all, not both or neither")
    eng = _engine(args)
    out, err = [], None
    recs = eng.volumes.all() if args.all else []
    for name in args.names:
        try:
            recs.append(eng.volumes.get(name))
        except EngineError as e:
            err = e
    out = [volumes.inspect_entry(eng, r) for r in recs]
    print(json.dumps(out, indent=4))
    if err is not None:
        raise err


def cmd_prune(args):
    from keel.engine import volumes

    filters = volumes.parse_filters(args.filter)
    if not args.force:
        sys.stderr.write("WARNING! This will remove all volumes not used by at least one container.\n"
                         "Are you sure you want to continue? [y/N] ")
        sys.stderr.flush()
        answer = sys.stdin.readline().strip().lower()
        if answer not in ("y", "yes"):
            return 0   # podman: no removal, no error
    eng = _engine(args)
    for name in volumes.prune(eng, filters):
        print(name)


def cmd_exists(args):
    from keel.engine.volumes import VolumeNotFound

    try:
        _engine(args).volumes.get(args.name)
    except VolumeNotFound:
        return 1
    return 0
