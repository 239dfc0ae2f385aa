"""The mount flags of `keel run`: `-v SRC:DST[:OPTS]`, `--tmpfs PATH[:OPTS]` and
`--mount type=bind|volume|tmpfs,...`, checked into plain mount records (bind: a host path
that exists; volume: a name, or a fresh random one for an anonymous volume; tmpfs: options
with podman's defaults), and those records as podman's inspect shows them."""

import os
import re

from keel.engine.errors import EngineError
from keel.engine.flagvalues import abs_dest, fail, parse_bool, parse_size

BIND_OPTIONS = {"ro", "rw", "z", "Z", "rbind", "bind", "shared", "rshared", "slave", "rslave",
                "private", "rprivate", "unbindable", "runbindable", "nosuid", "suid", "nodev", "dev",
                "noexec", "exec", "nocopy", "copy"}
PROPAGATION = ("shared", "rshared", "slave", "rslave", "private", "rprivate", "unbindable",
               "runbindable")
TMPFS_FLAGS = {"rw", "ro", "nosuid", "suid", "nodev", "dev", "noexec", "exec", "sync", "async",
               "dirsync", "atime", "noatime", "diratime", "nodiratime", "relatime", "norelatime",
               "strictatime", "nostrictatime", "tmpcopyup", "notmpcopyup"}
TMPFS_VALUES = {"size", "mode", "uid", "gid", "nr_inodes", "nr_blocks"}


def _bind_like_options(opts, where, volume):
    """(mode "ro"/"rw", OCI options, nocopy) from -v's comma list."""
    ro, prop, extra, nocopy, bind = False, None, [], False, "rbind"
    for o in opts:
        if o not in BIND_OPTIONS:
            fail(f"{where}: unknown option {o!r} (ro, rw, z, Z, [r]shared, [r]slave, [r]private, "
                 "nosuid, nodev, noexec, bind, rbind, nocopy)")
        if o in ("ro", "rw"):
            ro = o == "ro"
        elif o in PROPAGATION:
            if prop:
                fail(f"{where}: more than one propagation option")
            prop = o
        elif o in ("bind", "rbind"):
            bind = o
        elif o in ("nocopy", "copy"):
            if not volume:
                fail(f"{where}: {o} applies to volumes only")
            nocopy = o == "nocopy"
        elif o in ("z", "Z"):
            continue   # SELinux relabelling: there is no SELinux policy on this host to label for
        else:
            extra.append(o)
    oci = [bind, "ro" if ro else "rw", prop or "rprivate"] + extra
    if volume:
        oci += [x for x in ("nosuid", "nodev") if x not in extra and x[2:] not in extra]
    return ("ro" if ro else "rw"), oci, nocopy


def parse_volume(spec: str) -> dict:
    """-v SRC:DST[:OPTS] (SRC a host path when it starts with / or ., else a volume name),
    or -v DST (an anonymous volume)."""
    where = f"-v {spec}"
    parts = str(spec).split(":")
    if len(parts) > 3 or not parts[0]:
        fail(f"{where}: expected SRC:DST[:OPTIONS] or DST")
    if len(parts) == 1:
        src, dst, opts = None, parts[0], []
    elif len(parts) == 2 and parts[0].startswith("/") and parts[1] and \
            set(parts[1].split(",")) <= BIND_OPTIONS:
        src, dst, opts = None, parts[0], parts[1].split(",")   # /dst:ro, anonymous
    else:
        src, dst = parts[0], parts[1]
        opts = parts[2].split(",") if len(parts) == 3 else []
    opts = [o for o in opts if o]
    dst = abs_dest(dst, where)
    if src is None or not src.startswith(("/", ".")):
        mode, oci, nocopy = _bind_like_options(opts, where, True)
        anon = src is None
        name = os.urandom(32).hex() if anon else _volume_name(src, where)
        return {"type": "volume", "name": name, "anonymous": anon, "destination": dst,
                "mode": mode, "options": oci, "nocopy": nocopy}
    mode, oci, _ = _bind_like_options(opts, where, False)
    return {"type": "bind", "source": _host_path(src, where), "destination": dst, "mode": mode,
            "options": oci}


def _volume_name(name, where):
    from keel.engine.volumes import check_name

    try:
        return check_name(name)
    except EngineError as e:
        fail(f"{where}: {e}")


def _host_path(src, where):
    path = os.path.abspath(src)
    try:
        os.stat(path)
    except OSError as e:
        fail(f"{where}: host path {path}: {(e.strerror or str(e)).lower()}")
    return path


def parse_tmpfs(spec: str) -> dict:
    """--tmpfs /path[:opt,opt,...]: podman's defaults rw,noexec,nosuid,nodev and tmpcopyup."""
    where = f"--tmpfs {spec}"
    dst, _, opts = str(spec).partition(":")
    return _tmpfs(abs_dest(dst, where), [o for o in opts.split(",") if o], where)


