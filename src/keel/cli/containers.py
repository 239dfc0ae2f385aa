"""`keel` container commands, spelled as podman spells them: run, create, start, ps, logs,
wait, stop, kill, rm, restart, inspect (containers first, then images), and the `keel
container ...` group (with `cleanup`, conmon's exit command).

A foreground `run` / `start -a` streams the container's output by following its CRI log file
(conmon writes it; stdout entries go to our stdout, stderr entries to our stderr) until
conmon's exit file appears, forwards SIGINT/SIGTERM/SIGHUP/SIGQUIT/SIGUSR1/SIGUSR2 to the
container, and exits with the container's exit code. No stdin, no terminal in this slice.

Errors are one line and exit 125, usage errors (an unknown flag) too, as podman's.
"""

import argparse
import json
import os
import signal
import sys
import time

from keel.cli import runopts

EXIT_ERROR = 125


class _Parser(argparse.ArgumentParser):
    """Usage errors exit 125 with one line, and unknown arguments are errors of this parser
    (not left for the top-level parser, which would exit 2)."""

    def error(self, message):
        self.exit(EXIT_ERROR, f"Error: {self.prog}: {message}\n")

    def parse_known_args(self, args=None, namespace=None):
        ns, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unknown flag: {extras[0]}" if extras[0].startswith("-")
                       else f"unexpected argument: {extras[0]}")
        return ns, extras


def _strict(p):
    p.__class__ = _Parser
    return p


def register(sub, group=False):
    """Add the container commands to `sub`; group=False also adds the `container` group and
    makes the top-level `inspect` look at containers before images."""
    def add(name, func, help, aliases=()):
        p = _strict(sub.add_parser(name, help=help, aliases=list(aliases)))
        p.set_defaults(func=func)
        return p

    p = add("run", cmd_run, "run a command in a new container")
    _create_flags(p)
    p.add_argument("-d", "--detach", action="store_true", help="run in the background, print the id")

    p = add("create", cmd_create, "create a container (start it with start)")
    _create_flags(p)

    p = add("start", cmd_start, "start containers")
    p.add_argument("-a", "--attach", action="store_true", help="stream its output, exit with its code")
    p.add_argument("containers", nargs="+", metavar="CONTAINER")

    p = add("ls" if group else "ps", cmd_ps, "list containers", aliases=("list", "ps") if group else ())
    p.add_argument("-a", "--all", action="store_true", help="all containers (default: running ones)")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the ids")
    p.add_argument("--format", help="json, or table (default)")

    p = add("logs", cmd_logs, "print a container's logs")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing until the container exits")
    p.add_argument("--tail", type=int, default=-1, metavar="N", help="only the last N lines")
    p.add_argument("-t", "--timestamps", action="store_true", help="prefix each line with its time")
    p.add_argument("--since", metavar="TIME", help="only lines since TIME (RFC 3339, unix time or a duration like 10m)")
    p.add_argument("container", metavar="CONTAINER")

    p = add("wait", cmd_wait, "wait for containers to exit, print their exit codes")
    p.add_argument("containers", nargs="+", metavar="CONTAINER")

    p = add("stop", cmd_stop, "stop containers (stop signal, then SIGKILL)")
    p.add_argument("-t", "--time", type=int, metavar="SECONDS", help="seconds before SIGKILL (default: the container's stop timeout, 10)")
    p.add_argument("containers", nargs="+", metavar="CONTAINER")

    p = add("restart", cmd_restart, "stop and start containers")
    p.add_argument("-t", "--time", type=int, metavar="SECONDS", help="seconds before SIGKILL")
    p.add_argument("containers", nargs="+", metavar="CONTAINER")

    p = add("kill", cmd_kill, "send a signal to containers")
    p.add_argument("-s", "--signal", default="KILL", help="signal name or number (default KILL)")
    p.add_argument("containers", nargs="+", metavar="CONTAINER")

    p = add("rm", cmd_rm, "remove containers", aliases=("remove",) if group else ())
    p.add_argument("-f", "--force", action="store_true", help="kill running containers first")
    p.add_argument("-v", "--volumes", action="store_true", help="remove their anonymous volumes too")
    p.add_argument("containers", nargs="+", metavar="CONTAINER")

    if group:
        p = add("inspect", cmd_inspect, "print containers' details as JSON")
        p.add_argument("--format", help="json (default)")
        p.add_argument("containers", nargs="+", metavar="CONTAINER")
        p = add("cleanup", cmd_cleanup, "record a container's exit and free its runtime state (conmon's exit command)")
        p.add_argument("--rm", action="store_true", help="also remove the container")
        p.add_argument("container", metavar="CONTAINER")
        return

    if "inspect" in sub.choices:   # the image command: containers are looked up first
        sub.choices["inspect"].set_defaults(func=cmd_inspect_any)
    grp = _strict(sub.add_parser("container", help="manage containers (run, ps, rm, inspect, cleanup, ...)"))
    register(grp.add_subparsers(dest="container_command", metavar="COMMAND", parser_class=_Parser), group=True)


