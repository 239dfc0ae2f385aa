"""keel.oci.config: loading and checking config.json; every message names the field."""

import copy
import json

import pytest

from keel.errors import KeelError
from keel.oci import ConfigError
from keel.oci import config as oc
from keel.oci.spec import default_spec


@pytest.fixture
def spec():
    return copy.deepcopy(default_spec())


def test_default_spec_is_valid(spec):
    assert oc.validate(spec) is spec


def test_rootless_spec_is_valid():
    oc.validate(default_spec(rootless=True))


def test_config_error_is_a_keel_error():
    assert issubclass(ConfigError, KeelError)


def test_linux_is_filled_in(spec):
    del spec["linux"]
    del spec["hostname"]  # needs linux.namespaces to hold uts
    oc.validate(spec)
    assert spec["linux"] == {}


def test_minimal_config():
    oc.validate({"ociVersion": "1.0.2", "root": {"path": "rootfs"}})


def test_unknown_properties_are_ignored(spec):
    spec["x-future"] = {"a": [1, 2]}
    spec["process"]["x-future"] = 1
    spec["linux"]["x-future"] = None
    oc.validate(spec)


@pytest.mark.parametrize("version", ["1.0.0", "1.0.2", "1.1.0", "1.2.0", "1.0.0-rc1", "1.3.0-dev"])
def test_supported_versions(spec, version):
    spec["ociVersion"] = version
    oc.validate(spec)


@pytest.mark.parametrize("version", ["2.0.0", "0.9.0", "", "abc", "v1.0.0"])
def test_unsupported_versions(spec, version):
    spec["ociVersion"] = version
    with pytest.raises(ConfigError) as e:
        oc.validate(spec)
    assert str(e.value).startswith("ociVersion: unsupported version")


def _mut(path, value):
    def f(c):
        keys = path.split(".")
        cur = c
        for k in keys[:-1]:
            cur = cur[int(k)] if isinstance(cur, list) else cur[k]
        last = keys[-1]
        if value is _DEL:
            del cur[int(last) if isinstance(cur, list) else last]
        elif isinstance(cur, list):
            cur[int(last)] = value
        else:
            cur[last] = value
    return f


_DEL = object()

