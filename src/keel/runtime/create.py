"""`create`: check the bundle, make the cgroup and the state dir, fork the init chain,
run the runtime-side hooks, and leave the init waiting on exec.fifo for `start`.

On any failure nothing is left behind: the init is killed, the cgroup and the
state dir are removed (and, as runc, poststop hooks run once the init exists).
"""

import os
import time

from keel.kernel import libc
from keel.kernel.boot import boot_id
from keel.oci import config as ociconfig
from keel.oci.config import NAMESPACE_FLAGS
from keel.runtime import channel, log, process, sealed
from keel.runtime.errors import RuntimeError_
from keel.runtime.state import Container, check_id, proc_start_time


class Created:
    """What `create` hands back: the container, and the pty master when `run -t` keeps it."""

    __slots__ = ("container", "console_fd")

    def __init__(self, container, console_fd=None):
        self.container = container
        self.console_fd = console_fd


def rfc3339_now():
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1e9):09d}Z"


def create(root, cid, bundle, console_socket=None, pid_file=None, no_pivot=False,
           preserve_fds=0, keep_console=False, no_new_keyring=False):
    check_id(cid)
    bundle = os.path.abspath(bundle)
    config = ociconfig.load(bundle)
    proc = config.get("process")
    if proc is None:
        raise RuntimeError_("process: required field is missing (nothing to run)")
    linux = config["linux"]
    terminal = bool(proc.get("terminal"))
    if console_socket and not terminal:
        raise RuntimeError_("--console-socket given but process.terminal is false")
    if terminal and not console_socket and not keep_console:
        raise RuntimeError_("process.terminal is true but no --console-socket was given to receive the pty")
    if console_socket and not os.path.exists(console_socket):
        raise RuntimeError_(f"--console-socket {console_socket}: no such socket")
    rootfs = config["root"]["path"]
    if not os.path.isabs(rootfs):
        rootfs = os.path.join(bundle, rootfs)
    rootfs = os.path.realpath(rootfs)
    if not os.path.isdir(rootfs):
        raise RuntimeError_(f"root.path: {rootfs} does not exist or is not a directory")
    process.check_rlimits(proc.get("rlimits"))
    check_labels(proc, linux)
    if linux.get("seccomp") is not None:
        from keel.kernel import seccomp

        if seccomp.enabled(linux["seccomp"]):
            seccomp.validate(linux["seccomp"])
        else:
            linux["seccomp"] = None
    new_flags, join = namespace_plan(linux)
    check_sysctls(linux.get("sysctl"), new_flags, join)
    sealed.ensure(proc, in_userns=bool(new_flags & NAMESPACE_FLAGS["user"]) or any(t == "user" for t, _ in join))
    if linux.get("maskedPaths") or linux.get("readonlyPaths"):
        if not new_flags & NAMESPACE_FLAGS["mount"]:
            raise RuntimeError_("linux.maskedPaths: masking paths needs a new mount namespace")

    os.makedirs(root, 0o711, exist_ok=True)
    c = Container(root, cid, {})
    try:
        os.mkdir(c.dir, 0o711)
    except FileExistsError:
        raise RuntimeError_(f"container with id {cid!r} already exists") from None
    cleanup = _Cleanup(c, config)
    try:
        return _create(c, cleanup, config, bundle, rootfs, new_flags, join, console_socket,
                       pid_file, no_pivot, preserve_fds, keep_console, no_new_keyring)
    except BaseException as e:
        cleanup.run()
        if isinstance(e, (RuntimeError_, KeyboardInterrupt)):
            raise
        if isinstance(e, libc.KernelError):
            raise RuntimeError_(str(e)) from None
        raise


def selinux_enabled():
    return os.path.exists("/sys/fs/selinux/enforce")


def check_labels(proc, linux):
    """SELinux labels are no-ops on a host without SELinux (as in runc); keel cannot apply them."""
    if (proc.get("selinuxLabel") or linux.get("mountLabel")) and selinux_enabled():
        field = "process.selinuxLabel" if proc.get("selinuxLabel") else "linux.mountLabel"
        raise RuntimeError_(f"{field}: SELinux labels are not supported by keel-runtime")


