"""`exec`: run another process inside a running container's namespaces and cgroup.

Chain: keel-runtime forks a child that joins the container (cgroup, then every
namespace of the init that differs from ours, user first) and forks again so the
process lands in the container's pid namespace; that grandchild drops privileges
as the container's process would and execs. The channel closes on exec (CLOEXEC):
EOF before an ERROR means the exec succeeded.
"""

import os

from keel.kernel import libc
from keel.oci.config import NAMESPACE_FLAGS, validate_process
from keel.runtime import attach, channel, log, process
from keel.runtime.errors import RuntimeError_

_NS_FILES = (("user", "user"), ("ipc", "ipc"), ("uts", "uts"), ("network", "net"), ("pid", "pid"),
             ("cgroup", "cgroup"), ("time", "time"), ("mount", "mnt"))


def build_process(c, opts, args):
    """The process to run: --process FILE, or the container's process with args and flag overrides."""
    if opts.process:
        from keel.oci import config as ociconfig

        try:
            with open(opts.process, "rb") as f:
                proc = ociconfig.parse(f.read(), opts.process)
        except OSError as e:
            raise RuntimeError_(f"--process {opts.process}: {e.strerror.lower()}") from None
        validate_process(proc, "process")
        return proc
    if not args:
        raise RuntimeError_("exec: no command given (pass arguments or --process FILE)")
    base = dict(c.data.get("process") or {})
    proc = {
        "args": list(args),
        "env": list(base.get("env") or []) + list(opts.env or []),
        "cwd": opts.cwd or base.get("cwd") or "/",
        "user": dict(base.get("user") or {"uid": 0, "gid": 0}),
        "capabilities": {k: list(v) for k, v in (base.get("capabilities") or {}).items()},
        "rlimits": base.get("rlimits") or [],
        "noNewPrivileges": bool(base.get("noNewPrivileges") or opts.no_new_privs),
        "terminal": bool(opts.tty),
    }
    if base.get("apparmorProfile") or opts.apparmor:
        proc["apparmorProfile"] = opts.apparmor or base["apparmorProfile"]
    if opts.user:
        uid, _, gid = opts.user.partition(":")
        try:
            proc["user"] = {"uid": int(uid), "gid": int(gid) if gid else 0}
        except ValueError:
            raise RuntimeError_(f"--user {opts.user!r}: expected uid[:gid] as numbers") from None
    if opts.additional_gids:
        try:
            proc["user"]["additionalGids"] = [int(g) for g in opts.additional_gids]
        except ValueError:
            raise RuntimeError_(f"--additional-gids: {opts.additional_gids} are not numbers") from None
    for cap in opts.cap or ():
        for s in ("bounding", "effective", "inheritable", "permitted", "ambient"):
            proc["capabilities"].setdefault(s, [])
            if cap not in proc["capabilities"][s]:
                proc["capabilities"][s].append(cap)
    validate_process(proc, "process")
    return proc


