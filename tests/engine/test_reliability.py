"""Reliability of `keel run` (keel-runtime and runc):

- `kill -9` of `keel` at each step of `run` (stopped there by KEEL_TEST_STOP_AT, then
  SIGKILLed) leaves nothing `keel rm -f` cannot clean, and a container already started survives;
- two `keel run --name X` at once: exactly one wins, the other gets one clear line;
- 50 containers running at once, started and removed in a loop, leak no mount, cgroup,
  process, runtime state or fd of theirs.

Leak checks look only for this test's objects (its tmp dir, its containers' ids), as other
suites run on the machine at the same time."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

import engine_helpers
from engine_helpers import RUNTIMES

IMAGE = "localhost/busybox:latest"
CREATE_STEPS = ["claimed", "snapshot", "bundle"]
START_STEPS = ["monitor", "initialized"]        # the runtime's container exists, not started
STARTED_STEPS = ["started"]                      # the container runs: it must survive


@pytest.fixture(autouse=True)
def no_leftovers(tmp_path):
    """This suite's own leak check (overrides the engine conftest's, whose network namespace
    count is machine-wide): processes, mounts and cgroups of this test only."""
    before = engine_helpers.snapshot()
    yield
    problems = [p for p in engine_helpers.leftovers(tmp_path, before) if not p.startswith("network")]
    assert not problems, "left behind: " + "; ".join(problems)


class Keel:
    def __init__(self, roots, runtime):
        self.root, self.runroot = roots
        self.runtime = runtime

    def argv(self, *args):
        return [sys.executable, "-m", "keel.cli.main", "--root", self.root, "--runroot", self.runroot,
                *map(str, args)]

    def __call__(self, *args, timeout=120):
        return subprocess.run(self.argv(*args), capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)

    def popen(self, *args, env=None):
        return subprocess.Popen(self.argv(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                stdin=subprocess.DEVNULL, text=True, env=dict(os.environ, **(env or {})))

    def ps(self):
        r = self("ps", "-a", "--format", "json")
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)


@pytest.fixture(params=RUNTIMES)
def keel(request, roots):
    k = Keel(roots, request.param)
    yield k
    ids = k("ps", "-aq").stdout.split()
    if ids:
        k("rm", "-f", *ids)


def _proc_state(pid):
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    return data[data.rindex(b")") + 2:].split()[0].decode()


def _wait_for(pred, what, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def _sigkill(proc):
    proc.kill()
    proc.communicate(timeout=30)


def _mounts_of(text):
    with open("/proc/self/mountinfo") as f:
        return [ln.split()[4] for ln in f if text in ln]


def _procs_of(cid):
    """Processes whose command line names this container (conmon, the runtime, cleanup)."""
    out = []
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                with open(f"/proc/{p}/cmdline", "rb") as f:
                    if cid.encode() in f.read():
                        out.append(int(p))
            except OSError:
                pass
    return out


def _cgroups_of(cid):
    parent = os.environ.get("KEEL_CGROUP_PARENT", "/keel").lstrip("/")
    return [d for h in os.listdir("/sys/fs/cgroup")
            if os.path.isdir(d := os.path.join("/sys/fs/cgroup", h, parent, cid))]


def assert_nothing_of(keel, cid):
    """No trace of container `cid`: record, snapshot, bundle, runtime state, exit file,
    processes, mounts, cgroups."""
    root, run = keel.root, keel.runroot
    assert keel.ps() == []
    for d in (os.path.join(root, "snapshots", "active"), os.path.join(root, "containers"),
              os.path.join(run, "containers"), os.path.join(run, "runtime"), os.path.join(run, "exits")):
        assert not os.path.exists(d) or os.listdir(d) == [], (d, os.listdir(d))
    _wait_for(lambda: not _procs_of(cid), f"processes of {cid[:12]} to exit", 30)
    assert _mounts_of(cid) == [] and _mounts_of(root) == []
    assert _cgroups_of(cid) == []


def _only_id(keel):
    rows = keel.ps()
    assert len(rows) == 1, rows
    return rows[0]["Id"]


@pytest.mark.parametrize("step", CREATE_STEPS + START_STEPS)
def test_kill_9_before_the_container_runs(keel, step):
    proc = keel.popen("run", "--runtime", keel.runtime, "--name", "victim", IMAGE, "sleep", "1000",
                      env={"KEEL_TEST_STOP_AT": step})
    _wait_for(lambda: _proc_state(proc.pid) == "T" or proc.poll() is not None, f"keel to stop at {step}")
    assert proc.poll() is None, proc.communicate()
    _sigkill(proc)
    cid = _only_id(keel)
    # the name stays taken until the half-made container is removed
    r = keel("create", "--name", "victim", IMAGE, "true")
    assert r.returncode == 125 and "already in use" in r.stderr
    r = keel("rm", "-f", "victim")
    assert r.returncode == 0, r.stderr
    assert_nothing_of(keel, cid)
    # and the name works again
    r = keel("run", "--rm", "--runtime", keel.runtime, "--name", "victim", IMAGE, "echo", "again")
    assert (r.returncode, r.stdout) == (0, "again\n"), r.stderr


@pytest.mark.parametrize("step", STARTED_STEPS + ["attached"])
def test_kill_9_after_start_leaves_the_container_running(keel, step):
    env = {"KEEL_TEST_STOP_AT": step} if step != "attached" else {}
    proc = keel.popen("run", "--runtime", keel.runtime, "--name", "survivor", IMAGE,
                      "sh", "-c", "echo up; exec sleep 1000", env=env)
    if step == "attached":
        # polled, observable: the container runs and its output has reached the client
        _wait_for(lambda: any(r["State"] == "running" for r in keel.ps()), "the container to run")
    else:
        _wait_for(lambda: _proc_state(proc.pid) == "T" or proc.poll() is not None, f"keel to stop at {step}")
        assert proc.poll() is None, proc.communicate()
    _sigkill(proc)
    rows = keel.ps()
    assert [(r["Names"], r["State"]) for r in rows] == [(["survivor"], "running")]
    cid, pid = rows[0]["Id"], rows[0]["Pid"]
    assert pid > 0 and _proc_state(pid) in ("S", "R")
    assert keel("logs", "survivor").stdout == "up\n"
    r = keel("stop", "-t", "0", "survivor")
    assert r.returncode == 0, r.stderr
    assert [(r["State"], r["ExitCode"]) for r in keel.ps()] == [("exited", 137)]
    r = keel("rm", "-f", "survivor")
    assert r.returncode == 0, r.stderr
    assert_nothing_of(keel, cid)


def test_kill_9_of_run_rm_still_removes_the_container(keel):
    proc = keel.popen("run", "--rm", "--runtime", keel.runtime, "--name", "auto", IMAGE,
                      "sh", "-c", "while [ ! -e /tmp/go ]; do sleep 0.05; done; cat /tmp/go")
    _wait_for(lambda: any(r["State"] == "running" for r in keel.ps()), "the container to run")
    _sigkill(proc)
    cid = _only_id(keel)
    # the container outlives keel; when it exits, conmon's exit command removes it
    pid = keel.ps()[0]["Pid"]
    with open(f"/proc/{pid}/root/tmp/go", "w") as f:
        f.write("done\n")
    _wait_for(lambda: keel.ps() == [], "the --rm container to remove itself", 60)
    assert_nothing_of(keel, cid)


@pytest.mark.parametrize("step", ["monitor", "initialized", "started"])
def test_kill_9_with_a_cni_network_leaves_no_link_or_netns(keel, tmp_path, step):
    """With a bridge network the start also makes a netns, a veth pair and iptables rules
    (port mapping): `rm -f` after a kill removes them all; a started container keeps its
    network until then."""
    from net_helpers import free_port, http_get, iptables, links

    tag = os.urandom(4).hex()
    net, bridge = f"kr-{tag}", f"kr{tag}"
    os.environ["KEEL_NETWORK_CONFIG_DIR"] = str(tmp_path / "net.d")
    try:
        r = keel("network", "create", "--interface-name", bridge, "-o", "masquerade=false", net)
        assert r.returncode == 0, r.stderr
        port = free_port()
        proc = keel.popen("run", "--runtime", keel.runtime, "--name", "netted", "--network", net,
                          "-p", f"127.0.0.1:{port}:80", IMAGE, "sh", "-c",
                          "echo ok > /tmp/i; exec httpd -f -p 80 -h /tmp", env={"KEEL_TEST_STOP_AT": step})
        _wait_for(lambda: _proc_state(proc.pid) == "T" or proc.poll() is not None, f"keel to stop at {step}")
        assert proc.poll() is None, proc.communicate()
        _sigkill(proc)
        cid = _only_id(keel)
        assert any(ln.get("master") == bridge for ln in links())   # the container's veth
        if step == "started":
            assert keel.ps()[0]["State"] == "running"
            assert http_get(f"http://127.0.0.1:{port}/i", timeout=20) == "ok\n"
        r = keel("rm", "-f", "netted")
        assert r.returncode == 0, r.stderr
        assert_nothing_of(keel, cid)
        assert not [ln["ifname"] for ln in links() if ln.get("master") == bridge]
        assert os.listdir(os.path.join(keel.runroot, "netns")) == []
        assert cid not in iptables()
    finally:
        keel("network", "rm", "-f", net)
        del os.environ["KEEL_NETWORK_CONFIG_DIR"]
    assert not [ln["ifname"] for ln in links() if ln["ifname"] == bridge or ln.get("master") == bridge]


def test_container_cleanup_is_idempotent_after_kill(keel):
    """conmon's exit command (`keel container cleanup`) on a half-made container does nothing
    harmful; rm -f still removes it."""
    proc = keel.popen("create", "--runtime", keel.runtime, "--name", "half", IMAGE, "true",
                      env={"KEEL_TEST_STOP_AT": "snapshot"})
    _wait_for(lambda: _proc_state(proc.pid) == "T" or proc.poll() is not None, "keel to stop")
    _sigkill(proc)
    cid = _only_id(keel)
    r = keel("container", "cleanup", "half")
    assert r.returncode == 0, r.stderr
    assert [r["Names"] for r in keel.ps()] == [["half"]]
    assert keel("rm", "-f", cid).returncode == 0
    assert_nothing_of(keel, cid)


def test_two_runs_with_one_name(keel):
    for round_ in range(3):
        name = f"racer{round_}"
        procs = [keel.popen("run", "-d", "--runtime", keel.runtime, "--name", name, IMAGE, "sleep", "1000")
                 for _ in range(2)]
        results = [p.communicate(timeout=120) + (p.returncode,) for p in procs]
        codes = sorted(r[2] for r in results)
        assert codes == [0, 125], results
        loser = next(r for r in results if r[2] == 125)
        assert loser[1] == f"Error: the container name '{name}' is already in use: remove that container " \
                           "or choose another name\n"
        assert loser[0] == ""
        rows = keel.ps()
        assert [(r["Names"], r["State"]) for r in rows] == [([name], "running")]
        assert keel("rm", "-f", name).returncode == 0
        assert_nothing_of(keel, rows[0]["Id"])


def _our_netns_left(netns, ids, root):
    """Holders of the network namespaces `netns` that are ours: a process in one of our
    containers' cgroups or naming our root, an nsfs mount under our root or naming an id.
    (A namespace's inode number is reused once it is freed: other suites' processes may hold
    a new namespace with one of these numbers; they are not ours.)"""
    left = []
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            if os.readlink(f"/proc/{p}/ns/net") not in netns:
                continue
            with open(f"/proc/{p}/cgroup") as f:
                cg = f.read()
            with open(f"/proc/{p}/cmdline", "rb") as f:
                cmd = f.read().decode(errors="replace")
        except OSError:
            continue
        if root in cmd or any(cid in cg or cid in cmd for cid in ids):
            left.append((int(p), cmd.replace("\0", " ")[:100]))
    with open("/proc/self/mountinfo") as f:
        for ln in f:
            parts = ln.split()
            if " - nsfs " in ln and parts[3] in netns and (root in parts[4] or any(c in parts[4] for c in ids)):
                left.append(parts[4])
    return left


def _fds():
    out = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            out[fd] = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            pass
    return out


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_fifty_containers_in_a_loop(roots, runtime):
    import keel as keel_api

    fds_before = _fds()
    client = keel_api.Client(root=roots[0], runroot=roots[1])
    try:
        for round_ in range(2):
            made, errors = [], []
            lock = threading.Lock()

            def start(i):
                try:
                    c = client.containers.run(IMAGE, ["sleep", "1000"], detach=True, runtime=runtime,
                                              name=f"many{round_}-{i}")
                    with lock:
                        made.append(c)
                except Exception as e:  # noqa: BLE001 - reported below
                    errors.append(e)

            workers = [threading.Thread(target=lambda k=k: [start(i) for i in range(k, 50, 4)]) for k in range(4)]
            for t in workers:
                t.start()
            for t in workers:
                t.join(600)
            assert not errors, errors[:3]
            running = client.containers.list()
            assert len(running) == 50 and all(c.status == "running" for c in running)
            ids = [c.id for c in made]
            assert all(len(_cgroups_of(cid)) > 0 for cid in ids)
            netns = {os.readlink(f"/proc/{c.attrs['State']['Pid']}/ns/net") for c in running}
            assert len(netns) == 50   # each its own (--network none)
            for c in made:
                c.remove(force=True)
            assert client.containers.list(all=True) == []
            for cid in ids:
                _wait_for(lambda: not _procs_of(cid), f"processes of {cid[:12]}", 30)
                assert _mounts_of(cid) == [] and _cgroups_of(cid) == []
            assert _our_netns_left(netns, ids, roots[0]) == []
            root, run = roots
            for d in ("snapshots/active", "containers"):
                assert os.listdir(os.path.join(root, d)) == []
            for d in ("containers", "runtime", "exits", "locks"):
                assert os.listdir(os.path.join(run, d)) == [], d
            assert _mounts_of(root) == []
            # the worker threads' engines closed as the threads ended; close this thread's
            # (SQLite keeps a closed connection's fd while another one of the process holds
            # a lock on the file): then not one fd more than before
            client.close()
            assert _fds() == fds_before
    finally:
        client.close()