def namespace_plan(linux):
    new, join = 0, []
    for ns in linux.get("namespaces") or ():
        if ns.get("path"):
            join.append((ns["type"], ns["path"]))
        else:
            new |= NAMESPACE_FLAGS[ns["type"]]
    if new & NAMESPACE_FLAGS["time"] and not os.path.exists("/proc/self/ns/time"):
        raise RuntimeError_("linux.namespaces: time namespaces are not supported by this kernel")
    return new, join


_IPC_SYSCTLS = ("kernel.msgmax", "kernel.msgmnb", "kernel.msgmni", "kernel.sem", "kernel.shmall",
                "kernel.shmmax", "kernel.shmmni", "kernel.shm_rmid_forced")


def check_sysctls(sysctls, new_flags, join):
    """Only sysctls of namespaces the container owns, as runc allows."""
    joined = {t for t, _ in join}
    for key in sysctls or ():
        if key in _IPC_SYSCTLS or key.startswith("fs.mqueue."):
            ns = "ipc"
        elif key.startswith("net."):
            ns = "network"
        elif key in ("kernel.hostname", "kernel.domainname"):
            ns = "uts"
        else:
            raise RuntimeError_(f"linux.sysctl.{key}: not allowed: it is not in a namespace the container owns")
        if not (new_flags & NAMESPACE_FLAGS[ns] or ns in joined):
            raise RuntimeError_(f"linux.sysctl.{key}: needs the container to have its own {ns} namespace")


class _Cleanup:
    def __init__(self, container, config):
        self.c = container
        self.config = config
        self.init_pid = None
        self.stage1_pid = None
        self.cgroup = None
        self.poststop = False
        self.state = None

    def run(self):
        import signal

        for pid in (self.stage1_pid, self.init_pid):
            if pid:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                _reap(pid)
        if self.cgroup is not None:
            try:
                self.cgroup.kill_all(signal.SIGKILL)
                self.cgroup.destroy()
            except Exception as e:  # noqa: BLE001 - report, keep cleaning
                log.warn(f"cleanup: cgroup: {e}")
        if self.poststop:
            from keel.runtime import hooks

            state = dict(self.state or self.c.oci_state("stopped"), status="stopped", pid=0)
            hooks.run_warn(self.config.get("hooks"), "poststop", state)
        import shutil

        shutil.rmtree(self.c.dir, ignore_errors=True)


def _reap(pid):
    for _ in range(500):
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done:
                return
        except ChildProcessError:
            if not os.path.exists(f"/proc/{pid}"):
                return
        time.sleep(0.002)


