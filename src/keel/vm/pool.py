"""The warm pool: VMs booted ahead of time, each used for exactly one container, then discarded.

A pool keeper (one per --root, started on demand by `create` when KEEL_VM_POOL_SIZE > 0, gone
after KEEL_VM_POOL_IDLE seconds without a claim) keeps that many VMs booted. Each pool VM lives
under a holder process: in a mount namespace of its own (a slave of the host's, so rootfs mounts
made later on the host show up in it) it mounts an empty tmpfs share, starts virtiofsd
(sandbox=chroot: it sees mounts made under the share after it started) and QEMU, and waits for
the agent's HELLO. Then it waits for one claim.

A container's shim claims a VM from the keeper, adopts it from the holder (it receives the
agent's channel as a file descriptor), enters the holder's mount namespace and bind-mounts the
container's rootfs and bind sources under the share with a fresh name; the agent chroots into
it. When the shim ends (or dies), its connection to the holder closes and the holder kills QEMU
and virtiofsd and removes everything. While unclaimed, a holder dies with its keeper.

Only containers that fit the pool's VM size (memory and vCPUs) take a pool VM; others boot cold.
`--debug` says which path a container took.
"""

import json
import os
import select
import signal
import socket
import sys
import time

from keel.vm import protocol as P
from keel.vm.errors import VMError

SIZE_ENV = "KEEL_VM_POOL_SIZE"
IDLE_ENV = "KEEL_VM_POOL_IDLE"
POOL_DIR = ".pool"
KEEPER_SOCKET = "keeper.sock"
HOLDER_SOCKET = "holder.sock"
MAX_BOOT_FAILURES = 3


def pool_size():
    try:
        return max(0, int(os.environ.get(SIZE_ENV) or 0))
    except ValueError:
        raise VMError(f"{SIZE_ENV}={os.environ.get(SIZE_ENV)!r}: expected a number") from None


def idle_seconds():
    try:
        return float(os.environ.get(IDLE_ENV) or 60)
    except ValueError:
        raise VMError(f"{IDLE_ENV}={os.environ.get(IDLE_ENV)!r}: expected seconds") from None


