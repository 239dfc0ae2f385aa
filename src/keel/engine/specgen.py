"""The security, resource and storage options of `keel run`/`create`, with docker's and
podman's meaning, turned into a container's OCI config.

Two steps, so that bad input is refused before anything exists:

    run = parse(cap_add=[...], memory="512m", volumes=["/h:/c:ro"], ...)   # pure: checks
        every value, loads a seccomp file, names anonymous volumes; EngineError on bad input;
        the result is plain JSON data the engine keeps with the container
    made = apply(spec, run, volumes=..., rootfs=..., network=...)   # edits the spec from
        keel.image.bundle; makes missing named/anonymous volumes and copies the image's
        content into new ones; undoes what it made if it fails

The parsers live beside it: mountspec (-v, --tmpfs, --mount), seccomp_profile (profile
files and their resolution), seccomp_default (keel's default profile), flagvalues (sizes,
numbers, booleans, paths); volumes keeps the volumes.

Defaults are Docker's: its 14 capabilities, keel's default seccomp profile
(seccomp_default: the calls Docker's profile blocks), Docker's masked and read-only /proc and
/sys paths, /sys and cgroupfs read-only, no host devices, no-new-privileges off.
`--privileged` gives every capability, no seccomp filter, no masked or read-only paths,
writable /sys and cgroupfs and the host's devices.
"""

import os
import re
import stat

from keel.engine.flagvalues import abs_dest, fail, parse_bool, parse_int, parse_size
from keel.engine.mountspec import inspect_mounts, parse_mount, parse_tmpfs, parse_volume  # noqa: F401
from keel.engine.seccomp_profile import load_profile, seccomp_for
from keel.image.bundle import DOCKER_CAPS

MASKED_PATHS = ("/proc/asound", "/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
                "/sys/firmware", "/sys/devices/virtual/powercap")
READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")
READ_ONLY_TMPFS = ("/run", "/tmp", "/var/tmp")   # podman's --read-only-tmpfs (default true)
INIT_PATH = "/run/keel-init"                       # podman: /run/podman-init
INIT_CANDIDATES = ("/usr/libexec/keel/catatonit", "/usr/libexec/podman/catatonit",
                   "/usr/bin/catatonit", "/usr/bin/tini-static", "/usr/bin/tini")
DEFAULT_NOFILE, DEFAULT_NPROC = 1048576, 4194304    # podman's default ulimits
MIN_MEMORY = 6 << 20                               # docker refuses less
UNLIMITED = (1 << 64) - 1
RLIMITS = ("as", "core", "cpu", "data", "fsize", "locks", "memlock", "msgqueue", "nice", "nofile",
           "nproc", "rss", "rtprio", "rttime", "sigpending", "stack")
# Namespaced sysctls a container may set (docker's list); net.* needs its own network ns.
SYSCTL_KERNEL = ("kernel.msgmax", "kernel.msgmnb", "kernel.msgmni", "kernel.sem", "kernel.shmall",
                 "kernel.shmmax", "kernel.shmmni", "kernel.shm_rmid_forced", "kernel.domainname")



def normalize_cap(name: str, flag: str) -> str:
    from keel.kernel.caps import CAPS

    up = str(name).strip().upper()
    if up == "ALL":
        return "ALL"
    full = up if up.startswith("CAP_") else "CAP_" + up
    if full not in CAPS:
        fail(f"{flag} {name}: unknown capability {full}")
    return full


# -- security options ------------------------------------------------------------------------------

