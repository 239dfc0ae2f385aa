"""`start`: release a created container's init (it waits on exec.fifo) and run poststart hooks."""

import os

from keel.runtime import hooks, log
from keel.runtime.errors import RuntimeError_


def start(c):
    status = c.status()
    if status != "created":
        raise RuntimeError_(f"cannot start container {c.id!r}: it is {status}, not created")
    try:
        fd = os.open(c.fifo, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise RuntimeError_(f"cannot start container {c.id!r}: it was already started") from None
    try:
        # The init holds the write end open until it has written its byte.
        import select

        select.select([fd], [], [], 10)
        data = os.read(fd, 1)
    finally:
        os.close(fd)
    if data != b"0":
        raise RuntimeError_(f"cannot start container {c.id!r}: its init exited before it could start")
    try:
        os.unlink(c.fifo)
    except FileNotFoundError:
        pass
    if (c.data.get("hooks") or {}).get("poststart"):
        # The spec: a failing poststart hook is logged, the container keeps running.
        hooks.run_warn(c.data["hooks"], "poststart", c.oci_state("running"))
    log.debug(f"started {c.id} (pid {c.pid})")
