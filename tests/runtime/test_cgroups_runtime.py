"""The container's cgroup: made where cgroupsPath says, limits applied, pause/resume, removed."""

import os
import time

from runtime_helpers import cgroup_dirs_for


def _memory_dir(name):
    dirs = [d for d in cgroup_dirs_for(name) if "/memory/" in d]
    assert len(dirs) == 1, dirs
    return dirs[0]


def test_default_cgroup_named_after_id(bundle, runtime):
    st = bundle.start_detached()
    d = _memory_dir(bundle.id)
    with open(os.path.join(d, "cgroup.procs")) as f:
        assert st["pid"] in [int(p) for p in f.read().split()]
    r = runtime("exec", bundle.id, "cat", "/proc/self/cgroup")
    assert r.rc == 0, r
    assert bundle.delete("--force").rc == 0
    assert cgroup_dirs_for(bundle.id) == []


def test_cgroups_path_relative(bundle, runtime):
    name = f"keel-test/{bundle.id}"
    runtime.extra_cgroups.append(name)
    bundle.linux["cgroupsPath"] = name
    bundle.start_detached()
    assert _memory_dir(name).endswith("/" + name)
    assert bundle.delete("--force").rc == 0
    assert cgroup_dirs_for(name) == []
    # the parent the runtime made stays (runc leaves it too); tidy it
    for d in cgroup_dirs_for("keel-test"):
        try:
            os.rmdir(d)
        except OSError:
            pass


def test_memory_and_pids_limits(bundle, runtime):
    bundle.linux["resources"].update({"memory": {"limit": 64 * 1024 * 1024}, "pids": {"limit": 20}})
    bundle.start_detached()
    d = _memory_dir(bundle.id)
    assert int(open(os.path.join(d, "memory.limit_in_bytes")).read()) == 64 * 1024 * 1024
    pids = [p for p in cgroup_dirs_for(bundle.id) if "/pids/" in p]
    assert open(os.path.join(pids[0], "pids.max")).read().strip() == "20"
    # the limit bites: 30 sleeps cannot all start
    r = runtime("exec", bundle.id, "sh", "-c",
                "n=0; for i in $(seq 30); do sleep 5 & n=$((n+1)); done 2>/dev/null; echo started")
    assert "can't fork" in r.err or "Resource temporarily unavailable" in r.err or r.rc != 0, r


def test_pause_resume(bundle, runtime, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    bundle.mount("/out", source=out, options=["rbind"])
    bundle.start_detached("i=0; while true; do i=$((i+1)); echo $i > /out/n; sleep 0.02; done")
    time.sleep(0.2)
    assert runtime("pause", bundle.id).rc == 0
    assert bundle.state()["status"] == "paused"
    n1 = (out / "n").read_text()
    time.sleep(0.3)
    assert (out / "n").read_text() == n1
    r = runtime("exec", bundle.id, "true")
    assert r.rc != 0 and "paused" in r.err, r
    assert runtime("resume", bundle.id).rc == 0
    assert bundle.state()["status"] == "running"
    time.sleep(0.3)
    assert (out / "n").read_text() != n1
    r = runtime("resume", bundle.id)
    assert r.rc != 0 and "not paused" in r.err


def test_delete_force_paused(bundle, runtime):
    bundle.start_detached()
    assert runtime("pause", bundle.id).rc == 0
    assert bundle.delete("--force").rc == 0