def _create_flags(p):
    p.add_argument("--name", help="the container's name (default: a generated adjective_surname)")
    p.add_argument("-e", "--env", action="append", default=[], metavar="NAME[=VALUE]",
                   help="set an environment variable (NAME alone: the value from keel's environment)")
    p.add_argument("--env-file", action="append", default=[], metavar="FILE", help="read NAME=VALUE lines from FILE")
    p.add_argument("-w", "--workdir", help="working directory in the container")
    p.add_argument("-u", "--user", help="user[:group] to run as (name or number)")
    p.add_argument("--entrypoint", help='replace the image\'s entrypoint (a string, or a JSON array like \'["sh","-c"]\')')
    p.add_argument("--hostname", help="the container's hostname (default: the id's first 12 characters)")
    p.add_argument("--runtime", help="OCI runtime name or path (default keel-runtime; runc, crun, ...)")
    p.add_argument("-l", "--label", action="append", default=[], metavar="KEY[=VALUE]", help="set a label")
    p.add_argument("--network", "--net", default="none", metavar="MODE",
                   help="none (default: an empty network namespace) or host")
    p.add_argument("--rm", action="store_true", help="remove the container when it exits")
    p.add_argument("--stop-signal", help="signal to stop the container (default: the image's, or SIGTERM)")
    p.add_argument("--stop-timeout", type=int, metavar="SECONDS", help="seconds stop waits before SIGKILL (default 10)")
    runopts.add_flags(p)
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="COMMAND")


# -- helpers ----------------------------------------------------------------------------------

def _engine(args):
    from keel.engine import Engine

    return Engine(args.root, args.runroot)


def _env(args):
    from keel.engine.errors import EngineError

    out = []

    def one(item, where):
        if not item:
            return
        name, sep, value = item.partition("=")
        if not name or any(c.isspace() for c in name):
            raise EngineError(f"{where}: invalid environment variable {item!r}")
        if sep:
            out.append(f"{name}={value}")
        elif name in os.environ:
            out.append(f"{name}={os.environ[name]}")

    for path in args.env_file:
        try:
            with open(path) as f:
                lines = f.read().splitlines()
        except OSError as e:
            raise EngineError(f"--env-file {path}: {(e.strerror or str(e)).lower()}") from None
        for n, line in enumerate(lines, 1):
            line = line.strip()
            if line and not line.startswith("#"):
                one(line, f"--env-file {path}:{n}")
    for item in args.env:
        one(item, "--env")
    return out


def _labels(items):
    from keel.engine.errors import EngineError

    labels = {}
    for item in items:
        key, _, value = item.partition("=")
        if not key:
            raise EngineError(f"--label {item!r}: empty key")
        labels[key] = value
    return labels


def _entrypoint(value):
    from keel.engine.errors import EngineError

    if value is None:
        return None
    if value.startswith("["):
        try:
            ep = json.loads(value)
        except ValueError:
            ep = None
        if not isinstance(ep, list) or not all(isinstance(a, str) for a in ep):
            raise EngineError(f"--entrypoint {value!r}: not a JSON array of strings")
        return ep
    return [value]


