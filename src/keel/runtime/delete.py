"""`delete`: remove a stopped (or created) container; --force kills a running one first."""

import os
import shutil
import time

from keel.runtime import hooks, log
from keel.runtime.errors import RuntimeError_


def delete(c, force=False):
    status = c.status()
    if status == "creating" and not force:
        raise RuntimeError_(f"cannot delete container {c.id!r}: it is being created")
    if status in ("running", "paused") and not force:
        raise RuntimeError_(f"cannot delete container {c.id!r} that is not stopped: {status}")
    cgroup = None
    if c.data.get("cgroup"):
        from keel.kernel.cgroups import Cgroup

        cgroup = Cgroup.from_dict(c.data["cgroup"])
    if status != "stopped":
        if cgroup is not None:
            if status == "paused":
                cgroup.thaw()
            cgroup.kill_all(9)
        _kill_init(c)
        wait_gone(c)
    if cgroup is not None:
        # Processes that outlived the init (no pid namespace) go too.
        try:
            if cgroup.pids():
                cgroup.kill_all(9)
        except Exception as e:  # noqa: BLE001
            log.debug(f"delete: cgroup pids: {e}")
        cgroup.destroy()
    if c.data.get("status") != "creating":
        hooks.run_warn(c.data.get("hooks"), "poststop", c.oci_state("stopped"))
    shutil.rmtree(c.dir, ignore_errors=True)


def _kill_init(c):
    try:
        pidfd = os.pidfd_open(c.pid)
    except (ProcessLookupError, OSError):
        return
    try:
        if c.alive():
            import signal

            signal.pidfd_send_signal(pidfd, 9)
    except ProcessLookupError:
        pass
    finally:
        os.close(pidfd)


def wait_gone(c, timeout=10.0):
    deadline = time.monotonic() + timeout
    while c.alive():
        if time.monotonic() > deadline:
            raise RuntimeError_(f"container {c.id!r}: init {c.pid} did not exit after SIGKILL")
        time.sleep(0.005)
