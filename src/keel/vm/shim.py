"""The container's shim: the host process whose pid is in the state, for the container's lifetime.

Forked by `create`. In a private mount namespace of its own it builds the share (a tmpfs with
the bundle's rootfs and every bind-mount source bound under it), starts virtiofsd and QEMU,
waits for the agent's HELLO, sends CREATE, and tells `create` the outcome over a pipe. Then it
relays stdio (or the terminal handed out through the console socket), serves start/kill/exec
requests on shim.sock, forwards the signals it receives, and when the container process ends
it stops the VM, removes its sockets and exits with the same status (killed by the same
signal, or the same exit code), which is what conmon and containerd's shim wait for.
If `create` dies before the container is created, the shim tears the VM down and exits.
"""

import os
import select
import signal
import socket
import time

from keel.kernel import libc
from keel.oci import fastjson
from keel.oci.config import NAMESPACE_FLAGS
from keel.runtime import log
from keel.vm import protocol as P
from keel.vm.errors import VMError
from keel.vm.state import CMD_SOCKET, boot_id, proc_start_time  # noqa: F401

BOOT_TIMEOUT_ENV = "KEEL_VM_BOOT_TIMEOUT"
INIT_ID = 1
FORWARDED = (signal.SIGHUP, signal.SIGINT, signal.SIGQUIT, signal.SIGTERM, signal.SIGUSR1,
             signal.SIGUSR2, signal.SIGCONT, signal.SIGALRM, signal.SIGWINCH)


class BootError(VMError):
    pass


def boot_timeout():
    try:
        return float(os.environ.get(BOOT_TIMEOUT_ENV) or 60)
    except ValueError:
        return 60.0


def _write_all(fd, data):
    while data:
        try:
            n = os.write(fd, data)
        except BlockingIOError:
            select.select([], [fd], [], 1)
            continue
        except OSError:
            return False  # a reader that went away loses the rest, as with runc
        data = data[n:]
    return True


class Client:
    """A connection on shim.sock: a pending start, or an exec bound to a guest process id."""

    def __init__(self, sock):
        self.sock, self.buf, self.fds = sock, b"", []
        self.op = None
        self.proc_id = None
        self.stdin_fd = self.out_fd = self.err_fd = None
        self.tty = False

    def reply(self, obj):
        try:
            self.sock.sendall((fastjson.dumps(obj) + "\n").encode())
        except OSError:
            pass

    def close(self):
        for fd in self.fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self.fds = []
        self.sock.close()


