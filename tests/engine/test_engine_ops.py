"""pause/unpause, top, stats, the rootfs unmounted at exit, log rotation, ps filters and prune
through keel.engine's API, on keel-runtime and runc."""

import os
import time

import pytest

from engine_helpers import RUNTIMES, engine  # noqa: F401
from keel.engine import logs, ops, stats
from keel.engine.errors import ContainerNotFound, EngineError, InvalidState
from keel.image.snapshot import is_mounted

IMAGE = "localhost/busybox:latest"
COUNTER = "i=0; while true; do i=$((i+1)); echo $i > /tmp/count; sleep 0.05; done"


def _count(engine, c):
    from keel.engine import cp

    data = cp.read_file(engine, c, "/tmp/count").strip()
    return int(data) if data else 0


def _wait_count(engine, c, n=2):
    deadline = time.monotonic() + 10
    while True:
        try:
            if _count(engine, c) >= n:
                return
        except EngineError:
            pass
        assert time.monotonic() < deadline, "the counter never ran"
        time.sleep(0.05)


def _cgroup_file(c, controller, name):
    from keel.kernel.cgroups import Cgroup

    d = Cgroup.from_spec(c["config"]["linux"]["cgroupsPath"], c["id"]).paths()[controller]
    with open(os.path.join(d, name)) as f:
        return f.read().strip()


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_pause_freezes_and_unpause_thaws(engine, runtime):
    c = engine.start(engine.create(IMAGE, ["sh", "-c", COUNTER], runtime=runtime)["id"])
    _wait_count(engine, c)
    p = engine.pause(c["name"])
    assert p["state"] == "paused" and engine.get(c["id"])["state"] == "paused"
    assert _cgroup_file(c, "freezer", "freezer.state") == "FROZEN"
    frozen = _count(engine, c)
    time.sleep(0.5)
    assert _count(engine, c) == frozen                       # nothing ran while paused
    assert [x["id"] for x in engine.containers(all=False)] == [c["id"]]
    with pytest.raises(InvalidState, match="is not running, can't pause: it is paused"):
        engine.pause(c["id"])
    with pytest.raises(InvalidState, match="is paused: unpause it"):
        engine.start(c["id"])
    with pytest.raises(InvalidState, match="can only stop created or running containers"):
        engine.stop(c["id"])
    with pytest.raises(InvalidState, match="stop it first or use rm -f"):
        engine.remove(c["id"])
    assert engine.get(c["id"])["state"] == "paused"
    assert engine.unpause(c["id"])["state"] == "running"
    assert _cgroup_file(c, "freezer", "freezer.state") == "THAWED"
    deadline = time.monotonic() + 5
    while _count(engine, c) <= frozen:
        assert time.monotonic() < deadline, "the counter did not resume"
        time.sleep(0.05)
    with pytest.raises(InvalidState, match="is not paused, can't unpause: it is running"):
        engine.unpause(c["id"])
    engine.stop(c["id"], timeout=0)
    with pytest.raises(InvalidState, match="can't pause: it is exited"):
        engine.pause(c["id"])
    with pytest.raises(ContainerNotFound):
        engine.pause("no-such-container")


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_kill_and_rm_force_of_a_paused_container(engine, runtime):
    a = engine.start(engine.create(IMAGE, ["sleep", "1000"], runtime=runtime)["id"])
    b = engine.start(engine.create(IMAGE, ["sleep", "1000"], runtime=runtime)["id"])
    engine.pause(a["id"])
    engine.pause(b["id"])
    engine.kill(a["id"], "KILL")                # thawed after SIGKILL: it dies
    assert engine.wait(a["id"]) == 137
    assert engine.get(a["id"])["state"] == "exited"
    engine.remove(b["id"], force=True)
    with pytest.raises(ContainerNotFound):
        engine.get(b["id"])
    assert not os.path.exists(os.path.join(engine.runtime_root, b["id"]))


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_rootfs_unmounted_at_exit_and_remounted_at_start(engine, runtime):
    c = engine.start(engine.create(IMAGE, ["sh", "-c", "cat /tmp/mark 2>/dev/null; echo x >> /tmp/mark"],
                                   runtime=runtime)["id"])
    rootfs = engine.snapshotter.rootfs(c["id"])
    assert engine.wait(c["id"]) == 0
    assert not is_mounted(rootfs)                        # cleanup unmounted it
    engine.start(c["id"])                                # remounted, writable layer kept
    assert engine.wait(c["id"]) == 0
    assert not is_mounted(rootfs)
    entries, _ = logs.read_entries(c["log_path"])
    assert [e.message for e in entries] == [b"x"]
    engine.remove(c["id"])
    assert not os.path.exists(os.path.dirname(rootfs))


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_top_lists_the_container_processes(engine, runtime):
    c = engine.start(engine.create(IMAGE, ["sh", "-c", "sleep 1000 & exec sleep 999"], runtime=runtime)["id"])
    deadline = time.monotonic() + 5
    while True:
        header, rows = ops.top(engine, c["name"], [])
        if len(rows) == 2:
            break
        assert time.monotonic() < deadline, rows
        time.sleep(0.05)
    assert header == ["USER", "PID", "PPID", "%CPU", "ELAPSED", "TTY", "TIME", "COMMAND"]
    by_pid = {r[1]: r for r in rows}
    assert by_pid["1"][0] == "root" and by_pid["1"][2] == "0" and by_pid["1"][7] == "sleep 999"
    other = [r for r in rows if r[1] != "1"][0]
    assert other[2] == "1" and other[7] == "sleep 1000"
    header, rows = ops.top(engine, c["id"], ["hpid", "pid", "comm"])
    assert header == ["HPID", "PID", "COMMAND"]
    assert [r for r in rows if r[1] == "1"][0][0] == str(c["pid"])
    header, rows = ops.top(engine, c["id"], ["-o", "pid,args"])       # ps(1) options
    assert header == ["PID", "COMMAND"]
    assert sorted(r[1] for r in rows) == ["sleep 1000", "sleep 999"]
    assert str(c["pid"]) in [r[0] for r in rows]
    with pytest.raises(EngineError, match="unknown descriptor or ps option"):
        ops.top(engine, c["id"], ["pid,bogus"])
    engine.stop(c["id"], timeout=0)
    with pytest.raises(InvalidState, match="top needs a running container"):
        ops.top(engine, c["id"], [])


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_stats_read_the_cgroup(engine, runtime):
    c = engine.start(engine.create(IMAGE, ["sh", "-c", "dd if=/dev/zero of=/dev/null bs=1k count=200000; "
                                           "sleep 1000 & exec sleep 999"], runtime=runtime)["id"])
    deadline = time.monotonic() + 30
    while sorted(r[-1] for r in ops.top(engine, c["id"], ["args"])[1]) != ["sleep 1000", "sleep 999"]:
        assert time.monotonic() < deadline, "dd did not finish"
        time.sleep(0.1)
    for _ in range(20):   # memory moves a little: a reading between two equal reads of the file
        before = int(_cgroup_file(c, "memory", "memory.usage_in_bytes"))
        s = stats.sample(c)
        after = int(_cgroup_file(c, "memory", "memory.usage_in_bytes"))
        if before == after:
            break
    assert s["mem_usage"] == before == after and s["mem_usage"] > 0
    assert s["cpu_ns"] == int(_cgroup_file(c, "cpuacct", "cpuacct.usage")) > 0
    assert s["pids"] == int(_cgroup_file(c, "pids", "pids.current")) == 2
    assert 0 < s["mem_limit"] <= os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert (s["net_rx"], s["net_tx"]) == (0, 0)               # --network none: only lo
    e = stats.entry(s)
    assert e["id"] == c["id"][:12] and e["name"] == c["name"] and e["pids"] == "2"
    assert e["mem_usage"].endswith(stats.human_size(s["mem_limit"]))
    time.sleep(0.3)
    s2 = stats.sample(engine.get(c["id"]))
    assert stats.cpu_percent(s2, s) < 5.0                      # idle now
    assert stats.cpu_percent(s) > 0                            # dd ran since the start
    engine.stop(c["id"], timeout=0)
    with pytest.raises(InvalidState, match="stats need a running container"):
        stats.sample(engine.get(c["id"]))


