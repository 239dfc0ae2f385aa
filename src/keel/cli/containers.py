"""`keel` container commands, spelled as podman spells them: run, create, start, ps, logs,
wait, stop, kill, rm, restart, inspect (containers first, then images), and the `keel
container ...` group (with `cleanup`, conmon's exit command).

A foreground `run` / `start -a` / `attach` / `exec` connects to conmon's attach socket
(keel.engine.attach) before the process starts, copies its output to our stdout/stderr and,
with -i, our stdin to it (EOF closes the container's stdin); with -t our terminal goes raw and
its size follows (keel.cli.terminal); the detach keys (ctrl-p,ctrl-q) leave it running. It
forwards SIGINT/SIGTERM/SIGHUP/SIGQUIT/SIGUSR1/SIGUSR2 to the container and exits with the
container's (or the exec'd command's) exit code.

Errors are one line and exit 125, usage errors (an unknown flag) too, as podman's.
"""

import argparse
import json
import os
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
    if isinstance(p, argparse.ArgumentParser):   # not a skipped command's stand-in (main.py)
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
    _detach_keys_flag(p)

    p = add("create", cmd_create, "create a container (start it with start)")
    _create_flags(p)

    p = add("start", cmd_start, "start containers")
    p.add_argument("-a", "--attach", action="store_true", help="stream its output, exit with its code")
    p.add_argument("-i", "--interactive", action="store_true", help="attach stdin too (implies --attach)")
    _detach_keys_flag(p)
    p.add_argument("containers", nargs="+", metavar="CONTAINER")

    p = add("ls" if group else "ps", cmd_ps, "list containers", aliases=("list", "ps") if group else ())
    p.add_argument("-a", "--all", action="store_true", help="all containers (default: running ones)")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the ids")
    p.add_argument("--format", help="json, or table (default)")
    p.add_argument("-f", "--filter", action="append", default=[], metavar="KEY=VALUE",
                   help="id, name, label, status, exited, ancestor, before, since, until, volume (implies --all)")
    p.add_argument("-n", "--last", type=int, default=-1, metavar="N", help="the N last created containers (implies --all)")
    p.add_argument("-l", "--latest", action="store_true", help="the last created container (implies --all)")
    p.add_argument("--no-trunc", action="store_true", help="full ids and commands")
    p.add_argument("-s", "--size", action="store_true", help="sizes of the writable layers")

    p = add("logs", cmd_logs, "print a container's logs")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing until the container exits")
    p.add_argument("--tail", type=int, default=-1, metavar="N", help="only the last N lines")
    p.add_argument("-t", "--timestamps", action="store_true", help="prefix each line with its time")
    p.add_argument("--since", metavar="TIME", help="only lines since TIME (RFC 3339, unix time or a duration like 10m)")
    p.add_argument("container", metavar="CONTAINER")

    p = add("attach", cmd_attach, "attach to a running container's stdio (its terminal with -t)")
    p.add_argument("--no-stdin", action="store_true", help="do not attach stdin")
    _detach_keys_flag(p)
    p.add_argument("container", metavar="CONTAINER")

    p = add("exec", cmd_exec, "run a command in a running container")
    p.add_argument("-i", "--interactive", action="store_true", help="keep stdin open and pass ours")
    p.add_argument("-t", "--tty", action="store_true", help="give the command a terminal")
    p.add_argument("-d", "--detach", action="store_true", help="run it in the background, print the session id")
    p.add_argument("-e", "--env", action="append", default=[], metavar="NAME[=VALUE]",
                   help="set an environment variable (NAME alone: the value from keel's environment)")
    p.add_argument("--env-file", action="append", default=[], metavar="FILE", help="read NAME=VALUE lines from FILE")
    p.add_argument("-u", "--user", help="user[:group] to run as (name or number)")
    p.add_argument("-w", "--workdir", help="working directory for the command")
    p.add_argument("--privileged", action="store_true", help="give the command every capability")
    _detach_keys_flag(p)
    p.add_argument("container", metavar="CONTAINER")
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="COMMAND")

    p = add("port", cmd_port, "list a container's published ports")
    p.add_argument("container", metavar="CONTAINER")
    p.add_argument("port", nargs="?", metavar="PORT[/PROTO]", help="only this container port")

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
        p.add_argument("--exec", metavar="SESSION", help="clean up this exec session only")
        p.add_argument("container", metavar="CONTAINER")
        from keel.cli import ops

        ops.register(sub, group=True)
        return

    if "inspect" in sub.choices:   # the image command: containers are looked up first
        sub.choices["inspect"].set_defaults(func=cmd_inspect_any)
    grp = _strict(sub.add_parser("container", help="manage containers (run, ps, rm, inspect, cleanup, ...)"))
    register(grp.add_subparsers(dest="container_command", metavar="COMMAND", parser_class=_Parser), group=True)


