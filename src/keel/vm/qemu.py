"""One microVM: virtiofsd serving the share, QEMU booting the guest, the agent's control socket.

The command line is the one measured to boot reliably under TCG and KVM alike: `-M microvm`
with a PVH vmlinux, no option ROMs, an ISA serial console, the legacy PIT/PIC/RTC left on, and
`tsc_early_khz=` on the kernel command line (without it TCG boots hang at random calibrating
the TSC). virtio-mmio devices must be modern (vhost-user needs it). The control channel is a
virtio-serial port named keel.ctl: QEMU connects to a socket we listen on. Both helpers get
PR_SET_PDEATHSIG, so a keel-vm process killed outright takes its VM with it.
"""

import os
import shutil
import signal
import socket
import subprocess
import time

from keel.vm.errors import VMError

QEMU_ENV = "KEEL_VM_QEMU"
VIRTIOFSD_ENV = "KEEL_VM_VIRTIOFSD"
VIRTIOFSD_PATHS = ("/usr/lib/qemu/virtiofsd", "/usr/libexec/virtiofsd", "/usr/lib/virtiofsd")
SHARE_TAG = "keel"
DEFAULT_MEMORY_MIB = 256
RUNAS_USER = "nobody"
LOG_LIMIT_KIB = 512
GUEST_OVERHEAD_MIB = 96  # kernel, agent and page tables on top of a container's memory limit


def qemu_binary():
    path = os.environ.get(QEMU_ENV) or shutil.which("qemu-system-x86_64")
    if not path:
        raise VMError("qemu-system-x86_64 is not installed (apt-get install --no-install-recommends "
                      "qemu-system-x86)")
    return path


def virtiofsd_binary():
    for path in ([os.environ[VIRTIOFSD_ENV]] if os.environ.get(VIRTIOFSD_ENV) else []) + list(VIRTIOFSD_PATHS):
        if os.access(path, os.X_OK):
            return path
    found = shutil.which("virtiofsd")
    if found:
        return found
    raise VMError("virtiofsd is not installed (it ships with qemu-system-x86 as /usr/lib/qemu/virtiofsd)")


def tsc_khz():
    """The host TSC rate for tsc_early_khz= (the guest reads the same counter under TCG and KVM)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("cpu MHz"):
                    return int(float(line.split(":")[1]) * 1000)
    except (OSError, ValueError):
        pass
    return 0


def _die_with_parent():
    from keel.kernel import libc

    libc.prctl(libc.PR_SET_PDEATHSIG, signal.SIGKILL)
    os.setpgid(0, 0)  # a terminal's ^C reaches keel-vm, which forwards it; never QEMU itself


# QEMU needs no network, no System V IPC and no host name: it gets empty namespaces of each
# (defence in depth; the emulator is not a security boundary by itself).
_QEMU_NAMESPACES = 0x40000000 | 0x08000000 | 0x04000000  # CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS


def _qemu_child():
    """QEMU's start: it must die with us, but -runas clears PR_SET_PDEATHSIG when it drops root.
    So QEMU runs as pid 2 of a pid namespace of its own whose pid 1 keeps the death signal:
    when we die, pid 1 dies, and the kernel kills everything else in that namespace.
    Popen's pid (A) and pid 1 (B) wait and end as QEMU ends; QEMU itself is C."""
    from keel.kernel import libc

    _die_with_parent()
    libc.unshare(_QEMU_NAMESPACES | 0x20000000)  # + CLONE_NEWPID: for our children
    b = os.fork()
    if b:
        _mirror(b)
    libc.prctl(libc.PR_SET_PDEATHSIG, signal.SIGKILL)  # B: pid 1 of the new namespace
    c = os.fork()
    if c:
        _mirror(c)
    # C: returns to subprocess, which execs QEMU


def _mirror(pid):
    """Wait for `pid` and end the same way; never returns. Our fds close first, subprocess's
    error pipe among them, so only QEMU's exec (or failure) answers Popen."""
    os.closerange(3, os.sysconf("SC_OPEN_MAX"))
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            break
        except InterruptedError:
            continue
        except ChildProcessError:
            os._exit(255)
    os._exit(os.WEXITSTATUS(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status))