def parse_security_opts(items) -> dict:
    """--security-opt values: seccomp=FILE|unconfined, no-new-privileges[=true|false],
    mask=P1:P2, unmask=ALL|P1:P2, systempaths=unconfined (docker's unmask=ALL),
    apparmor=PROFILE|unconfined (a profile only where AppArmor is enabled), label=disable
    (accepted as podman does where SELinux is off)."""
    out = {"seccomp": None, "no_new_privileges": False, "mask": [], "unmask": [], "apparmor": None}
    for item in items or []:
        item = str(item)
        key, sep, value = item.partition("=")
        if not sep and ":" in item and key.split(":")[0] in ("seccomp", "no-new-privileges"):
            key, _, value = item.partition(":")   # docker's older key:value spelling
            sep = ":"
        where = f"--security-opt {item}"
        if key == "no-new-privileges":
            out["no_new_privileges"] = parse_bool(value, where) if sep else True
        elif key == "seccomp":
            if not value:
                fail(f"{where}: give a profile file or unconfined")
            out["seccomp"] = "unconfined" if value == "unconfined" else load_profile(value, where)
        elif key in ("mask", "unmask") and value:
            paths = value.split(":")
            for p in paths:
                if p != "ALL" and (not p.startswith("/") or ".." in p.split("/")):
                    fail(f"{where}: {p!r} is not an absolute path without '..'")
                if p == "ALL" and key == "mask":
                    fail(f"{where}: ALL is only valid for unmask")
            out[key] += paths
        elif key == "systempaths" and value == "unconfined":
            out["unmask"].append("ALL")   # docker's spelling of unmask=ALL
        elif key == "apparmor" and value:
            if value != "unconfined":
                if not os.path.exists("/sys/kernel/security/apparmor"):
                    fail(f"{where}: AppArmor is not enabled on this host")
                out["apparmor"] = value
        elif key == "label" and value == "disable":
            continue   # no SELinux labelling here: disabling it is what already happens
        elif key == "label":
            fail(f"{where}: SELinux labels are not supported (only label=disable)")
        else:
            fail(f"{where}: unknown security option (seccomp=, no-new-privileges, mask=, unmask=, "
                 "apparmor=, systempaths=unconfined, label=disable)")
    return out


# -- resources -------------------------------------------------------------------------------------

_CPUSET = re.compile(r"\d+(-\d+)?(,\d+(-\d+)?)*\Z")


def _cpu_list(text, flag):
    out = set()
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        lo, hi = int(lo), int(hi or lo)
        if hi < lo or hi - lo > 1 << 16:
            fail(f"{flag} {text}: range {part} is backwards or too large")
        out.update(range(lo, hi + 1))
    return out


def swap_accounting() -> bool:
    """Whether the memory controller can limit swap: v1 memory.memsw.*, or cgroup v2."""
    if os.path.isdir("/sys/fs/cgroup/memory"):
        return os.path.exists("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes")
    return os.path.exists("/sys/fs/cgroup/cgroup.controllers")