def _detach_keys_flag(p):
    from keel.cli.terminal import DEFAULT_DETACH_KEYS

    p.add_argument("--detach-keys", default=DEFAULT_DETACH_KEYS, metavar="KEYS",
                   help='keys that detach, e.g. "ctrl-p,ctrl-q" (the default); "" disables detaching')


def _create_flags(p):
    p.add_argument("-i", "--interactive", action="store_true", help="keep stdin open (and pass ours when attached)")
    p.add_argument("-t", "--tty", action="store_true", help="give the container a terminal")
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
    p.add_argument("--network", "--net", metavar="MODE",
                   help="bridge (the default network; the default, or env KEEL_DEFAULT_NETWORK), none (an "
                        "empty network namespace), host, NAME[,NAME...] (CNI networks) or container:NAME|ID")
    p.add_argument("-p", "--publish", action="append", default=[], metavar="[IP:][HOSTPORT:]PORT[/PROTO]",
                   help="publish a container port on the host (through the CNI portmap plugin)")
    p.add_argument("-P", "--publish-all", action="store_true",
                   help="publish every port the image exposes on a free host port")
    p.add_argument("--network-alias", action="append", default=[], metavar="NAME",
                   help="another name the container has on its networks (in the others' /etc/hosts)")
    p.add_argument("--ip", metavar="ADDRESS", help="the container's address on its (one) network")
    p.add_argument("--add-host", action="append", default=[], metavar="HOST:IP", help="add a line to /etc/hosts")
    p.add_argument("--dns", action="append", default=[], metavar="IP", help="nameserver for /etc/resolv.conf")
    p.add_argument("--dns-search", action="append", default=[], metavar="DOMAIN", help="search domain for /etc/resolv.conf")
    p.add_argument("--dns-option", action="append", default=[], metavar="OPTION", help="option for /etc/resolv.conf")
    p.add_argument("--rm", action="store_true", help="remove the container when it exits")
    p.add_argument("--stop-signal", help="signal to stop the container (default: the image's, or SIGTERM)")
    p.add_argument("--stop-timeout", type=int, metavar="SECONDS", help="seconds stop waits before SIGKILL (default 10)")
    runopts.add_flags(p)
    p.add_argument("--log-opt", action="append", default=[], metavar="max-size=SIZE",
                   help="max-size=10m: the log starts afresh past SIZE bytes (conmon's --log-size-max)")
    _pull_flags(p)
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="COMMAND")


def _pull_flags(p):
    from keel.cli.images import _tls

    p.add_argument("--pull", default="missing", metavar="POLICY",
                   help="pull the image: missing (default: when not stored), always, never, newer")
    p.add_argument("--platform", default="linux/amd64", help="os/arch[/variant] to pull (default %(default)s)")
    p.add_argument("-q", "--quiet", action="store_true", help="no pull progress")
    _tls(p)


# -- helpers ----------------------------------------------------------------------------------

def _engine(args):
    from keel.engine import Engine

    return Engine(args.root, args.runroot, network_config_dir=getattr(args, "network_config_dir", None))


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


def _log_opts(items):
    """--log-opt max-size=SIZE (bytes, or with k/m/g, docker's units) -> bytes or None."""
    from keel.engine.errors import EngineError
    import re

    size = None
    for item in items:
        key, sep, value = item.partition("=")
        if key != "max-size" or not sep:
            raise EngineError(f"--log-opt {item!r}: unknown log option (max-size=SIZE is supported)")
        m = re.fullmatch(r"(-1|\d+(?:\.\d+)?)\s*([kmgt]?)i?b?", value.strip().lower())
        if not m:
            raise EngineError(f"--log-opt {item!r}: invalid size (e.g. 8192, 512k, 10m)")
        size = int(float(m.group(1)) * 1024 ** " kmgt".index(m.group(2) or " "))
    return size


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


