"""The container side of `create`: stage 1 makes the namespaces, the init (pid 1) builds
the rootfs, waits on exec.fifo for `start`, and execs the user process.

Both run in processes forked from keel-runtime (single-threaded, so fork is safe)
and report to the parent over the typed channel (keel.runtime.channel). They never
return: they exit or exec.
"""

import os

from keel.kernel import libc
from keel.oci.config import NAMESPACE_FLAGS
from keel.runtime import channel, log, process, rootfs
from keel.runtime.errors import RuntimeError_


def describe(err):
    """One line for any failure; an OSError without a message of ours as crun writes it."""
    if isinstance(err, OSError) and err.strerror:
        what = f"{err.filename}: " if err.filename is not None else ""
        return f"{what}{err.strerror.lower()}"
    return str(err) or type(err).__name__


def _fail(sock, err):
    try:
        channel.send(sock, channel.ERROR, message=describe(err))
    finally:
        os._exit(1)


def stage1(sock, ctx):
    """Join or create namespaces, fork the init, report its pid, exit."""
    try:
        # Nothing in the container may open /proc/<pid>/exe of a runtime process
        # (CVE-2019-5736): a non-dumpable process's exe link needs CAP_SYS_PTRACE
        # in the host user namespace. execve of the user process resets it.
        libc.prctl(libc.PR_SET_DUMPABLE, 0)
        cgroup = ctx.get("cgroup")
        if cgroup is not None:
            cgroup.join(os.getpid())
        join_namespaces(ctx["join"])
        new = ctx["new_flags"]
        if new & NAMESPACE_FLAGS["user"]:
            libc.unshare(NAMESPACE_FLAGS["user"])
            channel.send(sock, channel.IDMAP_REQUEST, pid=os.getpid())
            kind, msg, _ = channel.recv(sock)
            if kind != channel.IDMAP_DONE:
                os._exit(1)
            os.setresgid(0, 0, 0)
            os.setresuid(0, 0, 0)
            new &= ~NAMESPACE_FLAGS["user"]
        if new:
            libc.unshare(new)
        if ctx.get("time_offsets"):
            write_time_offsets(ctx["time_offsets"])
        # The init speaks on the channel only after its pid has been sent: the parent must
        # know the pid before any other message (hooks get it; READY is final).
        gate_r, gate_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(gate_w)
            os.read(gate_r, 1)
            os.close(gate_r)
            init(sock, ctx)
        os.close(gate_r)
        channel.send(sock, channel.INIT_PID, pid=pid)
        os.close(gate_w)
        os._exit(0)
    except BaseException as e:  # noqa: BLE001 - everything must reach the parent
        _fail(sock, e)


def join_namespaces(join):
    """setns into each (type, path), user namespace first so the others are permitted."""
    order = sorted(join, key=lambda t: t[0] != "user")
    fds = []
    try:
        for ns, path in order:
            try:
                fds.append((ns, path, os.open(path, os.O_RDONLY | os.O_CLOEXEC)))
            except OSError as e:
                raise RuntimeError_(f"linux.namespaces: open {ns} namespace {path}: {e.strerror.lower()}") from None
        for ns, path, fd in fds:
            try:
                libc.setns(fd, NAMESPACE_FLAGS[ns], f"{ns} namespace {path}")
            except libc.KernelError as e:
                raise RuntimeError_(f"linux.namespaces: {e}") from None
    finally:
        for _, _, fd in fds:
            os.close(fd)


def write_time_offsets(offsets):
    lines = []
    for clock, off in offsets.items():
        lines.append(f"{clock} {off.get('secs', 0)} {off.get('nanosecs', 0)}\n")
    try:
        with open("/proc/self/timens_offsets", "w") as f:
            f.write("".join(lines))
    except OSError as e:
        raise RuntimeError_(f"linux.timeOffsets: {e.strerror.lower()}") from None


def preload(config):
    """Import now what the steps after pivot_root/setns need: the host's Python
    library is out of reach once the process is inside the container."""
    import fcntl  # noqa: F401
    import resource  # noqa: F401
    import struct  # noqa: F401

    import _socket  # noqa: F401
    hooks = config.get("hooks") or {}
    if hooks.get("startContainer") or hooks.get("createContainer"):
        import subprocess  # noqa: F401

        from keel.runtime import hooks as _hooks  # noqa: F401
    seccomp_filter = None
    if config["linux"].get("seccomp"):
        from keel.kernel import seccomp

        seccomp_filter = seccomp.Filter(config["linux"]["seccomp"], log=log.debug)
    return seccomp_filter


