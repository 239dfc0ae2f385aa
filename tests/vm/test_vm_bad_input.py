"""keel-vm refuses what it cannot honour before any VM boots: a clear one-line error, exit 1,
and nothing left under --root. No VM is booted here (no `vm` marker)."""

import json
import os

import pytest

from keel.vm.guestspec import vm_size


def _create(vm_runtime, vm_bundle):
    vm_bundle.write()
    return vm_runtime("create", "--bundle", vm_bundle.path, vm_bundle.id)


def _assert_refused(r, vm_runtime, vm_bundle, *words):
    assert r.returncode == 1, (r.stdout, r.stderr)
    line = r.stderr.strip()
    assert line.startswith("keel-vm: ") and "\n" not in line, line
    for w in words:
        assert w in line, line
    assert not os.path.exists(os.path.join(vm_runtime.root, vm_bundle.id))


def test_user_namespace_refused(vm_runtime, vm_bundle):
    vm_bundle.config["linux"]["namespaces"].append({"type": "user"})
    vm_bundle.config["linux"]["uidMappings"] = [{"containerID": 0, "hostID": 1000, "size": 1}]
    vm_bundle.config["linux"]["gidMappings"] = [{"containerID": 0, "hostID": 1000, "size": 1}]
    _assert_refused(_create(vm_runtime, vm_bundle), vm_runtime, vm_bundle, "user namespaces")


def test_missing_bind_source_refused(vm_runtime, vm_bundle):
    vm_bundle.config["mounts"].append({"destination": "/data", "type": "bind", "source": "/nonexistent-keel",
                                       "options": ["rbind"]})
    _assert_refused(_create(vm_runtime, vm_bundle), vm_runtime, vm_bundle, "mounts[", "/nonexistent-keel")


def test_host_pid_namespace_refused(vm_runtime, vm_bundle):
    for ns in vm_bundle.config["linux"]["namespaces"]:
        if ns["type"] == "pid":
            ns["path"] = "/proc/1/ns/pid"
    _assert_refused(_create(vm_runtime, vm_bundle), vm_runtime, vm_bundle, "pid namespace")


def test_malformed_config(vm_runtime, vm_bundle):
    with open(os.path.join(vm_bundle.path, "config.json"), "w") as f:
        f.write("{not json")
    r = vm_runtime("create", "--bundle", vm_bundle.path, vm_bundle.id)
    _assert_refused(r, vm_runtime, vm_bundle, "config.json")


def test_terminal_needs_console_socket(vm_runtime, vm_bundle):
    vm_bundle.config["process"]["terminal"] = True
    _assert_refused(_create(vm_runtime, vm_bundle), vm_runtime, vm_bundle, "--console-socket")


def test_bad_id_and_usage(vm_runtime, vm_bundle):
    r = vm_runtime("create", "--bundle", vm_bundle.path, "../evil")
    assert r.returncode == 1 and "invalid container id" in r.stderr
    r = vm_runtime("create", "--no-such-flag", "x")
    assert r.returncode == 2 and "flag provided but not defined" in r.stderr
    r = vm_runtime("state", "nope")
    assert r.returncode == 1 and "does not exist" in r.stderr
    r = vm_runtime("delete", "--force", "nope")
    assert r.returncode == 0
    r = vm_runtime("kill", "nope", "KILL")
    assert r.returncode == 1


def test_vm_size_from_resources():
    assert vm_size({}) == (256, 1)
    cfg = {"linux": {"resources": {"memory": {"limit": 512 << 20}, "cpu": {"quota": 150000, "period": 100000}}}}
    assert vm_size(cfg, host_cpus=8) == (512 + 96, 2)
    assert vm_size(cfg, host_cpus=1) == (512 + 96, 1)


def test_version_and_spec(vm_runtime, tmp_path):
    r = vm_runtime("--version")
    assert r.returncode == 0 and "keel-vm version" in r.stdout and "agent protocol: 1" in r.stdout
    r = vm_runtime("spec", "--bundle", str(tmp_path))
    assert r.returncode == 0
    assert json.load(open(tmp_path / "config.json"))["ociVersion"]
    r = vm_runtime("spec", "--bundle", str(tmp_path))
    assert r.returncode == 1 and "already exists" in r.stderr


def test_in_container_hooks_refused(vm_runtime, vm_bundle):
    vm_bundle.config["hooks"] = {"createContainer": [{"path": "/bin/true"}]}
    _assert_refused(_create(vm_runtime, vm_bundle), vm_runtime, vm_bundle, "hooks.createContainer", "inside the VM")


@pytest.mark.parametrize("change, words", [
    (lambda c: c["process"].update(args=["sh", "-c", "true\u0000evil"]), ["process.args[2]", "NUL"]),
    (lambda c: c["process"].update(env=["A=b\u0000c"]), ["process.env[0]", "NUL"]),
    (lambda c: c["linux"].update(sysctl={"../../sysrq-trigger": "c"}), ["linux.sysctl", "not a sysctl name"]),
    (lambda c: c["linux"].update(maskedPaths=["/proc/../etc"]), ["linux.maskedPaths[0]"]),
    (lambda c: c["linux"].update(readonlyPaths=["relative"]), ["linux.readonlyPaths[0]"]),
    (lambda c: c["mounts"].append({"destination": "/a/../../b", "type": "tmpfs", "source": "tmpfs"}),
     ["destination", ".."]),
    (lambda c: c["linux"].update(resources={"unified": {"../memory.max": "1"}}), ["linux.resources.unified"]),
    (lambda c: c["linux"]["namespaces"].__setitem__(
        slice(None), [n for n in c["linux"]["namespaces"] if n["type"] != "network"]
        + [{"type": "network", "path": "/run/netns/nope-kv"}]),
     ["network namespace", "/run/netns/nope-kv"]),
])
def test_hostile_config_refused_before_boot(vm_runtime, vm_bundle, change, words):
    change(vm_bundle.config)
    _assert_refused(_create(vm_runtime, vm_bundle), vm_runtime, vm_bundle, *words)
