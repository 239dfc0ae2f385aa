"""`keel pause/unpause/top/stats/cp` and `keel container prune`, podman's flags and output
shapes. Errors are one line and exit 125, as in the other container commands."""

import argparse
import json
import sys
import time

from keel.cli.containers import _each, _engine, _strict
from keel.cli.images import _bool


def register(sub, group=False):
    def add(name, func, help):
        p = _strict(sub.add_parser(name, help=help))
        p.set_defaults(func=func)
        return p

    for name, func, what in (("pause", cmd_pause, "pause"), ("unpause", cmd_unpause, "unpause")):
        p = add(name, func, f"{what} the processes of containers")
        p.add_argument("-a", "--all", action="store_true", help=f"{what} every container that can be")
        p.add_argument("containers", nargs="*", metavar="CONTAINER")

    p = add("top", cmd_top, "the processes of a container (podman descriptors or ps options)")
    p.add_argument("container", metavar="CONTAINER")
    p.add_argument("args", nargs=argparse.REMAINDER, metavar="DESCRIPTORS|PS-OPTIONS",
                   help="user pid ppid pcpu etime tty time args (default), or ps(1) options such as -ef")

    p = add("stats", cmd_stats, "resource usage of running containers")
    p.add_argument("-a", "--all", action="store_true", help="all containers (only running ones report)")
    p.add_argument("--no-stream", action="store_true", help="print one reading and exit")
    p.add_argument("--no-reset", action="store_true", help="do not clear the terminal between readings")
    p.add_argument("-i", "--interval", type=int, default=5, metavar="SECONDS", help="seconds between readings (default 5)")
    p.add_argument("--format", help="json, or table (default)")
    p.add_argument("--no-trunc", action="store_true", help="full container ids")
    p.add_argument("containers", nargs="*", metavar="CONTAINER")

    p = add("cp", cmd_cp, "copy files between a container and the host (or a tar stream: -)")
    p.add_argument("-a", "--archive", type=_bool, nargs="?", const=True, default=True,
                   help="files copied into a container belong to its user (default true)")
    p.add_argument("-L", "--follow-link", action="store_true", help="follow a symlink that is SRC itself")
    p.add_argument("src", metavar="SRC", help="CONTAINER:PATH, a host path, or - (a tar stream on stdin)")
    p.add_argument("dest", metavar="DEST", help="CONTAINER:PATH, a host path, or - (a tar stream on stdout)")

    if group:
        p = add("prune", cmd_container_prune, "remove every stopped container")
        p.add_argument("-f", "--force", action="store_true", help="do not ask for confirmation")
        p.add_argument("--filter", action="append", default=[], metavar="KEY=VALUE",
                       help="only containers matching (ps's filter keys)")


def cmd_pause(args):
    return _pause(args, "pause")


def cmd_unpause(args):
    return _pause(args, "unpause")


def _pause(args, verb):
    from keel.engine.errors import EngineError

    eng = _engine(args)
    if args.all and args.containers:
        raise EngineError(f"{verb}: give --all or container names, not both")
    if not args.all and not args.containers:
        raise EngineError(f"{verb}: give at least one container, or --all")
    refs = args.containers
    if args.all:
        want = "running" if verb == "pause" else "paused"
        refs = [c["id"] for c in eng.containers() if c["state"] == want]
    func = eng.pause if verb == "pause" else eng.unpause
    return _each(args, refs, lambda ref: func(ref)["id"])


def cmd_top(args):
    from keel.cli.images import print_table
    from keel.engine import ops

    header, rows = ops.top(_engine(args), args.container, args.args)
    print_table(rows, header)


def _stats_format(fmt):
    from keel.engine.errors import EngineError

    f = (fmt or "table").lower()
    if f not in ("json", "table"):
        raise EngineError(f"--format {fmt!r}: json or table")
    return f


def cmd_stats(args):
    from keel.cli.images import print_table
    from keel.engine import stats
    from keel.engine.errors import EngineError, InvalidState

    fmt = _stats_format(args.format)
    if args.interval < 1:
        raise EngineError(f"--interval {args.interval}: must be at least 1")
    eng = _engine(args)
    if args.containers:
        ids = [eng.get(ref)["id"] for ref in args.containers]   # unknown names fail up front
        for cid in ids:
            c = eng.get(cid)
            if c["state"] not in ("running", "paused"):
                raise InvalidState(f"container {c['name']} is {c['state']}: stats need a running container")
    else:
        ids = None
    prev = {}
    tty = sys.stdout.isatty()
    while True:
        cs = [eng.get(i) for i in ids] if ids else eng.containers(all=args.all)
        samples, entries = [], []
        for c in cs:
            try:
                s = stats.sample(c)
            except EngineError:   # not running (or it exited between the listing and the reading)
                if args.all:
                    entries.append(stats.empty_entry(c))
                continue
            samples.append(s)
            entries.append(stats.entry(s, prev.get(s["id"])))
        if args.no_trunc:
            full = {c["id"][:12]: c["id"] for c in cs}
            entries = [dict(e, id=full[e["id"]]) for e in entries]
        prev = {s["id"]: s for s in samples}
        if fmt == "json":
            print(json.dumps(entries, indent=4))
        else:
            if tty and not args.no_stream and not args.no_reset:
                sys.stdout.write("\033[2J\033[H")
            print_table([[e["id"], e["name"], e["cpu_percent"], e["mem_usage"], e["mem_percent"],
                          e["net_io"], e["block_io"], e["pids"], e["cpu_time"], e["avg_cpu"]]
                         for e in entries],
                        ["ID", "NAME", "CPU %", "MEM USAGE / LIMIT", "MEM %", "NET IO", "BLOCK IO",
                         "PIDS", "CPU TIME", "AVG CPU %"])
        sys.stdout.flush()
        if args.no_stream or (ids and not samples):
            return 0
        time.sleep(args.interval)


def cmd_cp(args):
    from keel.engine import cp
    from keel.engine.errors import EngineError

    src_ctr, src_path = cp.split_spec(args.src)
    dst_ctr, dst_path = cp.split_spec(args.dest)
    if not src_ctr and not dst_ctr:
        raise EngineError("cp: one of SRC and DEST must be CONTAINER:PATH")
    eng = _engine(args)
    if src_ctr and dst_ctr:
        cp.copy_between(eng, src_ctr, src_path, dst_ctr, dst_path, follow=args.follow_link,
                        archive=args.archive)
    elif src_ctr:
        if dst_path == "-" and sys.stdout.isatty():
            raise EngineError("cp: refusing to write a tar stream to a terminal")
        cp.copy_from_container(eng, src_ctr, src_path, dst_path, follow=args.follow_link,
                               out=sys.stdout.buffer)
    else:
        if dst_path == "-":
            raise EngineError("cp: DEST - (a tar stream) needs a container as SRC")
        cp.copy_to_container(eng, src_path, dst_ctr, dst_path, follow=args.follow_link,
                             archive=args.archive, stdin=sys.stdin.buffer)


def confirm(question: str) -> bool:
    """podman's [y/N] prompt on stderr; no answer (EOF) is no."""
    sys.stderr.write(f"{question} [y/N] ")
    sys.stderr.flush()
    answer = sys.stdin.readline()
    return answer.strip().lower() in ("y", "yes")


def cmd_container_prune(args):
    from keel.engine import ops

    filters = ops.parse_filters(args.filter)
    if not args.force and not confirm("WARNING! This will remove all non running containers.\n"
                                      "Are you sure you want to continue?"):
        return 0
    ids, _ = ops.prune_containers(_engine(args), filters)
    for cid in ids:
        print(cid)
    return 0