def _published(args, eng, image):
    """-p, plus with -P each port the image exposes (its ExposedPorts) on a free host port."""
    ports = list(args.publish)
    if args.publish_all:
        from keel.engine.errors import EngineError
        from keel.image.errors import ImageError

        try:
            exposed = (eng.store.get(image).config.get("config") or {}).get("ExposedPorts") or {}
        except ImageError as e:
            raise EngineError(str(e)) from None
        def key(spec):   # "[ip:][host:]80[/udp]" -> ("80", "udp")
            port, _, proto = spec.rsplit(":", 1)[-1].partition("/")
            return port, (proto or "tcp").lower()

        given = {key(q) for q in ports}
        ports += [p for p in exposed if key(p) not in given]
    return ports


def _image(args, eng):
    """The image to create from, pulled first when --pull says so; the name to record."""
    from keel.cli.images import _certs, _credentials
    from keel.image.pullpolicy import ensure

    def progress():
        from keel.image.progress import make_progress

        return make_progress(quiet=args.quiet, stream=sys.stderr)

    _, name = ensure(eng.store, args.image, args.pull, registries_conf=args.registries_conf,
                     progress_factory=progress, platform=args.platform, tls_verify=args.tls_verify,
                     authfile=args.authfile, credentials=_credentials(args), certs_dirs=_certs(args))
    return name


def _create(args, eng):
    image = _image(args, eng)
    return eng.create(image, args.command, name=args.name, entrypoint=_entrypoint(args.entrypoint),
                      env=_env(args), workdir=args.workdir, user=args.user, hostname=args.hostname,
                      runtime=args.runtime, labels=_labels(args.label), network=args.network,
                      remove=args.rm, stop_signal=args.stop_signal, stop_timeout=args.stop_timeout,
                      run_options=runopts.parse(args, args.network),
                      interactive=args.interactive, tty=args.tty,
                      console_size=_terminal().caller_window_size() if args.tty else None,
                      ports=_published(args, eng, image), dns=args.dns, dns_search=args.dns_search,
                      dns_options=args.dns_option, add_hosts=args.add_host, ip=args.ip,
                      network_aliases=args.network_alias,
                      log_size_max=_log_opts(args.log_opt))


def _terminal():
    from keel.cli import terminal

    return terminal


def _attach(eng, c, *, stdin, detach_keys, sock=None, remove=False):
    """Stream a running container's stdio through conmon's attach socket (connected now
    unless `sock` is given); its exit code, or None when the detach keys were typed.
    With remove, remove the container as soon as its exit code is written (not waiting for
    conmon's exit command, which then finds nothing left to do)."""
    from keel.engine import attach
    from keel.engine.errors import EngineError

    bundle = eng.bundle_dir(c["id"])
    if sock is None:
        sock = attach.connect(bundle, f"container {c['name']}")

    def forward(signum):
        try:
            eng.kill(c["id"], signum)
        except EngineError:
            pass

    how = _terminal().attach_streams(
        sock, stdin=stdin, tty=c["options"].get("tty", False), detach_keys=detach_keys,
        resize=lambda rows, cols: attach.resize(bundle, rows, cols), forward_signal=forward)
    if how == "detached":
        return None
    if remove:
        done = eng._wait_exit(c["id"], None)
        if done["state"] == "exited":
            from keel.engine.errors import ContainerNotFound

            try:
                eng.remove(c["id"], force=True)
            except ContainerNotFound:
                pass   # conmon's exit command was quicker
            return done["exit_code"]
    return eng.wait(c["id"])