def parse_resources(memory=None, memory_swap=None, memory_reservation=None, cpus=None,
                    cpu_shares=None, cpu_period=None, cpu_quota=None, cpuset_cpus=None,
                    cpuset_mems=None, pids_limit=None) -> dict:
    r = {}
    if memory is not None:
        r["memory"] = parse_size(memory, "--memory")
        if r["memory"] < MIN_MEMORY:
            fail(f"--memory {memory}: the minimum memory limit is 6MB")
    if memory_reservation is not None:
        r["memory_reservation"] = parse_size(memory_reservation, "--memory-reservation")
        if "memory" in r and r["memory_reservation"] > r["memory"]:
            fail("--memory-reservation: must be below --memory")
    if memory_swap is not None:
        swap = -1 if str(memory_swap).strip() == "-1" else parse_size(memory_swap, "--memory-swap")
        if "memory" not in r:
            fail("--memory-swap: needs --memory too (it is the total of memory and swap)")
        if swap != -1 and swap < r["memory"]:
            fail(f"--memory-swap {memory_swap}: must be at least --memory (it is memory plus swap)")
        if swap != r["memory"] and not swap_accounting():
            fail("--memory-swap: this kernel has no swap accounting (no memory.memsw.* in the "
                 "cgroup v1 memory controller)")
        r["memory_swap"] = swap
    if cpus is not None:
        try:
            n = float(str(cpus).strip())
        except ValueError:
            fail(f"--cpus {cpus!r}: not a number")
        ncpu = os.cpu_count() or 1
        if not 0.01 <= n <= ncpu:
            fail(f"--cpus {cpus}: the range of CPUs is from 0.01 to {ncpu:.2f}, as there are "
                 f"only {ncpu} CPUs available")
        if cpu_period is not None or cpu_quota is not None:
            fail("--cpus: conflicts with --cpu-period and --cpu-quota")
        r["cpu_period"], r["cpu_quota"] = 100000, int(round(n * 100000))
    if cpu_period is not None:
        r["cpu_period"] = parse_int(cpu_period, "--cpu-period", 1000, 1000000)
    if cpu_quota is not None:
        q = parse_int(cpu_quota, "--cpu-quota", -1)
        if 0 <= q < 1000:
            fail(f"--cpu-quota {cpu_quota}: must be at least 1000 (microseconds)")
        r["cpu_quota"] = q
    if cpu_shares is not None:
        n = parse_int(cpu_shares, "--cpu-shares", 0, 262144)
        if n:
            if n < 2:
                fail(f"--cpu-shares {cpu_shares}: must be in 2..262144")
            r["cpu_shares"] = n
    for key, val, online in (("cpuset_cpus", cpuset_cpus, "/sys/devices/system/cpu/online"),
                             ("cpuset_mems", cpuset_mems, "/sys/devices/system/node/online")):
        if val is not None:
            flag = f"--{key.replace('_', '-')}"
            if not _CPUSET.match(str(val)):
                fail(f"{flag} {val!r}: expected a list like 0-2,4")
            try:
                with open(online) as f:
                    have = f.read().strip()
            except OSError:
                have = None   # no such information here: the kernel will judge
            if have is not None and not _cpu_list(str(val), flag) <= _cpu_list(have, flag):
                fail(f"{flag} {val}: not available (this host has {have})")
            r[key] = str(val)
    if pids_limit is not None:
        n = parse_int(pids_limit, "--pids-limit", -1)
        if n > 0:
            r["pids_limit"] = n
    return r


def parse_ulimit(item: str) -> dict:
    """--ulimit NAME=SOFT[:HARD] (-1 for unlimited)."""
    where = f"--ulimit {item}"
    name, sep, value = str(item).partition("=")
    if not sep or name.lower() not in RLIMITS:
        fail(f"{where}: expected NAME=SOFT[:HARD] with NAME one of {', '.join(RLIMITS)}")
    soft_s, _, hard_s = value.partition(":")
    hard_s = hard_s or soft_s

    def one(s):
        if s.strip() in ("-1", "unlimited"):
            return UNLIMITED
        return parse_int(s, where, 0)

    soft, hard = one(soft_s), one(hard_s)
    if soft > hard:
        fail(f"{where}: soft limit {soft} is above the hard limit {hard}")
    return {"type": "RLIMIT_" + name.upper(), "soft": soft, "hard": hard}


def parse_sysctl(item: str, network: str = "none") -> tuple[str, str]:
    where = f"--sysctl {item}"
    key, sep, value = str(item).partition("=")
    key = key.strip().replace("/", ".")
    if not sep or not key:
        fail(f"{where}: expected KEY=VALUE")
    if not re.fullmatch(r"[a-zA-Z0-9_-]+(\.[a-zA-Z0-9_-]+)+", key):
        fail(f"{where}: {key!r} is not a sysctl name")
    if key.startswith("net."):
        if network == "host":
            fail(f"{where}: net.* sysctls cannot be set with --network host")
    elif not (key in SYSCTL_KERNEL or key.startswith("fs.mqueue.")):
        fail(f"{where}: not a namespaced sysctl (kernel.msg*, kernel.sem, kernel.shm*, "
             "fs.mqueue.*, net.*)")
    return key, value


