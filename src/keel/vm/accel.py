"""KVM or TCG: use KVM only where a probe boot under it succeeds; remember the answer per host boot.

A /dev/kvm that opens is not enough: some hosts (nested or software hypervisors such as PVM)
expose one that cannot boot a stock guest kernel. So the probe boots the real guest under KVM
and waits for the agent's HELLO; anything else means TCG. The answer is cached in the VM cache
(accel.json) for the current boot id, kernel and QEMU, and KEEL_VM_ACCEL=kvm|tcg overrides it.
"""

import json
import os
import shutil
import socket
import tempfile
import time

from keel.vm.errors import VMError

ACCEL_ENV = "KEEL_VM_ACCEL"
PROBE_TIMEOUT = 15.0


def _key(assets):
    from keel.kernel.boot import boot_id
    from keel.vm.qemu import qemu_binary

    q = qemu_binary()
    return {"bootId": boot_id(), "kernel": assets.release, "qemu": q, "qemuMtime": int(os.stat(q).st_mtime)}


def choose(assets, cache):
    """(accel, reason)."""
    forced = os.environ.get(ACCEL_ENV)
    if forced:
        if forced not in ("kvm", "tcg"):
            raise VMError(f"{ACCEL_ENV}={forced!r}: expected kvm or tcg")
        return forced, f"forced by {ACCEL_ENV}"
    path = os.path.join(cache, "accel.json")
    key = _key(assets)
    cached = _cached(path, key)
    if cached:
        return cached
    import fcntl

    with open(os.path.join(cache, ".accel.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one probe boot, however many creates ask at once
        cached = _cached(path, key)
        if cached:
            return cached
        accel, reason = probe(assets, cache)
        _store(path, key, accel, reason)
    return accel, reason


def _cached(path, key):
    try:
        with open(path) as f:
            got = json.load(f)
        if got.get("key") == key:
            return got["accel"], got["reason"] + " (cached probe)"
    except (OSError, ValueError, KeyError):
        pass
    return None


def _store(path, key, accel, reason):
    cache = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(dir=cache, prefix=".accel-")
    with os.fdopen(fd, "w") as f:
        json.dump({"key": key, "accel": accel, "reason": reason, "probedAt": time.time()}, f)
    os.rename(tmp, path)


def probe(assets, cache):
    if not os.path.exists("/dev/kvm"):
        return "tcg", "no /dev/kvm"
    try:
        os.close(os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC))
    except OSError as e:
        return "tcg", f"/dev/kvm: {e.strerror.lower()}"
    from keel.vm import protocol as P
    from keel.vm.qemu import VM, wait_readable

    work = tempfile.mkdtemp(prefix=".probe-", dir=cache)
    share = os.path.join(work, "share")
    os.mkdir(share)
    vm = VM(work, share, assets, "kvm", memory_mib=128, name="keel-kvm-probe")
    t0 = time.monotonic()
    try:
        listener = vm.start()
        if not wait_readable([listener], PROBE_TIMEOUT):
            return "tcg", f"a KVM probe boot did not reach the agent in {PROBE_TIMEOUT:.0f}s ({vm.failure()})"
        conn, _ = listener.accept()
        reader = P.Reader()
        deadline = time.monotonic() + PROBE_TIMEOUT
        while time.monotonic() < deadline:
            if not wait_readable([conn], deadline - time.monotonic()):
                break
            data = conn.recv(65536)
            if not data:
                break
            for mtype, _ in reader.feed(data):
                if mtype == P.HELLO:
                    return "kvm", f"a KVM probe boot reached the agent in {time.monotonic() - t0:.2f}s"
        return "tcg", f"a KVM probe boot failed ({vm.failure()})"
    except (OSError, socket.error) as e:
        return "tcg", f"a KVM probe boot failed: {e}"
    finally:
        vm.stop()
        shutil.rmtree(work, ignore_errors=True)