def _start_attached(eng, c, *, stdin, detach_keys, remove=False):
    """Start container `c` with our stdio attached from its first byte; its exit code, or
    None when detached."""
    from keel.engine import attach

    held = {}

    def on_created(cur):
        bundle = eng.bundle_dir(cur["id"])
        held["sock"] = attach.connect(bundle, f"container {cur['name']}")
        size = _terminal().caller_window_size() if cur["options"].get("tty") else None
        if size:
            attach.resize(bundle, *size)

    try:
        c = eng.start(c["id"], on_created=on_created, attached_rm=remove)
    except BaseException:
        if "sock" in held:
            held["sock"].close()
        raise
    return _attach(eng, c, stdin=stdin, detach_keys=detach_keys, sock=held["sock"], remove=remove)


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
    from keel.engine.errors import ContainerNotFound, MonitorFailed, RuntimeFailed
    from keel.engine.network import NetworkError

    _terminal().parse_detach_keys(args.detach_keys)   # a bad value fails before anything is made
    eng = _engine(args)
    c = _create(args, eng)
    try:
        if args.detach:
            eng.start(c["id"])
        else:
            code = _start_attached(eng, c, stdin=args.interactive, detach_keys=args.detach_keys,
                                   remove=args.rm)
    except (MonitorFailed, RuntimeFailed, NetworkError) as e:
        if args.rm:
            try:
                eng.remove(c["id"], force=True)
            except ContainerNotFound:
                pass
        sys.stderr.write(f"Error: {e}\n")
        return EXIT_ERROR if isinstance(e, NetworkError) else _start_error_code(e)
    if args.detach:
        print(c["id"])
        return 0
    if code is None:   # detached: it runs on (and --rm removes it when it exits)
        return 0
    if args.rm:
        try:
            eng.remove(c["id"], force=True)
        except ContainerNotFound:
            pass
    return code


def cmd_start(args):
    from keel.engine.errors import EngineError

    eng = _engine(args)
    if args.attach or args.interactive:
        if len(args.containers) != 1:
            raise EngineError("start --attach: give exactly one container")
        _terminal().parse_detach_keys(args.detach_keys)
        c = eng.get(args.containers[0])
        stdin = args.interactive and c["options"].get("interactive", False)
        if c["state"] == "running":
            code = _attach(eng, c, stdin=stdin, detach_keys=args.detach_keys)
        else:
            code = _start_attached(eng, c, stdin=stdin, detach_keys=args.detach_keys)
        return 0 if code is None else code
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


def _ports(eng, c):
    from keel.engine import network

    return network.ports_of(eng, c) if eng is not None else list((c["options"].get("net") or {}).get("ports") or [])


def ps_entry(c, eng=None):
    """One container in podman's `ps --format json` shape."""
    ports = _ports(eng, c)
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
        "Networks": list((c["options"].get("net") or {}).get("networks") or []),
        "Pid": c["pid"] if c["state"] in ("running", "paused") else 0,
        "Pod": "",
        "PodName": "",
        "Ports": [{"host_ip": p["hostIP"], "container_port": p["containerPort"], "host_port": p["hostPort"],
                   "range": 1, "protocol": p["protocol"]} for p in ports] or None,
        "StartedAt": int(c["started"]),
        "State": c["state"],
        "Status": _status(c),
    }


