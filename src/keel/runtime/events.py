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


def emit(kind, cid, data=None):
    ev = {"type": kind, "id": cid}
    if data is not None:
        ev["data"] = data
    sys.stdout.write(fastjson.dumps(ev) + "\n")
    sys.stdout.flush()


def events(c, stats_once=False, interval=5.0):
    if c.status() == "stopped":
        raise RuntimeError_(f"container {c.id!r} is not running")
    cgroup = _cgroup(c)
    if stats_once:
        emit("stats", c.id, cgroup.stats())
        return 0
    ooms = oom_kills(cgroup)
    next_stats = time.monotonic()
    while c.alive():
        now = time.monotonic()
        if now >= next_stats:
            emit("stats", c.id, cgroup.stats())
            next_stats = now + interval
        n = oom_kills(cgroup)
        if n > ooms:
            emit("oom", c.id)
            ooms = n
        time.sleep(min(0.1, max(0.0, next_stats - time.monotonic())))
    n = oom_kills(cgroup)
    if n > ooms:
        emit("oom", c.id)
    return 0