def _tmpfs(dst, opts, where):
    flags = {"rw": "rw", "noexec": "noexec", "nosuid": "nosuid", "nodev": "nodev"}
    values, copyup = {}, True
    opposite = {"ro": "rw", "rw": "ro", "exec": "noexec", "noexec": "exec", "suid": "nosuid",
                "nosuid": "suid", "dev": "nodev", "nodev": "dev"}
    for o in opts:
        key, sep, val = o.partition("=")
        if sep:
            if key not in TMPFS_VALUES:
                fail(f"{where}: unknown tmpfs option {o!r}")
            if key == "size":
                try:
                    val = str(parse_size(val, where) if not val.endswith("%") else val)
                except EngineError:
                    fail(f"{where}: size {val!r} is not a size")
            elif key == "mode" and not re.fullmatch(r"[0-7]{1,4}", val):
                fail(f"{where}: mode {val!r} is not an octal mode")
            elif key in ("uid", "gid", "nr_inodes", "nr_blocks") and not val.isdigit():
                fail(f"{where}: {key} {val!r} is not a number")
            values[key] = val
        elif o in ("tmpcopyup", "notmpcopyup"):
            copyup = o == "tmpcopyup"
        elif o in TMPFS_FLAGS:
            if o in opposite:
                flags.pop(opposite[o], None)
            flags[o] = o
        else:
            fail(f"{where}: unknown tmpfs option {o!r}")
    options = list(flags) + [f"{k}={v}" for k, v in values.items()] + (["tmpcopyup"] if copyup else [])
    return {"type": "tmpfs", "destination": dst, "options": options}


def parse_mount(spec: str) -> dict:
    """--mount type=bind|volume|tmpfs,source=..,target=..,readonly,... (docker's keys)."""
    where = f"--mount {spec}"
    kv = {}
    for field in str(spec).split(","):
        if not field:
            continue
        key, sep, val = field.partition("=")
        key = key.strip().lower()
        if key in kv:
            fail(f"{where}: {key} given twice")
        kv[key] = val if sep else None
    kind = kv.pop("type", None) or "volume"
    dst = kv.pop("target", None) or kv.pop("destination", None) or kv.pop("dst", None)
    src = kv.pop("source", None) or kv.pop("src", None)
    if not dst:
        fail(f"{where}: target= is required")
    dst = abs_dest(dst, where)
    ro = False
    for key in ("readonly", "ro"):
        if key in kv:
            ro = parse_bool(kv.pop(key) or "true", f"{where}: {key}")
    if kind == "tmpfs":
        if src:
            fail(f"{where}: a tmpfs takes no source")
        opts = ["ro"] if ro else []
        if kv.get("tmpfs-size") is not None:
            opts.append(f"size={kv.pop('tmpfs-size')}")
        if kv.get("tmpfs-mode") is not None:
            opts.append(f"mode={kv.pop('tmpfs-mode')}")
        for k in list(kv):
            if k in TMPFS_FLAGS or k in ("tmpcopyup", "notmpcopyup"):
                kv.pop(k)
                opts.append(k)
        _no_more(kv, where)
        return _tmpfs(dst, opts, where)
    opts = ["ro" if ro else "rw"]
    if kind == "bind":
        if not src:
            fail(f"{where}: source= is required for a bind mount")
        prop = kv.pop("bind-propagation", None)
        if prop:
            if prop not in PROPAGATION:
                fail(f"{where}: bind-propagation {prop!r}: one of {', '.join(PROPAGATION)}")
            opts.append(prop)
        if kv.pop("bind-nonrecursive", None) in ("", "true", "1"):
            opts.append("bind")
        for k in ("relabel", "z", "Z"):
            kv.pop(k, None)
        _no_more(kv, where)
        mode, oci, _ = _bind_like_options(opts, where, False)
        return {"type": "bind", "source": _host_path(src, where), "destination": dst,
                "mode": mode, "options": oci}
    if kind == "volume":
        if "volume-nocopy" in kv:
            if parse_bool(kv.pop("volume-nocopy") or "true", f"{where}: volume-nocopy"):
                opts.append("nocopy")
        _no_more(kv, where)
        mode, oci, nocopy = _bind_like_options(opts, where, True)
        anon = not src
        return {"type": "volume", "name": os.urandom(32).hex() if anon else _volume_name(src, where),
                "anonymous": anon, "destination": dst, "mode": mode, "options": oci, "nocopy": nocopy}
    fail(f"{where}: type {kind!r}: bind, volume or tmpfs")


def _no_more(kv, where):
    if kv:
        fail(f"{where}: unknown key {sorted(kv)[0]!r}")


def inspect_mounts(run: dict | None, volumes_dir: str) -> list[dict]:
    """podman's inspect "Mounts" list."""
    out = []
    for m in (run or {}).get("mounts") or []:
        if m["type"] == "tmpfs":
            continue
        rw = m.get("mode") != "ro"
        prop = next((o for o in m["options"] if o in PROPAGATION), "rprivate")
        e = {"Type": m["type"], "Destination": m["destination"], "Driver": "", "Mode": "",
             "Options": [o for o in m["options"] if o in ("rbind", "bind", "nosuid", "nodev", "noexec")],
             "RW": rw, "Propagation": prop}
        if m["type"] == "volume":
            e.update(Name=m["name"], Source=os.path.join(volumes_dir, m["name"], "_data"), Driver="local")
        else:
            e["Source"] = m["source"]
        out.append(e)
    return out
