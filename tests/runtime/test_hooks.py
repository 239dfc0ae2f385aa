"""OCI hooks: each kind runs at its time, in its namespace, with the state on stdin."""

import json
import os
import time

import pytest

KINDS = ("prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop")


@pytest.fixture
def hookdir(tmp_path):
    d = tmp_path / "hooks"
    d.mkdir()
    os.chmod(d, 0o777)
    return d


def host_hook(hookdir, name, extra="", exit_code=0, timeout=None):
    """A /bin/sh script on the host: saves stdin as <name>.json, appends <name> to `order`."""
    script = hookdir / f"{name}.sh"
    script.write_text("#!/bin/sh\n"
                      f"cat > {hookdir}/{name}.json\n"
                      f"echo {name} >> {hookdir}/order\n"
                      f"readlink /proc/self/ns/net > {hookdir}/{name}.netns\n"
                      f"readlink /proc/self/ns/mnt > {hookdir}/{name}.mntns\n"
                      f"{extra}\n"
                      f"exit {exit_code}\n")
    os.chmod(script, 0o755)
    h = {"path": str(script), "args": [str(script), name]}
    if timeout is not None:
        h["timeout"] = timeout
    return h


def container_hook(name="startContainer", exit_code=0):
    """startContainer runs inside the container: its path is the rootfs's /bin/sh; /hooks is the dir."""
    return {"path": "/bin/sh",
            "args": ["sh", "-c", f"cat > /hooks/{name}.json; echo {name} >> /hooks/order; "
                     f"readlink /proc/self/ns/net > /hooks/{name}.netns; "
                     f"readlink /proc/self/ns/mnt > /hooks/{name}.mntns; exit {exit_code}"]}


def _order(hookdir):
    p = hookdir / "order"
    return p.read_text().split() if p.exists() else []


def _state(hookdir, name):
    return json.loads((hookdir / f"{name}.json").read_text())


def _all_hooks(bundle, hookdir):
    bundle.config["hooks"] = {k: [host_hook(hookdir, k)] for k in KINDS if k != "startContainer"}
    bundle.config["hooks"]["startContainer"] = [container_hook()]
    bundle.mount("/hooks", source=hookdir, options=["rbind"])


def test_each_hook_at_its_time(bundle, runtime, hookdir):
    _all_hooks(bundle, hookdir)
    bundle.config["annotations"] = {"hooked": "yes"}
    bundle.sh("echo process >> /hooks/order; sleep 1000")
    bundle.create_ok()
    assert _order(hookdir) == ["prestart", "createRuntime", "createContainer"]
    pid = bundle.state()["pid"]
    for k in ("prestart", "createRuntime", "createContainer"):
        st = _state(hookdir, k)
        assert st["id"] == bundle.id and st["bundle"] == bundle.path, (k, st)
        assert st["pid"] == pid, (k, st)
        assert st["status"] == "creating", (k, st)
        assert st["annotations"] == {"hooked": "yes"}
        assert st["ociVersion"] == "1.1.0"

    assert bundle.start().rc == 0
    deadline = time.monotonic() + 5
    while "process" not in _order(hookdir):
        assert time.monotonic() < deadline, _order(hookdir)
        time.sleep(0.01)
    order = _order(hookdir)
    assert order[:4] == ["prestart", "createRuntime", "createContainer", "startContainer"]
    assert set(order[4:]) == {"poststart", "process"}  # poststart runs while the process runs
    assert _state(hookdir, "startContainer")["pid"] == pid
    assert _state(hookdir, "poststart")["status"] == "running"
    assert _state(hookdir, "poststart")["pid"] == pid

    assert runtime("kill", bundle.id, "KILL").rc == 0
    runtime.wait_status(bundle.id, "stopped")
    assert "poststop" not in _order(hookdir)
    assert bundle.delete().rc == 0
    assert _order(hookdir)[-1] == "poststop"
    st = _state(hookdir, "poststop")
    assert st["status"] == "stopped" and st["id"] == bundle.id


def test_hook_namespaces(bundle, runtime, hookdir):
    """prestart/createRuntime/poststart/poststop: the runtime's namespaces; createContainer and
    startContainer: the container's (createContainer before pivot_root, in its mount namespace)."""
    _all_hooks(bundle, hookdir)
    bundle.sh("sleep 1000")
    bundle.create_ok()
    pid = bundle.state()["pid"]
    bundle.start()
    host_net, host_mnt = os.readlink("/proc/self/ns/net"), os.readlink("/proc/self/ns/mnt")
    ctr_net, ctr_mnt = os.readlink(f"/proc/{pid}/ns/net"), os.readlink(f"/proc/{pid}/ns/mnt")
    for k in ("prestart", "createRuntime", "poststart"):
        assert (hookdir / f"{k}.netns").read_text().strip() == host_net, k
        assert (hookdir / f"{k}.mntns").read_text().strip() == host_mnt, k
    for k in ("createContainer", "startContainer"):
        assert (hookdir / f"{k}.netns").read_text().strip() == ctr_net, k
        assert (hookdir / f"{k}.mntns").read_text().strip() == ctr_mnt, k


