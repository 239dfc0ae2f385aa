"""OCI runtime-spec config.json: load, check every field keel reads, fill defaults.

The config stays the parsed JSON dict (that is what hooks, engines and `spec`
exchange); this module guarantees its shape, so the runtime can index it without
re-checking. Unknown properties are ignored, as the spec requires; known ones
that keel cannot honour are refused with an error naming them.
"""

import os

from keel.oci import fastjson
from keel.oci.errors import ConfigError

SUPPORTED_MAJOR = 1

NAMESPACE_FLAGS = {
    "pid": 0x20000000,
    "network": 0x40000000,
    "mount": 0x00020000,
    "ipc": 0x08000000,
    "uts": 0x04000000,
    "user": 0x10000000,
    "cgroup": 0x02000000,
    "time": 0x00000080,
}

HOOK_KINDS = ("prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop")
CAP_SETS = ("bounding", "effective", "inheritable", "permitted", "ambient")

# Field schemas: a type name, ("list", schema), ("map", schema), or a dict of
# field -> (schema, required).
_IDMAP = {"containerID": ("uint32", True), "hostID": ("uint32", True), "size": ("uint32", True)}
_HOOK = {"path": ("str", True), "args": (("list", "str"), False), "env": (("list", "str"), False),
         "timeout": ("int", False)}
_RLIMIT = {"type": ("str", True), "hard": ("uint64", True), "soft": ("uint64", True)}
_CAPS = {name: (("list", "str"), False) for name in CAP_SETS}
_USER = {"uid": ("uint32", True), "gid": ("uint32", True), "umask": ("uint32", False),
         "additionalGids": (("list", "uint32"), False), "username": ("str", False)}
_PROCESS = {
    "terminal": ("bool", False),
    "consoleSize": ({"height": ("uint32", True), "width": ("uint32", True)}, False),
    "user": (_USER, False),
    "args": (("list", "str"), False),
    "commandLine": ("str", False),
    "env": (("list", "str"), False),
    "cwd": ("str", True),
    "capabilities": (_CAPS, False),
    "rlimits": (("list", _RLIMIT), False),
    "noNewPrivileges": ("bool", False),
    "apparmorProfile": ("str", False),
    "oomScoreAdj": ("int", False),
    "selinuxLabel": ("str", False),
    "ioPriority": ({"class": ("str", True), "priority": ("int", False)}, False),
    "scheduler": ({"policy": ("str", True), "nice": ("int", False), "priority": ("int", False),
                   "flags": (("list", "str"), False), "runtime": ("uint64", False),
                   "deadline": ("uint64", False), "period": ("uint64", False)}, False),
}
_MOUNT = {"destination": ("str", True), "source": ("str", False), "type": ("str", False),
          "options": (("list", "str"), False), "uidMappings": (("list", _IDMAP), False),
          "gidMappings": (("list", _IDMAP), False)}
_DEVICE = {"type": ("str", True), "path": ("str", True), "major": ("int64", False),
           "minor": ("int64", False), "fileMode": ("uint32", False), "uid": ("uint32", False),
           "gid": ("uint32", False)}
_SECCOMP_ARG = {"index": ("uint32", True), "value": ("uint64", True), "valueTwo": ("uint64", False),
                "op": ("str", True)}
_SECCOMP = {
    "defaultAction": ("str", False),
    "defaultErrnoRet": ("uint32", False),
    "architectures": (("list", "str"), False),
    "flags": (("list", "str"), False),
    "listenerPath": ("str", False),
    "listenerMetadata": ("str", False),
    "syscalls": (("list", {"names": (("list", "str"), True), "action": ("str", True),
                           "errnoRet": ("uint32", False), "args": (("list", _SECCOMP_ARG), False)}),
                 False),
}
_LINUX = {
    "namespaces": (("list", {"type": ("str", True), "path": ("str", False)}), False),
    "uidMappings": (("list", _IDMAP), False),
    "gidMappings": (("list", _IDMAP), False),
    "timeOffsets": (("map", {"secs": ("int64", False), "nanosecs": ("uint32", False)}), False),
    "devices": (("list", _DEVICE), False),
    "cgroupsPath": ("str", False),
    "resources": ("object", False),  # checked by keel.kernel.cgroups when applied
    "rootfsPropagation": ("str", False),
    "seccomp": (_SECCOMP, False),
    "sysctl": (("map", "str"), False),
    "maskedPaths": (("list", "str"), False),
    "readonlyPaths": (("list", "str"), False),
    "mountLabel": ("str", False),
    "personality": ({"domain": ("str", True), "flags": (("list", "str"), False)}, False),
}
_CONFIG = {
    "ociVersion": ("str", True),
    "root": ({"path": ("str", True), "readonly": ("bool", False)}, False),
    "mounts": (("list", _MOUNT), False),
    "process": (_PROCESS, False),
    "hostname": ("str", False),
    "domainname": ("str", False),
    "hooks": ({k: (("list", _HOOK), False) for k in HOOK_KINDS}, False),
    "annotations": (("map", "str"), False),
    "linux": (_LINUX, False),
}