def exec_(c, proc, console_socket=None, detach=False, pid_file=None, preserve_fds=0,
          seccomp_profile=None, ignore_paused=False):
    status = c.status()
    if status == "paused" and not ignore_paused:
        raise RuntimeError_(f"cannot exec in container {c.id!r}: it is paused")
    if status not in ("running", "created", "paused"):
        raise RuntimeError_(f"cannot exec in container {c.id!r}: it is {status}")
    terminal = bool(proc.get("terminal"))
    if terminal and detach and not console_socket:
        raise RuntimeError_("exec --tty --detach needs --console-socket to receive the pty")
    if console_socket and not terminal:
        raise RuntimeError_("--console-socket given without --tty")
    process.check_rlimits(proc.get("rlimits"))
    join = namespaces_to_join(c.pid)
    cgroup = None
    if c.data.get("cgroup"):
        from keel.kernel.cgroups import Cgroup

        cgroup = Cgroup.from_dict(c.data["cgroup"])
    seccomp_filter = None
    if seccomp_profile:
        from keel.kernel import seccomp

        seccomp_filter = seccomp.Filter(seccomp_profile, log=log.debug)
    libc.prctl(libc.PR_SET_CHILD_SUBREAPER, 1)
    # Signals for the process that arrive before it has exec'd are held, then forwarded.
    forwarder = None if detach else attach.Forwarder(None)
    parent_sock, child_sock = channel.pair()
    pid = os.fork()
    if pid == 0:
        parent_sock.close()
        _child(child_sock, c, proc, join, cgroup, seccomp_filter, preserve_fds)
    child_sock.close()
    target = None
    console_fd = None
    try:
        while True:
            kind, msg, fds = channel.recv(parent_sock)
            if kind == channel.INIT_PID:
                target = msg["pid"]
                if forwarder is not None:
                    forwarder.pid = target
                os.waitpid(pid, 0)
                pid = None
            elif kind == channel.CONSOLE:
                console_fd = fds[0]
                if console_socket:
                    try:
                        channel.send_fd_to_console_socket(console_socket, console_fd)
                    finally:
                        os.close(console_fd)
                        console_fd = None
            elif kind == channel.ERROR:
                raise RuntimeError_(msg.get("message") or "exec failed")
            elif kind is None:
                break
    except BaseException:
        if forwarder is not None:
            forwarder.restore()
        for p in (pid, target):
            if p:
                try:
                    os.kill(p, 9)
                    os.waitpid(p, 0)
                except (ProcessLookupError, ChildProcessError):
                    pass
        if console_fd is not None:
            os.close(console_fd)
        raise
    finally:
        parent_sock.close()
    if target is None:
        if forwarder is not None:
            forwarder.restore()
        raise RuntimeError_("exec: the process exited before it started")
    if pid_file:
        from keel.runtime.create import write_pid_file

        write_pid_file(pid_file, target)
    if detach:
        return 0
    forwarder.console_fd = console_fd
    try:
        return attach.wait(target, console_fd, forwarder)
    finally:
        if console_fd is not None:
            os.close(console_fd)


def namespaces_to_join(pid):
    join = []
    for kind, name in _NS_FILES:
        theirs = f"/proc/{pid}/ns/{name}"
        try:
            if os.stat(theirs).st_ino != os.stat(f"/proc/self/ns/{name}").st_ino:
                join.append((kind, theirs))
        except FileNotFoundError:
            continue
    return join


def _child(sock, c, proc, join, cgroup, seccomp_filter, preserve_fds):
    from keel.runtime import init

    try:
        init.preload({"linux": {}, "hooks": {}})
        libc.prctl(libc.PR_SET_DUMPABLE, 0)
        if cgroup is not None:
            cgroup.join(os.getpid())
        fds = [(kind, os.open(path, os.O_RDONLY | os.O_CLOEXEC)) for kind, path in join]
        for kind, fd in sorted(fds, key=lambda t: t[0] != "user"):
            libc.setns(fd, NAMESPACE_FLAGS[kind], f"{kind} namespace of container {c.id}")
            os.close(fd)
        if any(kind == "user" for kind, _ in join):
            os.setresgid(0, 0, 0)
            os.setresuid(0, 0, 0)
        # As in create: the process speaks on the channel only after its pid was sent.
        gate_r, gate_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(gate_w)
            os.read(gate_r, 1)
            os.close(gate_r)
            _grandchild(sock, proc, seccomp_filter, preserve_fds, init)
        os.close(gate_r)
        channel.send(sock, channel.INIT_PID, pid=pid)
        os.close(gate_w)
        os._exit(0)
    except BaseException as e:  # noqa: BLE001
        init._fail(sock, e)


def _grandchild(sock, proc, seccomp_filter, preserve_fds, init):
    try:
        os.setsid()
        if proc.get("terminal"):
            init.setup_console(sock, proc, bind_console=False)
        process.set_rlimits(proc.get("rlimits"))
        if proc.get("oomScoreAdj") is not None:
            process.set_oom_score_adj(proc["oomScoreAdj"])
        path, args, env, late = process.finalize(proc, preserve_fds, seccomp_filter)
        if late is not None:
            late.load()
        process.exec_process(path, args, env)
    except BaseException as e:  # noqa: BLE001
        init._fail(sock, e)