def _create(args, eng):
    return eng.create(args.image, args.command, name=args.name, entrypoint=_entrypoint(args.entrypoint),
                      env=_env(args), workdir=args.workdir, user=args.user, hostname=args.hostname,
                      runtime=args.runtime, labels=_labels(args.label), network=args.network,
                      remove=args.rm, stop_signal=args.stop_signal, stop_timeout=args.stop_timeout,
                      run_options=runopts.parse(args, args.network))


_FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)


def _attach(eng, cid, offset):
    """Print the container's output from log offset `offset` until it exits; its exit code."""
    from keel.engine import logs, monitor
    from keel.engine.errors import EngineError

    c = eng.db.get(cid)

    def forward(signum, frame):
        try:
            eng.kill(cid, signum)
        except EngineError:
            pass

    old = {s: signal.signal(s, forward) for s in _FORWARDED}
    try:
        def done():
            return monitor.read_exit_file(eng.exit_dir, cid) is not None or \
                eng._sync(eng.db.get(cid) or {"state": "gone"})["state"] not in ("initialized", "running")

        out, err = sys.stdout.buffer, sys.stderr.buffer
        for e in logs.follow(c["log_path"], done, offset):
            stream = out if e.stream == "stdout" else err
            stream.write(e.message if e.partial else e.message + b"\n")
            stream.flush()
        return eng.wait(cid)
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _start_error_code(e):
    """podman's exit codes for a command that cannot be run: 127 not found, 126 not executable."""
    msg = str(e).lower()
    if "not found" in msg or "no such file" in msg or "no such executable" in msg:
        return 127
    if "permission denied" in msg or "not executable" in msg:
        return 126
    return EXIT_ERROR


# -- commands ---------------------------------------------------------------------------------

def cmd_create(args):
    eng = _engine(args)
    c = _create(args, eng)
    print(c["id"])


def cmd_run(args):
    from keel.engine import logs
    from keel.engine.errors import ContainerNotFound, MonitorFailed, RuntimeFailed

    eng = _engine(args)
    c = _create(args, eng)
    offset = logs.log_size(c["log_path"])
    try:
        eng.start(c["id"])
    except (MonitorFailed, RuntimeFailed) as e:
        if args.rm:
            try:
                eng.remove(c["id"], force=True)
            except ContainerNotFound:
                pass
        sys.stderr.write(f"Error: {e}\n")
        return _start_error_code(e)
    if args.detach:
        print(c["id"])
        return 0
    code = _attach(eng, c["id"], offset)
    if args.rm:
        try:
            eng.remove(c["id"], force=True)
        except ContainerNotFound:
            pass
    return code


def cmd_start(args):
    from keel.engine import logs
    from keel.engine.errors import EngineError

    eng = _engine(args)
    if args.attach:
        if len(args.containers) != 1:
            raise EngineError("start --attach: give exactly one container")
        c = eng.get(args.containers[0])
        offset = logs.log_size(c["log_path"])
        eng.start(c["id"])
        return _attach(eng, c["id"], offset)
    failed = None
    for ref in args.containers:
        try:
            eng.start(ref)
            print(ref)
        except EngineError as e:
            sys.stderr.write(f"Error: {e}\n")
            failed = e
    return EXIT_ERROR if failed else 0


def _argv(c):
    return list((c["config"].get("process") or {}).get("args") or [])


def _ago(t):
    from keel.cli.images import human_duration

    return human_duration(time.time() - t)


def _status(c):
    s = c["state"]
    if s == "running":
        return f"Up {_ago(c['started'])}"
    if s == "exited":
        return f"Exited ({c['exit_code']}) {_ago(c['finished'])} ago"
    return s.capitalize()


def ps_entry(c):
    """One container in podman's `ps --format json` shape."""
    return {
        "AutoRemove": bool(c["options"].get("remove")),
        "Command": _argv(c),
        "Created": int(c["created"]),
        "CreatedAt": _ago(c["created"]) + " ago",
        "Exited": c["state"] == "exited",
        "ExitedAt": int(c["finished"]),
        "ExitCode": c["exit_code"] if c["exit_code"] is not None else 0,
        "Id": c["id"],
        "Image": c["image_name"],
        "ImageID": c["image_id"],
        "IsInfra": False,
        "Labels": c["labels"] or None,
        "Mounts": [m["destination"] for m in (c["options"].get("run") or {}).get("mounts", [])],
        "Names": [c["name"]],
        "Networks": [],
        "Pid": c["pid"] if c["state"] == "running" else 0,
        "Pod": "",
        "PodName": "",
        "Ports": None,
        "StartedAt": int(c["started"]),
        "State": c["state"],
        "Status": _status(c),
    }