def test_stats_helpers():
    assert stats.go_duration(0) == "0s" and stats.go_duration(52_500_000) == "52.5ms"
    assert stats.go_duration(123_400_000_000) == "2m3.4s" and stats.go_duration(3600 * 10**9) == "1h0m0s"
    assert stats.human_size(0) == "0B" and stats.human_size(1234567) == "1.235MB"
    assert stats.human_size(16.7e9) == "16.7GB" and stats.human_size(1536, binary=True) == "1.5KiB"


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_log_size_max_restarts_the_log(engine, runtime):
    with pytest.raises(EngineError, match="at least 8192"):
        engine.create(IMAGE, ["true"], log_size_max=100)
    script = "i=0; while [ $i -lt 400 ]; do i=$((i+1)); echo line-$i-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx; done"
    c = engine.start(engine.create(IMAGE, ["sh", "-c", script], runtime=runtime, log_size_max=8192)["id"])
    assert engine.wait(c["id"]) == 0
    size = os.path.getsize(c["log_path"])
    assert 0 < size <= 8192
    entries, _ = logs.read_entries(c["log_path"])
    lines, cur = [], b""
    for e in entries:                       # conmon splits a line it read in pieces: P, ..., F
        cur += e.message
        if not e.partial:
            lines.append(cur.decode())
            cur = b""
    if not lines[0].startswith("line-"):
        lines = lines[1:]                   # the end of a line begun before the restart
    assert lines[-1].startswith("line-400-") and not any(m.startswith("line-1-") for m in lines)
    nums = [int(m.split("-")[1]) for m in lines]
    assert nums == list(range(nums[0], 401))                  # what is left is the tail, whole


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_ps_filters_select_exactly(engine, runtime):
    a = engine.create(IMAGE, ["true"], name="alpha", labels={"app": "web", "tier": "front"}, runtime=runtime)
    b = engine.create(IMAGE, ["sh", "-c", "exit 3"], name="beta", labels={"app": "db"}, runtime=runtime)
    g = engine.create(IMAGE, ["sleep", "1000"], name="gamma", labels={"app": "web"}, runtime=runtime)
    engine.start(b["id"])
    engine.wait(b["id"])
    engine.start(g["id"])
    everything = engine.containers()

    def names(*items):
        return sorted(c["name"] for c in ops.filter_containers(engine, everything, ops.parse_filters(list(items))))

    assert names("name=alpha") == ["alpha"]
    assert names("name=^(alpha|gamma)$") == ["alpha", "gamma"]
    assert names("name=alpha", "name=beta") == ["alpha", "beta"]            # one key: any value
    assert names("label=app=web") == ["alpha", "gamma"]
    assert names("label=app=web", "label=tier=front") == ["alpha"]          # labels: all values
    assert names("label=tier") == ["alpha"]
    assert names("label=app=web", "status=running") == ["gamma"]            # keys: all
    assert names("status=created") == ["alpha"]
    assert names("status=exited", "status=running") == ["beta", "gamma"]
    assert names("exited=3") == ["beta"] and names("exited=0") == []
    assert names(f"id={a['id'][:8]}") == ["alpha"]
    assert names(f"ancestor={IMAGE}") == ["alpha", "beta", "gamma"]
    assert names("ancestor=localhost/busybox") == ["alpha", "beta", "gamma"]
    assert names("ancestor=localhost/other:1") == []
    assert names("before=beta") == ["alpha"] and names("since=beta") == ["gamma"]
    assert names("until=0s") == ["alpha", "beta", "gamma"] and names("until=1h") == []
    for bad, msg in (("colour=red", "invalid filter 'colour'"), ("status=sleeping", "status must be one of"),
                     ("exited=x", "exited takes an exit code"), ("name", "expected key=value"),
                     ("name=(", "invalid regular expression"), ("until=yesterday", "expected a duration")):
        with pytest.raises(EngineError, match=msg):
            ops.parse_filters([bad])


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_prune_removes_exactly_the_stopped_ones(engine, runtime):
    keep = engine.start(engine.create(IMAGE, ["sleep", "1000"], name="keep", runtime=runtime)["id"])
    paused = engine.start(engine.create(IMAGE, ["sleep", "1000"], name="frozen", runtime=runtime)["id"])
    engine.pause(paused["id"])
    created = engine.create(IMAGE, ["true"], name="fresh", runtime=runtime)
    done = engine.start(engine.create(IMAGE, ["sh", "-c", "head -c 300000 /dev/zero > /big"], name="done",
                                      runtime=runtime)["id"])
    engine.wait(done["id"])
    ids, freed = ops.prune_containers(engine)
    assert sorted(ids) == sorted([created["id"], done["id"]])
    assert freed >= 300000
    assert sorted(c["name"] for c in engine.containers()) == ["frozen", "keep"]
    assert sorted(engine.snapshotter.snapshots()) == sorted([keep["id"], paused["id"]])
    # images: a dangling one goes, the named one in use stays
    img = engine.store.get(IMAGE)
    engine.store.tag(img, "localhost/copy:1")
    engine.store.untag("localhost/copy:1")
    removed, _ = ops.prune_images(engine)
    assert removed == [] and engine.store.get(IMAGE).id == img.id
    engine.remove(keep["id"], force=True)
    engine.remove(paused["id"], force=True)
    engine.store.untag(IMAGE)                                   # now dangling and unused
    layers = os.path.join(engine.snapshotter.root, "layers")
    assert os.listdir(layers)
    removed, freed = ops.prune_images(engine)
    assert removed == [img.id.partition(":")[2]] and engine.store.images() == []
    assert os.listdir(layers) == [] and freed > 1_000_000       # the busybox layer and blobs


