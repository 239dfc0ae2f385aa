"""config.json -> the agent's CREATE/EXEC fields, and the host side of the share.

The host does the parsing (mount options to MS_* flags, capability names to masks, rlimit
names to numbers) so the guest agent stays a small C program that only applies numbers.
Everything in the config is either honoured in the guest or refused with an error naming the
field; the few parts that have no meaning inside a VM are listed by ignored() and logged.
"""

import os

from keel.kernel import libc
from keel.kernel.caps import CapSets
from keel.oci.config import NAMESPACE_FLAGS
from keel.runtime.process import RLIMITS
from keel.runtime.rootfs import DEFAULT_DEVICES, parse_options
from keel.vm.errors import VMError

# Host-side security layers that Kata also leaves to the VM boundary (disable_guest_seccomp,
# no guest LSM): the guest kernel is the isolation, and its own policy has no host objects.
_IGNORED = (("linux", "seccomp"), ("process", "apparmorProfile"), ("process", "selinuxLabel"),
            ("linux", "mountLabel"), ("process", "oomScoreAdj"))


def ignored(config):
    """The parts of `config` that keel-vm leaves to the VM boundary (logged with --debug)."""
    out = [f"{a}.{b}" for a, b in _IGNORED if (config.get(a) or {}).get(b) is not None]
    res = (config.get("linux") or {}).get("resources") or {}
    out += [f"linux.resources.{k}" for k in res if k not in ("memory", "cpu", "pids", "unified") and res[k]]
    out += [f"linux.resources.cpu.{k}" for k in ("cpus", "mems", "realtimeRuntime", "realtimePeriod")
            if (res.get("cpu") or {}).get(k)]
    return out


def guest_cgroup(config):
    """linux.resources as cgroup v2 files of the container's cgroup in the guest: (names, values)."""
    from keel.kernel.cgroups import shares_to_weight

    res = (config.get("linux") or {}).get("resources") or {}
    out = {}
    mem = res.get("memory") or {}
    if mem.get("limit") is not None and mem["limit"] > 0:
        out["memory.max"] = str(mem["limit"])
    if mem.get("reservation") is not None and mem["reservation"] > 0:
        out["memory.low"] = str(mem["reservation"])
    pids = res.get("pids") or {}
    if pids.get("limit") is not None:
        out["pids.max"] = str(pids["limit"]) if pids["limit"] > 0 else "max"
    cpu = res.get("cpu") or {}
    if cpu.get("quota") is not None and cpu["quota"] > 0:
        out["cpu.max"] = f"{cpu['quota']} {cpu.get('period') or 100000}"
    if cpu.get("shares"):
        out["cpu.weight"] = str(shares_to_weight(cpu["shares"]))
    for k, v in (res.get("unified") or {}).items():
        if "/" in k or k.startswith("."):
            raise VMError(f"linux.resources.unified: {k!r} is not a cgroup file name")
        out[k] = v
    return list(out), [out[k] for k in out]
_GUEST_NS = ("pid", "mount", "ipc", "uts", "cgroup", "network")
_MASK = (1 << 64) - 1


def _i64(v):
    """Masks go on the wire as int64: fold bit 63 into the negative range."""
    v &= _MASK
    return v - (1 << 64) if v >= 1 << 63 else v


class Share:
    """What the host must expose under the share directory: (name in share, host path, read-only)."""

    def __init__(self):
        self.entries = []

    def add(self, host_path, readonly):
        name = f"m{len(self.entries)}"
        self.entries.append((name, host_path, readonly))
        return name


def network_path(config):
    """The host network namespace (engine's or CNI's) the container's network lives in, if any."""
    for ns in (config.get("linux") or {}).get("namespaces") or ():
        if ns["type"] == "network" and ns.get("path"):
            return ns["path"]
    return None