class Shim:
    def __init__(self, c, fields, share, memory_mib, vcpus, creator_pid, ready_fd, console_socket=None,
                 cgroups_path=None, net_path=None):
        self.c, self.fields, self.share = c, fields, share
        self.console_size = fields.pop("console_size", None)  # applied to the host pty, not sent
        self.cgroups_path = cgroups_path
        self.cgroup = None
        self.net_path = net_path
        self.net = None
        self.accel, self.memory_mib, self.vcpus = None, memory_mib, vcpus
        self.creator_pid, self.ready_fd, self.console_socket = creator_pid, ready_fd, console_socket
        self.vm = None
        self.conn = None
        self.reader = P.Reader()
        self.share_dir = os.path.join(c.dir, "share")
        self.sig_r = self.sig_w = None
        self.pending_signals = []
        self.listener = None
        self.clients = {}  # fd -> Client
        self.by_proc = {}  # guest process id -> Client (exec)
        self.next_id = INIT_ID + 1
        self.stdin_open = True
        self.tty = None  # host side of the container's terminal (slave of the console's pty)
        self.out_fd, self.err_fd, self.in_fd = 1, 2, 0
        self.started = False
        self.start_client = None
        self.path = "cold"
        self.kernel = ""

    # ---- set-up ----
    def _signals(self):
        self.sig_r, self.sig_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self.sig_w, warn_on_full_buffer=False)
        for s in FORWARDED:
            signal.signal(s, self._on_signal)
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)

    def _on_signal(self, sig, _frame):
        self.pending_signals.append(sig)

    def _build_share(self, private_ns):
        """Bind the rootfs and bind-mount sources under share/<prefix>; rewrite CREATE to match.

        Cold path: our own private mount namespace and tmpfs share. Warm path: the pool VM's
        namespace and share (already served by its virtiofsd), entered before this."""
        if private_ns:
            libc.unshare(NAMESPACE_FLAGS["mount"])
            libc.mount(None, "/", None, libc.MS_REC | libc.MS_PRIVATE)
            os.makedirs(self.share_dir, exist_ok=True)
            libc.mount("keel-share", self.share_dir, "tmpfs", libc.MS_NOSUID | libc.MS_NODEV,
                       "mode=0755,size=64k")
        prefix = "c-" + os.urandom(6).hex()  # a fresh name per container: no guest cache can hit it
        base = os.path.join(self.share_dir, prefix)
        os.mkdir(base, 0o755)
        entries = [("rootfs", self.c.data["rootfs"], bool(self.fields.get("readonly")))] + self.share.entries
        for name, src, ro in entries:
            dst = os.path.join(base, name)
            if os.path.isdir(src):
                os.mkdir(dst)
            else:
                os.close(os.open(dst, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o644))
            libc.mount(src, dst, None, libc.MS_BIND | libc.MS_REC)
            if ro:
                libc.mount(None, dst, None, libc.MS_BIND | libc.MS_REMOUNT | libc.MS_RDONLY | libc.MS_REC)
        self.fields["rootfs"] = f"{prefix}/rootfs"
        self.fields["mnt_src"] = [f"/keel/share/{prefix}/{src[len('/keel/share/'):]}"
                                  if src.startswith("/keel/share/") else src for src in self.fields["mnt_src"]]
        self.prefix_dir = base

    def _wait(self, fds, timeout):
        """Wait until one of `fds` is readable; watches QEMU, the creator and signals meanwhile."""
        deadline = time.monotonic() + timeout
        watch = list(fds) + [self.qemu_fd, self.sig_r] + ([self.creator_fd] if self.creator_fd is not None else [])
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BootError(f"the VM did not boot within {timeout:.0f}s ({self.vm.failure()})")
            try:
                r, _, _ = select.select(watch, [], [], left)
            except InterruptedError:
                continue
            if self.sig_r in r:
                self._drain_sigpipe()
                if any(s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP) for s in self.pending_signals):
                    raise BootError("interrupted while the VM was booting")
                self.pending_signals = []
            if self.qemu_fd in r:
                raise BootError(f"the VM stopped while booting: {self.vm.failure()}")
            if self.creator_fd is not None and self.creator_fd in r:
                raise BootError("create was killed while the VM was booting")
            hits = [fd for fd in r if fd in fds]
            if hits:
                return hits

    def _drain_sigpipe(self):
        try:
            while os.read(self.sig_r, 512):
                pass
        except BlockingIOError:
            pass

    def _frame(self, timeout):
        """The next frame from the agent during set-up."""
        while True:
            frames = getattr(self, "_queued", [])
            if frames:
                return frames.pop(0)
            self._wait([self.conn.fileno()], timeout)
            data = self.conn.recv(65536)
            if not data:
                raise BootError(f"the agent closed its channel: {self.vm.failure()}")
            self._queued = self.reader.feed(data)

    def boot_and_create(self):
        from keel.vm import pool

        t0 = time.monotonic()
        timeout = boot_timeout()
        if self.net_path:
            from keel.vm import hostnet

            self.net = hostnet.inspect(self.net_path)
        # a pool VM has no NIC (microvm has no hotplug): a container with a network boots cold
        adopted = pool.claim(os.path.dirname(self.c.dir), self.memory_mib, self.vcpus) \
            if pool.pool_size() > 0 and self.net is None else None
        if adopted is not None:
            self.path = "warm"
            self.vm = adopted
            self.accel = adopted.accel
            self.share_dir = adopted.share
            adopted.enter_namespace()
            self._build_share(private_ns=False)
            self.qemu_fd = os.pidfd_open(adopted.qemu_pid)
            self.conn = adopted.conn
            self.kernel = adopted.kernel
        else:
            from keel.vm import assets as vm_assets
            from keel.vm.accel import choose
            from keel.vm.qemu import VM  # the cold path only: the warm one starts no QEMU

            self.path = "cold"
            cache = vm_assets.cache_dir()
            assets = vm_assets.ensure(cache)
            self.accel, reason = choose(assets, cache)
            log.debug(f"accelerator {self.accel}: {reason}")
            self._build_share(private_ns=True)
            nic = None
            if self.net is not None:
                from keel.vm import hostnet

                hostnet.attach(self.net, "kvtap" + os.urandom(4).hex())
                self.fields.update(self.net.fields())
                nic = (self.net.tap_fd, self.net.mac)
                log.debug(f"network: {self.net.ifname} of {self.net_path} mirrored to {self.net.tap} "
                          f"({self.net.addr}, gateway {self.net.gateway})")
            self.vm = VM(self.c.dir, self.share_dir, assets, self.accel, self.memory_mib, self.vcpus,
                         name="keel-" + self.c.id[:48], net=nic, bounded_logs=True)
            listener = self.vm.start()
            self.qemu_fd = os.pidfd_open(self.vm.qemu.pid)
            self._wait([listener.fileno()], timeout)
            self.conn, _ = listener.accept()
            mtype, f = self._frame(timeout)
            if mtype != P.HELLO:
                raise BootError(f"the agent sent {P.NAMES.get(mtype, mtype)} before HELLO")
            if f.get("version") != P.VERSION:
                raise BootError(f"the agent speaks protocol {f.get('version')}, keel-vm {P.VERSION}")
            self.kernel = f.get("kernel", b"").decode(errors="replace")
        self._join_cgroup()
        log.debug(f"vm ready in {(time.monotonic() - t0) * 1000:.0f} ms: path={self.path} "
                  f"accel={self.accel} kernel={self.kernel} memory={self.memory_mib}MiB vcpus={self.vcpus}")
        self.send(P.CREATE, id=INIT_ID, **self.fields)
        while True:
            mtype, f = self._frame(timeout)
            if mtype == P.READY:
                self.guest_pid = f.get("pid")
                log.debug(f"container process created in the guest (pid {self.guest_pid} there) "
                          f"{(time.monotonic() - t0) * 1000:.0f} ms after the VM was asked for")
                return
            if mtype == P.ERROR:
                raise BootError(f.get("message", b"").decode(errors="replace"))
            if mtype == P.OUTPUT:
                self._output(f)

    def _join_cgroup(self):
        """QEMU and virtiofsd go into the container's cgroup (linux.cgroupsPath), where engines
        look for the container's processes and resource use (the VMM is the container here)."""
        from keel.kernel.cgroups import Cgroup, CgroupError

        try:
            cg = Cgroup.from_spec(self.cgroups_path, self.c.id)
            cg.create()
            self.cgroup = cg
            self.c.data["vmCgroup"] = cg.to_dict()
            self.c.save()  # recorded before anything joins: delete removes it if we die
            from keel.vm.qemu import descendants

            for pid in descendants(self.vm.qemu_pid) + [self.vm.virtiofsd_pid]:
                cg.join(pid)
        except CgroupError as e:
            raise BootError(f"the VM's cgroup: {e}") from None

    def send(self, mtype, **fields):
        self.conn.sendall(P.encode(mtype, **fields))

    # ---- the serving loop ----
    def _open_listener(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        dfd = os.open(self.c.dir, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            s.bind(f"/proc/self/fd/{dfd}/{CMD_SOCKET}")
        finally:
            os.close(dfd)
        s.listen(16)
        self.listener = s

    def _setup_terminal(self):
        if not self.fields.get("terminal") or not self.console_socket:
            return
        from keel.vm import console

        try:
            slave = console.make(self.console_socket, self.console_size)
        except VMError as e:
            raise BootError(str(e)) from None
        console.own(slave)  # the engine's resizes of the master reach us as SIGWINCH
        self.tty = slave
        self.in_fd = self.out_fd = self.err_fd = slave

    def _output(self, f):
        pid = f.get("id")
        data = f.get("data", b"")
        if pid == INIT_ID:
            _write_all(self.out_fd if f.get("stream") == 1 else self.err_fd, data)
        elif pid in self.by_proc:
            cl = self.by_proc[pid]
            fd = cl.out_fd if f.get("stream") == 1 else cl.err_fd
            if fd is not None:
                _write_all(fd, data)

    def _save(self, **changes):
        self.c.data.update(changes)
        self.c.save()

    def serve(self):
        poller = select.poll()
        ctl = self.conn.fileno()
        poller.register(ctl, select.POLLIN)
        poller.register(self.qemu_fd, select.POLLIN)
        poller.register(self.sig_r, select.POLLIN)
        poller.register(self.listener.fileno(), select.POLLIN)
        if self.stdin_open:
            try:
                poller.register(self.in_fd, select.POLLIN)
            except (OSError, ValueError):
                self.stdin_open = False
        while True:
            try:
                events = poller.poll()
            except InterruptedError:
                continue
            for fd, _ev in events:
                if fd == ctl:
                    data = self.conn.recv(262144)
                    if not data:
                        return self._finish(None, self._why_closed())
                    for mtype, f in self.reader.feed(data):
                        done = self._on_frame(mtype, f, poller)
                        if done is not None:
                            return done
                elif fd == self.qemu_fd:
                    return self._finish(None, f"the VM stopped: {self.vm.failure()}")
                elif fd == self.sig_r:
                    self._drain_sigpipe()
                    sigs, self.pending_signals = self.pending_signals, []
                    for s in sigs:
                        if s == signal.SIGWINCH and self.fields.get("terminal"):
                            self._resize(INIT_ID, self.tty if self.tty is not None else 0)
                        else:
                            self.send(P.SIGNAL, id=INIT_ID, signal=int(s), all=0)
                elif fd == self.in_fd and self.stdin_open:
                    try:
                        data = os.read(fd, 65536)
                    except OSError:
                        data = b""
                    if data:
                        self.send(P.STDIN, id=INIT_ID, data=data)
                    else:  # EOF, or EIO once the console's master is closed: stop reading
                        poller.unregister(fd)
                        self.stdin_open = False
                        if self.tty is None:
                            self.send(P.CLOSE_STDIN, id=INIT_ID)
                elif fd == self.listener.fileno():
                    conn, _ = self.listener.accept()
                    cl = Client(conn)
                    self.clients[conn.fileno()] = cl
                    poller.register(conn.fileno(), select.POLLIN)
                elif fd in self.clients:
                    self._on_client(self.clients[fd], poller)
                else:
                    cl = next((c for c in self.by_proc.values() if c.stdin_fd == fd), None)
                    if cl is None:  # an fd dropped earlier in this round of events
                        try:
                            poller.unregister(fd)
                        except KeyError:
                            pass
                        continue
                    try:
                        data = os.read(fd, 65536)
                    except OSError:
                        data = b""
                    if data:
                        self.send(P.STDIN, id=cl.proc_id, data=data)
                    else:
                        poller.unregister(fd)
                        cl.stdin_fd = None
                        self.send(P.CLOSE_STDIN, id=cl.proc_id)

    def _why_closed(self):
        # A panicking guest closes the port a moment before QEMU exits: give it that moment.
        r, _, _ = select.select([self.qemu_fd], [], [], 3)
        if not r:
            return "the agent closed its channel"
        return f"the VM stopped: {self.vm.failure()}"

    def _resize(self, proc_id, fd):
        from keel.vm import console

        got = console.size(fd)
        if got:
            self.send(P.RESIZE, id=proc_id, rows=got[0], cols=got[1])

    def _on_frame(self, mtype, f, poller):
        pid = f.get("id")
        if mtype == P.OUTPUT:
            self._output(f)
        elif mtype == P.STARTED:
            if pid == INIT_ID:
                log.debug("container process started")
                self.started = True
                self._save(status="running")
                if self.start_client:
                    self.start_client.reply({"ok": True})
                    self._drop(self.start_client, poller)
                    self.start_client = None
                if self.fields.get("terminal"):
                    self._resize(INIT_ID, self.tty if self.tty is not None else 0)
            elif pid in self.by_proc:
                cl = self.by_proc[pid]
                cl.reply({"ok": True, "pid": f.get("pid", 0)})
        elif mtype == P.EXIT:
            status = f.get("status", 255 << 8)
            if pid == INIT_ID:
                log.debug(f"container process exited (wait status {status:#x})")
                return self._finish(status)
            cl = self.by_proc.pop(pid, None)
            if cl is not None:
                cl.reply({"exit": status})
                self._drop(cl, poller)
        elif mtype == P.DONE and pid in self.by_proc:
            cl = self.by_proc.pop(pid)
            cl.reply({"ok": True, "pids": f.get("ps_pid", []),
                      "args": [a.decode(errors="replace") for a in f.get("ps_args", [])]})
            self._drop(cl, poller)
        elif mtype == P.ERROR:
            msg = f.get("message", b"").decode(errors="replace")
            if pid == INIT_ID and self.start_client:
                self.start_client.reply({"error": msg})
                self._drop(self.start_client, poller)
                self.start_client = None
            elif pid in self.by_proc:
                cl = self.by_proc.pop(pid)
                cl.reply({"error": msg})
                self._drop(cl, poller)
            else:
                log.warn(f"agent: {msg}")
        return None

    def _drop(self, cl, poller):
        fd = cl.sock.fileno()
        if fd in self.clients:
            del self.clients[fd]
            try:
                poller.unregister(fd)
            except KeyError:
                pass
        if cl.stdin_fd is not None:
            try:
                poller.unregister(cl.stdin_fd)
            except KeyError:
                pass
        cl.close()

    def _on_client(self, cl, poller):
        try:
            data, fds, _, _ = socket.recv_fds(cl.sock, 65536, 4)
        except OSError:
            data, fds = b"", []
        cl.fds += fds
        if not data:
            if cl.proc_id is not None and cl.proc_id in self.by_proc:
                # the exec's caller went away: its process goes too, as with runc exec
                self.send(P.SIGNAL, id=cl.proc_id, signal=int(signal.SIGKILL), all=0)
                self.by_proc.pop(cl.proc_id, None)
            if cl is self.start_client:
                self.start_client = None
            self._drop(cl, poller)
            return
        cl.buf += data
        while b"\n" in cl.buf and cl.sock.fileno() in self.clients:
            line, _, cl.buf = cl.buf.partition(b"\n")
            try:
                req = fastjson.loads(line.decode())
                if cl.proc_id is not None and req.get("op") == "resize":
                    # an exec's terminal was resized (its caller holds the pty): pass it on
                    self.send(P.RESIZE, id=cl.proc_id, rows=int(req["rows"]), cols=int(req["cols"]))
                elif cl.proc_id is not None and req.get("op") == "signal":
                    self.send(P.SIGNAL, id=cl.proc_id, signal=int(req["signal"]), all=0)
                else:
                    self._request(cl, req, poller)
            except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
                cl.reply({"error": f"bad request: {e}"})
                self._drop(cl, poller)

    def _request(self, cl, req, poller):
        op = req.get("op")
        if op == "start":
            if self.started or self.start_client:
                cl.reply({"error": f"cannot start container {self.c.id!r}: it is already started"})
                return self._drop(cl, poller)
            self.start_client = cl
            self.send(P.START, id=INIT_ID)
        elif op == "kill":
            self.send(P.SIGNAL, id=INIT_ID, signal=int(req["signal"]), all=1 if req.get("all") else 0)
            cl.reply({"ok": True})
            self._drop(cl, poller)
        elif op in ("pause", "resume"):
            from keel.vm.qemu import qmp

            want, have = ("paused", "running") if op == "pause" else ("running", "paused")
            if self.c.data.get("status") != have:
                cl.reply({"error": f"cannot {op} container {self.c.id!r}: it is "
                                   f"{self.c.data.get('status')}, not {have}"})
                return self._drop(cl, poller)
            try:
                qmp(self.vm.workdir, "stop" if op == "pause" else "cont")  # the whole VM stops
            except VMError as e:
                cl.reply({"error": str(e)})
                return self._drop(cl, poller)
            self._save(status=want)
            cl.reply({"ok": True})
            self._drop(cl, poller)
        elif op == "ps":
            cl.proc_id = self.next_id
            self.next_id += 1
            self.by_proc[cl.proc_id] = cl
            self.send(P.PS, id=cl.proc_id)
        elif op == "update":
            cl.proc_id = self.next_id  # the answer (DONE or ERROR) comes back under this id
            self.next_id += 1
            self.by_proc[cl.proc_id] = cl
            self.send(P.UPDATE, id=cl.proc_id, cg_key=req["cg_key"], cg_val=req["cg_val"])
        elif op == "exec":
            if not self.started:
                cl.reply({"error": f"cannot exec in container {self.c.id!r}: it is not running"})
                return self._drop(cl, poller)
            fields = req["process"]
            if len(cl.fds) != 3:
                cl.reply({"error": "exec: expected the caller's stdin, stdout and stderr"})
                return self._drop(cl, poller)
            cl.stdin_fd, cl.out_fd, cl.err_fd = cl.fds
            cl.tty = bool(fields.get("terminal"))  # then the three fds are the caller's pty slave
            cl.proc_id = self.next_id
            self.next_id += 1
            self.by_proc[cl.proc_id] = cl
            try:
                # read only after poll says so; never O_NONBLOCK: the file description is the
                # caller's (a user's terminal, say), shared beyond this exec
                poller.register(cl.stdin_fd, select.POLLIN)
            except (OSError, ValueError):
                cl.stdin_fd = None
            self.send(P.EXEC, id=cl.proc_id, **fields)
        else:
            cl.reply({"error": f"unknown request {op!r}"})
            self._drop(cl, poller)

    # ---- the end ----
    def _finish(self, status, why=None):
        if status is None:
            log.warn(f"container {self.c.id}: {why}")
            status = 255 << 8
        self._save(status="stopped", exitStatus=status)
        for cl in list(self.by_proc.values()):
            cl.reply({"error": why or "the container stopped"})
        self.teardown()
        log.debug("vm stopped")
        return status

    def teardown(self):
        if self.vm is not None:
            self.vm.stop()
            if hasattr(self.vm, "remove_logs"):  # a pool VM's holder removes its own
                self.vm.remove_logs()
        if self.net is not None:
            from keel.vm import hostnet

            hostnet.detach(self.net)
        if self.cgroup is not None:
            try:
                self.cgroup.destroy(timeout=5)
            except Exception as e:  # noqa: BLE001 - reported; delete retries it
                log.warn(f"container {self.c.id}: remove the VM's cgroup: {e}")
        if self.listener is not None:
            self.listener.close()
        for name in (CMD_SOCKET,):
            try:
                os.unlink(os.path.join(self.c.dir, name))
            except FileNotFoundError:
                pass
        if self.path == "cold":
            try:
                libc.umount(self.share_dir, libc.MNT_DETACH)
            except Exception:  # noqa: BLE001 - never mounted (failed early): nothing to undo
                pass
            try:
                os.rmdir(self.share_dir)
            except OSError:
                pass


def _close_inherited(*keep):
    """Only stdio, our pipe to create and the --log file stay open in the long-lived shim: an
    fd our caller leaked to create must not be held open for the container's whole life."""
    keep = sorted({0, 1, 2, *keep} | ({log._fd} if getattr(log, "_fd", None) is not None else set()))
    for lo, hi in zip(keep, keep[1:] + [os.sysconf("SC_OPEN_MAX")]):
        if hi > lo + 1:
            os.closerange(lo + 1, hi)


def exit_like(status):
    """Leave the process the way the container process left: same signal, or same code."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        import resource

        try:
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
            if sig not in (signal.SIGKILL, signal.SIGSTOP):
                signal.signal(sig, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, [sig])
            os.kill(os.getpid(), sig)
            time.sleep(0.1)
        except (OSError, ValueError):
            pass
        os._exit(128 + sig)
    os._exit(os.WEXITSTATUS(status) if os.WIFEXITED(status) else 255)


def run_shim(shim):
    """The forked child's whole life; never returns."""
    status = 255 << 8
    try:
        _close_inherited(shim.ready_fd)
        shim.creator_fd = os.pidfd_open(shim.creator_pid) if shim.creator_pid else None
        shim._signals()
        shim.boot_and_create()
        shim._setup_terminal()
        start_time, _ = proc_start_time(os.getpid())
        shim._save(status="created", pid=os.getpid(), initStartTime=start_time,
                   vm={"accel": shim.accel, "path": shim.path, "kernel": shim.kernel,
                       "memoryMiB": shim.memory_mib, "vcpus": shim.vcpus,
                       "qemuPid": shim.vm.qemu_pid, "qemuStart": proc_start_time(shim.vm.qemu_pid)[0],
                       "virtiofsdPid": shim.vm.virtiofsd_pid,
                       "virtiofsdStart": proc_start_time(shim.vm.virtiofsd_pid)[0]})
        if shim.creator_fd is not None:
            os.close(shim.creator_fd)
            shim.creator_fd = None
        shim._open_listener()  # before "ok": a `start` right after create must find shim.sock
        os.write(shim.ready_fd, b"ok\n")
        os.close(shim.ready_fd)
        shim.ready_fd = None
        status = shim.serve()
    except BaseException as e:  # noqa: BLE001 - report every failure to create, then clean up
        msg = str(e) if isinstance(e, VMError) else f"{type(e).__name__}: {e}"
        if isinstance(e, OSError) and e.strerror:
            msg = f"{e.filename + ': ' if e.filename else ''}{e.strerror.lower()}"
        if shim.ready_fd is not None:
            try:
                os.write(shim.ready_fd, ("error " + msg + "\n").encode())
            except OSError:
                pass
        else:
            log.warn(f"container {shim.c.id}: shim: {msg}")
        try:
            shim.teardown()
        except BaseException:  # noqa: BLE001
            pass
        os._exit(255 if shim.ready_fd is None else 1)
    try:
        exit_like(status)
    finally:
        os._exit(255)  # the forked shim must never return into its creator's code