def test_prune_removes_a_half_made_container(engine):
    """A keel killed inside create leaves a "configured" record with its snapshot mounted:
    prune takes it away whole."""
    c = engine.create(IMAGE, ["true"], name="half")
    engine.db.update(c["id"], state="configured")
    engine.snapshotter.mount(c["id"])
    ids, _ = ops.prune_containers(engine)
    assert ids == [c["id"]] and engine.containers() == []
    assert engine.snapshotter.snapshots() == []
    assert not os.path.exists(engine.bundle_dir(c["id"]))


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_cp_of_a_stopped_container_reaches_its_bind_mounts(engine, runtime, tmp_path):
    """A volume (a directory bind mount in the container's config) of a stopped container is
    read and written in its source, as the running container sees it; symlinks in it stay in it."""
    from keel.engine import cp
    from keel.engine import engine as engine_module

    vol = tmp_path / "vol"
    vol.mkdir()
    c = engine.create(IMAGE, ["sh", "-c", "echo inside > /data/from-ctr; ln -s /etc /data/esc; "
                                          "cat /data/from-host 2>/dev/null || true"], runtime=runtime)
    spec = c["config"]
    spec["mounts"].append({"destination": "/data", "type": "bind", "source": str(vol),
                           "options": ["rbind", "rw"]})
    engine.db.update(c["id"], config=spec)
    engine_module._write_config(engine.bundle_dir(c["id"]), spec)
    engine.start(c["id"])
    assert engine.wait(c["id"]) == 0
    assert (vol / "from-ctr").read_text() == "inside\n"
    (tmp_path / "f").write_text("from the host\n")
    cp.copy_to_container(engine, str(tmp_path / "f"), c["id"], "/data/from-host")
    assert (vol / "from-host").read_text() == "from the host\n"
    with pytest.raises(EngineError, match="no such file or directory"):   # /etc of the volume: none
        cp.copy_to_container(engine, str(tmp_path / "f"), c["id"], "/data/esc/planted")
    assert not os.path.exists("/etc/planted")
    cp.copy_from_container(engine, c["id"], "/data", str(tmp_path / "out"))
    assert sorted(os.listdir(tmp_path / "out")) == ["esc", "from-ctr", "from-host"]
    (tmp_path / "into").mkdir()
    cp.copy_from_container(engine, c["id"], "/data", str(tmp_path / "into"))   # by its name
    assert (tmp_path / "into" / "data" / "from-ctr").read_text() == "inside\n"
    engine.start(c["id"])                                      # and the container sees the copy
    assert engine.wait(c["id"]) == 0
    entries, _ = logs.read_entries(c["log_path"])
    assert [e.message for e in entries] == [b"from the host"]