def parse_device(item: str) -> list[dict]:
    """--device HOST[:CONTAINER][:PERMS] (PERMS a subset of rwm; a directory adds every
    device below it), as docker and podman read it."""
    where = f"--device {item}"
    parts = str(item).split(":")
    if len(parts) > 3 or not parts[0]:
        fail(f"{where}: expected HOST[:CONTAINER][:PERMISSIONS]")
    host = parts[0]
    perms = "rwm"
    ctr = host
    if len(parts) == 3:
        ctr, perms = parts[1], parts[2]
    elif len(parts) == 2:
        if parts[1] and set(parts[1]) <= set("rwm") and not parts[1].startswith("/"):
            perms = parts[1]
        else:
            ctr = parts[1]
    if not perms or not set(perms) <= set("rwm"):
        fail(f"{where}: permissions {perms!r}: a combination of r, w and m")
    if not host.startswith("/"):
        fail(f"{where}: {host!r} is not an absolute host path")
    ctr = abs_dest(ctr, where)
    try:
        st = os.stat(host)
    except OSError as e:
        fail(f"{where}: {host}: {(e.strerror or str(e)).lower()}")
    found = []
    if stat.S_ISDIR(st.st_mode):
        for dirpath, _, files in os.walk(host):
            for name in sorted(files):
                path = os.path.join(dirpath, name)
                dev = _device(path)
                if dev:
                    found.append(dict(dev, host=path, path=os.path.join(ctr, os.path.relpath(path, host))))
        if not found:
            fail(f"{where}: no devices under {host}")
    else:
        dev = _device(host)
        if not dev:
            fail(f"{where}: {host} is not a device")
        found.append(dict(dev, host=host, path=ctr))
    for d in found:
        d["access"] = perms
    return found


def _device(path):
    try:
        st = os.stat(path)
    except OSError:
        return None
    if not (stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)):
        return None
    return {"path": path, "type": "c" if stat.S_ISCHR(st.st_mode) else "b",
            "major": os.major(st.st_rdev), "minor": os.minor(st.st_rdev),
            "fileMode": stat.S_IMODE(st.st_mode), "uid": st.st_uid, "gid": st.st_gid}


def _static_elf(path) -> bool:
    """Whether `path` is an ELF executable without a program interpreter (it runs in any
    container root, which need not have the host's loader and libraries)."""
    import struct

    try:
        with open(path, "rb") as f:
            head = f.read(64)
            if head[:4] != b"\x7fELF" or head[4] not in (1, 2) or head[5] not in (1, 2):
                return False
            end = "<" if head[5] == 1 else ">"
            if head[4] == 2:
                phoff, = struct.unpack(end + "Q", head[0x20:0x28])
                phentsize, phnum = struct.unpack(end + "HH", head[0x36:0x3a])
            else:
                phoff, = struct.unpack(end + "I", head[0x1c:0x20])
                phentsize, phnum = struct.unpack(end + "HH", head[0x2a:0x2e])
            for i in range(min(phnum, 256)):
                f.seek(phoff + i * phentsize)
                ptype, = struct.unpack(end + "I", f.read(4))
                if ptype == 3:   # PT_INTERP
                    return False
            return True
    except (OSError, struct.error):
        return False


def find_init(path: str | None = None) -> str:
    """The init binary for --init: --init-path, else the first statically linked one of
    catatonit and tini-static (a dynamic one would not start in most images)."""
    if path:
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return os.path.abspath(path)
    for p in () if path else INIT_CANDIDATES:
        if os.path.isfile(p) and os.access(p, os.X_OK) and _static_elf(p):
            return os.path.abspath(p)
    if path:
        fail(f"--init-path {path}: no such executable file")
    fail("--init: no statically linked catatonit or tini found (install catatonit, or give --init-path)")


# -- parse: every flag, checked ----------------------------------------------------------------------