def descendants(pid):
    """`pid` and every process below it (from /proc/PID/task/PID/children)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            with open(f"/proc/{p}/task/{p}/children") as f:
                todo += [int(x) for x in f.read().split()]
        except OSError:
            pass
    return out


class VM:
    """QEMU + virtiofsd for one guest, run from `workdir` (sockets live there, named relatively,
    so that a long state path never exceeds a unix socket's 108 bytes)."""

    def __init__(self, workdir, share, assets, accel, memory_mib=DEFAULT_MEMORY_MIB, vcpus=1,
                 name="keel-vm", net=None, bounded_logs=False):
        self.workdir, self.share, self.assets, self.accel = workdir, share, assets, accel
        self.net = net  # (tap fd, MAC) of a NIC extending the container's network, or None
        # QEMU's log and the guest console go to a small tmpfs (only where we run in a mount
        # namespace of our own): a guest that floods its serial port must not fill the host's disk
        self.bounded_logs = bounded_logs
        self.logdir = os.path.join(workdir, "log")
        self.memory_mib, self.vcpus, self.name = memory_mib, vcpus, name
        self.qemu = self.virtiofsd = None
        self.listener = None

    def argv(self):
        cmdline = ["console=ttyS0", "quiet", "panic=-1", "pci=off", "nomodeset",
                   "i8042.noaux", "i8042.nomux", "i8042.nopnp", "i8042.dumbkbd", "random.trust_cpu=on",
                   "cryptomgr.notests", "rcupdate.rcu_expedited=1"]
        khz = tsc_khz()
        if khz:
            cmdline.append(f"tsc_early_khz={khz}")
        mem = f"{self.memory_mib}M"
        return [
            qemu_binary(), "-name", self.name,
            "-M", "microvm,accel={},x-option-roms=off,isa-serial=on,pit=on,pic=on,rtc=on,"
                  "memory-backend=mem".format(self.accel),
            "-cpu", "host" if self.accel == "kvm" else "max",
            "-smp", str(self.vcpus),
            "-object", f"memory-backend-memfd,id=mem,size={mem},share=on", "-m", mem,
            "-nodefaults", "-no-user-config", "-no-reboot", "-display", "none",
            # once set up (devices open, sockets connected), QEMU drops root for an unprivileged user
            "-runas", RUNAS_USER,
            # seccomp; elevateprivileges stays allowed only for -runas's own drop of root, after
            # which an unprivileged QEMU cannot regain it
            "-sandbox", "on,obsolete=deny,spawn=deny,resourcecontrol=deny",
            "-global", "virtio-mmio.force-legacy=false",
            "-kernel", self.assets.vmlinux, "-initrd", self.assets.initramfs,
            "-append", " ".join(a for a in cmdline if a),
            "-chardev", "file,id=con,path=log/console.log", "-serial", "chardev:con",
            "-device", "virtio-serial-device",
            "-chardev", "socket,id=ctl,path=ctl.sock", "-device", "virtserialport,chardev=ctl,name=keel.ctl",
            "-qmp", "unix:qmp.sock,server=on,wait=off",
            "-chardev", "socket,id=vfs,path=vfs.sock",
            "-device", f"vhost-user-fs-device,chardev=vfs,tag={SHARE_TAG}",
        ] + ([] if self.net is None else [
            "-netdev", f"tap,id=n0,fd={self.net[0]}",
            "-device", f"virtio-net-device,netdev=n0,mac={self.net[1]}",
        ])

    def start(self):
        """Start virtiofsd and QEMU; returns the listening control socket (accept() gives the agent)."""
        wd = self.workdir
        os.makedirs(self.logdir, exist_ok=True)
        if self.bounded_logs:
            from keel.kernel import libc

            libc.mount("keel-vm-log", self.logdir, "tmpfs", libc.MS_NOSUID | libc.MS_NODEV | libc.MS_NOEXEC,
                       f"mode=0755,size={LOG_LIMIT_KIB}k")
        vfs = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        ctl = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            # Bound through /proc/self/fd so the path stays short whatever the state directory.
            dfd = os.open(wd, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                for sock, name in ((vfs, "vfs.sock"), (ctl, "ctl.sock")):
                    try:
                        os.unlink(os.path.join(wd, name))
                    except FileNotFoundError:
                        pass
                    sock.bind(f"/proc/self/fd/{dfd}/{name}")
                    sock.listen(1)
            finally:
                os.close(dfd)
            # virtiofsd takes the listening socket as an fd; sandbox=chroot sees mounts made
            # under the share after it started (the warm pool's per-container rootfs).
            self.virtiofsd = subprocess.Popen(
                [virtiofsd_binary(), f"--fd={vfs.fileno()}", "-o", f"source={self.share}",
                 "-o", "sandbox=chroot", "-o", "cache=auto", "-o", "xattr", "--thread-pool-size=1"],
                cwd=wd, stdin=subprocess.DEVNULL, stdout=self._log("virtiofsd.log"),
                stderr=subprocess.STDOUT, pass_fds=(vfs.fileno(),), preexec_fn=_die_with_parent)
            vfs.close()
            self.qemu = subprocess.Popen(self.argv(), cwd=wd, stdin=subprocess.DEVNULL,
                                         stdout=self._log("qemu.log"), stderr=subprocess.STDOUT,
                                         pass_fds=() if self.net is None else (self.net[0],),
                                         preexec_fn=_qemu_child)
        except BaseException:
            vfs.close()
            ctl.close()
            self.stop()
            raise
        self.listener = ctl
        return ctl

    def _log(self, name):
        return open(os.path.join(self.logdir, name), "ab")

    @property
    def qemu_pid(self):
        return self.qemu.pid if self.qemu else 0

    @property
    def virtiofsd_pid(self):
        return self.virtiofsd.pid if self.virtiofsd else 0

    def failure(self):
        """Why the VM stopped, from QEMU's own log and the guest console (for error messages)."""
        lines = []
        for name in ("qemu.log", "console.log"):
            try:
                with open(os.path.join(self.workdir, "log", name), "rb") as f:
                    f.seek(max(0, os.fstat(f.fileno()).st_size - 65536))  # a panic's trace is long
                    text = f.read().decode(errors="replace")
                lines += [ln.strip() for ln in text.splitlines() if ln.strip()]
            except OSError:
                pass
        for ln in lines:
            if "Kernel panic" in ln or "qemu-system" in ln:
                return ln[ln.find("Kernel panic"):] if "Kernel panic" in ln else ln
        return lines[-1] if lines else "no output"

    def stop(self):
        """Kill QEMU and virtiofsd and reap them; removes the sockets. Idempotent."""
        for p in (self.qemu, self.virtiofsd):
            if p is not None and p.poll() is None:
                try:
                    p.kill()
                except ProcessLookupError:
                    pass
        for p in (self.qemu, self.virtiofsd):
            if p is not None:
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    pass
        if self.listener is not None:
            self.listener.close()
            self.listener = None
        for name in ("ctl.sock", "vfs.sock", "qmp.sock"):
            try:
                os.unlink(os.path.join(self.workdir, name))
            except FileNotFoundError:
                pass

    def remove_logs(self):
        """Drop the logs (after failure() has been read, if needed)."""
        if self.bounded_logs:
            from keel.kernel import libc

            try:
                libc.umount(self.logdir, libc.MNT_DETACH)
            except Exception:  # noqa: BLE001 - not mounted: nothing to undo
                pass
        import shutil

        shutil.rmtree(self.logdir, ignore_errors=True)


def wait_readable(socks_or_fds, timeout):
    import select

    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return []
        try:
            r, _, _ = select.select(socks_or_fds, [], [], left)
        except InterruptedError:
            continue
        return r


def qmp(workdir, command, timeout=10):
    """Run one QMP command (e.g. "stop", "cont") on the VM whose QEMU runs in `workdir`."""
    import json

    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    dfd = os.open(workdir, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        s.connect(f"/proc/self/fd/{dfd}/qmp.sock")
        reader = s.makefile("rb")
        reader.readline()  # the greeting
        for cmd in ("qmp_capabilities", command):
            s.sendall(json.dumps({"execute": cmd}).encode() + b"\n")
            while True:  # skip asynchronous events until our answer
                reply = json.loads(reader.readline() or b"{}")
                if "return" in reply or "error" in reply or not reply:
                    break
            if "return" not in reply:
                raise VMError(f"QEMU {cmd}: {reply.get('error', {}).get('desc', 'no answer')}")
    except OSError as e:
        raise VMError(f"QEMU monitor: {(e.strerror or str(e)).lower()}") from None
    finally:
        os.close(dfd)
        s.close()