def _create(c, cleanup, config, bundle, rootfs, new_flags, join, console_socket, pid_file,
            no_pivot, preserve_fds, keep_console, no_new_keyring):
    linux = config["linux"]
    cgroup = make_cgroup(c.id, linux)
    cleanup.cgroup = cgroup
    # Recorded before any process exists: if this create is killed outright, `delete --force`
    # still finds the cgroup to remove, and the id is reported as stopped, not lost.
    c.data = {"id": c.id, "status": "creating", "pid": 0, "creator": os.getpid(),
              "creatorStartTime": proc_start_time(os.getpid())[0], "bootId": boot_id(),
              "ociVersion": config["ociVersion"], "bundle": bundle, "rootfs": rootfs,
              "created": rfc3339_now(), "owner": "", "annotations": config.get("annotations") or {},
              "cgroup": cgroup.to_dict() if cgroup is not None else None}
    c.save()
    fifo = c.fifo
    os.mkfifo(fifo, 0o622)
    # As runc: writable by the container's root (mkfifo's mode went through the umask, and a
    # user namespace's root is not the host's root).
    os.chmod(fifo, 0o622)
    root_uid, root_gid = _host_id(linux.get("uidMappings"), 0), _host_id(linux.get("gidMappings"), 0)
    if (root_uid, root_gid) != (0, 0):
        os.chown(fifo, root_uid, root_gid)
    # Opened here and inherited: the init may not be able to reach --root by path (a user
    # namespace whose root cannot search a 0700 directory above it).
    fifo_fd = os.open(fifo, os.O_PATH | os.O_CLOEXEC)
    hooks = config.get("hooks") or {}
    state = {"ociVersion": config["ociVersion"], "id": c.id, "status": "creating", "pid": 0,
             "bundle": bundle, "annotations": config.get("annotations") or {}}
    cleanup.state = state
    ctx = {
        "config": config, "bundle": bundle, "rootfs": rootfs, "fifo_fd": fifo_fd, "cgroup": cgroup,
        "new_flags": new_flags, "join": join, "no_pivot": no_pivot, "preserve_fds": preserve_fds,
        "new_mount_ns": bool(new_flags & NAMESPACE_FLAGS["mount"]),
        "new_uts_ns": bool(new_flags & NAMESPACE_FLAGS["uts"]) or any(t == "uts" for t, _ in join),
        "new_net_ns": bool(new_flags & NAMESPACE_FLAGS["network"]),
        "new_cgroup_ns": bool(new_flags & NAMESPACE_FLAGS["cgroup"]),
        "in_userns": bool(new_flags & NAMESPACE_FLAGS["user"]) or any(t == "user" for t, _ in join),
        "time_offsets": linux.get("timeOffsets"),
        "new_keyring": not no_new_keyring,
        "parent_hooks": bool(hooks.get("prestart") or hooks.get("createRuntime")),
        "state": state,
    }
    # The init is our grandchild: as a subreaper we can reap it if create fails.
    libc.prctl(libc.PR_SET_CHILD_SUBREAPER, 1)
    parent_sock, child_sock = channel.pair()
    try:
        pid = os.fork()
        if pid == 0:
            parent_sock.close()
            from keel.runtime import init

            init.stage1(child_sock, ctx)
    finally:
        os.close(fifo_fd)
    child_sock.close()
    cleanup.stage1_pid = pid
    console_fd = None
    try:
        while True:
            kind, msg, fds = channel.recv(parent_sock)
            if kind == channel.IDMAP_REQUEST:
                write_id_maps(msg["pid"], linux)
                channel.send(parent_sock, channel.IDMAP_DONE)
            elif kind == channel.INIT_PID:
                cleanup.init_pid = msg["pid"]
                cleanup.poststop = True  # the container exists: its end runs poststop
                os.waitpid(pid, 0)
                cleanup.stage1_pid = None
            elif kind == channel.HOOKS_REQUEST:
                from keel.runtime import hooks as hookmod

                state = dict(state, pid=cleanup.init_pid)
                hookmod.run(hooks, "prestart", state)
                hookmod.run(hooks, "createRuntime", state)
                channel.send(parent_sock, channel.HOOKS_DONE)
            elif kind == channel.CONSOLE:
                console_fd = fds[0]
                if console_socket:
                    try:
                        channel.send_fd_to_console_socket(console_socket, console_fd)
                    except OSError as e:
                        raise RuntimeError_(f"--console-socket {console_socket}: {e.strerror.lower()}") from None
                    finally:
                        os.close(console_fd)
                        console_fd = None
            elif kind == channel.READY:
                break
            elif kind == channel.ERROR:
                raise RuntimeError_(msg.get("message") or "container init failed")
            else:
                raise RuntimeError_("container init exited before it was ready")
    except BaseException:
        if console_fd is not None:
            os.close(console_fd)
        raise
    finally:
        parent_sock.close()
    init_pid = cleanup.init_pid
    start_time, _ = proc_start_time(init_pid)
    c.data = {
        "id": c.id, "pid": init_pid, "initStartTime": start_time, "bootId": boot_id(),
        "ociVersion": config["ociVersion"], "bundle": bundle, "rootfs": rootfs,
        "created": rfc3339_now(), "owner": "", "annotations": config.get("annotations") or {},
        "hooks": hooks, "process": config["process"], "seccomp": linux.get("seccomp"),
        "cgroup": cgroup.to_dict() if cgroup is not None else None,
        "userns": ctx["in_userns"],
    }
    c.save()
    if pid_file:
        write_pid_file(pid_file, init_pid)
    return Created(c, console_fd)


def _host_id(mappings, cid):
    """The host id that container id `cid` maps to (itself without mappings, -1 if unmapped)."""
    if not mappings:
        return cid
    for m in mappings:
        if m["containerID"] <= cid < m["containerID"] + m["size"]:
            return m["hostID"] + cid - m["containerID"]
    return -1


