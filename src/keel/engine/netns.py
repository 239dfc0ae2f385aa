"""Network namespaces kept alive by a bind mount on a file, as `ip netns add` and podman do,
so the engine can set the namespace up with CNI before the runtime runs and hand it over by
path (linux.namespaces: {"type": "network", "path": ...})."""

import contextlib
import errno
import os
import threading

from keel.engine.errors import EngineError

CLONE_NEWNET = 0x40000000


def create(path: str) -> None:
    """A new network namespace bound on `path` (which must not exist yet)."""
    from keel.kernel import libc

    os.makedirs(os.path.dirname(path), 0o700, exist_ok=True)
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
    except OSError as e:
        raise EngineError(f"netns {path}: {(e.strerror or str(e)).lower()}") from None
    failure = []

    def make():
        # Only this short-lived thread enters the new namespace; the bind mount keeps it.
        try:
            libc.unshare(CLONE_NEWNET)
            libc.mount(f"/proc/self/task/{threading.get_native_id()}/ns/net", path, None, libc.MS_BIND)
        except Exception as e:  # reported below, in the caller's thread
            failure.append(e)

    t = threading.Thread(target=make, name="keel-netns")
    t.start()
    t.join()
    if failure:
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise EngineError(f"netns {path}: {failure[0]}")


def is_mounted(path: str) -> bool:
    try:
        with open("/proc/self/mountinfo") as f:
            return any(line.split()[4] == path for line in f)
    except OSError:
        return False


def remove(path: str) -> None:
    """Unmount and delete a namespace file; nothing to do if it is gone (idempotent)."""
    from keel.kernel import libc
    from keel.kernel.errors import KernelError

    while True:
        try:
            libc.umount(path, libc.MNT_DETACH)
        except KernelError as e:
            if e.errno in (errno.EINVAL, errno.ENOENT):
                break  # not (or no longer) a mount point
            raise EngineError(f"netns {path}: {e}") from None
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
