"""`keel network create|ls|rm|inspect`, spelled and shaped as podman's."""

import json
import sys

EXIT_ERROR = 125


def register(sub):
    from keel.cli.containers import _strict

    grp = _strict(sub.add_parser("network", help="manage CNI networks (create, ls, rm, inspect)"))
    nsub = grp.add_subparsers(dest="network_command", metavar="COMMAND")

    def add(name, func, help, aliases=()):
        p = _strict(nsub.add_parser(name, help=help, aliases=list(aliases)))
        p.set_defaults(func=func)
        return p

    p = add("create", cmd_create, "create a bridge network")
    p.add_argument("-d", "--driver", default="bridge", help="network driver (only bridge)")
    p.add_argument("--subnet", action="append", default=[],
                   help="subnet in CIDR form, IPv4 or IPv6 (both: dual stack; default: a free /24 from 10.91.0.0/16)")
    p.add_argument("--gateway", action="append", default=[],
                   help="gateway address, one per --subnet in order (default: the subnet's first address)")
    p.add_argument("--ipv6", action="store_true", help="also an IPv6 subnet (a free /64 of fd91:6b65:656c::/48 "
                                                       "unless given with --subnet)")
    p.add_argument("--internal", action="store_true", help="no gateway, no route out, no masquerading")
    p.add_argument("--interface-name", metavar="NAME", help="the bridge's name (default: keelN)")
    p.add_argument("--label", action="append", default=[], metavar="KEY[=VALUE]", help="set a label")
    p.add_argument("-o", "--opt", action="append", default=[], metavar="KEY=VALUE",
                   help="driver option: masquerade=true|false (source NAT of traffic leaving the host), mtu=N")
    p.add_argument("name", metavar="NAME")

    p = add("ls", cmd_ls, "list networks", aliases=("list",))
    p.add_argument("--format", help="json, or table (default)")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the names")

    p = add("rm", cmd_rm, "remove networks", aliases=("remove",))
    p.add_argument("-f", "--force", action="store_true", help="also remove the containers using it")
    p.add_argument("names", nargs="+", metavar="NETWORK")

    p = add("connect", cmd_connect, "put a container on a network (at once if it runs)")
    p.add_argument("--ip", metavar="ADDRESS", help="the container's address on that network")
    p.add_argument("name", metavar="NETWORK")
    p.add_argument("container", metavar="CONTAINER")

    p = add("disconnect", cmd_disconnect, "take a container off a network")
    p.add_argument("name", metavar="NETWORK")
    p.add_argument("container", metavar="CONTAINER")

    p = add("prune", cmd_prune, "remove the networks no container uses")
    p.add_argument("-f", "--force", action="store_true", help="do not ask for confirmation")

    p = add("exists", cmd_exists, "exit 0 if the network exists, 1 if not")
    p.add_argument("name", metavar="NETWORK")

    p = add("inspect", cmd_inspect, "print networks' details as JSON")
    p.add_argument("--format", help="json (default)")
    p.add_argument("names", nargs="+", metavar="NETWORK")


def _engine(args):
    from keel.cli.containers import _engine as engine

    return engine(args)


def _bool(key, value):
    from keel.engine.networks import NetworkError

    v = value.lower()
    if v in ("true", "1", "yes"):
        return True
    if v in ("false", "0", "no"):
        return False
    raise NetworkError(f"-o {key}={value}: expected true or false")


def cmd_create(args):
    from keel.cli.containers import _labels
    from keel.engine.networks import NetworkError

    masquerade, mtu = None, None
    for item in args.opt:
        key, sep, value = item.partition("=")
        if key == "masquerade" and sep:
            masquerade = _bool(key, value)
        elif key == "mtu" and sep and value.isdigit() and 68 <= int(value) <= 65535:
            mtu = int(value)
        elif key == "mtu":
            raise NetworkError(f"-o {item}: mtu must be a number from 68 to 65535")
        else:
            raise NetworkError(f"-o {item}: unknown option (masquerade=BOOL, mtu=N)")
    eng = _engine(args)
    eng.networks.create(args.name, subnet=args.subnet, gateway=args.gateway, internal=args.internal,
                        driver=args.driver, labels=_labels(args.label), bridge=args.interface_name,
                        masquerade=masquerade, mtu=mtu, ipv6=args.ipv6)
    print(args.name)


def cmd_ls(args):
    from keel.cli.images import print_table
    from keel.engine.errors import EngineError
    from keel.engine.networks import inspect_network

    fmt = (args.format or "table").lower()
    if fmt not in ("json", "table"):
        raise EngineError(f"--format {args.format!r}: json or table")
    eng = _engine(args)
    problems = []
    nets = [inspect_network(c) for c in eng.networks.all(problems)]
    for p in problems:
        sys.stderr.write(f"WARN: {p}\n")
    if args.quiet:
        for n in nets:
            print(n["name"])
    elif fmt == "json":
        print(json.dumps(nets, indent=4))
    else:
        print_table([[n["id"][:12], n["name"], n["driver"]] for n in nets], ["NETWORK ID", "NAME", "DRIVER"])


def cmd_rm(args):
    from keel.engine import network
    from keel.engine.errors import EngineError

    eng = _engine(args)
    failed = False
    for name in args.names:
        try:
            network.remove_network(eng, name, force=args.force)
            print(name)
        except EngineError as e:
            sys.stderr.write(f"Error: {e}\n")
            failed = True
    return EXIT_ERROR if failed else 0


def cmd_connect(args):
    from keel.engine import network

    network.connect(_engine(args), args.container, args.name, ip=args.ip)


def cmd_disconnect(args):
    from keel.engine import network

    network.disconnect(_engine(args), args.container, args.name)


def cmd_prune(args):
    from keel.engine import network

    if not args.force:
        sys.stderr.write("WARNING! This will remove all networks not used by at least one container.\n"
                         "Are you sure you want to continue? [y/N] ")
        sys.stderr.flush()
        if sys.stdin.readline().strip().lower() not in ("y", "yes"):
            return 0
    for name in network.prune_networks(_engine(args)):
        print(name)
    return 0


def cmd_exists(args):
    from keel.engine.networks import NetworkNotFound

    try:
        _engine(args).networks.get(args.name)
    except NetworkNotFound:
        return 1
    return 0


def cmd_inspect(args):
    from keel.cli.containers import _check_format
    from keel.engine.errors import EngineError
    from keel.engine.networks import inspect_network

    _check_format(args.format)
    eng = _engine(args)
    out, err = [], None
    for name in args.names:
        try:
            out.append(inspect_network(eng.networks.get(name)))
        except EngineError as e:
            err = e
    print(json.dumps(out, indent=4))
    if err is not None:
        raise err
