"""create / start / state / kill / delete / run / list / ps / features / spec."""

import json
import os
import signal
import time

import pytest


def test_create_start_kill_delete(bundle, runtime):
    bundle.config["annotations"] = {"org.keel.test": "yes"}
    bundle.sh("sleep 1000")
    bundle.create_ok()
    st = bundle.state()
    assert st["status"] == "created"
    assert st["pid"] > 0 and os.path.exists(f"/proc/{st['pid']}")
    assert st["bundle"] == bundle.path
    assert st["ociVersion"] == bundle.config["ociVersion"] == "1.1.0"
    assert st["annotations"] == {"org.keel.test": "yes"}
    assert st["id"] == bundle.id

    assert bundle.start().rc == 0
    st2 = bundle.state()
    assert st2["status"] == "running" and st2["pid"] == st["pid"]
    # the init has exec'd the user process
    with open(f"/proc/{st['pid']}/cmdline", "rb") as f:
        assert f.read().split(b"\0")[0] == b"sleep"

    assert runtime("kill", bundle.id, "KILL").rc == 0
    runtime.wait_status(bundle.id, "stopped")
    assert bundle.state()["pid"] == 0
    assert bundle.delete().rc == 0
    r = runtime("state", bundle.id)
    assert r.rc != 0 and "does not exist" in r.err
    assert not os.path.exists(os.path.join(runtime.root, bundle.id))


@pytest.mark.parametrize("script,code", [("true", 0), ("exit 3", 3), ("exit 255", 255)])
def test_run_exit_code(bundle, runtime, script, code):
    r = bundle.sh(script).run()
    assert r.rc == code, r
    # a foreground run deletes the container
    assert runtime("state", bundle.id).rc != 0


def test_run_exit_code_killed_from_outside(bundle, runtime):
    bundle.sh("sleep 1000").save()
    p = runtime.popen("run", "--bundle", bundle.path, bundle.id)
    runtime.wait_status(bundle.id, "running")
    assert runtime("kill", bundle.id, "KILL").rc == 0
    assert p.wait(timeout=10) == 128 + 9


def test_run_exit_code_killed_by_itself(bundle, runtime):
    # pid 1 of a pid namespace ignores signals it has no handler for: no pid ns here
    bundle.set_namespace("pid", remove=True)
    r = bundle.sh("kill -TERM $$").run()
    assert r.rc == 128 + 15, r


def test_run_forwards_signals(bundle, runtime):
    bundle.sh("trap 'exit 42' USR1; echo ready; while true; do sleep 0.05; done").save()
    p = runtime.popen("run", "--bundle", bundle.path, bundle.id)
    assert p.stdout.readline() == b"ready\n"
    p.send_signal(signal.SIGUSR1)
    assert p.wait(timeout=10) == 42


def test_run_output_and_stdin(bundle, runtime):
    bundle.sh("read line; echo got $line; echo err >&2")
    r = bundle.run(input="hello\n")
    assert r.rc == 0, r
    assert r.out == "got hello\n"
    assert r.err == "err\n"


def test_run_detach(bundle, runtime, tmp_path):
    bundle.sh("sleep 1000")
    r = bundle.run("--detach", "--pid-file", tmp_path / "pid")
    assert r.rc == 0, r
    st = bundle.state()
    assert st["status"] == "running"
    assert int((tmp_path / "pid").read_text()) == st["pid"]
    assert runtime("kill", bundle.id, "9").rc == 0
    runtime.wait_status(bundle.id, "stopped")
    assert bundle.delete().rc == 0


def test_run_keep(bundle, runtime):
    r = bundle.sh("exit 0").run("--keep")
    assert r.rc == 0, r
    assert bundle.state()["status"] == "stopped"
    assert bundle.delete().rc == 0


def test_create_pid_file(bundle, runtime, tmp_path):
    pidfile = tmp_path / "sub" / "init.pid"
    pidfile.parent.mkdir()
    bundle.create_ok("--pid-file", pidfile)
    assert int(pidfile.read_text()) == bundle.state()["pid"]


def test_start_twice_fails(bundle, runtime):
    bundle.start_detached()
    r = bundle.start()
    assert r.rc != 0
    assert len(r.err_lines) == 1 and "not created" in r.err, r


def test_start_after_exit_fails(bundle, runtime):
    bundle.sh("true").create_ok()
    assert bundle.start().rc == 0
    runtime.wait_status(bundle.id, "stopped")
    r = bundle.start()
    assert r.rc != 0 and "stopped" in r.err, r


