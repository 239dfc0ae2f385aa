"""Bad input: each mistake gives one clear line on stderr naming the field or path, a non-zero
exit, and leaves nothing behind (the runtime fixture checks state, cgroups, mounts, processes)."""

import json
import os

import pytest


def _one_line(r, *needles):
    assert r.rc != 0, r
    assert len(r.err_lines) == 1, r
    assert r.err_lines[0].startswith("keel-runtime: "), r
    for n in needles:
        assert n in r.err, (n, r)
    assert "Traceback" not in r.err


def _set(path, value):
    """A mutation of the config: set (or delete, for value DELETE) the field at a dotted path."""
    def mutate(c):
        keys = path.split(".")
        cur = c
        for k in keys[:-1]:
            cur = cur[int(k)] if isinstance(cur, list) else cur.setdefault(k, {})
        last = keys[-1]
        if value is DELETE:
            del cur[last]
        elif isinstance(cur, list):
            cur[int(last)] = value
        else:
            cur[last] = value
    return mutate


DELETE = object()

CASES = {
    "args-a-string": (_set("process.args", "sh -c true"), ["process.args", "expected an array, got a string"]),
    "args-empty": (_set("process.args", []), ["process.args", "must not be empty"]),
    "arg-a-number": (_set("process.args", ["sh", 3]), ["process.args[1]", "expected a string"]),
    "missing-rootfs": (_set("root.path", "no-such-rootfs"), ["root.path", "no-such-rootfs"]),
    "no-root": (_set("root", DELETE), ["root", "required"]),
    "unknown-namespace": (_set("linux.namespaces.0.type", "bogus"),
                          ["linux.namespaces[0].type", "unknown namespace type 'bogus'"]),
    "namespace-twice": (_set("linux.namespaces.1.type", "pid"), ["linux.namespaces[1].type", "twice"]),
    "namespace-relative-path": (lambda c: c["linux"]["namespaces"].__setitem__(
        0, {"type": "pid", "path": "proc/1/ns/pid"}), ["linux.namespaces[0].path", "absolute"]),
    "oci-version-2": (_set("ociVersion", "2.0.0"), ["ociVersion", "2.0.0"]),
    "oci-version-missing": (_set("ociVersion", DELETE), ["ociVersion", "required"]),
    "unknown-rlimit": (_set("process.rlimits", [{"type": "RLIMIT_BOGUS", "soft": 1, "hard": 1}]),
                       ["process.rlimits[0].type", "RLIMIT_BOGUS"]),
    "not-an-rlimit": (_set("process.rlimits", [{"type": "NOFILE", "soft": 1, "hard": 1}]),
                      ["process.rlimits[0].type", "NOFILE"]),
    "rlimit-soft-above-hard": (_set("process.rlimits", [{"type": "RLIMIT_NOFILE", "soft": 10, "hard": 5}]),
                               ["process.rlimits[0]", "soft"]),
    "cwd-relative": (_set("process.cwd", "tmp"), ["process.cwd", "absolute"]),
    "cwd-missing": (_set("process.cwd", DELETE), ["process.cwd", "required"]),
    "env-without-equals": (_set("process.env", ["PATH=/bin", "JUSTANAME"]), ["process.env[1]", "JUSTANAME"]),
    "uid-negative": (_set("process.user.uid", -1), ["process.user.uid", "out of range"]),
    "uid-a-string": (_set("process.user.uid", "root"), ["process.user.uid", "expected an integer"]),
    "terminal-a-string": (_set("process.terminal", "yes"), ["process.terminal", "expected a boolean"]),
    "no-process": (_set("process", DELETE), ["process", "required"]),
    "mount-relative-destination": (_set("mounts", [{"destination": "tmp", "type": "tmpfs", "source": "tmpfs"}]),
                                   ["mounts[0].destination", "absolute"]),
    "mount-no-destination": (_set("mounts", [{"type": "tmpfs", "source": "tmpfs"}]),
                             ["mounts[0].destination", "required"]),
    "mount-options-string": (_set("mounts", [{"destination": "/x", "type": "tmpfs", "options": "ro"}]),
                             ["mounts[0].options", "expected an array"]),
    "idmapped-mount": (_set("mounts", [{"destination": "/x", "type": "bind", "source": "/tmp",
                                        "uidMappings": [{"containerID": 0, "hostID": 1, "size": 1}]}]),
                       ["mounts[0]", "idmapped"]),
    "hook-relative-path": (_set("hooks", {"prestart": [{"path": "bin/true"}]}),
                           ["hooks.prestart[0].path", "absolute"]),
    "hook-zero-timeout": (_set("hooks", {"poststart": [{"path": "/bin/true", "timeout": 0}]}),
                          ["hooks.poststart[0].timeout"]),
    "annotations-not-strings": (_set("annotations", {"a": 1}), ["annotations.a", "expected a string"]),
    "systemd-cgroups-path": (_set("linux.cgroupsPath", "system.slice:keel:abc"), ["linux.cgroupsPath", "systemd"]),
    "unsupported-intel-rdt": (_set("linux.intelRdt", {"closID": "x"}), ["linux.intelRdt", "not supported"]),
    "bad-rootfs-propagation": (_set("linux.rootfsPropagation", "sideways"), ["linux.rootfsPropagation", "sideways"]),
    "bad-personality": (_set("linux.personality", {"domain": "WINDOWS"}), ["linux.personality.domain", "WINDOWS"]),
    "uid-mappings-without-userns": (_set("linux.uidMappings", [{"containerID": 0, "hostID": 1000, "size": 1}]),
                                    ["linux.uidMappings", "no user namespace"]),
    "mapping-size-string": (lambda c: (c["linux"]["namespaces"].append({"type": "user"}),
                                       c["linux"].update(uidMappings=[{"containerID": 0, "hostID": 1, "size": "1"}],
                                                         gidMappings=[{"containerID": 0, "hostID": 1, "size": 1}])),
                            ["linux.uidMappings[0].size"]),
    "time-offsets-unknown-clock": (lambda c: (c["linux"]["namespaces"].append({"type": "time"}),
                                              c["linux"].update(timeOffsets={"realtime": {"secs": 1}})),
                                   ["linux.timeOffsets.realtime"]),
    "sysctl-not-a-string": (_set("linux.sysctl", {"net.ipv4.ip_forward": 1}),
                            ["linux.sysctl.net.ipv4.ip_forward", "expected a string"]),
    "seccomp-a-string": (_set("linux.seccomp", "default"), ["linux.seccomp", "expected an object"]),
    "seccomp-no-default-action": (
        _set("linux.seccomp", {"syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO"}]}),
        ["linux.seccomp.defaultAction"]),
    "seccomp-bad-action": (_set("linux.seccomp", {"defaultAction": "SCMP_ACT_BOGUS"}),
                           ["linux.seccomp.defaultAction", "SCMP_ACT_BOGUS"]),
    "seccomp-names-a-string": (_set("linux.seccomp", {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": "mkdir", "action": "SCMP_ACT_ERRNO"}]}), ["linux.seccomp.syscalls[0].names"]),
    "seccomp-bad-operator": (_set("linux.seccomp", {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_XX"}]}]}),
        ["linux.seccomp.syscalls[0].args[0].op", "SCMP_CMP_XX"]),
    "seccomp-bad-arch": (_set("linux.seccomp", {"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_Z80"]}),
                         ["linux.seccomp.architectures[0]", "SCMP_ARCH_Z80"]),
    "seccomp-errno-with-allow": (_set("linux.seccomp", {"defaultAction": "SCMP_ACT_ALLOW", "defaultErrnoRet": 1}),
                                 ["linux.seccomp.defaultErrnoRet"]),
    "device-bad-type": (_set("linux.devices", [{"path": "/dev/x", "type": "z", "major": 1, "minor": 1}]),
                        ["linux.devices[0].type"]),
    "capability-set-a-string": (_set("process.capabilities", {"bounding": "CAP_KILL"}),
                                ["process.capabilities.bounding", "expected an array"]),
    "linux-not-an-object": (_set("linux", []), ["linux", "expected an object"]),
    "exec-not-found": (_set("process.args", ["/bin/no-such"]), ["/bin/no-such"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_config(bundle, runtime, case):
    mutate, needles = CASES[case]
    mutate(bundle.config)
    r = bundle.create()
    _one_line(r, *needles)
    assert runtime.ok("list", "-q").out == ""
    # run fails the same way
    r2 = bundle.run()
    assert r2.rc != 0 and r2.err == r.err, (r, r2)


def test_invalid_json(bundle, runtime):
    with open(os.path.join(bundle.path, "config.json"), "w") as f:
        f.write('{"ociVersion": "1.1.0", "process": {')
    r = runtime("create", "--bundle", bundle.path, bundle.id)
    _one_line(r, os.path.join(bundle.path, "config.json"), "invalid JSON")


def test_config_not_an_object(bundle, runtime):
    with open(os.path.join(bundle.path, "config.json"), "w") as f:
        f.write("[1, 2]")
    r = runtime("create", "--bundle", bundle.path, bundle.id)
    _one_line(r, "config.json", "expected a JSON object")


def test_config_not_utf8(bundle, runtime):
    with open(os.path.join(bundle.path, "config.json"), "wb") as f:
        f.write(b'{"ociVersion": "\xff"}')
    r = runtime("create", "--bundle", bundle.path, bundle.id)
    _one_line(r, "config.json")


def test_bundle_without_config(runtime, tmp_path):
    r = runtime("create", "--bundle", tmp_path, "kt-no-config")
    _one_line(r, str(tmp_path / "config.json"), "no such file")


def test_bundle_missing(runtime, tmp_path):
    r = runtime("create", "--bundle", tmp_path / "nowhere", "kt-no-bundle")
    _one_line(r, str(tmp_path / "nowhere"))


def test_id_that_exists(bundle, runtime):
    bundle.sh("sleep 1000").create_ok()
    pid = bundle.state()["pid"]
    r = bundle.create()
    _one_line(r, bundle.id, "already exists")
    # the first container is untouched
    st = bundle.state()
    assert st["status"] == "created" and st["pid"] == pid


@pytest.mark.parametrize("cid", ["a/b", "..", ".", "has space", "", "x" * 1025, "semi;colon", "ünï"])
def test_invalid_id(bundle, runtime, cid):
    bundle.save()
    r = runtime("create", "--bundle", bundle.path, cid)
    _one_line(r, "invalid container id")
    assert not os.path.exists(runtime.root) or os.listdir(runtime.root) == []


@pytest.mark.parametrize("argv,needle", [
    (["create", "--nope", "x"], "flag provided but not defined: -nope"),
    (["--nope", "list"], "flag provided but not defined: -nope"),
    (["frobnicate"], "no such command"),
    (["create"], "wrong number of arguments"),
    (["start", "a", "b"], "wrong number of arguments"),
    (["create", "--bundle"], "flag needs an argument"),
    (["delete", "--force=maybe", "x"], "invalid boolean value"),
    (["list", "--format", "yaml"], "--format"),
    (["--log-format", "xml", "list"], "--log-format"),
    (["--systemd-cgroup", "list"], "systemd"),
    (["create", "--preserve-fds", "-3", "x"], "--preserve-fds"),
    (["create", "--preserve-fds", "many", "x"], "--preserve-fds"),
])
def test_bad_command_line(runtime, argv, needle, tmp_path):
    r = runtime(*argv, cwd=tmp_path)
    _one_line(r, needle)
    assert runtime.ok("list", "-q").out == ""


@pytest.mark.parametrize("sig", ["SIGNOPE", "0", "65", "KILLL", "9x"])
def test_bad_signal(bundle, runtime, sig):
    bundle.start_detached()
    r = runtime("kill", bundle.id, sig)
    _one_line(r, "invalid signal", sig)
    assert bundle.state()["status"] == "running"


@pytest.mark.parametrize("verb", ["start", "state", "kill", "delete", "ps", "pause", "resume"])
def test_missing_container(runtime, verb):
    r = runtime(verb, "kt-never-created")
    _one_line(r, "container 'kt-never-created' does not exist")


def test_corrupt_state(bundle, runtime):
    bundle.sh("sleep 1000").create_ok()
    with open(os.path.join(runtime.root, bundle.id, "state.json"), "r+") as f:
        data = json.load(f)
        f.seek(0)
        f.write("{broken")
        f.truncate()
    r = runtime("state", bundle.id)
    _one_line(r, bundle.id, "state.json")
    # still removable: restore for the fixture's force-delete
    with open(os.path.join(runtime.root, bundle.id, "state.json"), "w") as f:
        json.dump(data, f)


def test_unknown_fields_are_ignored(bundle, runtime):
    """The spec: unknown properties MUST be ignored."""
    bundle.config["futureField"] = {"x": 1}
    bundle.process["futureProcessField"] = True
    bundle.linux["futureLinuxField"] = [1]
    assert bundle.sh("echo fine").run().out == "fine\n"