# mutation -> the exact message
MESSAGES = [
    (_mut("ociVersion", 1), "ociVersion: expected a string, got a number"),
    (_mut("ociVersion", _DEL), "ociVersion: required field is missing"),
    (_mut("root", _DEL), "root: required field is missing"),
    (_mut("root.path", ""), "root.path: must not be empty"),
    (_mut("root.path", ["rootfs"]), "root.path: expected a string, got an array"),
    (_mut("root.readonly", "yes"), "root.readonly: expected a boolean, got a string"),
    (_mut("process.args", "sh"), "process.args: expected an array, got a string"),
    (_mut("process.args", []), "process.args: must not be empty"),
    (_mut("process.args", ["sh", None]), "process.args[1]: expected a string, got null"),
    (_mut("process.cwd", _DEL), "process.cwd: required field is missing"),
    (_mut("process.cwd", "rel"), "process.cwd: 'rel' must be an absolute path"),
    (_mut("process.env", ["A=1", "B"]), "process.env[1]: 'B' is not of the form KEY=value"),
    (_mut("process.user.uid", -1), "process.user.uid: -1 is out of range for uint32"),
    (_mut("process.user.uid", 2 ** 32), "process.user.uid: 4294967296 is out of range for uint32"),
    (_mut("process.user.gid", True), "process.user.gid: expected an integer, got a boolean"),
    (_mut("process.user.gid", 1.5), "process.user.gid: expected an integer, got a number"),
    (_mut("process.user.additionalGids", [1, "2"]),
     "process.user.additionalGids[1]: expected an integer, got a string"),
    (_mut("process.terminal", 1), "process.terminal: expected a boolean, got a number"),
    (_mut("process.consoleSize", {"height": 1}), "process.consoleSize.width: required field is missing"),
    (_mut("process.capabilities.bounding", "CAP_KILL"),
     "process.capabilities.bounding: expected an array, got a string"),
    (_mut("process.rlimits.0.type", "RLIMIT_X"), None),  # accepted here: create checks known names
    (_mut("process.rlimits.0.type", "NOFILE"), "process.rlimits[0].type: unknown rlimit 'NOFILE'"),
    (_mut("process.rlimits.0.soft", 2048), "process.rlimits[0]: soft limit 2048 is above hard limit 1024"),
    (_mut("process.rlimits.0.hard", _DEL), "process.rlimits[0].hard: required field is missing"),
    (_mut("process.oomScoreAdj", "5"), "process.oomScoreAdj: expected an integer, got a string"),
    (_mut("process", []), "process: expected an object, got an array"),
    (_mut("mounts.0.destination", "proc"), "mounts[0].destination: 'proc' must be an absolute path"),
    (_mut("mounts.0.destination", ""), "mounts[0].destination: must not be empty"),
    (_mut("mounts.0.destination", _DEL), "mounts[0].destination: required field is missing"),
    (_mut("mounts.1.options", "ro"), "mounts[1].options: expected an array, got a string"),
    (_mut("mounts", {}), "mounts: expected an array, got an object"),
    (_mut("hostname", 5), "hostname: expected a string, got a number"),
    (_mut("annotations", {"a": 1}), "annotations.a: expected a string, got a number"),
    (_mut("annotations", []), "annotations: expected an object, got an array"),
    (_mut("hooks", {"prestart": [{"path": "x"}]}), "hooks.prestart[0].path: 'x' must be an absolute path"),
    (_mut("hooks", {"prestart": [{"args": []}]}), "hooks.prestart[0].path: required field is missing"),
    (_mut("hooks", {"poststop": [{"path": "/x", "timeout": -1}]}),
     "hooks.poststop[0].timeout: must be greater than zero"),
    (_mut("hooks", {"poststop": {"path": "/x"}}), "hooks.poststop: expected an array, got an object"),
    (_mut("linux", "x"), "linux: expected an object, got a string"),
    (_mut("linux.namespaces.0.type", "bogus"), "linux.namespaces[0].type: unknown namespace type 'bogus'"),
    (_mut("linux.namespaces.1", {"type": "pid"}), "linux.namespaces[1].type: namespace 'pid' is listed twice"),
    (_mut("linux.namespaces.0", {"type": "pid", "path": "x"}),
     "linux.namespaces[0].path: 'x' must be an absolute path"),
    (_mut("linux.namespaces.0", {"path": "/x"}), "linux.namespaces[0].type: required field is missing"),
    (_mut("linux.uidMappings", [{"containerID": 0, "hostID": 1, "size": 1}]),
     "linux.uidMappings: mappings are set but there is no user namespace"),
    (_mut("linux.rootfsPropagation", "bogus"), "linux.rootfsPropagation: unknown propagation 'bogus'"),
    (_mut("linux.devices", [{"type": "x", "path": "/dev/x", "major": 1, "minor": 1}]),
     "linux.devices[0].type: unknown device type 'x'"),
    (_mut("linux.devices", [{"type": "c", "path": "/dev/x"}]),
     "linux.devices[0]: major and minor are required for type 'c'"),
    (_mut("linux.devices", [{"type": "c", "path": "x", "major": 1, "minor": 1}]),
     "linux.devices[0].path: 'x' must be an absolute path"),
    (_mut("linux.cgroupsPath", "a:b:c"), None),
    (_mut("linux.intelRdt", {}), "linux.intelRdt: not supported by keel-runtime"),
    (_mut("linux.personality", {"domain": "X"}), "linux.personality.domain: unknown domain 'X'"),
    (_mut("linux.sysctl", {"a": 1}), "linux.sysctl.a: expected a string, got a number"),
    (_mut("linux.maskedPaths", "/proc"), "linux.maskedPaths: expected an array, got a string"),
    (_mut("linux.seccomp", {"defaultAction": 1}), "linux.seccomp.defaultAction: expected a string, got a number"),
    (_mut("linux.seccomp", {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["x"]}]}),
     "linux.seccomp.syscalls[0].action: required field is missing"),
]


@pytest.mark.parametrize("mutate,message", MESSAGES, ids=[str(i) for i in range(len(MESSAGES))])
def test_messages_name_the_field(spec, mutate, message):
    mutate(spec)
    if message is None:
        try:
            oc.validate(spec)
        except ConfigError as e:
            assert str(e).split(":")[0].startswith(("linux.", "process.")), e
        return
    with pytest.raises(ConfigError) as e:
        oc.validate(spec)
    assert str(e.value) == message


@pytest.mark.parametrize("field", ["hostname", "domainname"])
def test_hostname_needs_uts(spec, field):
    spec[field] = "x"
    spec["linux"]["namespaces"] = [ns for ns in spec["linux"]["namespaces"] if ns["type"] != "uts"]
    spec.pop("hostname" if field == "domainname" else "domainname", None)
    with pytest.raises(ConfigError, match=f"^{field}: setting it needs a uts namespace"):
        oc.validate(spec)
    spec[field] = ""
    oc.validate(spec)
    spec[field] = "x"
    spec["linux"]["namespaces"].append({"type": "uts", "path": "/proc/1/ns/uts"})
    oc.validate(spec)