def parse(*, cap_add=(), cap_drop=(), privileged=False, security_opt=(), read_only=False,
          read_only_tmpfs=True, memory=None, memory_swap=None, memory_reservation=None, cpus=None,
          cpu_shares=None, cpu_period=None, cpu_quota=None, cpuset_cpus=None, cpuset_mems=None,
          pids_limit=None, ulimits=(), sysctls=(), volumes=(), tmpfs=(), mounts=(), init=False,
          init_path=None, devices=(), shm_size=None, network="none") -> dict:
    """All the options, checked, as JSON data for apply(); EngineError on the first bad one."""
    sec = parse_security_opts(security_opt)
    run = {
        "cap_add": [normalize_cap(c, "--cap-add") for c in cap_add or ()],
        "cap_drop": [normalize_cap(c, "--cap-drop") for c in cap_drop or ()],
        "privileged": bool(privileged),
        "security_opt": [str(s) for s in security_opt or ()],
        "seccomp": sec["seccomp"], "no_new_privileges": sec["no_new_privileges"],
        "mask": sec["mask"], "unmask": sec["unmask"], "apparmor": sec["apparmor"],
        "read_only": bool(read_only), "read_only_tmpfs": bool(read_only_tmpfs),
        "resources": parse_resources(memory, memory_swap, memory_reservation, cpus, cpu_shares,
                                     cpu_period, cpu_quota, cpuset_cpus, cpuset_mems, pids_limit),
        "ulimits": [], "sysctls": {}, "mounts": [], "init": bool(init or init_path),
        "init_path": None, "devices": [d for item in devices or () for d in parse_device(item)],
        "shm_size": None if shm_size is None else parse_size(shm_size, "--shm-size"),
    }
    if run["shm_size"] is not None and run["shm_size"] < 1:
        fail(f"--shm-size {shm_size}: must be more than 0")
    seen = {}
    for u in ulimits or ():
        lim = parse_ulimit(u)
        seen[lim["type"]] = lim
    run["ulimits"] = list(seen.values())
    for s in sysctls or ():
        k, v = parse_sysctl(s, network)
        run["sysctls"][k] = v
    mounts_ = [parse_volume(v) for v in volumes or ()] + [parse_tmpfs(t) for t in tmpfs or ()] + \
              [parse_mount(m) for m in mounts or ()]
    dests = set()
    for m in mounts_:
        if m["destination"] in dests:
            fail(f"duplicate mount destination {m['destination']}")
        dests.add(m["destination"])
    run["mounts"] = mounts_
    if run["init"]:
        run["init_path"] = find_init(init_path)
        if INIT_PATH in dests:
            fail(f"--init: {INIT_PATH} is already a mount destination")
    return run


def add_image_volumes(run: dict, image_config: dict) -> dict:
    """An anonymous volume for each VOLUME of the image that no mount of the user covers
    (docker's and podman's default); pure, so the names are known before anything is made."""
    vols = image_config.get("Volumes") or {}
    if not isinstance(vols, dict):
        fail("image config.Volumes: expected an object")
    run = dict(run, mounts=list(run.get("mounts") or []))
    dests = {m["destination"] for m in run["mounts"]}
    for path in sorted(vols):
        dest = os.path.normpath(path) if isinstance(path, str) and path.startswith("/") else None
        if dest is None or dest == "/" or ".." in path.split("/"):
            fail(f"image config.Volumes: {path!r} is not an absolute path below /")
        if dest in dests:
            continue
        dests.add(dest)
        run["mounts"].append(
            {"type": "volume", "name": os.urandom(32).hex(), "anonymous": True, "image": True,
             "destination": dest, "mode": "rw", "options": ["rbind", "rw", "rprivate", "nosuid", "nodev"],
             "nocopy": False})
    return run


# -- apply: the spec ---------------------------------------------------------------------------------