def test_delete_running_needs_force(bundle, runtime):
    st = bundle.start_detached()
    r = bundle.delete()
    assert r.rc != 0 and "running" in r.err, r
    assert bundle.state()["status"] == "running"
    assert bundle.delete("--force").rc == 0
    assert not os.path.exists(f"/proc/{st['pid']}/cmdline") or open(f"/proc/{st['pid']}/cmdline").read() == ""


def test_delete_created(bundle, runtime):
    bundle.sh("sleep 1000").create_ok()
    pid = bundle.state()["pid"]
    assert bundle.delete().rc == 0
    assert runtime("state", bundle.id).rc != 0
    deadline = time.monotonic() + 5
    while os.path.exists(f"/proc/{pid}/cmdline") and open(f"/proc/{pid}/cmdline").read():
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_delete_force_missing_is_ok(runtime):
    assert runtime("delete", "--force", "no-such-container").rc == 0
    r = runtime("delete", "no-such-container")
    assert r.rc != 0 and "does not exist" in r.err


def test_kill_all(bundle, runtime):
    # no pid namespace: the children outlive the init unless --all reaches them
    bundle.set_namespace("pid", remove=True)
    bundle.sh("sleep 1000 & sleep 1000 & echo started; wait")
    bundle.create_ok()
    bundle.start()
    st = bundle.state()
    deadline = time.monotonic() + 5
    while len(runtime.ok("ps", "--format", "json", bundle.id).json()) < 3:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    pids = runtime.ok("ps", "--format", "json", bundle.id).json()
    assert st["pid"] in pids and len(pids) == 3
    assert runtime("kill", "--all", bundle.id, "KILL").rc == 0
    runtime.wait_status(bundle.id, "stopped")
    deadline = time.monotonic() + 5
    while runtime.ok("ps", "--format", "json", bundle.id).json():
        assert time.monotonic() < deadline
        time.sleep(0.02)


@pytest.mark.parametrize("sig,expect", [("KILL", 9), ("SIGTERM", 15), ("9", 9), ("TERM", 15), ("SIGKILL", 9)])
def test_kill_signal_names(bundle, runtime, tmp_path, sig, expect):
    # the container's process is pid 1 of its pid namespace: it only dies of signals it handles,
    # or of SIGKILL; a shell trap reports which signal arrived
    out = tmp_path / "out"
    out.mkdir()
    bundle.mount("/out", source=out, options=["rbind"])
    bundle.sh("trap 'echo TERM > /out/sig; exit 0' TERM; echo ready > /out/ready; "
              "while true; do sleep 0.05; done")
    bundle.create_ok()
    bundle.start()
    deadline = time.monotonic() + 5
    while not (out / "ready").exists():
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert runtime("kill", bundle.id, sig).rc == 0
    runtime.wait_status(bundle.id, "stopped")
    if expect == 15:
        assert (out / "sig").read_text() == "TERM\n"
    else:
        assert not (out / "sig").exists()


def test_kill_default_is_term(bundle, runtime):
    bundle.start_detached("trap 'exit 7' TERM; while true; do sleep 0.05; done")
    time.sleep(0.1)
    assert runtime("kill", bundle.id).rc == 0
    runtime.wait_status(bundle.id, "stopped")


def test_kill_bad_signal(bundle, runtime):
    bundle.start_detached()
    for bad in ("NOPE", "0", "65", "SIGNOPE", "RTMAX+1"):
        r = runtime("kill", bundle.id, bad)
        assert r.rc != 0, (bad, r)
        assert len(r.err_lines) == 1 and "signal" in r.err, r
    assert bundle.state()["status"] == "running"


def test_kill_stopped_fails(bundle, runtime):
    bundle.sh("true").create_ok()
    bundle.start()
    runtime.wait_status(bundle.id, "stopped")
    r = runtime("kill", bundle.id, "KILL")
    assert r.rc != 0 and "not running" in r.err, r