def test_user_namespace_needs_both_mappings(spec):
    spec["linux"]["namespaces"].append({"type": "user"})
    spec["linux"]["uidMappings"] = [{"containerID": 0, "hostID": 1000, "size": 1}]
    with pytest.raises(ConfigError, match="^linux.uidMappings: a new user namespace needs"):
        oc.validate(spec)
    spec["linux"]["gidMappings"] = [{"containerID": 0, "hostID": 1000, "size": 1}]
    oc.validate(spec)


def test_joined_user_namespace_needs_no_mappings(spec):
    spec["linux"]["namespaces"].append({"type": "user", "path": "/proc/1/ns/user"})
    oc.validate(spec)


def test_time_offsets(spec):
    spec["linux"]["timeOffsets"] = {"boottime": {"secs": 5}}
    with pytest.raises(ConfigError, match="^linux.timeOffsets: offsets are set but there is no time namespace"):
        oc.validate(spec)
    spec["linux"]["namespaces"].append({"type": "time"})
    oc.validate(spec)
    spec["linux"]["timeOffsets"]["realtime"] = {"secs": 1}
    with pytest.raises(ConfigError, match="^linux.timeOffsets.realtime: unknown clock"):
        oc.validate(spec)


def test_int_ranges(spec):
    spec["process"]["rlimits"] = [{"type": "RLIMIT_NOFILE", "soft": 2 ** 64 - 1, "hard": 2 ** 64 - 1}]
    oc.validate(spec)
    spec["process"]["rlimits"][0]["hard"] = 2 ** 64
    with pytest.raises(ConfigError, match=r"^process.rlimits\[0\].hard: 18446744073709551616 is out of range"):
        oc.validate(spec)


def test_validate_process_for_exec():
    p = {"args": ["sh"], "cwd": "/", "env": ["A=B"], "user": {"uid": 1, "gid": 2}}
    assert oc.validate_process(p) is p
    with pytest.raises(ConfigError, match="^process.cwd: required field is missing"):
        oc.validate_process({"args": ["sh"]})
    with pytest.raises(ConfigError, match="^process.args: must not be empty"):
        oc.validate_process({"cwd": "/"})
    oc.validate_process({"commandLine": "sh -c true", "cwd": "/"})


def test_parse_errors_name_the_source():
    with pytest.raises(ConfigError) as e:
        oc.parse(b'{"a": ', "/b/config.json")
    assert str(e.value).startswith("/b/config.json: invalid JSON: ")
    with pytest.raises(ConfigError, match="^/b/config.json: expected a JSON object, got an array$"):
        oc.parse(b"[]", "/b/config.json")
    with pytest.raises(ConfigError, match="^p.json: invalid JSON"):
        oc.parse(b'{"a": "\xff"}', "p.json")


def test_load(tmp_path, spec):
    (tmp_path / "config.json").write_text(json.dumps(spec))
    assert oc.load(str(tmp_path)) == spec
    with pytest.raises(ConfigError) as e:
        oc.load(str(tmp_path / "nope"))
    nope = tmp_path / "nope"
    assert str(e.value) == f"{nope / 'config.json'}: no such file (is '{nope}' an OCI bundle?)"


def test_load_validates(tmp_path, spec):
    spec["process"]["args"] = "sh"
    (tmp_path / "config.json").write_text(json.dumps(spec))
    with pytest.raises(ConfigError, match="^process.args: expected an array, got a string$"):
        oc.load(str(tmp_path))


def test_namespace_flags_are_the_kernels():
    import os

    assert oc.NAMESPACE_FLAGS["mount"] == getattr(os, "CLONE_NEWNS", 0x00020000)
    assert oc.NAMESPACE_FLAGS["network"] == getattr(os, "CLONE_NEWNET", 0x40000000)
    assert oc.NAMESPACE_FLAGS["pid"] == getattr(os, "CLONE_NEWPID", 0x20000000)
    assert oc.NAMESPACE_FLAGS["user"] == getattr(os, "CLONE_NEWUSER", 0x10000000)
    assert oc.NAMESPACE_FLAGS["cgroup"] == getattr(os, "CLONE_NEWCGROUP", 0x02000000)
    assert oc.NAMESPACE_FLAGS["ipc"] == getattr(os, "CLONE_NEWIPC", 0x08000000)
    assert oc.NAMESPACE_FLAGS["uts"] == getattr(os, "CLONE_NEWUTS", 0x04000000)