def default_rlimits() -> list[dict]:
    """podman's default open-files and process limits (1048576 and 4194304), lowered to
    what keel itself may hand on: without CAP_SYS_RESOURCE no limit can exceed its own."""
    import resource

    out = []
    for name, want in (("NOFILE", DEFAULT_NOFILE), ("NPROC", DEFAULT_NPROC)):
        hard = resource.getrlimit(getattr(resource, "RLIMIT_" + name))[1]
        n = want if hard == resource.RLIM_INFINITY else min(want, hard)
        out.append({"type": "RLIMIT_" + name, "soft": n, "hard": n})
    return out


def all_capabilities() -> list[str]:
    """Every capability keel itself may hand on: its own bounding set (as podman's ALL and
    --privileged), which can be smaller than what the kernel knows."""
    from keel.kernel.caps import CAPS, last_cap

    bnd = (1 << (last_cap() + 1)) - 1
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapBnd:"):
                bnd = int(line.split()[1], 16)
    return [c for i, c in enumerate(CAPS) if i <= last_cap() and bnd >> i & 1]


def capabilities(run: dict) -> list[str]:
    """Docker's rules: --cap-add ALL starts from every capability, --cap-drop ALL from none;
    then the named drops, then the named adds."""
    every = all_capabilities()
    if run.get("privileged"):
        return every
    add, drop = run.get("cap_add") or [], run.get("cap_drop") or []
    if "ALL" in add:
        caps = list(every)
    elif "ALL" in drop:
        caps = []
    else:
        caps = list(DOCKER_CAPS)
    caps = [c for c in caps if c not in drop]
    for c in add:
        if c != "ALL" and c not in caps and (c not in drop or "ALL" in drop):
            caps.append(c)
    return caps


def _host_devices():
    """The host's /dev char and block devices (--privileged), as runc's HostDevices finds
    them; the container's own /dev/pts, /dev/shm, /dev/mqueue and the default devices are
    left to the runtime."""
    skip_dirs = {"pts", "shm", "mqueue", "fd", ".lxc", ".lxd-mounts", ".udev"}
    defaults = {"/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom", "/dev/tty",
                "/dev/console", "/dev/ptmx"}
    out = []
    for dirpath, dirs, files in os.walk("/dev"):
        dirs[:] = [d for d in dirs if not (dirpath == "/dev" and d in skip_dirs)]
        for name in sorted(files):
            path = os.path.join(dirpath, name)
            try:
                st = os.lstat(path)
            except OSError:
                continue
            if path in defaults or not (stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)):
                continue
            out.append({"path": path, "type": "c" if stat.S_ISCHR(st.st_mode) else "b",
                        "major": os.major(st.st_rdev), "minor": os.minor(st.st_rdev),
                        "fileMode": stat.S_IMODE(st.st_mode), "uid": st.st_uid, "gid": st.st_gid})
    return out


def _depth(path):
    return len([p for p in path.split("/") if p])


def apply(spec: dict, run: dict, *, volumes=None, rootfs: str | None = None,
          network: str = "none", used_elsewhere=None) -> list[str]:
    """Edit `spec` (from keel.image.bundle) for the parsed options; make the volumes the
    mounts need (under `volumes`, a keel.engine.volumes.Volumes) and copy the image's content
    into new ones. Returns the names of volumes made now; on failure removes those again,
    except any that `used_elsewhere(name)` says another container took meanwhile."""
    made = []
    try:
        _apply(spec, run, volumes, rootfs, network, made)
    except BaseException:
        if made and volumes is not None:
            with volumes.lock():
                for name in made:
                    if volumes.exists(name) and not (used_elsewhere and used_elsewhere(name)):
                        volumes.remove_unlocked(name)
        raise
    return made


