"""Container housekeeping on top of the Engine: `top` (the processes of a container),
`ps --filter` (podman's keys and combination rules), prune of stopped containers and unused
images, and what `keel info` reports about the host and the store.
"""

import contextlib
import grp
import os
import pwd
import re
import shutil
import subprocess
import time

from keel.engine.errors import ContainerNotFound, EngineError, InvalidState

# -- top --------------------------------------------------------------------------------------

# podman's (psgo's) format descriptors: name -> header
DESCRIPTORS = {
    "args": "COMMAND", "comm": "COMMAND", "etime": "ELAPSED", "group": "GROUP",
    "hgroup": "HGROUP", "hpid": "HPID", "huser": "HUSER", "nice": "NI", "pcpu": "%CPU",
    "pgid": "PGID", "pid": "PID", "ppid": "PPID", "rgroup": "RGROUP", "ruser": "RUSER",
    "state": "STATE", "time": "TIME", "tty": "TTY", "user": "USER", "vsz": "VSZ",
}
DEFAULT_DESCRIPTORS = ["user", "pid", "ppid", "pcpu", "etime", "tty", "time", "args"]


def _container_pids(engine, c) -> list[int]:
    if c["state"] not in ("running", "paused"):
        raise InvalidState(f"container {c['name']} is {c['state']}: top needs a running container")
    return engine.runtime(c).ps(c["id"])


def _proc(pid: int) -> dict | None:
    """What the descriptors need from /proc/<pid>, None if the process is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        with open(f"/proc/{pid}/status") as f:
            status = dict(line.split(":", 1) for line in f.read().splitlines() if ":" in line)
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
    except OSError:
        return None
    comm = stat[stat.index(b"(") + 1:stat.rindex(b")")].decode(errors="replace")
    rest = stat[stat.rindex(b")") + 2:].split()
    uids, gids = status.get("Uid", "0 0").split(), status.get("Gid", "0 0").split()
    nspid = status.get("NSpid", str(pid)).split()
    args = [a.decode(errors="replace") for a in cmdline.split(b"\0") if a] or [f"[{comm}]"]
    return {
        "hpid": pid, "pid": int(nspid[-1]), "hppid": int(rest[1]), "pgid_host": int(rest[2]),
        "state": rest[0].decode(), "tty_nr": int(rest[4]), "utime": int(rest[11]),
        "stime": int(rest[12]), "nice": int(rest[16]), "start": int(rest[19]),
        "vsz": int(rest[20]), "comm": comm, "args": " ".join(args),
        "ruid": int(uids[0]), "euid": int(uids[1]), "rgid": int(gids[0]), "egid": int(gids[1]),
    }


def _id_names(read, path: str) -> dict:
    """uid/gid -> name from the container's passwd or group file (read inside its root)."""
    out = {}
    data = read(path)
    for line in (data or b"").decode(errors="replace").splitlines():
        parts = line.split(":")
        if len(parts) >= 3 and parts[2].isdigit():
            out.setdefault(int(parts[2]), parts[0])
    return out


def _tty(nr: int) -> str:
    if nr == 0:
        return "?"
    major, minor = (nr >> 8) & 0xfff, (nr & 0xff) | ((nr >> 12) & 0xfff00)
    if major == 136:
        return f"pts/{minor}"
    if major == 4:
        return f"tty{minor}"
    return f"{major}:{minor}"


def _boot_time() -> float:
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("btime "):
                return float(line.split()[1])
    return 0.0