def namespaces(config, warn):
    flags = 0
    listed = set()
    for ns in (config.get("linux") or {}).get("namespaces") or ():
        t, path = ns["type"], ns.get("path")
        listed.add(t)
        if t == "user":
            raise VMError("linux.namespaces: user namespaces are not supported by keel-vm "
                          "(the VM is the isolation boundary; run the container without one)")
        if t == "time":
            raise VMError("linux.namespaces: time namespaces are not supported by keel-vm")
        if path:
            if t == "network":
                # extended into the VM (hostnet): the container uses the guest's own namespace,
                # where the NIC that mirrors the host namespace's interface lives
                if not os.path.exists(path):
                    raise VMError(f"linux.namespaces: network namespace {path}: no such file")
                continue
            raise VMError(f"linux.namespaces: joining the host's {t} namespace ({path}) is not "
                          "possible from inside a VM")
        flags |= NAMESPACE_FLAGS[t]
    if "network" not in listed:
        warn("linux.namespaces: no network namespace (the host's network): a VM cannot share it; "
             "the container has the VM's loopback only")
    if not flags & NAMESPACE_FLAGS["mount"]:
        flags |= NAMESPACE_FLAGS["mount"]  # the agent's own mounts must never be the container's
    return flags


def _no_nul(values, where):
    for i, v in enumerate(values):
        if "\0" in v:
            raise VMError(f"{where}[{i}]: contains a NUL byte")


def _guest_path(path, where):
    if not path.startswith("/") or ".." in path.split("/") or "\0" in path:
        raise VMError(f"{where}: {path!r} must be an absolute path without '..'")


def process_fields(process):
    _no_nul(process.get("args") or [], "process.args")
    _no_nul(process.get("env") or [], "process.env")
    _guest_path(process.get("cwd") or "/", "process.cwd")
    user = process.get("user") or {}
    caps = CapSets(process.get("capabilities"))
    rl = [(RLIMITS[r["type"]], r["soft"], r["hard"]) for r in process.get("rlimits") or ()
          if r["type"] in RLIMITS]
    unknown = [r["type"] for r in process.get("rlimits") or () if r["type"] not in RLIMITS]
    if unknown:
        raise VMError(f"process.rlimits: unknown rlimit {unknown[0]!r}")
    if process.get("commandLine"):
        raise VMError("process.commandLine: Windows command lines are not supported")
    return {
        "args": process["args"], "env": process.get("env") or [], "cwd": process.get("cwd") or "/",
        "uid": user.get("uid", 0), "gid": user.get("gid", 0),
        "groups": user.get("additionalGids") or [],
        "umask": user.get("umask", 0o022) if user.get("umask") is not None else 0o022,
        "rl_type": [t for t, _, _ in rl], "rl_soft": [_i64(s) for _, s, _ in rl],
        "rl_hard": [_i64(h) for _, _, h in rl],
        "cap_bnd": _i64(caps.bounding), "cap_eff": _i64(caps.effective), "cap_prm": _i64(caps.permitted),
        "cap_inh": _i64(caps.inheritable), "cap_amb": _i64(caps.ambient),
        "nnp": 1 if process.get("noNewPrivileges") else 0,
        "terminal": 1 if process.get("terminal") else 0,
    }


def check_hooks(config):
    """Host-side hooks run on the host as with runc; the in-container ones cannot (their binaries
    and namespaces are inside the VM)."""
    hooks = config.get("hooks") or {}
    for kind in ("createContainer", "startContainer"):
        if hooks.get(kind):
            raise VMError(f"hooks.{kind}: these hooks run in the container's namespaces, which are "
                          "inside the VM; keel-vm does not support them")


