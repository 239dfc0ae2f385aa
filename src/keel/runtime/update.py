"""`update`: change a running container's cgroup limits (runc's flags, or -r resources.json)."""

from keel.oci import fastjson
from keel.runtime.errors import RuntimeError_

_SUFFIX = {"b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}

# flag dest -> (path in linux.resources, parser)
FLAGS = {
    "memory": (("memory", "limit"), "bytes"),
    "memory_reservation": (("memory", "reservation"), "bytes"),
    "memory_swap": (("memory", "swap"), "bytes"),
    "kernel_memory": (("memory", "kernel"), "bytes"),
    "kernel_memory_tcp": (("memory", "kernelTCP"), "bytes"),
    "cpu_period": (("cpu", "period"), "uint"),
    "cpu_quota": (("cpu", "quota"), "int"),
    "cpu_share": (("cpu", "shares"), "uint"),
    "cpu_rt_period": (("cpu", "realtimePeriod"), "uint"),
    "cpu_rt_runtime": (("cpu", "realtimeRuntime"), "int"),
    "cpuset_cpus": (("cpu", "cpus"), "str"),
    "cpuset_mems": (("cpu", "mems"), "str"),
    "pids_limit": (("pids", "limit"), "int"),
    "blkio_weight": (("blockIO", "weight"), "uint"),
}


def parse_bytes(flag, value):
    """'-1', '1048576', '512m', '1g' (docker's RAMInBytes units: powers of 1024)."""
    v = value.strip().lower()
    if v == "-1":
        return -1
    num = v.rstrip("bkmgtp")
    unit = v[len(num):].rstrip("b") or "b"
    if v.endswith("b") and len(v) > 1 and v[-2] in _SUFFIX:
        unit = v[-2]
    try:
        n = float(num)
    except ValueError:
        raise RuntimeError_(f"--{flag}: invalid size {value!r}") from None
    if unit not in _SUFFIX or n < 0:
        raise RuntimeError_(f"--{flag}: invalid size {value!r}")
    return int(n * _SUFFIX[unit])


def _parse(flag, kind, value):
    if kind == "bytes":
        return parse_bytes(flag, value)
    if kind == "str":
        return value
    try:
        n = int(value)
    except ValueError:
        raise RuntimeError_(f"--{flag}: {value!r} is not an integer") from None
    if kind == "uint" and n < 0:
        raise RuntimeError_(f"--{flag}: must not be negative")
    return n


def resources_from(opts):
    """The resources object to apply: -r FILE ('-' for stdin), then each flag on top."""
    resources = {}
    if opts.resources:
        import sys

        try:
            data = sys.stdin.read() if opts.resources == "-" else open(opts.resources).read()
        except OSError as e:
            raise RuntimeError_(f"--resources {opts.resources}: {e.strerror.lower()}") from None
        try:
            resources = fastjson.loads(data)
        except ValueError as e:
            raise RuntimeError_(f"--resources {opts.resources}: invalid JSON: {e}") from None
        if not isinstance(resources, dict):
            raise RuntimeError_(f"--resources {opts.resources}: expected a JSON object")
    for dest, ((group, key), kind) in FLAGS.items():
        value = getattr(opts, dest)
        if value is not None:
            resources.setdefault(group, {})[key] = _parse(dest.replace("_", "-"), kind, value)
    if not resources:
        raise RuntimeError_("update: nothing to change (give flags or --resources FILE)")
    return resources


def update(c, resources):
    status = c.status()
    if status == "stopped":
        raise RuntimeError_(f"cannot update container {c.id!r}: it is stopped")
    if not c.data.get("cgroup"):
        raise RuntimeError_(f"container {c.id!r} has no cgroup")
    from keel.kernel.cgroups import Cgroup
    from keel.kernel.errors import CgroupError

    try:
        for warning in Cgroup.from_dict(c.data["cgroup"]).apply(resources) or ():
            from keel.runtime import log

            log.warn(warning)
    except CgroupError as e:
        raise RuntimeError_(str(e)) from None