def init(sock, ctx):
    """pid 1 of the container: build it, wait for `start`, exec. Never returns."""
    try:
        os.setsid()
        # Hooks and seccomp agents get the pid as the runtime's namespace sees it (the spec's
        # "as seen by the host"), not 1: the host's /proc is still mounted here.
        ctx["host_pid"] = _host_pid()
        config = ctx["config"]
        linux = config["linux"]
        proc = config["process"]
        seccomp_filter = preload(config)
        if ctx["new_mount_ns"]:
            setup_rootfs(sock, ctx)
        else:
            _hooks_round(sock, ctx)
        fifo_fd = ctx["fifo_fd"]
        if ctx["new_mount_ns"]:
            if ctx["no_pivot"]:
                rootfs.move_root(ctx["rootfs"])
            else:
                rootfs.pivot(ctx["rootfs"])
        else:
            os.chroot(ctx["rootfs"])
            os.chdir("/")
        if config.get("hostname") is not None and ctx["new_uts_ns"]:
            import _socket

            _socket.sethostname(config["hostname"])
        if config.get("domainname") is not None and ctx["new_uts_ns"]:
            libc.setdomainname(config["domainname"])
        # Before readonlyPaths makes /proc/sys read-only (runc's order).
        for key, value in (linux.get("sysctl") or {}).items():
            write_sysctl(key, value)
        if ctx["new_mount_ns"]:
            finish_rootfs(config, ctx)
        if ctx["new_net_ns"]:
            loopback_up()
        if ctx["new_keyring"]:
            new_session_keyring(ctx["state"]["id"])
        if proc.get("terminal"):
            setup_console(sock, proc)
        if linux.get("personality"):
            set_personality(linux["personality"])
        process.set_rlimits(proc.get("rlimits"))
        if proc.get("oomScoreAdj") is not None:
            process.set_oom_score_adj(proc["oomScoreAdj"])
        if proc.get("ioPriority"):
            process.set_io_priority(proc["ioPriority"])
        if proc.get("scheduler"):
            process.set_scheduler(proc["scheduler"])
        path, args, env, late = process.finalize(
            proc, ctx["preserve_fds"], seccomp_filter,
            on_notify=lambda fd: send_notify(linux["seccomp"], fd, ctx))
        channel.send(sock, channel.READY)
        sock.close()
    except BaseException as e:  # noqa: BLE001
        _fail(sock, e)
    # Between create and start: block until `start` opens the fifo for reading.
    fd = os.open(f"/proc/self/fd/{fifo_fd}", os.O_WRONLY | os.O_CLOEXEC)
    os.write(fd, b"0")
    os.close(fd)
    os.close(fifo_fd)
    try:
        hooks = config.get("hooks") or {}
        if hooks.get("startContainer"):
            from keel.runtime import hooks as hookmod

            state = dict(ctx["state"], status="created", pid=ctx["host_pid"])
            hookmod.run(hooks, "startContainer", state)
        if late is not None:
            notify_fd = late.load()
            if notify_fd is not None:
                send_notify(linux["seccomp"], notify_fd, ctx)
        process.exec_process(path, args, env)
    except BaseException as e:  # noqa: BLE001
        os.write(2, f"keel-runtime: {e}\n".encode())
    os._exit(127)


def _host_pid():
    try:
        return int(os.readlink("/proc/self"))
    except (OSError, ValueError):
        return os.getpid()


def send_notify(profile, fd, ctx):
    from keel.kernel import seccomp

    listener = profile.get("listenerPath")
    if listener:
        state = dict(ctx["state"], status="creating", pid=ctx["host_pid"])
        seccomp.send_notify_fd(listener, fd, state, profile.get("listenerMetadata") or "")
    os.close(fd)


def _hooks_round(sock, ctx):
    if ctx["parent_hooks"]:
        channel.send(sock, channel.HOOKS_REQUEST)
        kind, msg, _ = channel.recv(sock)
        if kind != channel.HOOKS_DONE:
            os._exit(1)


def setup_rootfs(sock, ctx):
    config = ctx["config"]
    linux = config["linux"]
    # Nothing mounted here may propagate back to the host (rslave), unless rootfsPropagation
    # asks otherwise: as runc, it replaces rslave, so "rshared" keeps the host's peer groups.
    prop = linux.get("rootfsPropagation")
    libc.mount(None, "/", None, rootfs.PROPAGATION[prop] if prop else libc.MS_SLAVE | libc.MS_REC)
    path = ctx["rootfs"]
    # The mount holding the rootfs goes private first: the bind below must not propagate to
    # the host, and pivot_root refuses a shared new root or parent.
    _make_parent_private(os.path.dirname(path))
    libc.mount(path, path, None, libc.MS_BIND | libc.MS_REC)
    root = rootfs.Rootfs(path)
    try:
        mctx = {"cgroup": ctx.get("cgroup"), "cgroupns": ctx.get("new_cgroup_ns")}
        for m in config.get("mounts") or ():
            rootfs.mount_entry(root, m, ctx["bundle"], mctx)
        if not rootfs.dev_is_bind_mounted(config):
            rootfs.create_devices(root, config, ctx["in_userns"])
        if config["process"].get("terminal") and not root.exists("/dev/ptmx"):
            pfd = root.mkdir_all("/dev")
            try:
                os.symlink("pts/ptmx", "ptmx", dir_fd=pfd)
            finally:
                os.close(pfd)
        _hooks_round(sock, ctx)
        hooks = config.get("hooks") or {}
        if hooks.get("createContainer"):
            from keel.runtime import hooks as hookmod

            state = dict(ctx["state"], status="creating", pid=ctx["host_pid"])
            hookmod.run(hooks, "createContainer", state)
    finally:
        root.close()