def test_list(make_bundle, runtime):
    a, b = make_bundle("list-a"), make_bundle("list-b")
    a.start_detached()
    b.sh("sleep 1000").create_ok()
    r = runtime.ok("list")
    lines = r.out.splitlines()
    assert lines[0].split() == ["ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert rows[a.id][2] == "running" and rows[b.id][2] == "created"
    assert rows[a.id][3] == a.path
    js = {c["id"]: c for c in runtime.ok("list", "--format", "json").json()}
    assert js[a.id]["status"] == "running" and js[b.id]["status"] == "created"
    assert js[a.id]["pid"] == a.state()["pid"]
    assert sorted(runtime.ok("list", "--quiet").out.split()) == sorted([a.id, b.id])
    assert sorted(runtime.ok("list", "-q").out.split()) == sorted([a.id, b.id])


def test_list_empty(runtime):
    assert runtime.ok("list", "--format", "json").out.strip() in ("null", "[]")
    assert runtime.ok("list", "-q").out == ""


def test_ps(bundle, runtime):
    st = bundle.start_detached()
    pids = runtime.ok("ps", "--format", "json", bundle.id).json()
    assert pids == [st["pid"]]
    table = runtime.ok("ps", bundle.id).out.splitlines()
    assert "PID" in table[0].split()
    col = table[0].split().index("PID")
    assert [int(line.split()[col]) for line in table[1:]] == [st["pid"]]


def test_features(runtime):
    f = runtime.ok("features").json()
    assert f["ociVersionMin"].startswith("1.") and f["ociVersionMax"].startswith("1.")
    assert set(f["hooks"]) == {"prestart", "createRuntime", "createContainer", "startContainer",
                               "poststart", "poststop"}
    assert {"pid", "network", "mount", "ipc", "uts", "user", "cgroup"} <= set(f["linux"]["namespaces"])
    assert "CAP_SYS_ADMIN" in f["linux"]["capabilities"]
    assert {"rbind", "ro", "nosuid", "rprivate"} <= set(f["mountOptions"])


def _check_config(c):
    from keel.oci import config as ociconfig

    ociconfig.validate(json.loads(json.dumps(c)))
    assert c["ociVersion"] == "1.1.0"
    assert c["root"]["path"] == "rootfs"
    assert c["process"]["args"]


def test_spec(runtime, tmp_path):
    runtime.ok("spec", "--bundle", tmp_path)
    c = json.loads((tmp_path / "config.json").read_text())
    _check_config(c)
    types = {ns["type"] for ns in c["linux"]["namespaces"]}
    assert types == {"pid", "network", "ipc", "uts", "mount", "cgroup"}
    # not overwritten
    r = runtime("spec", "--bundle", tmp_path)
    assert r.rc != 0 and "exists" in r.err


def test_spec_in_cwd(runtime, tmp_path):
    runtime.ok("spec", cwd=tmp_path)
    _check_config(json.loads((tmp_path / "config.json").read_text()))


def test_spec_rootless(runtime, tmp_path):
    runtime.ok("spec", "--rootless", "--bundle", tmp_path)
    c = json.loads((tmp_path / "config.json").read_text())
    _check_config(c)
    types = {ns["type"] for ns in c["linux"]["namespaces"]}
    assert "user" in types and "network" not in types
    assert c["linux"]["uidMappings"] == [{"containerID": 0, "hostID": os.geteuid(), "size": 1}]
    assert c["linux"]["gidMappings"] == [{"containerID": 0, "hostID": os.getegid(), "size": 1}]
    assert "resources" not in c["linux"]


def test_spec_config_runs(bundle, runtime):
    """The default spec, as written, runs (only terminal and args changed)."""
    bundle.sh("echo ok")
    assert bundle.run().out == "ok\n"


def test_state_missing(runtime):
    r = runtime("state", "no-such-id")
    assert r.rc != 0
    assert r.err_lines == ["keel-runtime: container 'no-such-id' does not exist"], r
    assert r.out == ""


def test_version(runtime):
    r = runtime.ok("--version")
    assert "keel-runtime version" in r.out and "spec: 1." in r.out


def test_state_survives_pid_reuse_check(bundle, runtime):
    """A stopped container's state never reports a (possibly recycled) pid."""
    bundle.sh("true").create_ok()
    bundle.start()
    st = runtime.wait_status(bundle.id, "stopped")
    assert st["pid"] == 0


def test_init_exits_when_killed_while_created(bundle, runtime):
    bundle.sh("sleep 1000").create_ok()
    pid = bundle.state()["pid"]
    os.kill(pid, signal.SIGKILL)
    runtime.wait_status(bundle.id, "stopped")
    r = bundle.start()
    assert r.rc != 0
    assert bundle.delete().rc == 0