# Linux fields keel does not implement: refusing them beats silently ignoring them.
_UNSUPPORTED_LINUX = ("intelRdt", "netDevices", "memoryPolicy")

_INT_RANGES = {
    "uint32": (0, 2**32 - 1),
    "uint64": (0, 2**64 - 1),
    "int64": (-(2**63), 2**63 - 1),
    "int": (-(2**63), 2**63 - 1),
}
_TYPE_WORDS = {"str": "a string", "bool": "a boolean", "object": "an object"}


def _describe(schema):
    if isinstance(schema, str):
        return _TYPE_WORDS.get(schema, "an integer")
    if isinstance(schema, dict):
        return "an object"
    return "an array" if schema[0] == "list" else "an object"


def _check(value, schema, where):
    if isinstance(schema, str):
        if schema == "str":
            ok = isinstance(value, str)
        elif schema == "bool":
            ok = isinstance(value, bool)
        elif schema == "object":
            ok = isinstance(value, dict)
        else:
            ok = isinstance(value, int) and not isinstance(value, bool)
            if ok:
                lo, hi = _INT_RANGES[schema]
                if not lo <= value <= hi:
                    raise ConfigError(f"{where}: {value} is out of range for {schema}")
        if not ok:
            raise ConfigError(f"{where}: expected {_describe(schema)}, got {_json_type(value)}")
        return
    if isinstance(schema, dict):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected an object, got {_json_type(value)}")
        for field, (sub, required) in schema.items():
            v = value.get(field)
            name = f"{where}.{field}" if where else field
            if v is None:
                if required:
                    raise ConfigError(f"{name}: required field is missing")
                continue
            _check(v, sub, name)
        return
    kind, sub = schema
    if kind == "list":
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected an array, got {_json_type(value)}")
        for i, item in enumerate(value):
            _check(item, sub, f"{where}[{i}]")
    else:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected an object, got {_json_type(value)}")
        for k, item in value.items():
            _check(item, sub, f"{where}.{k}")


def _json_type(value):
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def check_version(version, where="ociVersion"):
    major = version.split(".", 1)[0]
    if not major.isdigit() or int(major) != SUPPORTED_MAJOR:
        raise ConfigError(f"{where}: unsupported version {version!r} (keel supports {SUPPORTED_MAJOR}.x)")


def parse(data, source="config.json"):
    try:
        config = fastjson.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise ConfigError(f"{source}: invalid JSON: {e}") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{source}: expected a JSON object, got {_json_type(config)}")
    return config


def load(bundle):
    """Read and check `bundle`/config.json; returns the config dict."""
    path = os.path.join(bundle, "config.json")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file (is {bundle!r} an OCI bundle?)") from None
    except OSError as e:
        raise ConfigError(f"{path}: {e.strerror.lower()}") from None
    config = parse(data, path)
    validate(config)
    return config