def test_create_container_hook_sees_rootfs_before_pivot(bundle, runtime, hookdir):
    """createContainer: host paths still resolve, and the container's mounts are already there."""
    h = host_hook(hookdir, "createContainer",
                  extra=f"ls {bundle.rootfs}/hooks > {hookdir}/listing; "
                        f"grep -c ' {bundle.rootfs}/proc ' /proc/self/mountinfo > {hookdir}/procmount")
    bundle.config["hooks"] = {"createContainer": [h]}
    bundle.mount("/hooks", source=hookdir, options=["rbind"])
    bundle.create_ok()
    assert "createContainer.sh" in (hookdir / "listing").read_text()
    assert (hookdir / "procmount").read_text().strip() == "1"


def test_hook_args_and_env(bundle, runtime, hookdir):
    # busybox picks its applet by argv[0]: "sh" runs only if args[0] reaches the hook verbatim
    bundle.config["hooks"] = {"createRuntime": [
        {"path": "/bin/busybox",
         "args": ["sh", "-c", f'echo "$0|$1|$(env | grep -v -E "^(PWD|SHLVL|_)=" | sort | tr "\\n" " ")"'
                              f' > {hookdir}/argenv', "zero", "two words"],
         "env": ["FOO=bar", "PATH=/x"]}]}
    bundle.create_ok()
    # only the hook's env: nothing of the runtime's environment (PWD is the shell's own)
    assert (hookdir / "argenv").read_text() == "zero|two words|FOO=bar PATH=/x \n"


def test_hooks_run_in_order(bundle, runtime, hookdir):
    bundle.config["hooks"] = {"createRuntime": [host_hook(hookdir, "first"), host_hook(hookdir, "second"),
                                                host_hook(hookdir, "third")]}
    bundle.create_ok()
    assert _order(hookdir) == ["first", "second", "third"]


@pytest.mark.parametrize("kind", ["createRuntime", "prestart", "createContainer"])
def test_failing_create_hook_fails_create(bundle, runtime, hookdir, kind):
    bundle.config["hooks"] = {kind: [host_hook(hookdir, kind, extra="echo hook said no >&2", exit_code=3)],
                              "poststop": [host_hook(hookdir, "poststop")]}
    r = bundle.create()
    assert r.rc != 0
    assert len(r.err_lines) == 1, r
    assert kind in r.err and "exit status 3" in r.err and "hook said no" in r.err, r
    assert runtime("state", bundle.id).rc != 0
    assert runtime.ok("list", "-q").out == ""
    # the lifecycle goes on to delete: poststop runs, with the container's state
    assert _order(hookdir)[-1] == "poststop"
    st = _state(hookdir, "poststop")
    assert st["id"] == bundle.id and st["bundle"] == bundle.path and st["status"] == "stopped"


def test_failing_create_runtime_hook_stops_later_hooks(bundle, runtime, hookdir):
    bundle.config["hooks"] = {"createRuntime": [host_hook(hookdir, "bad", exit_code=1),
                                                host_hook(hookdir, "never")],
                              "createContainer": [host_hook(hookdir, "nevercc")]}
    assert bundle.create().rc != 0
    assert _order(hookdir) == ["bad"]


def test_missing_hook_binary(bundle, runtime, hookdir):
    bundle.config["hooks"] = {"createRuntime": [{"path": str(hookdir / "nope")}]}
    r = bundle.create()
    assert r.rc != 0
    assert len(r.err_lines) == 1 and "createRuntime" in r.err and "nope" in r.err, r


def test_hook_timeout(bundle, runtime, hookdir):
    bundle.config["hooks"] = {"createRuntime": [host_hook(hookdir, "slow", extra="sleep 30", timeout=1)]}
    t0 = time.monotonic()
    r = bundle.create(timeout=20)
    took = time.monotonic() - t0
    assert r.rc != 0
    assert len(r.err_lines) == 1 and "timed out" in r.err and "createRuntime" in r.err, r
    assert took < 5, took


def test_hook_timeout_in_container(bundle, runtime, hookdir):
    bundle.config["hooks"] = {"createContainer": [host_hook(hookdir, "slowcc", extra="sleep 30", timeout=1)]}
    t0 = time.monotonic()
    r = bundle.create(timeout=20)
    assert r.rc != 0
    assert "timed out" in r.err and "createContainer" in r.err, r
    assert time.monotonic() - t0 < 5


def test_failing_poststart_is_a_warning(bundle, runtime, hookdir):
    bundle.config["hooks"] = {"poststart": [host_hook(hookdir, "poststart", exit_code=1)]}
    bundle.sh("sleep 1000").create_ok()
    r = bundle.start()
    assert r.rc == 0, r
    assert "poststart" in r.err
    assert bundle.state()["status"] == "running"


def test_failing_poststop_is_a_warning(bundle, runtime, hookdir):
    bundle.config["hooks"] = {"poststop": [host_hook(hookdir, "poststop", exit_code=1)]}
    bundle.sh("true").create_ok()
    r = bundle.delete()
    assert r.rc == 0, r
    assert "poststop" in r.err
    assert runtime("state", bundle.id).rc != 0


def test_failing_start_container_hook(bundle, runtime, hookdir):
    bundle.config["hooks"] = {"startContainer": [container_hook(exit_code=4)]}
    bundle.mount("/hooks", source=hookdir, options=["rbind"])
    bundle.sh("echo process >> /hooks/order")
    r = bundle.run()
    assert r.rc != 0
    assert "startContainer" in r.err, r
    assert _order(hookdir) == ["startContainer"]


def test_run_runs_poststop(bundle, runtime, hookdir):
    bundle.config["hooks"] = {"poststop": [host_hook(hookdir, "poststop")]}
    assert bundle.sh("exit 2").run().rc == 2
    assert _order(hookdir) == ["poststop"]
