"""Resource usage of running containers, read from their cgroups (keel.kernel.cgroups: v1,
hybrid and v2) and from /proc/<pid>/net/dev of their network namespace, as `podman stats`
reports it.

`sample(engine, c)` returns raw numbers (bytes, nanoseconds, counts); `cpu_percent` turns two
samples into a CPU percentage (100 % is one CPU busy all the time, as podman counts it); a
first sample is measured against the container's start, which makes it its average.
"""

import time

from keel.engine.errors import EngineError, InvalidState

_STATS_STATES = ("running", "paused")


def _cgroup(c: dict):
    from keel.kernel.cgroups import Cgroup

    path = ((c.get("config") or {}).get("linux") or {}).get("cgroupsPath")
    return Cgroup.from_spec(path, c["id"])


def _host_memory() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def net_io(pid: int) -> tuple[int, int]:
    """(received, sent) bytes of every interface but lo in the network namespace of `pid`."""
    rx = tx = 0
    try:
        with open(f"/proc/{pid}/net/dev") as f:
            lines = f.read().splitlines()[2:]
    except OSError:
        return 0, 0
    for line in lines:
        name, _, rest = line.partition(":")
        fields = rest.split()
        if name.strip() == "lo" or len(fields) < 9:
            continue
        rx += int(fields[0])
        tx += int(fields[8])
    return rx, tx


def sample(c: dict) -> dict:
    """One reading of a running or paused container's usage."""
    from keel.kernel.errors import KernelError

    if c["state"] not in _STATS_STATES:
        raise InvalidState(f"container {c['name']} is {c['state']}: stats need a running container")
    try:
        st = _cgroup(c).stats()
    except KernelError as e:
        raise EngineError(f"container {c['name']}: cgroup stats: {e}") from None
    now = time.time()
    mem = st.get("memory") or {}
    usage = (mem.get("usage") or {}).get("usage", 0)
    limit = (mem.get("usage") or {}).get("limit", 0)
    host = _host_memory()
    if host and (not limit or limit > host):
        limit = host  # "no limit" reads as a huge number: the host's memory is the real cap
    blk = (st.get("blkio") or {}).get("ioServiceBytesRecursive") or []
    opts = c.get("options") or {}
    host = ((opts.get("net") or {}).get("mode") or opts.get("network")) == "host"
    rx, tx = net_io(c["pid"]) if not host and c.get("pid") else (0, 0)   # the host's are not its own
    return {
        "id": c["id"], "name": c["name"], "time": now, "started": c.get("started") or now,
        "cpu_ns": ((st.get("cpu") or {}).get("usage") or {}).get("total", 0),
        "mem_usage": usage, "mem_limit": limit,
        "net_rx": rx, "net_tx": tx,
        "block_read": sum(e.get("value", 0) for e in blk if str(e.get("op")).lower() == "read"),
        "block_write": sum(e.get("value", 0) for e in blk if str(e.get("op")).lower() == "write"),
        "pids": (st.get("pids") or {}).get("current", 0),
    }


def cpu_percent(cur: dict, prev: dict | None = None) -> float:
    """CPU use between two samples (since the start when there is no previous one)."""
    if prev is None:
        wall, cpu = cur["time"] - cur["started"], cur["cpu_ns"]
    else:
        wall, cpu = cur["time"] - prev["time"], cur["cpu_ns"] - prev["cpu_ns"]
    return 100.0 * cpu / 1e9 / wall if wall > 0 else 0.0


def go_duration(ns: int) -> str:
    """A duration as Go prints time.Duration (podman's cpu_time): 0s, 52.5ms, 2m3.4s."""
    if ns == 0:
        return "0s"
    if ns < 1000:
        return f"{ns}ns"
    if ns < 1_000_000:
        return f"{_trim(ns / 1e3)}µs"
    if ns < 1_000_000_000:
        return f"{_trim(ns / 1e6)}ms"
    s = ns / 1e9
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    out = f"{int(h)}h" if h else ""
    if h or m:
        out += f"{int(m)}m"
    return out + f"{_trim(sec)}s"


def _trim(x: float) -> str:
    return f"{x:.9f}".rstrip("0").rstrip(".")


def human_size(n: float, binary: bool = False) -> str:
    """go-units' HumanSize (1.234MB) or BytesSize (1.234MiB), as podman prints sizes."""
    base, units = (1024.0, ("B", "KiB", "MiB", "GiB", "TiB", "PiB")) if binary else \
        (1000.0, ("B", "kB", "MB", "GB", "TB", "PB"))
    i = 0
    while n >= base and i < len(units) - 1:
        n /= base
        i += 1
    return f"{n:.4g}{units[i]}"


def entry(cur: dict, prev: dict | None = None) -> dict:
    """One container in podman's `stats --format json` shape."""
    mem_pct = 100.0 * cur["mem_usage"] / cur["mem_limit"] if cur["mem_limit"] else 0.0
    return {
        "id": cur["id"][:12],
        "name": cur["name"],
        "cpu_time": go_duration(cur["cpu_ns"]),
        "cpu_percent": f"{cpu_percent(cur, prev):.2f}%",
        "avg_cpu": f"{cpu_percent(cur):.2f}%",
        "mem_usage": f"{human_size(cur['mem_usage'])} / {human_size(cur['mem_limit'])}",
        "mem_percent": f"{mem_pct:.2f}%",
        "net_io": f"{human_size(cur['net_rx'])} / {human_size(cur['net_tx'])}",
        "block_io": f"{human_size(cur['block_read'])} / {human_size(cur['block_write'])}",
        "pids": str(cur["pids"]),
    }


def empty_entry(c: dict) -> dict:
    """A container that is not running, as `podman stats --all` shows one: "--" readings."""
    e = {k: "--" for k in ("cpu_time", "cpu_percent", "avg_cpu", "mem_percent", "pids")}
    e.update({k: "-- / --" for k in ("mem_usage", "net_io", "block_io")})
    return dict(e, id=c["id"][:12], name=c["name"])