def _make_parent_private(path):
    """Make the mount holding `path` private if (as runc) it is shared (or unbindable): pivot_root refuses a
    shared parent, and a bind under a shared mount would propagate to the host. A slave
    mount stays a slave, so host mounts still reach a rootfs under it (rootfsPropagation)."""
    best, shared = None, False
    with open("/proc/self/mountinfo", "rb") as f:
        for line in f.read().decode(errors="surrogateescape").splitlines():
            fields = line.split(" ")
            if len(fields) < 7:
                continue
            mnt = _unescape(fields[4])
            if path == mnt or path.startswith(mnt.rstrip("/") + "/"):
                if best is None or len(mnt) >= len(best):
                    best = mnt
                    # unbindable too: the rootfs could not be bind-mounted from it
                    shared = any(o.startswith("shared:") or o == "unbindable"
                                 for o in fields[6:fields.index("-")])
    if best is not None and shared:
        libc.mount(None, best, None, libc.MS_PRIVATE)


def _unescape(s):
    # mountinfo escapes space, tab, newline and backslash as \ooo
    out, i = [], 0
    while i < len(s):
        if s[i] == "\\" and s[i + 1:i + 4].isdigit():
            out.append(chr(int(s[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(s[i])
            i += 1
    return "".join(out)


def finish_rootfs(config, ctx):
    linux = config["linux"]
    rootfs.readonly_paths(linux.get("readonlyPaths"))
    rootfs.mask_paths(linux.get("maskedPaths"))
    if config["root"].get("readonly"):
        rootfs.remount("/", libc.MS_RDONLY)
    prop = linux.get("rootfsPropagation")
    if prop:
        libc.mount(None, "/", None, rootfs.PROPAGATION[prop])


def write_sysctl(key, value):
    path = "/proc/sys/" + key.replace(".", "/")
    try:
        with open(path, "w") as f:
            f.write(value)
    except OSError as e:
        raise RuntimeError_(f"linux.sysctl.{key}: write {path}: {e.strerror.lower()}") from None


def loopback_up():
    import fcntl
    import struct

    import _socket

    s = _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM)
    try:
        ifr = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(s.fileno(), 0x8913, ifr))[1]  # SIOCGIFFLAGS
        fcntl.ioctl(s.fileno(), 0x8914, struct.pack("16sH14x", b"lo", flags | 0x1))  # SIOCSIFFLAGS IFF_UP
    finally:
        s.close()


def setup_console(sock, proc, bind_console=True):
    import fcntl
    import struct

    master, slave = os.openpty()
    size = proc.get("consoleSize")
    if size:
        fcntl.ioctl(master, 0x5414, struct.pack("HHHH", size["height"], size["width"], 0, 0))  # TIOCSWINSZ
    # /dev/console is the container's terminal, as runc makes it.
    name = os.ttyname(slave)
    try:
        if not bind_console:
            raise OSError("exec: /dev/console stays the init's")
        if not os.path.exists("/dev/console"):
            os.close(os.open("/dev/console", os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600))
        libc.mount(name, "/dev/console", None, libc.MS_BIND)
    except (OSError, libc.KernelError):
        pass
    fcntl.ioctl(slave, 0x540E, 0)  # TIOCSCTTY
    for fd in (0, 1, 2):
        os.dup2(slave, fd)
    os.close(slave)
    channel.send(sock, channel.CONSOLE, fds=[master])
    os.close(master)


def new_session_keyring(cid):
    try:
        libc.join_session_keyring(f"_ses.{cid}")
    except libc.KernelError as e:
        # Like runc: a kernel without keyrings (ENOSYS) or a seccomp filter that blocks
        # keyctl (as Docker's default profile does, EPERM) means no keyring, not an error.
        if e.errno not in (38, 1):
            raise RuntimeError_(f"session keyring: {e}") from None


def set_personality(pers):
    persona = {"LINUX": 0x0000, "LINUX32": 0x0008}[pers["domain"]]
    try:
        libc.personality(persona)
    except libc.KernelError as e:
        raise RuntimeError_(f"linux.personality: {e}") from None