def _apply(spec, run, vols, rootfs, network, made):
    proc = spec.setdefault("process", {})
    linux = spec.setdefault("linux", {})
    priv = bool(run.get("privileged"))

    caps = capabilities(run)
    proc["capabilities"] = {"bounding": list(caps), "effective": list(caps), "permitted": list(caps)}
    proc["noNewPrivileges"] = bool(run.get("no_new_privileges"))
    if run.get("apparmor") and not priv:
        proc["apparmorProfile"] = run["apparmor"]

    sec = run.get("seccomp")
    if sec == "unconfined" or (priv and not isinstance(sec, dict)):   # a file given still applies
        linux.pop("seccomp", None)
    else:
        from keel.engine import seccomp_default

        prof = sec["profile"] if isinstance(sec, dict) else seccomp_default.profile()
        linux["seccomp"] = seccomp_for(prof, caps)

    unmask = run.get("unmask") or []
    if priv or "ALL" in unmask:
        masked, readonly = [], []
    else:
        masked = [p for p in MASKED_PATHS if p not in unmask]
        readonly = [p for p in READONLY_PATHS if p not in unmask]
    masked += [p for p in run.get("mask") or [] if p not in masked]
    linux["maskedPaths"], linux["readonlyPaths"] = masked, readonly

    mounts = list(spec.get("mounts") or [])
    if priv:
        for m in mounts:
            if m["type"] in ("sysfs", "cgroup"):
                m["options"] = [o for o in m.get("options", []) if o != "ro"] + ["rw"]
        linux["devices"] = _host_devices()
        linux.setdefault("resources", {})["devices"] = [{"allow": True, "access": "rwm"}]

    if run.get("devices"):
        asked = {d["path"] for d in run["devices"]}
        linux["devices"] = [d for d in linux.get("devices") or [] if d["path"] not in asked] + \
            [{k: v for k, v in d.items() if k not in ("access", "host")} for d in run["devices"]]
        rules = linux.setdefault("resources", {}).setdefault("devices", [])
        rules += [{"allow": True, "type": d["type"], "major": d["major"], "minor": d["minor"],
                   "access": d["access"]} for d in run["devices"]]
    if run.get("shm_size"):
        for m in mounts:
            if m["destination"] == "/dev/shm":
                m["options"] = [o for o in m.get("options", []) if not o.startswith("size=")] + \
                    [f"size={run['shm_size']}"]

    spec.setdefault("root", {})["readonly"] = bool(run.get("read_only"))
    extra = []
    user_dests = {m["destination"] for m in run.get("mounts") or []}
    if run.get("read_only") and run.get("read_only_tmpfs", True):
        for d in READ_ONLY_TMPFS:
            if d not in user_dests:
                extra.append({"destination": d, "type": "tmpfs", "source": "tmpfs",
                              "options": ["rw", "rprivate", "nosuid", "nodev", "tmpcopyup"]})

    res = run.get("resources") or {}
    if res:
        _resources(linux.setdefault("resources", {}), res)

    limits = default_rlimits() + [dict(u) for u in run.get("ulimits") or []]
    types = {u["type"] for u in limits}
    proc["rlimits"] = [r for r in proc.get("rlimits") or [] if r["type"] not in types] + \
        list({u["type"]: u for u in limits}.values())
    if run.get("sysctls"):
        for k in run["sysctls"]:
            if k.startswith("net.") and network == "host":
                fail(f"--sysctl {k}: net.* sysctls cannot be set with --network host")
        linux["sysctl"] = dict(run["sysctls"])

    for m in run.get("mounts") or []:
        if m["type"] == "bind":
            extra.append({"destination": m["destination"], "type": "bind", "source": m["source"],
                          "options": list(m["options"])})
        elif m["type"] == "tmpfs":
            extra.append({"destination": m["destination"], "type": "tmpfs", "source": "tmpfs",
                          "options": list(m["options"])})
        elif m["type"] == "volume":
            if vols is None:
                fail("volumes need the engine's volume store")
            rec, new = vols.ensure(m["name"], anonymous=m.get("anonymous", False))
            if new:
                made.append(m["name"])
            if rootfs and not m.get("nocopy"):
                user = proc.get("user") or {}
                vols.copy_up(m["name"], rootfs, m["destination"], (user.get("uid", 0), user.get("gid", 0)))
            extra.append({"destination": m["destination"], "type": "bind",
                          "source": vols.data(m["name"]), "options": list(m["options"])})

    if run.get("init"):
        extra.append({"destination": INIT_PATH, "type": "bind", "source": run["init_path"],
                      "options": ["bind", "ro", "nosuid", "nodev", "rprivate"]})
        proc["args"] = [INIT_PATH, "--"] + list(proc.get("args") or [])

    if extra:
        dests = {m["destination"] for m in extra}
        # a user mount replaces a default one at the same place; parents mount before children
        mounts = [m for m in mounts if m["destination"] not in dests]
        mounts += sorted(extra, key=lambda m: _depth(m["destination"]))
    spec["mounts"] = mounts


