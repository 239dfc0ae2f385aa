"""`events`: a container's cgroup stats as runc prints them (--stats once, or a stream every
--interval), and an "oom" event whenever the kernel OOM-kills a process in it."""

import os
import sys
import time

from keel.oci import fastjson
from keel.runtime.errors import RuntimeError_


def parse_interval(value):
    """Go durations as runc takes them: '5s', '500ms', '1m', '1.5s'."""
    units = (("ms", 0.001), ("us", 0.000001), ("s", 1.0), ("m", 60.0), ("h", 3600.0))
    for suffix, scale in units:
        if value.endswith(suffix):
            num = value[: -len(suffix)]
            try:
                n = float(num)
            except ValueError:
                break
            if n > 0:
                return n * scale
            break
    raise RuntimeError_(f"--interval: invalid duration {value!r} (e.g. 5s, 500ms)")


def _cgroup(c):
    if not c.data.get("cgroup"):
        raise RuntimeError_(f"container {c.id!r} has no cgroup")
    from keel.kernel.cgroups import Cgroup

    return Cgroup.from_dict(c.data["cgroup"])


def oom_kills(cgroup):
    """The cgroup's OOM-kill counter (v1 memory.oom_control, v2 memory.events)."""
    paths = cgroup.paths()
    for key, name in (("memory", "memory.oom_control"), ("unified", "memory.events")):
        d = paths.get(key)
        if not d:
            continue
        try:
            with open(os.path.join(d, name)) as f:
                for line in f:
                    k, _, v = line.partition(" ")
                    if k == "oom_kill":
                        return int(v)
        except OSError:
            continue
    return 0


def _under_oom(cgroup):
    d = cgroup.paths().get("memory")
    try:
        with open(os.path.join(d, "memory.oom_control")) as f:
            return any(line.split() == ["under_oom", "1"] for line in f)
    except (OSError, TypeError):
        return False


def emit(kind, cid, data=None):
    ev = {"type": kind, "id": cid}
    if data is not None:
        ev["data"] = data
    sys.stdout.write(fastjson.dumps(ev) + "\n")
    sys.stdout.flush()


class _OomWatch:
    """Wakes the stream as soon as the kernel OOM-kills in the cgroup (polling alone misses a
    kill when `run` deletes the cgroup right after its init died). v1: an eventfd registered
    on memory.oom_control through cgroup.event_control (as runc does); v2: POLLPRI on
    memory.events. Without either, the 0.1 s poll of the counter is all there is."""

    def __init__(self, cgroup):
        import select

        self.fd = None
        self.v1 = False
        self._keep = []
        self.poll = select.poll()
        paths = cgroup.paths()
        d = paths.get("memory")
        try:
            if d and os.path.exists(os.path.join(d, "cgroup.event_control")):
                efd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
                ofd = os.open(os.path.join(d, "memory.oom_control"), os.O_RDONLY | os.O_CLOEXEC)
                self._keep = [efd, ofd]
                self.control = os.path.join(d, "cgroup.event_control")
                with open(self.control, "w") as f:
                    f.write("%d %d" % (efd, ofd))
                self.fd, self.v1 = efd, True
                self.poll.register(efd, select.POLLIN)
            elif paths.get("unified") and os.path.exists(os.path.join(paths["unified"], "memory.events")):
                fd = os.open(os.path.join(paths["unified"], "memory.events"), os.O_RDONLY | os.O_CLOEXEC)
                self._keep = [fd]
                os.read(fd, 4096)  # POLLPRI reports changes after the last read
                self.fd = fd
                self.poll.register(fd, select.POLLPRI | select.POLLERR)
        except OSError:
            self.close()
            self.fd = None

    def wait(self, timeout):
        """Sleep up to `timeout` seconds; True if the kernel signalled an OOM in the cgroup."""
        if self.fd is None:
            time.sleep(timeout)
            return False
        if not self.poll.poll(timeout * 1000):
            return False
        if self.v1:
            try:
                count = int.from_bytes(os.read(self.fd, 8), sys.byteorder)
            except BlockingIOError:
                return False
            if os.path.exists(self.control):
                return True
            # The eventfd also fires (once) when the cgroup is removed: a count above 1 means an
            # OOM was signalled before `run`/`delete` removed it (a loaded host may run us late)
            return count >= 2
        try:
            os.lseek(self.fd, 0, os.SEEK_SET)
            os.read(self.fd, 4096)
        except OSError:
            time.sleep(timeout)  # the cgroup is gone: stop polling a dead file
            self.close()
            self.fd = None
        return False  # v2: the counter, read next, says whether it was a kill

    def close(self):
        for fd in self._keep:
            try:
                os.close(fd)
            except OSError:
                pass
        self._keep = []


def events(c, stats_once=False, interval=5.0):
    if c.status() == "stopped":
        raise RuntimeError_(f"container {c.id!r} is not running")
    cgroup = _cgroup(c)
    if stats_once:
        emit("stats", c.id, cgroup.stats())
        return 0
    ooms = oom_kills(cgroup)
    watch = _OomWatch(cgroup)
    next_stats = time.monotonic()
    try:
        while True:
            alive = c.alive()
            if alive and time.monotonic() >= next_stats:
                emit("stats", c.id, cgroup.stats())
                next_stats = time.monotonic() + interval
            # read right after every wake-up: `run` removes the cgroup soon after its init died
            n = oom_kills(cgroup)
            if n > ooms:
                emit("oom", c.id)
                ooms = n
            timeout = min(0.1, max(0.0, next_stats - time.monotonic())) if alive else 0
            if watch.wait(timeout):
                # v1 notifies as the OOM starts, before the kill (and again for every task that
                # hits the limit meanwhile): one event per kill, counted by the kernel
                deadline = time.monotonic() + 0.25
                while True:
                    n = oom_kills(cgroup)
                    gone = not os.path.exists(watch.control)
                    if n > ooms or gone or time.monotonic() >= deadline:
                        break
                    time.sleep(0.002)
                # gone: the container went with the cgroup before the kill could be counted;
                # under_oom: the OOM killer is disabled and the tasks wait in OOM
                if n > ooms or gone or _under_oom(cgroup):
                    emit("oom", c.id)
                    ooms = max(ooms, n)
            if not alive:
                break
    finally:
        watch.close()
    return 0