def _bind(sock, directory, name):
    dfd = os.open(directory, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        path = f"/proc/self/fd/{dfd}/{name}"
        try:
            os.unlink(os.path.join(directory, name))
        except FileNotFoundError:
            pass
        sock.bind(path)
    finally:
        os.close(dfd)


def _connect(directory, name, timeout=5):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    dfd = os.open(directory, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        s.connect(f"/proc/self/fd/{dfd}/{name}")
    except OSError:
        s.close()
        raise
    finally:
        os.close(dfd)
    return s


def _send(s, obj, fds=()):
    data = (json.dumps(obj) + "\n").encode()
    if fds:
        socket.send_fds(s, [data], list(fds))
    else:
        s.sendall(data)


def _recv(s, maxfds=0):
    buf, fds = b"", []
    while not buf.endswith(b"\n"):
        data, got, _, _ = socket.recv_fds(s, 65536, max(maxfds, 1))
        fds += got
        if not data:
            break
        buf += data
    if not buf:
        for fd in fds:
            os.close(fd)
        return None, []
    return json.loads(buf), fds


# ---------------------------------------------------------------------------------------------
# the shim's side


class AdoptedVM:
    """A pool VM now owned by one container's shim (the same interface the shim uses on VM)."""

    def __init__(self, holder_sock, info, conn):
        self.holder_sock, self.conn = holder_sock, conn
        self.workdir, self.share = info["dir"], info["share"]
        self.holder_pid, self.qemu_pid, self.virtiofsd_pid = info["holder"], info["qemu"], info["virtiofsd"]
        self.kernel, self.accel = info["kernel"], info["accel"]
        self.memory_mib, self.vcpus = info["memoryMiB"], info["vcpus"]
        self.qemu_pidfd = os.pidfd_open(self.qemu_pid)

    def failure(self):
        from keel.vm.qemu import VM

        return VM.failure(self)

    def enter_namespace(self):
        """Join the holder's mount namespace, where virtiofsd serves the share."""
        from keel.kernel import libc

        fd = os.open(f"/proc/{self.holder_pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
        try:
            libc.setns(fd, 0, "the pool VM's mount namespace")
        finally:
            os.close(fd)

    def stop(self):
        """Release the VM: the holder kills and reaps QEMU and virtiofsd, removes its directory,
        and exits; wait for that, so a stopped container has no VM left."""
        try:
            qfd = os.pidfd_open(self.holder_pid)
        except OSError:
            qfd = None
        try:
            # QEMU first and directly, through the pidfd taken at adoption (never a recycled
            # pid); then the holder reaps it and finishes the rest.
            signal.pidfd_send_signal(self.qemu_pidfd, signal.SIGKILL)
        except OSError:
            pass
        os.close(self.qemu_pidfd)
        try:
            _send(self.holder_sock, {"op": "stop"})
        except OSError:
            pass
        self.holder_sock.close()
        if qfd is not None:
            select.select([qfd], [], [], 10)
            os.close(qfd)


def claim(root, memory_mib, vcpus):
    """A pool VM of this size, adopted; None when the pool has none ready (or runs no keeper)."""
    pool = os.path.join(root, POOL_DIR)
    try:
        s = _connect(pool, KEEPER_SOCKET, timeout=2)
    except OSError:
        return None
    try:
        _send(s, {"op": "claim", "memoryMiB": memory_mib, "vcpus": vcpus})
        reply, _ = _recv(s)
    except (OSError, ValueError):
        return None
    finally:
        s.close()
    if not reply or not reply.get("dir"):
        return None
    try:
        h = _connect(reply["dir"], HOLDER_SOCKET, timeout=5)
        _send(h, {"op": "adopt", "shim": os.getpid()})
        info, fds = _recv(h, maxfds=1)
    except (OSError, ValueError):
        return None
    if not info or len(fds) != 1:
        for fd in fds:
            os.close(fd)
        h.close()
        return None
    h.settimeout(None)
    try:
        return AdoptedVM(h, info, socket.socket(fileno=fds[0]))
    except OSError:  # its QEMU is already gone
        h.close()
        return None


def keeper_running(root):
    try:
        _connect(os.path.join(root, POOL_DIR), KEEPER_SOCKET, timeout=1).close()
        return True
    except OSError:
        return False


def status(root):
    """{"ready": n, "booting": n, "size": n} from the keeper, or None without one."""
    try:
        s = _connect(os.path.join(root, POOL_DIR), KEEPER_SOCKET, timeout=2)
    except OSError:
        return None
    try:
        _send(s, {"op": "status"})
        reply, _ = _recv(s)
        return reply
    finally:
        s.close()


def ensure_keeper(root):
    """Start the pool keeper for `root` if the pool is enabled and none runs (detached)."""
    size = pool_size()
    if size <= 0 or keeper_running(root):
        return
    import keel

    src = os.path.dirname(os.path.dirname(os.path.abspath(keel.__file__)))
    code = f"import sys; sys.path.insert(0, {src!r}); from keel.vm.pool import keeper_main; keeper_main()"
    pid = os.fork()
    if pid == 0:
        try:
            os.setsid()
            if os.fork() == 0:
                null = os.open(os.devnull, os.O_RDWR)
                for fd in (0, 1, 2):
                    os.dup2(null, fd)
                os.closerange(3, 65536)
                os.execve(sys.executable, [sys.executable, "-I", "-S", "-c", code, root, str(size),
                                           str(idle_seconds())], dict(os.environ))
        finally:
            os._exit(0)
    os.waitpid(pid, 0)


# ---------------------------------------------------------------------------------------------
# the keeper and its holders


def _holder(pool, vmid, assets, accel, memory_mib, vcpus, ready_w):
    """A pool VM's holder process; never returns."""
    from keel.kernel import libc
    from keel.oci.config import NAMESPACE_FLAGS
    from keel.vm.qemu import VM

    code = 1
    vm = None
    d = os.path.join(pool, vmid)
    share = os.path.join(d, "share")
    try:
        libc.prctl(libc.PR_SET_PDEATHSIG, signal.SIGKILL)  # unclaimed: dies with its keeper
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # the keeper's stop: clean up
        os.mkdir(d, 0o700)
        from keel.runtime.state import proc_start_time

        with open(os.path.join(d, "holder.pid"), "w") as f:  # lets a later keeper spot it stale
            f.write(f"{os.getpid()} {proc_start_time(os.getpid())[0]}\n")
        libc.unshare(NAMESPACE_FLAGS["mount"])
        libc.mount(None, "/", None, libc.MS_REC | libc.MS_SLAVE)
        os.mkdir(share)
        libc.mount("keel-share", share, "tmpfs", libc.MS_NOSUID | libc.MS_NODEV, "mode=0755,size=64k")
        vm = VM(d, share, assets, accel, memory_mib, vcpus, name=f"keel-pool-{vmid}", bounded_logs=True)
        listener = vm.start()
        qfd = os.pidfd_open(vm.qemu.pid)
        r, _, _ = select.select([listener, qfd], [], [], 120)
        if listener not in r:
            raise VMError(f"pool VM did not boot: {vm.failure()}")
        conn, _ = listener.accept()
        reader, kernel = P.Reader(), None
        deadline = time.monotonic() + 120
        while kernel is None and time.monotonic() < deadline:
            r, _, _ = select.select([conn, qfd], [], [], deadline - time.monotonic())
            if conn not in r:
                raise VMError(f"pool VM did not boot: {vm.failure()}")
            data = conn.recv(65536)
            if not data:
                raise VMError(f"pool VM agent closed its channel: {vm.failure()}")
            for mtype, f in reader.feed(data):
                if mtype == P.HELLO and f.get("version") == P.VERSION:
                    kernel = f.get("kernel", b"").decode(errors="replace")
        if kernel is None:
            raise VMError("pool VM did not say HELLO")
        hs = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        _bind(hs, d, HOLDER_SOCKET)
        hs.listen(1)
        os.write(ready_w, b"r")
        os.close(ready_w)
        r, _, _ = select.select([hs, qfd], [], [])
        if hs not in r:
            raise VMError("pool VM stopped while waiting")
        c, _ = hs.accept()
        hs.close()
        os.unlink(os.path.join(d, HOLDER_SOCKET))
        req, _ = _recv(c)
        if not req or req.get("op") != "adopt":
            raise VMError("bad adopt request")
        libc.prctl(libc.PR_SET_PDEATHSIG, 0)  # claimed: lives as long as its container's shim
        _send(c, {"dir": d, "share": share, "holder": os.getpid(), "qemu": vm.qemu.pid,
                  "virtiofsd": vm.virtiofsd.pid, "kernel": kernel, "accel": accel,
                  "memoryMiB": memory_mib, "vcpus": vcpus}, fds=[conn.fileno()])
        conn.close()
        # The shim's end closing (stop, exit or death) ends the VM; so does QEMU stopping.
        select.select([c, qfd], [], [])
        code = 0
    except BaseException:  # noqa: BLE001 - a holder that fails just ends; the keeper boots another
        code = 1
    finally:
        try:
            if vm is not None:
                vm.stop()
                vm.remove_logs()
            try:
                libc.umount(share, libc.MNT_DETACH)
            except Exception:  # noqa: BLE001
                pass
            import shutil

            shutil.rmtree(d, ignore_errors=True)
        finally:
            os._exit(code)


def keeper_main(argv=None):
    """`keeper_main(ROOT SIZE IDLE)`: serve claims for ROOT, keep SIZE VMs booted, exit when idle."""
    import fcntl

    from keel.vm import accel as vm_accel
    from keel.vm import assets as vm_assets
    from keel.vm.guestspec import vm_size

    argv = sys.argv[1:] if argv is None else argv
    root, size, idle = argv[0], int(argv[1]), float(argv[2])
    pool = os.path.join(root, POOL_DIR)
    os.makedirs(pool, mode=0o700, exist_ok=True)
    lock = open(os.path.join(pool, "keeper.lock"), "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return  # another keeper serves this root
    _remove_stale(pool)
    cache = vm_assets.cache_dir()
    assets = vm_assets.ensure(cache)
    accel, _ = vm_accel.choose(assets, cache)
    memory_mib, vcpus = vm_size({})
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    _bind(listener, pool, KEEPER_SOCKET)
    listener.listen(16)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    booting = {}  # ready pipe fd -> (pid, vmid)
    ready = []  # (pid, vmid)
    last_claim = time.monotonic()
    seq = 0
    failures, retry_at = 0, 0.0
    try:
        while True:
            while len(booting) + len(ready) < size and time.monotonic() >= retry_at:
                seq += 1
                vmid = f"{os.getpid()}-{seq}"
                r, w = os.pipe2(os.O_CLOEXEC)
                pid = os.fork()
                if pid == 0:
                    os.close(r)
                    listener.close()
                    _holder(pool, vmid, assets, accel, memory_mib, vcpus, w)
                os.close(w)
                booting[r] = (pid, vmid)
            left = idle - (time.monotonic() - last_claim)
            if left <= 0:
                return
            rl, _, _ = select.select([listener] + list(booting), [], [], min(left, 5))
            _reap()
            ready = [(p, v) for p, v in ready if _alive(p)]
            for fd in rl:
                if fd in booting:
                    pid, vmid = booting.pop(fd)
                    ok = os.read(fd, 1) == b"r"
                    os.close(fd)
                    if ok:
                        ready.append((pid, vmid))
                        failures = 0
                    else:
                        # a VM that cannot boot: back off, and give up after a few in a row
                        # rather than burn the host's CPU on boots that fail
                        failures += 1
                        if failures >= MAX_BOOT_FAILURES:
                            return
                        retry_at = time.monotonic() + 5 * failures
                elif fd is listener:
                    c, _ = listener.accept()
                    try:
                        c.settimeout(2)
                        req, _ = _recv(c)
                        if req and req.get("op") == "claim":
                            last_claim = time.monotonic()
                            if ready and (req.get("memoryMiB"), req.get("vcpus")) == (memory_mib, vcpus):
                                pid, vmid = ready.pop(0)
                                _send(c, {"dir": os.path.join(pool, vmid), "holder": pid})
                            else:
                                _send(c, {"dir": None})
                        elif req and req.get("op") == "status":
                            _send(c, {"ready": len(ready), "booting": len(booting), "size": size})
                    except (OSError, ValueError):
                        pass
                    finally:
                        c.close()
    finally:
        listener.close()
        try:
            os.unlink(os.path.join(pool, KEEPER_SOCKET))
        except FileNotFoundError:
            pass
        unclaimed = ready + list(booting.values())
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid, _ in unclaimed:
                if _our_child(pid):  # a holder reaped already may have left its pid to another
                    try:
                        os.kill(pid, sig)
                    except ProcessLookupError:
                        pass
            deadline = time.monotonic() + (15 if sig == signal.SIGTERM else 5)  # a holder stops its VM
            while time.monotonic() < deadline and any(_our_child(p) and _alive(p) for p, _ in unclaimed):
                _reap()
                time.sleep(0.05)
        import shutil

        for _, vmid in unclaimed:
            shutil.rmtree(os.path.join(pool, vmid), ignore_errors=True)
        os.unlink(os.path.join(pool, "keeper.lock"))  # while still held: the next keeper makes its own
        lock.close()
        try:
            os.rmdir(pool)  # only when empty: claimed VMs' holders remove their own dirs
        except OSError:
            pass


def _remove_stale(pool):
    """Directories of holders that no longer run (a keeper killed outright, a host reboot)."""
    import shutil

    from keel.runtime.state import proc_start_time

    for name in os.listdir(pool):
        d = os.path.join(pool, name)
        if not os.path.isdir(d):
            continue
        try:
            with open(os.path.join(d, "holder.pid")) as f:
                pid, start = (int(x) for x in f.read().split())
        except (OSError, ValueError):
            pid, start = 0, None
        if not pid or proc_start_time(pid)[0] != start:
            shutil.rmtree(d, ignore_errors=True)


def _our_child(pid):
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            st = f.read()
    except OSError:
        return False
    return int(st[st.rindex(b")") + 2:].split()[1]) == os.getpid()


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            st = f.read()
        return st[st.rindex(b")") + 2:][:1] not in (b"Z", b"X")
    except OSError:
        return False


def _reap():
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