def make_cgroup(cid, linux):
    """The container's cgroup with its resources; None for a rootless caller that may not
    create one and asked for no limits (runc skips cgroups the same way)."""
    from keel.kernel.cgroups import Cgroup
    from keel.kernel.errors import CgroupError

    resources = linux.get("resources")
    try:
        cg = Cgroup.from_spec(linux.get("cgroupsPath"), cid)
        cg.create()
    except CgroupError as e:
        if os.geteuid() != 0 and e.errno in (1, 13, 30):
            if _has_limits(resources):
                raise RuntimeError_(f"linux.resources: a rootless container cannot have limits "
                                    f"without a delegated cgroup: {e}") from None
            log.debug(f"rootless: no cgroup ({e})")
            return None
        raise RuntimeError_(f"linux.cgroupsPath: {e}") from None
    if resources or linux.get("devices"):
        resources = dict(resources or {})
        if resources.get("devices"):
            from keel.runtime.rootfs import DEFAULT_DEVICE_RULES

            # a device the config lists is allowed rwm unless a rule of the config already
            # names it (`--device X:r` must stay read-only, as runc keeps it)
            ruled = {(r.get("type"), r.get("major"), r.get("minor")) for r in resources["devices"]}
            extra = [{"allow": True, "type": d["type"] if d["type"] != "u" else "c", "major": d.get("major"),
                      "minor": d.get("minor"), "access": "rwm"} for d in linux.get("devices") or ()
                     if d["type"] != "p"  # fifos are not devices to the device cgroup
                     and (d["type"] if d["type"] != "u" else "c", d.get("major"), d.get("minor")) not in ruled]
            resources["devices"] = list(resources["devices"]) + DEFAULT_DEVICE_RULES + extra
        try:
            for warning in cg.apply(resources) or ():
                # e.g. the devices allowlist on cgroup v2 (an eBPF program keel does not load)
                log.warn(warning)
        except CgroupError as e:
            err = str(e)
            try:
                cg.destroy()
            except CgroupError:
                pass
            raise RuntimeError_(err) from None
    return cg


def _has_limits(resources):
    if not resources:
        return False
    return any(v for k, v in resources.items() if k != "devices")


def write_id_maps(pid, linux):
    rootless = os.geteuid() != 0
    if rootless:
        # An unprivileged writer of gid_map must first give up setgroups (user_namespaces(7)).
        try:
            with open(f"/proc/{pid}/setgroups", "w") as f:
                f.write("deny")
        except OSError:
            pass
    for kind, key in (("uid", "uidMappings"), ("gid", "gidMappings")):
        maps = linux.get(key) or ()
        lines = "".join(f"{m['containerID']} {m['hostID']} {m['size']}\n" for m in maps)
        try:
            with open(f"/proc/{pid}/{kind}_map", "w") as f:
                f.write(lines)
        except PermissionError as e:
            if not rootless:
                raise RuntimeError_(f"linux.{key}: write /proc/{pid}/{kind}_map: {e.strerror.lower()}") from None
            _newidmap(pid, kind, key, maps)
        except OSError as e:
            raise RuntimeError_(f"linux.{key}: write /proc/{pid}/{kind}_map: {e.strerror.lower()}") from None


def _newidmap(pid, kind, key, maps):
    """Mappings beyond one's own id need the setuid helpers of shadow's uidmap package."""
    import shutil
    import subprocess

    tool = shutil.which(f"new{kind}map")
    if tool is None:
        raise RuntimeError_(f"linux.{key}: mapping more than your own {kind} needs new{kind}map "
                            f"(package uidmap) and an entry in /etc/sub{kind}")
    args = [tool, str(pid)]
    for m in maps:
        args += [str(m["containerID"]), str(m["hostID"]), str(m["size"])]
    p = subprocess.run(args, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError_(f"linux.{key}: new{kind}map: {p.stderr.strip() or p.returncode}")


def write_pid_file(path, pid):
    path = os.path.abspath(path)
    tmp = os.path.join(os.path.dirname(path), "." + os.path.basename(path) + ".tmp")
    with open(tmp, "w") as f:
        f.write(str(pid))
    os.rename(tmp, path)