def validate(config):
    _check(config, _CONFIG, "")
    check_version(config["ociVersion"])
    root = config.get("root")
    if root is None:
        raise ConfigError("root: required field is missing")
    if not root["path"]:
        raise ConfigError("root.path: must not be empty")
    process = config.get("process")
    if process is not None:
        validate_process(process, "process")
    for i, m in enumerate(config.get("mounts") or ()):
        dest = m["destination"]
        if not dest:
            raise ConfigError(f"mounts[{i}].destination: must not be empty")
        if not os.path.isabs(dest):
            raise ConfigError(f"mounts[{i}].destination: {dest!r} must be an absolute path")
        if m.get("uidMappings") or m.get("gidMappings"):
            raise ConfigError(f"mounts[{i}]: idmapped mounts are not supported")
    linux = config.get("linux")
    if linux is None:
        config["linux"] = linux = {}
    for field in _UNSUPPORTED_LINUX:
        if linux.get(field) is not None:
            raise ConfigError(f"linux.{field}: not supported by keel-runtime")
    seen = set()
    for i, ns in enumerate(linux.get("namespaces") or ()):
        t = ns["type"]
        if t not in NAMESPACE_FLAGS:
            raise ConfigError(f"linux.namespaces[{i}].type: unknown namespace type {t!r}")
        if t in seen:
            raise ConfigError(f"linux.namespaces[{i}].type: namespace {t!r} is listed twice")
        seen.add(t)
        path = ns.get("path")
        if path is not None and not os.path.isabs(path):
            raise ConfigError(f"linux.namespaces[{i}].path: {path!r} must be an absolute path")
    for field in ("hostname", "domainname"):
        if config.get(field) and "uts" not in seen:
            # as runc: without a UTS namespace of its own it would be the host's name
            raise ConfigError(f"{field}: setting it needs a uts namespace in linux.namespaces")
    user_new = any(ns["type"] == "user" and not ns.get("path") for ns in linux.get("namespaces") or ())
    if user_new and not (linux.get("uidMappings") and linux.get("gidMappings")):
        raise ConfigError("linux.uidMappings: a new user namespace needs uidMappings and gidMappings")
    if (linux.get("uidMappings") or linux.get("gidMappings")) and "user" not in seen:
        raise ConfigError("linux.uidMappings: mappings are set but there is no user namespace")
    if linux.get("timeOffsets") and "time" not in seen:
        raise ConfigError("linux.timeOffsets: offsets are set but there is no time namespace")
    for clock in linux.get("timeOffsets") or ():
        if clock not in ("monotonic", "boottime"):
            raise ConfigError(f"linux.timeOffsets.{clock}: unknown clock (monotonic or boottime)")
    prop = linux.get("rootfsPropagation")
    if prop and prop not in _PROPAGATION_NAMES:
        raise ConfigError(f"linux.rootfsPropagation: unknown propagation {prop!r}")
    for i, d in enumerate(linux.get("devices") or ()):
        if d["type"] not in ("c", "b", "u", "p"):
            raise ConfigError(f"linux.devices[{i}].type: unknown device type {d['type']!r}")
        if d["type"] != "p" and (d.get("major") is None or d.get("minor") is None):
            raise ConfigError(f"linux.devices[{i}]: major and minor are required for type {d['type']!r}")
        if not os.path.isabs(d["path"]):
            raise ConfigError(f"linux.devices[{i}].path: {d['path']!r} must be an absolute path")
    cgpath = linux.get("cgroupsPath")
    if cgpath and ":" in cgpath:
        raise ConfigError(f"linux.cgroupsPath: {cgpath!r} is a systemd cgroup path; "
                          "the systemd cgroup driver is not supported (use a cgroupfs path)")
    pers = linux.get("personality")
    if pers and pers["domain"] not in ("LINUX", "LINUX32"):
        raise ConfigError(f"linux.personality.domain: unknown domain {pers['domain']!r}")
    for kind, hooks in (config.get("hooks") or {}).items():
        for i, h in enumerate(hooks or ()):
            if not os.path.isabs(h["path"]):
                raise ConfigError(f"hooks.{kind}[{i}].path: {h['path']!r} must be an absolute path")
            if h.get("timeout") is not None and h["timeout"] <= 0:
                raise ConfigError(f"hooks.{kind}[{i}].timeout: must be greater than zero")
    return config


_PROPAGATION_NAMES = ("private", "rprivate", "slave", "rslave", "shared", "rshared",
                      "unbindable", "runbindable")


def validate_process(process, where="process"):
    """Check a `process` object (from config.json or an exec process.json)."""
    _check(process, _PROCESS, where)
    if not process.get("args") and not process.get("commandLine"):
        raise ConfigError(f"{where}.args: must not be empty")
    if not os.path.isabs(process["cwd"]):
        raise ConfigError(f"{where}.cwd: {process['cwd']!r} must be an absolute path")
    for i, e in enumerate(process.get("env") or ()):
        if "=" not in e:
            raise ConfigError(f"{where}.env[{i}]: {e!r} is not of the form KEY=value")
    for i, r in enumerate(process.get("rlimits") or ()):
        if not r["type"].startswith("RLIMIT_"):
            raise ConfigError(f"{where}.rlimits[{i}].type: unknown rlimit {r['type']!r}")
        if r["soft"] > r["hard"]:
            raise ConfigError(f"{where}.rlimits[{i}]: soft limit {r['soft']} is above hard limit {r['hard']}")
    return process