def cmd_ps(args):
    from keel.cli.images import print_table
    from keel.engine.errors import EngineError

    fmt = (args.format or "table").lower()
    if fmt not in ("json", "table"):
        raise EngineError(f"--format {args.format!r}: json or table")
    eng = _engine(args)
    cs = sorted(eng.containers(all=args.all), key=lambda c: c["created"], reverse=True)
    if args.quiet:
        for c in cs:
            print(c["id"][:12])
        return
    if fmt == "json":
        print(json.dumps([ps_entry(c) for c in cs], indent=4))
        return
    rows = []
    for c in cs:
        cmd = " ".join(_argv(c))
        rows.append([c["id"][:12], c["image_name"], cmd if len(cmd) <= 20 else cmd[:17] + "...",
                     _ago(c["created"]) + " ago", _status(c), "", c["name"]])
    print_table(rows, ["CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "PORTS", "NAMES"])


def cmd_logs(args):
    from keel.engine import logs
    from keel.engine.errors import EngineError

    eng = _engine(args)
    c = eng.get(args.container)
    since = logs.parse_since(args.since) if args.since else None
    entries, offset = logs.read_entries(c["log_path"])
    if since is not None:
        entries = [e for e in entries if e.time >= since]
    if args.tail >= 0:
        entries = logs.tail(entries, args.tail)
    out, err = sys.stdout.buffer, sys.stderr.buffer
    state = {"partial": False}

    def emit(e):
        stream = out if e.stream == "stdout" else err
        if args.timestamps and not state["partial"]:
            stream.write(e.timestamp.encode() + b" ")
        stream.write(e.message if e.partial else e.message + b"\n")
        state["partial"] = e.partial
        stream.flush()

    for e in entries:
        emit(e)
    if args.follow:
        def done():
            try:
                return eng.get(c["id"])["state"] not in ("initialized", "running")
            except EngineError:
                return True

        for e in logs.follow(c["log_path"], done, offset):
            if since is None or e.time >= since:
                emit(e)


def _each(args, refs, func):
    from keel.engine.errors import EngineError

    failed = False
    for ref in refs:
        try:
            out = func(ref)
        except EngineError as e:
            sys.stderr.write(f"Error: {e}\n")
            failed = True
            continue
        if out is not None:
            print(out)
    return EXIT_ERROR if failed else 0


def cmd_wait(args):
    eng = _engine(args)
    return _each(args, args.containers, eng.wait)


def cmd_stop(args):
    eng = _engine(args)

    def stop(ref):
        eng.stop(ref, args.time)
        return ref
    return _each(args, args.containers, stop)


def cmd_restart(args):
    eng = _engine(args)

    def restart(ref):
        eng.stop(ref, args.time)
        eng.start(ref)
        return eng.get(ref)["id"]
    return _each(args, args.containers, restart)


def cmd_kill(args):
    from keel.engine.engine import parse_signal

    parse_signal(args.signal)  # a bad signal is one error, not one per container
    eng = _engine(args)

    def kill(ref):
        eng.kill(ref, args.signal)
        return ref
    return _each(args, args.containers, kill)


def cmd_rm(args):
    eng = _engine(args)
    return _each(args, args.containers, lambda ref: eng.remove(ref, force=args.force, volumes=args.volumes))


def cmd_cleanup(args):
    eng = _engine(args)
    eng.cleanup(args.container, remove=args.rm)


def inspect_entry(eng, c):
    """One container in podman's `container inspect` shape (the fields keel knows)."""
    from keel.engine import specgen
    from keel.engine.engine import format_time

    cfg, opts = c["config"], c["options"]
    proc = cfg.get("process") or {}
    argv = list(proc.get("args") or [])
    img_cfg = {}
    try:
        img_cfg = eng.store.get("sha256:" + c["image_id"]).config.get("config") or {}
    except Exception:  # the image may be gone: its container stays inspectable
        pass
    ep = opts.get("entrypoint")
    if ep is None:
        ep, cmd = list(img_cfg.get("Entrypoint") or []), opts["command"] or list(img_cfg.get("Cmd") or [])
    else:
        ep = [a for a in ep if a != ""] and ep
        cmd = opts["command"] or ([] if ep else list(img_cfg.get("Cmd") or []))
    bundle = eng.bundle_dir(c["id"])
    rootfs = (cfg.get("root") or {}).get("path", "")
    return {
        "Id": c["id"],
        "Created": format_time(c["created"]),
        "Path": argv[0] if argv else "",
        "Args": argv[1:],
        "State": {
            "OciVersion": cfg.get("ociVersion", ""),
            "Status": c["state"],
            "Running": c["state"] == "running",
            "Paused": False,
            "Restarting": False,
            "OOMKilled": c["state"] == "exited" and os.path.exists(os.path.join(bundle, "oom")),
            "Dead": False,
            "Pid": c["pid"] if c["state"] == "running" else 0,
            "ConmonPid": c["conmon_pid"] if c["state"] in ("initialized", "running") else 0,
            "ExitCode": c["exit_code"] if c["exit_code"] is not None else 0,
            "Error": c["error"],
            "StartedAt": format_time(c["started"]),
            "FinishedAt": format_time(c["finished"]),
        },
        "Image": c["image_id"],
        "ImageName": c["image_name"],
        "Rootfs": "",
        "Pod": "",
        "OCIConfigPath": os.path.join(bundle, "config.json"),
        "OCIRuntime": os.path.basename(c["runtime"]),
        "ConmonPidFile": os.path.join(bundle, "conmon.pid"),
        "PidFile": os.path.join(bundle, "pidfile"),
        "Name": c["name"],
        "RestartCount": 0,
        "Driver": "overlay",
        "GraphDriver": {"Name": "overlay", "Data": {"MergedDir": rootfs}},
        "LogPath": c["log_path"],
        "Config": {
            "Hostname": cfg.get("hostname", ""),
            "User": opts.get("user") or img_cfg.get("User") or "",
            "Env": list(proc.get("env") or []),
            "Cmd": cmd,
            "Image": c["image_name"],
            "WorkingDir": proc.get("cwd", "/"),
            "Entrypoint": ep,
            "Labels": c["labels"] or None,
            "Annotations": cfg.get("annotations") or {},
            "StopSignal": opts.get("stop_signal"),
            "StopTimeout": opts.get("stop_timeout"),
        },
        "HostConfig": {
            "NetworkMode": opts.get("network", "none"),
            "AutoRemove": bool(opts.get("remove")),
            "Runtime": "oci",
            **specgen.inspect_host_config(opts.get("run")),
        },
        "Mounts": specgen.inspect_mounts(opts.get("run"), eng.volumes.dir),
    }


def _check_format(fmt):
    from keel.engine.errors import EngineError

    if fmt is not None and fmt.lower() != "json":
        raise EngineError(f"--format {fmt!r}: only json is supported")


def cmd_inspect(args):
    from keel.engine.errors import ContainerNotFound

    _check_format(args.format)
    eng = _engine(args)
    out, err = [], None
    for ref in args.containers:
        try:
            out.append(inspect_entry(eng, eng.get(ref)))
        except ContainerNotFound as e:
            err = e
    print(json.dumps(out, indent=4))
    if err is not None:
        raise err


def cmd_inspect_any(args):
    """`keel inspect NAME...`: a container of that name or id, else an image (podman's order)."""
    from keel.cli.images import image_inspect
    from keel.engine.errors import ContainerNotFound, EngineError
    from keel.image.errors import ImageError

    _check_format(args.format)
    eng = _engine(args)
    out, err = [], None
    for ref in args.images:
        try:
            out.append(inspect_entry(eng, eng.get(ref)))
            continue
        except ContainerNotFound:
            pass
        try:
            out.append(image_inspect(eng.store.get(ref)))
        except ImageError:
            err = EngineError(f"no such object: {ref!r}")
    print(json.dumps(out, indent=4))
    if err is not None:
        raise err