def top(engine, ref: str, args: list[str]) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the container's processes. `args` are podman's descriptors (default
    user pid ppid pcpu etime tty time args, pids as the container sees them), or ps(1)
    options (`-ef`, `aux`, `-o pid,comm`) run on the host and cut to the container's
    processes, as docker's top does."""
    c = engine.get(ref)
    words = [w for a in args for w in a.replace(",", " ").split()]
    if not words:
        words = DEFAULT_DESCRIPTORS
    elif not all(w in DESCRIPTORS for w in words):
        if not any(a.startswith("-") for a in args) and not re.fullmatch(r"[a-zA-Z]+", args[0]):
            raise EngineError(f"top: unknown descriptor or ps option {args[0]!r}")
        return _top_ps(engine, c, args)
    hpids = _container_pids(engine, c)
    from keel.engine import cp

    def read(path):
        with contextlib.suppress(EngineError, OSError):
            return cp.read_file(engine, c, path, limit=1 << 20)
        return None

    users, groups = _id_names(read, "/etc/passwd"), _id_names(read, "/etc/group")
    procs = [p for p in (_proc(pid) for pid in hpids) if p is not None]
    to_ns = {p["hpid"]: p["pid"] for p in procs}
    hz = os.sysconf("SC_CLK_TCK") or 100
    now, boot = time.time(), _boot_time()
    from keel.engine.stats import go_duration

    rows = []
    for p in procs:
        elapsed = max(0.0, now - (boot + p["start"] / hz))
        cpu_s = (p["utime"] + p["stime"]) / hz
        values = {
            "args": p["args"], "comm": p["comm"],
            "etime": go_duration(int(elapsed * 1e9)),
            "group": groups.get(p["egid"], str(p["egid"])),
            "hgroup": _host_name(grp.getgrgid, p["egid"]),
            "hpid": str(p["hpid"]), "huser": _host_name(pwd.getpwuid, p["euid"]),
            "nice": str(p["nice"]), "pcpu": f"{100.0 * cpu_s / elapsed if elapsed else 0.0:.3f}",
            "pgid": str(to_ns.get(p["pgid_host"], 0)), "pid": str(p["pid"]),
            "ppid": str(to_ns.get(p["hppid"], 0)),
            "rgroup": groups.get(p["rgid"], str(p["rgid"])),
            "ruser": users.get(p["ruid"], str(p["ruid"])), "state": p["state"],
            "time": go_duration(int(cpu_s) * 1_000_000_000), "tty": _tty(p["tty_nr"]),
            "user": users.get(p["euid"], str(p["euid"])), "vsz": str(p["vsz"] // 1024),
        }
        rows.append([values[w] for w in words])
    rows.sort(key=lambda r: int(r[words.index("pid")]) if "pid" in words else 0)
    return [DESCRIPTORS[w] for w in words], rows


def _host_name(lookup, n):
    try:
        return lookup(n)[0]
    except KeyError:
        return str(n)


def _top_ps(engine, c, args):
    hpids = set(_container_pids(engine, c))
    ps = shutil.which("ps")
    if not ps:
        raise EngineError("top: ps(1) options need the ps command (procps) on the host")
    r = subprocess.run([ps, *args], capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        why = (r.stderr.strip().splitlines() or ["failed"])[0]
        raise EngineError(f"top: ps {' '.join(args)}: {why}")
    lines = r.stdout.splitlines()
    if not lines:
        raise EngineError(f"top: ps {' '.join(args)}: no output")
    header = lines[0].split()
    if "PID" not in header:
        raise EngineError(f"top: ps {' '.join(args)}: its output has no PID column")
    col = header.index("PID")
    rows = []
    for line in lines[1:]:
        fields = line.split(None, len(header) - 1)
        if len(fields) > col and fields[col].isdigit() and int(fields[col]) in hpids:
            rows.append(fields)
    return header, rows


# -- ps filters ---------------------------------------------------------------------------------

FILTER_KEYS = ("id", "name", "label", "status", "exited", "ancestor", "before", "since", "until",
               "volume")
STATUSES = ("created", "initialized", "running", "paused", "exited", "unknown", "stopped")


def parse_filters(items: list[str]) -> dict[str, list[str]]:
    """`key=value` strings -> {key: [values]}, checking keys and values."""
    out: dict[str, list[str]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise EngineError(f"--filter {item!r}: expected key=value")
        if key not in FILTER_KEYS:
            raise EngineError(f"--filter {item!r}: invalid filter {key!r} "
                              f"(valid: {', '.join(FILTER_KEYS)})")
        if key == "status" and value not in STATUSES:
            raise EngineError(f"--filter {item!r}: status must be one of {', '.join(STATUSES)}")
        if key == "exited":
            try:
                int(value)
            except ValueError:
                raise EngineError(f"--filter {item!r}: exited takes an exit code (a number)") from None
        if key == "until":
            from keel.engine.logs import parse_since

            try:
                parse_since(value)  # a bad time is an error now, not a silent non-match
            except EngineError:
                raise EngineError(f"--filter {item!r}: expected a duration (10m), a unix time or "
                                  "an RFC 3339 time") from None
        if key in ("id", "name"):
            try:
                re.compile(value)
            except re.error as e:
                raise EngineError(f"--filter {item!r}: invalid regular expression: {e}") from None
        out.setdefault(key, []).append(value)
    return out


def filter_containers(engine, containers: list[dict], filters: dict[str, list[str]]) -> list[dict]:
    """podman's rule: values of one key are alternatives (any may match), except label, whose
    values must all match; different keys must all match."""
    checks = []
    for key, values in filters.items():
        if key == "label":
            checks.append(lambda c, vs=values: all(_label_matches(c["labels"] or {}, v) for v in vs))
            continue
        if key == "ancestor":
            ids = _ancestor_ids(engine, values)
            checks.append(lambda c, vs=values, ids=ids: c["image_id"] in ids or any(
                c["image_name"] == v or re.fullmatch(re.escape(v) + r"(:latest)?", c["image_name"])
                for v in vs))
            continue
        if key == "until":
            from keel.engine.logs import parse_since

            limits = [parse_since(v) for v in values]
            checks.append(lambda c, ts=limits: any(c["created"] < t for t in ts))
            continue
        if key in ("before", "since"):
            refs = [engine.db.find(v)["created"] for v in values]
            if key == "before":
                checks.append(lambda c, ts=refs: any(c["created"] < t for t in ts))
            else:
                checks.append(lambda c, ts=refs: any(c["created"] > t for t in ts))
            continue
        match = {
            "id": lambda c, v: c["id"].startswith(v) or re.match(v, c["id"]) is not None,
            "name": lambda c, v: re.search(v, c["name"]) is not None,
            "status": lambda c, v: c["state"] == v or (v == "stopped" and c["state"] == "exited"),
            "exited": lambda c, v: c["state"] == "exited" and c["exit_code"] == int(v),
            "volume": _uses_volume,
        }[key]
        checks.append(lambda c, vs=values, m=match: any(m(c, v) for v in vs))
    return [c for c in containers if all(ch(c) for ch in checks)]


def _uses_volume(c: dict, want: str) -> bool:
    """podman's volume filter: a volume's name, or the destination of any mount."""
    from keel.engine import volumes

    mounts = ((c.get("options") or {}).get("run") or {}).get("mounts", [])
    return any(n == want for n, _ in volumes.volume_names(c)) or \
        any(m.get("destination") == want for m in mounts)


def _label_matches(labels: dict, want: str) -> bool:
    key, sep, value = want.partition("=")
    return key in labels and (not sep or labels[key] == value)


def _ancestor_ids(engine, values) -> set[str]:
    from keel.image.errors import ImageError

    ids = set()
    for v in values:
        with contextlib.suppress(ImageError):
            ids.add(engine.store.get(v).id.partition(":")[2])
    return ids


# -- sizes and prune ------------------------------------------------------------------------------

def disk_usage(path: str) -> int:
    """Bytes allocated under `path`, on its own filesystem only (never into a mount), each
    inode once."""
    total, seen = 0, set()
    try:
        top_dev = os.lstat(path).st_dev
    except OSError:
        return 0
    for root, dirs, files in os.walk(path):
        keep = []
        for name in dirs + files:
            try:
                st = os.lstat(os.path.join(root, name))
            except OSError:
                continue
            if st.st_dev != top_dev:
                continue
            if name in dirs and not os.path.islink(os.path.join(root, name)):
                keep.append(name)
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512
        dirs[:] = [d for d in dirs if d in keep]
    return total


def container_size(engine, c: dict) -> int:
    """What removing the container frees: its writable layer and its log."""
    upper = os.path.join(engine.snapshotter.root, "active", c["id"], "upper")
    return disk_usage(upper) + disk_usage(engine.userdata_dir(c["id"]))


PRUNABLE = ("created", "exited", "configured")


def prune_containers(engine, filters: dict | None = None) -> tuple[list[str], int]:
    """Remove every container that is not running (created or exited); (ids, bytes freed)."""
    removed, freed = [], 0
    cs = [c for c in engine.containers() if c["state"] in PRUNABLE]
    if filters:
        cs = filter_containers(engine, cs, filters)
    for c in cs:
        size = container_size(engine, c)
        try:
            engine.remove(c["id"])
        except ContainerNotFound:
            continue  # removed meanwhile (a --rm cleanup)
        except InvalidState:
            continue  # started meanwhile
        removed.append(c["id"])
        freed += size
    return removed, freed


def prune_images(engine, all: bool = False) -> tuple[list[str], int]:
    """Remove dangling images (with all, every image) no container uses, then the blobs and
    layer directories nothing references any more; (image ids, bytes freed)."""
    store, snap = engine.store, engine.snapshotter
    used = {c["image_id"] for c in engine.db.all()}
    layers = os.path.join(snap.root, "layers")
    before = disk_usage(layers)
    removed = []
    for img in store.images():
        hexid = img.id.partition(":")[2]
        if (img.names and not all) or hexid in used or snap.image_mount_path(img) is not None:
            continue
        store.remove(img.id, force=True)
        removed.append(hexid)
    freed = store.gc().get("bytes", 0)
    snap.remove_unused(store)
    freed += max(0, before - disk_usage(layers))
    return removed, freed


# -- info ---------------------------------------------------------------------------------------

KNOWN_RUNTIMES = ("keel-runtime", "keel-vm", "runc", "crun")


def _tool_version(path: str) -> str:
    try:
        r = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10,
                           stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return ", ".join(ln.strip() for ln in r.stdout.splitlines()[:2] if ln.strip())


def _meminfo() -> dict:
    out = {}
    with contextlib.suppress(OSError):
        with open("/proc/meminfo") as f:
            for line in f:
                k, _, v = line.partition(":")
                parts = v.split()
                if parts and parts[0].isdigit():
                    out[k] = int(parts[0]) * (1024 if len(parts) > 1 else 1)
    return out


def _os_release() -> dict:
    out = {}
    with contextlib.suppress(OSError):
        with open("/etc/os-release") as f:
            for line in f:
                k, sep, v = line.strip().partition("=")
                if sep:
                    out[k] = v.strip('"')
    return out


def info(engine) -> dict:
    """`keel info`: podman's info shape (host, store, registries, version) plus the runtimes
    keel can use and the cgroup layout as keel.kernel.cgroups detects it."""
    import platform

    from keel.engine import monitor, ociruntime
    from keel.kernel import cgroups
    from keel.kernel.errors import KernelError

    try:
        layout = cgroups.detect()
        mode = layout.mode
        controllers = sorted({k for k in layout.v1 if not k.startswith("name=")} |
                             set(layout.v2_controllers))
    except KernelError:
        mode, controllers = "none", []
    runtimes = {}
    for name in KNOWN_RUNTIMES:
        try:
            path = ociruntime.find(name)
        except EngineError:
            continue
        runtimes[name] = {"path": path, "version": _tool_version(path)}
    default = ociruntime.DEFAULT
    try:
        conmon = monitor.find_conmon()
    except EngineError:
        conmon = ""
    mem = _meminfo()
    rel = _os_release()
    cs = engine.containers()
    with open("/proc/uptime") as f:
        uptime = float(f.read().split()[0])
    h, rem = divmod(int(uptime), 3600)
    return {
        "host": {
            "arch": {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine()),
            "cgroupManager": "cgroupfs",
            "cgroupVersion": "v2" if mode == "v2" else "v1",
            "cgroupMode": mode,
            "cgroupControllers": controllers,
            "conmon": {"package": "conmon", "path": conmon,
                       "version": _tool_version(conmon) if conmon else ""},
            "cpus": os.cpu_count() or 0,
            "distribution": {"distribution": rel.get("ID", ""), "version": rel.get("VERSION_ID", ""),
                             "codename": rel.get("VERSION_CODENAME", "")},
            "eventLogger": "none",
            "hostname": platform.node(),
            "kernel": platform.release(),
            "memFree": mem.get("MemFree", 0),
            "memTotal": mem.get("MemTotal", 0),
            "networkBackend": "cni",
            "ociRuntime": dict({"name": default, "package": "keel"},
                               **runtimes.get(default, {"path": "", "version": ""})),
            "os": "linux",
            "swapFree": mem.get("SwapFree", 0),
            "swapTotal": mem.get("SwapTotal", 0),
            "uptime": f"{h}h {rem // 60}m {rem % 60}s",
            "runtimes": runtimes,
        },
        "store": {
            "containerStore": {
                "number": len(cs),
                "paused": sum(c["state"] == "paused" for c in cs),
                "running": sum(c["state"] == "running" for c in cs),
                "stopped": sum(c["state"] not in ("running", "paused") for c in cs),
            },
            "graphDriverName": "overlay",
            "graphRoot": engine.root,
            "imageStore": {"number": len(engine.store.images())},
            "runRoot": engine.runroot,
            "volumePath": os.path.join(engine.root, "volumes"),
        },
        "version": version(),
    }


def version() -> dict:
    """podman's version fields, for keel (Python in place of Go)."""
    import platform

    from keel import __version__

    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
    return {"APIVersion": __version__, "Version": __version__,
            "PythonVersion": platform.python_version(), "GitCommit": "",
            "BuiltTime": "", "Built": 0, "OsArch": f"linux/{arch}", "Os": "linux"}


def prune_volumes(engine) -> tuple[list[str], int]:
    """Remove the volumes no container uses; (names, bytes freed)."""
    from keel.engine import volumes

    vdir = os.path.join(engine.root, "volumes")
    before = disk_usage(vdir)
    names = volumes.prune(engine)
    return names, max(0, before - disk_usage(vdir))


def ps_size(engine, c: dict) -> dict:
    """podman's ps --size: the writable layer's size, and that plus the image's."""
    from keel.image.errors import ImageError

    rw = disk_usage(os.path.join(engine.snapshotter.root, "active", c["id"], "upper"))
    try:
        image = engine.store.get("sha256:" + c["image_id"]).size
    except ImageError:
        image = 0
    return {"rwSize": rw, "rootFsSize": rw + image}