def cmd_ps(args):
    from keel.cli.images import print_table
    from keel.engine.errors import EngineError

    from keel.engine import ops

    fmt = (args.format or "table").lower()
    if fmt not in ("json", "table"):
        raise EngineError(f"--format {args.format!r}: json or table")
    filters = ops.parse_filters(args.filter)
    if args.latest:
        args.last = 1
    eng = _engine(args)
    everything = args.all or bool(filters) or args.last >= 0
    cs = sorted(eng.containers(all=everything), key=lambda c: c["created"], reverse=True)
    cs = ops.filter_containers(eng, cs, filters)
    if args.last >= 0:
        cs = cs[:args.last]
    idlen = 64 if args.no_trunc else 12
    if args.quiet:
        for c in cs:
            print(c["id"][:idlen])
        return
    sizes = {c["id"]: ops.ps_size(eng, c) for c in cs} if args.size else {}
    if fmt == "json":
        out = [ps_entry(c, eng) for c in cs]
        for e in out:
            if args.size:
                e["Size"] = sizes[e["Id"]]
        print(json.dumps(out, indent=4))
        return
    from keel.cli.images import human_size

    rows = []
    for c in cs:
        cmd = " ".join(_argv(c))
        row = [c["id"][:idlen], c["image_name"],
               cmd if args.no_trunc or len(cmd) <= 20 else cmd[:17] + "...",
               _ago(c["created"]) + " ago", _status(c), _ports_column(eng, c), c["name"]]
        if args.size:
            s = sizes[c["id"]]
            row.append(f"{human_size(s['rwSize'])} (virtual {human_size(s['rootFsSize'])})")
        rows.append(row)
    print_table(rows, ["CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "PORTS", "NAMES"]
                + (["SIZE"] if args.size else []))


def _ports_column(eng, c):
    from keel.engine import network

    return ", ".join(f"{p['hostIP'] or '0.0.0.0'}:{p['hostPort']}->{p['containerPort']}/{p['protocol']}"
                     for p in network.ports_of(eng, c))


def cmd_port(args):
    """podman's `port`: `80/tcp -> 0.0.0.0:8080` lines, or the host address of one port."""
    from keel.engine import network
    from keel.engine.errors import EngineError

    eng = _engine(args)
    c = eng.get(args.container)
    ports = network.ports_of(eng, c)
    if args.port is None:
        for p in ports:
            print(network.format_port(p))
        return 0
    num, _, proto = args.port.partition("/")
    proto = (proto or "tcp").lower()
    if not num.isdigit():
        raise EngineError(f"port {args.port!r}: expected PORT[/PROTO]")
    found = [p for p in ports if p["containerPort"] == int(num) and p["protocol"] == proto]
    if not found:
        raise EngineError(f"no public port {num}/{proto} published for {c['name']}")
    for p in found:
        print(f"{p['hostIP'] or '0.0.0.0'}:{p['hostPort']}")
    return 0


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
    if args.exec:
        from keel.engine import exec as exec_

        exec_.cleanup(eng, args.container, args.exec)
        return
    eng.cleanup(args.container, remove=args.rm)


def cmd_attach(args):
    from keel.engine.errors import InvalidState

    _terminal().parse_detach_keys(args.detach_keys)
    eng = _engine(args)
    c = eng.get(args.container)
    if c["state"] != "running":
        raise InvalidState(f"you can only attach to running containers: {c['name']} is {c['state']}")
    code = _attach(eng, c, stdin=not args.no_stdin and c["options"].get("interactive", False),
                   detach_keys=args.detach_keys)
    return 0 if code is None else code


def cmd_exec(args):
    from keel.engine import exec as exec_
    from keel.engine.errors import MonitorFailed, RuntimeFailed

    terminal = _terminal()
    terminal.parse_detach_keys(args.detach_keys)
    eng = _engine(args)
    try:
        sess = exec_.start(eng, args.container, args.command, tty=args.tty, interactive=args.interactive,
                           detach=args.detach, env=_env(args), user=args.user, workdir=args.workdir,
                           privileged=args.privileged,
                           console_size=terminal.caller_window_size() if args.tty else None)
    except (MonitorFailed, RuntimeFailed) as e:
        sys.stderr.write(f"Error: {e}\n")
        return _start_error_code(e)
    if args.detach:
        sess.close()
        print(sess.id)
        return 0
    how = terminal.attach_streams(sess.sock, stdin=args.interactive, tty=args.tty,
                                  detach_keys=args.detach_keys, resize=sess.resize)
    if how == "detached":
        sess.close()
        return 0
    return sess.wait()


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
            "Paused": c["state"] == "paused",
            "Restarting": False,
            "OOMKilled": c["state"] == "exited" and os.path.exists(os.path.join(bundle, "oom")),
            "Dead": False,
            "Pid": c["pid"] if c["state"] in ("running", "paused") else 0,
            "ConmonPid": c["conmon_pid"] if c["state"] in ("initialized", "running", "paused") else 0,
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
            "Tty": bool(opts.get("tty")),
            "OpenStdin": bool(opts.get("interactive")),
        },
        "NetworkSettings": _network_settings(eng, c),
        "HostConfig": {
            "NetworkMode": opts.get("network", "none"),
            **_host_network_config(opts),
            "AutoRemove": bool(opts.get("remove")),
            "Runtime": "oci",
            **specgen.inspect_host_config(opts.get("run")),
        },
        "Mounts": specgen.inspect_mounts(opts.get("run"), eng.volumes.dir),
    }


def _network_settings(eng, c):
    from keel.engine import network

    return network.settings(eng, c)


def _host_network_config(opts):
    net = opts.get("net") or {}
    bindings = {}
    for p in net.get("ports") or []:
        bindings.setdefault(f"{p['containerPort']}/{p['protocol']}", []).append(
            {"HostIp": p["hostIP"], "HostPort": str(p["hostPort"]) if p["hostPort"] else ""})
    return {"PortBindings": bindings, "Dns": net.get("dns") or [], "DnsSearch": net.get("dns_search") or [],
            "DnsOptions": net.get("dns_options") or [],
            "ExtraHosts": [f"{n}:{ip}" for n, ip in net.get("add_hosts") or []]}


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