def _resources(r, res):
    if "memory" in res or "memory_reservation" in res:
        mem = r.setdefault("memory", {})
        if "memory" in res:
            mem["limit"] = res["memory"]
            if "memory_swap" in res:
                mem["swap"] = res["memory_swap"]
            elif swap_accounting():
                mem["swap"] = 2 * res["memory"]   # docker and podman: as much swap as memory
        if "memory_reservation" in res:
            mem["reservation"] = res["memory_reservation"]
    cpu = {}
    for key, oci in (("cpu_shares", "shares"), ("cpu_quota", "quota"), ("cpu_period", "period"),
                     ("cpuset_cpus", "cpus"), ("cpuset_mems", "mems")):
        if key in res:
            cpu[oci] = res[key]
    if cpu:
        r.setdefault("cpu", {}).update(cpu)
    if "pids_limit" in res:
        r["pids"] = {"limit": res["pids_limit"]}


# -- what inspect shows ------------------------------------------------------------------------------

def inspect_host_config(run: dict | None) -> dict:
    """The HostConfig fields of podman's inspect that these options fill."""
    run = run or {}
    res = run.get("resources") or {}
    binds = []
    for m in run.get("mounts") or []:
        if m["type"] in ("bind", "volume") and not m.get("anonymous"):
            src = m["source"] if m["type"] == "bind" else m["name"]
            binds.append(f"{src}:{m['destination']}:{','.join(o for o in m['options'] if o not in ('rbind', 'bind'))}")
    return {
        "Binds": binds,
        "CapAdd": list(run.get("cap_add") or []),
        "CapDrop": list(run.get("cap_drop") or []),
        "Privileged": bool(run.get("privileged")),
        "ReadonlyRootfs": bool(run.get("read_only")),
        "SecurityOpt": list(run.get("security_opt") or []),
        "Memory": res.get("memory", 0),
        "MemorySwap": res.get("memory_swap", 0),
        "MemoryReservation": res.get("memory_reservation", 0),
        "NanoCpus": int(res["cpu_quota"] * 1e9 / res["cpu_period"]) if "cpu_quota" in res and res.get("cpu_period") else 0,
        "CpuShares": res.get("cpu_shares", 0),
        "CpuPeriod": res.get("cpu_period", 0),
        "CpuQuota": res.get("cpu_quota", 0),
        "CpusetCpus": res.get("cpuset_cpus", ""),
        "CpusetMems": res.get("cpuset_mems", ""),
        "PidsLimit": res.get("pids_limit", 0),
        "Ulimits": [{"Name": u["type"], "Soft": u["soft"], "Hard": u["hard"]} for u in run.get("ulimits") or []],
        "Sysctls": dict(run.get("sysctls") or {}),
        "Tmpfs": {m["destination"]: ",".join(m["options"]) for m in run.get("mounts") or [] if m["type"] == "tmpfs"},
        "Init": bool(run.get("init")),
        "Devices": [{"PathOnHost": d.get("host", d["path"]), "PathInContainer": d["path"],
                     "CgroupPermissions": d["access"]} for d in run.get("devices") or []],
        "ShmSize": run.get("shm_size") or 64 << 20,
    }