def create_fields(config, share, warn):
    """CREATE's fields for `config`; bind-mount sources are added to `share`."""
    check_hooks(config)
    linux = config.get("linux") or {}
    if config.get("process") is None:
        raise VMError("process: required to create a container")
    fields = process_fields(config["process"])
    size = config["process"].get("consoleSize")
    if size and config["process"].get("terminal"):
        fields["console_size"] = (size.get("height", 0), size.get("width", 0))  # for the shim, not the wire
    fields["cg_key"], fields["cg_val"] = guest_cgroup(config)
    fields.update(rootfs="rootfs", readonly=1 if config["root"].get("readonly") else 0,
                  hostname=config.get("hostname") or "", nsflags=namespaces(config, warn))
    if config.get("domainname"):
        raise VMError("domainname: not supported by keel-vm yet")
    mt, ms, md, mf, mdata, mp = [], [], [], [], [], []
    for i, m in enumerate(config.get("mounts") or ()):
        dest = m["destination"]
        if ".." in dest.split("/"):
            raise VMError(f"mounts[{i}].destination: {dest!r} must not contain '..'")
        flags, prop, data, extras = parse_options(m.get("options"))
        mtype = m.get("type") or ""
        src = m.get("source") or mtype
        if flags & libc.MS_BIND or mtype == "bind":
            flags |= libc.MS_BIND
            if not os.path.isabs(src):
                raise VMError(f"mounts[{i}].source: {src!r} must be an absolute path for a bind mount")
            if not os.path.exists(src):
                raise VMError(f"mounts[{i}].source: {src}: no such file or directory")
            src = f"/keel/share/{share.add(src, bool(flags & libc.MS_RDONLY))}"
            mtype = ""
        elif mtype in ("cgroup", "cgroup2"):
            mtype, src, data = "cgroup2", "cgroup2", ""
        if "tmpcopyup" in extras:
            raise VMError(f"mounts[{i}].options: tmpcopyup is not supported by keel-vm")
        if extras - {"tmpcopyup"}:
            raise VMError(f"mounts[{i}].options: {sorted(extras)[0]} is not supported by keel-vm")
        pflags = 0
        for p in prop:
            pflags |= p
        mt.append(mtype), ms.append(src), md.append(dest), mf.append(flags), mdata.append(data), mp.append(pflags)
    fields.update(mnt_type=mt, mnt_src=ms, mnt_dst=md, mnt_flags=mf, mnt_data=mdata, mnt_prop=mp)
    devices = []
    dev_tmpfs = any(m["destination"] == "/dev" for m in config.get("mounts") or ())
    if dev_tmpfs:
        devices += [(p, t, ma, mi, 0o666, 0, 0) for p, t, ma, mi in DEFAULT_DEVICES]
    for d in linux.get("devices") or ():
        t = "c" if d["type"] == "u" else d["type"]
        devices.append((d["path"], t, d.get("major") or 0, d.get("minor") or 0,
                        d.get("fileMode") if d.get("fileMode") is not None else 0o666,
                        d.get("uid") or 0, d.get("gid") or 0))
    fields["dev_path"] = [d[0] for d in devices]
    fields["dev_spec"] = [v for d in devices for v in (ord(d[1]),) + d[2:]]
    for i, d in enumerate(fields["dev_path"]):
        _guest_path(d, f"linux.devices[{i}].path")
    fields["masked"] = linux.get("maskedPaths") or []
    fields["ro_paths"] = linux.get("readonlyPaths") or []
    for field, key in (("masked", "maskedPaths"), ("ro_paths", "readonlyPaths")):
        for i, path in enumerate(fields[field]):
            _guest_path(path, f"linux.{key}[{i}]")
    sysctl = linux.get("sysctl") or {}
    for key in sysctl:
        parts = key.replace("/", ".").split(".")
        if not key or "/" in key or any(not p or not all(c.isalnum() or c in "_-" for c in p) for p in parts):
            raise VMError(f"linux.sysctl: {key!r} is not a sysctl name")
    fields["sysctl_key"] = list(sysctl)
    fields["sysctl_val"] = [sysctl[k] for k in sysctl]
    return fields


def vm_size(config, host_cpus=None):
    """(memory MiB, vCPUs) from linux.resources: the memory limit sizes the VM, the quota its vCPUs."""
    from keel.vm.qemu import DEFAULT_MEMORY_MIB, GUEST_OVERHEAD_MIB

    res = (config.get("linux") or {}).get("resources") or {}
    mem = DEFAULT_MEMORY_MIB
    limit = (res.get("memory") or {}).get("limit")
    if limit is not None and limit > 0:
        mem = -(-limit // (1 << 20)) + GUEST_OVERHEAD_MIB
    cpu = res.get("cpu") or {}
    vcpus = 1
    quota, period = cpu.get("quota"), cpu.get("period") or 100000
    if quota and quota > 0:
        vcpus = max(1, -(-quota // period))
    host_cpus = host_cpus or os.cpu_count() or 1
    return mem, min(vcpus, host_cpus)
