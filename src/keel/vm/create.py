"""`create` and `run`: validate the bundle, fork the shim that boots the VM, wait for its answer."""

import os
import time

from keel.oci import config as oci_config
from keel.oci.errors import ConfigError
from keel.runtime import log
from keel.vm.errors import VMError
from keel.vm.guestspec import Share, create_fields, ignored, network_path, vm_size
from keel.vm.state import VMContainer, boot_id, check_id, proc_start_time


def _now():
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1e9):09d}Z"


def _owner():
    import pwd

    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


def create(root, cid, bundle, console_socket=None, pid_file=None, terminal_on_stdio=False):
    """Returns the created VMContainer; its shim (a child of this process) holds the VM.
    `terminal_on_stdio` (foreground run): a terminal container uses our own stdio as its tty."""
    check_id(cid)
    bundle = os.path.abspath(bundle)
    try:
        config = oci_config.load(bundle)
    except ConfigError as e:
        raise VMError(str(e)) from None
    rootfs = config["root"]["path"]
    rootfs = os.path.normpath(os.path.join(bundle, rootfs))
    if not os.path.isdir(rootfs):
        raise VMError(f"root.path: {rootfs}: not a directory")
    if (config.get("process") or {}).get("terminal") and not console_socket and not terminal_on_stdio:
        raise VMError("process.terminal is set: --console-socket is required")
    share = Share()
    fields = create_fields(config, share, log.warn)
    memory_mib, vcpus = vm_size(config)
    for what in ignored(config):
        log.debug(f"not applied (the VM is the boundary, as Kata's defaults): {what}")
    os.makedirs(root, mode=0o711, exist_ok=True)
    c = VMContainer(root, cid)
    try:
        os.mkdir(c.dir, 0o711)
    except FileExistsError:
        raise VMError(f"container {cid!r} already exists") from None
    start, _ = proc_start_time(os.getpid())
    c.data = {"id": cid, "bundle": bundle, "rootfs": rootfs, "created": _now(), "owner": _owner(),
              "annotations": config.get("annotations") or {}, "bootId": boot_id(),
              "status": "creating", "creator": os.getpid(), "creatorStartTime": start, "pid": 0,
              "hooks": config.get("hooks") or {}, "process": config["process"]}
    c.save()
    r, w = os.pipe2(os.O_CLOEXEC)
    from keel.vm.shim import Shim, run_shim

    shim = Shim(c, fields, share, memory_mib, vcpus, os.getpid(), w, console_socket,
                cgroups_path=(config.get("linux") or {}).get("cgroupsPath"), net_path=network_path(config))
    pid = os.fork()
    if pid == 0:
        os.close(r)
        run_shim(shim)  # never returns
    os.close(w)
    answer = b""
    while True:
        chunk = os.read(r, 4096)
        if not chunk:
            break
        answer += chunk
    os.close(r)
    if not answer.startswith(b"ok"):
        os.waitpid(pid, 0)
        import shutil

        shutil.rmtree(c.dir, ignore_errors=True)
        msg = answer.decode(errors="replace").strip()
        raise VMError(msg[len("error "):] if msg.startswith("error ") else
                      "the shim died while the VM was booting")
    c = VMContainer.load(root, cid)
    from keel.runtime import hooks
    from keel.runtime.hooks import HookError

    try:
        for kind in ("prestart", "createRuntime"):  # on the host, the VM up, the process not started
            hooks.run(c.data["hooks"], kind, c.oci_state("created"))
    except HookError as e:
        from keel.vm.commands import delete

        delete(c, force=True)
        raise VMError(str(e)) from None
    if pid_file:
        _write_pid_file(pid_file, c.pid)
    from keel.vm.pool import ensure_keeper

    ensure_keeper(root)  # with KEEL_VM_POOL_SIZE set: VMs for the next containers boot now
    return c


def _write_pid_file(path, pid):
    path = os.path.abspath(path)
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.tmp")
    try:
        with open(tmp, "w") as f:
            f.write(str(pid))
        os.rename(tmp, path)
    except OSError as e:
        raise VMError(f"--pid-file {path}: {e.strerror.lower()}") from None


def run(root, cid, bundle, console_socket=None, pid_file=None, detach=False, keep=False):
    from keel.runtime import attach
    from keel.vm.commands import delete, start

    c = create(root, cid, bundle, console_socket=console_socket, pid_file=pid_file,
               terminal_on_stdio=not detach and not console_socket)
    forwarder = None if detach else attach.Forwarder(c.pid)
    raw = None
    if not detach and c.data["process"].get("terminal") and not console_socket and os.isatty(0):
        import termios
        import tty

        raw = termios.tcgetattr(0)
        tty.setraw(0)  # the guest's pty does the line discipline; ours passes keys through
    try:
        start(c)
    except BaseException:
        if forwarder is not None:
            forwarder.restore()
        _restore_tty(raw)
        delete(c, force=True)
        raise
    if detach:
        return 0
    try:
        code = attach.wait(c.pid, None, forwarder)
    finally:
        _restore_tty(raw)
    if not keep:
        delete(VMContainer.load(root, cid), force=True)
    return code


def _restore_tty(saved):
    if saved is not None:
        import termios

        termios.tcsetattr(0, termios.TCSADRAIN, saved)
