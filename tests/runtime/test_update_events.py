"""`update` and `events` through keel-runtime on running containers: new limits read back from
the host's cgroup files and then enforced, -r resources.json, bad input refused with one clear
line, a resource this kernel cannot limit named in the error; `events --stats` numbers checked
against the cgroup, and the --interval stream ending with the container.

Containers get a cgroup of their own ("/keel-test-<hex>"); see test_resources.py for `CG`."""

import json
import os
import time

import pytest

from test_resources import (V1, MiB, LineReader, cg_bundle, delete_and_check,  # noqa: F401
                            swap_limit_supported, wait_until)

HOG = "x=$(head -c 300000000 /dev/zero | tr '\\000' a); echo survived ${#x}"


def one_line_error(r, *words):
    """Non-zero exit, exactly one line on stderr, naming each of `words`."""
    assert r.rc != 0, r
    assert len(r.err_lines) == 1, r
    for w in words:
        assert w in r.err, (w, r)
    assert "Traceback" not in r.err, r


def shares_file(cg):
    if cg.v1("cpu"):
        return int(cg.read("cpu", "cpu.shares"))
    from keel.kernel.cgroups import shares_to_weight  # the v2 file holds the converted weight

    return shares_to_weight(int(cg.read("cpu", "cpu.weight")))


# -- update ---------------------------------------------------------------------------------------

def test_update_flags_then_enforced(cg_bundle, runtime):
    """runc's flags change memory, pids, cpu and cpuset of a running container; the files on the
    host say so, and the new limits bite (a fork past the new pids limit fails, a hog past the
    new memory limit is OOM-killed)."""
    b = cg_bundle({"memory": {"limit": 256 * MiB}, "pids": {"limit": 100}})
    b.start_detached("sleep 1000")
    cg = b.cg
    flags = ["--memory", "100m", "--memory-reservation", "50m", "--pids-limit", "33",
             "--cpu-quota", "20000", "--cpu-period", "50000", "--cpu-share", "512",
             "--cpuset-cpus", "0", "--cpuset-mems", "0"]
    if swap_limit_supported():
        flags += ["--memory-swap", "200m"]
    r = runtime("update", *flags, b.id)
    assert r.rc == 0, r
    assert cg.memory_limit() == 100 * MiB
    assert int(cg.read("memory", "memory.soft_limit_in_bytes", "memory.low")) == 50 * MiB
    if swap_limit_supported() and cg.v1("memory"):
        assert int(cg.read("memory", "memory.memsw.limit_in_bytes")) == 200 * MiB
    elif swap_limit_supported():
        assert int(cg.read("memory", "memory.swap.max")) == 100 * MiB  # v2: swap alone
    assert cg.pids_max() == "33"
    assert cg.cpu_max() == (20000, 50000)
    assert shares_file(cg) == 512
    assert cg.read("cpuset", "cpuset.cpus") == "0"
    assert cg.read("cpuset", "cpuset.mems") == "0"
    # the other spelling of the shares flag, and unlimited again
    r = runtime("update", "--cpu-shares", "256", "--cpu-quota", "-1", "--pids-limit", "-1", b.id)
    assert r.rc == 0, r
    assert shares_file(cg) == 256
    assert cg.cpu_max()[0] == -1
    assert cg.pids_max() == "max"

    # enforcement after the change: pids
    r = runtime("update", "--pids-limit", "3", b.id)
    assert r.rc == 0, r
    r = runtime("exec", b.id, "sh", "-c", "sleep 30 & sleep 30 & sleep 30 & echo forked")
    assert r.rc != 0 and "forked" not in r.out, r
    assert "can't fork" in r.err or "unavailable" in r.err, r
    assert len(cg.procs("pids")) <= 3
    # ... and memory: the hog in an exec is OOM-killed under the new 24 MiB limit
    r = runtime("update", "--pids-limit", "50", "--memory", "24m",
                *(["--memory-swap", "24m"] if swap_limit_supported() else []), b.id)
    assert r.rc == 0, r
    kills = cg.oom_kills()
    r = runtime("exec", b.id, "sh", "-c", HOG, timeout=60)
    assert r.rc == 137 and "survived" not in r.out, r
    assert cg.oom_kills() > kills
    assert b.state()["status"] == "running"  # the init, small and asleep, was not the victim
    delete_and_check(b)


def test_update_cpu_quota_throttles(cg_bundle, runtime):
    """A busy loop runs free, then `update --cpu-quota 10000 --cpu-period 100000` throttles it."""
    b = cg_bundle()
    b.start_detached("while :; do :; done")
    cg = b.cg

    def share(seconds=0.6):
        u0, t0 = cg.cpu_usage_ns(), time.monotonic()
        time.sleep(seconds)
        return (cg.cpu_usage_ns() - u0) / 1e9 / (time.monotonic() - t0)

    before = share()
    assert before > 0 and cg.nr_throttled() == 0
    r = runtime("update", "--cpu-quota", "10000", "--cpu-period", "100000", b.id)
    assert r.rc == 0, r
    assert cg.cpu_max() == (10000, 100000)
    time.sleep(0.2)
    after = share()
    assert cg.nr_throttled() > 0
    # a free loop's share depends on the host's load; the quota caps the throttled one
    assert after < 0.3, f"{after:.2f} cpu under a 0.1 cpu quota (before the update: {before:.2f})"
    delete_and_check(b)


@pytest.mark.skipif(not swap_limit_supported(), reason="no memory+swap limit on this host")
def test_update_memory_and_swap_order(cg_bundle, runtime):
    """Raising memory past the current memory+swap limit needs the swap raised too: alone it is
    refused naming the swap limit (v1: memory.limit_in_bytes may never exceed
    memory.memsw.limit_in_bytes), together both go through whatever the order of the writes;
    lowering both works the same."""
    b = cg_bundle({"memory": {"limit": 64 * MiB, "swap": 128 * MiB}})
    b.start_detached("sleep 1000")
    cg = b.cg
    r = runtime("update", "--memory", "300m", b.id)
    if cg.v1("memory"):
        one_line_error(r, "memory+swap", "memory.swap")
        assert cg.memory_limit() == 64 * MiB
    else:
        assert r.rc == 0, r  # v2 keeps swap apart from memory: nothing to conflict with
    r = runtime("update", "--memory", "300m", "--memory-swap", "600m", b.id)
    assert r.rc == 0, r
    assert cg.memory_limit() == 300 * MiB
    r = runtime("update", "--memory", "40m", "--memory-swap", "40m", b.id)
    assert r.rc == 0, r
    assert cg.memory_limit() == 40 * MiB
    if cg.v1("memory"):
        assert int(cg.read("memory", "memory.memsw.limit_in_bytes")) == 40 * MiB
    delete_and_check(b)


def test_update_resources_file(cg_bundle, runtime, tmp_path):
    """-r FILE (and -r - for stdin) takes linux.resources JSON; flags win over the file."""
    b = cg_bundle()
    b.start_detached("sleep 1000")
    cg = b.cg
    res = {"memory": {"limit": 80 * MiB}, "pids": {"limit": 21},
           "cpu": {"quota": 30000, "period": 60000, "shares": 300}}
    f = tmp_path / "resources.json"
    f.write_text(json.dumps(res))
    r = runtime("update", "-r", f, b.id)
    assert r.rc == 0, r
    assert cg.memory_limit() == 80 * MiB
    assert cg.pids_max() == "21"
    assert cg.cpu_max() == (30000, 60000)
    assert shares_file(cg) == 300
    r = runtime("update", "--resources=-", "--pids-limit", "22", b.id,
                input=json.dumps({"memory": {"limit": 90 * MiB}, "pids": {"limit": 99}}))
    assert r.rc == 0, r
    assert cg.memory_limit() == 90 * MiB
    assert cg.pids_max() == "22"
    assert cg.cpu_max() == (30000, 60000)  # absent from the file: untouched
    # a paused container can be updated too (runc allows it)
    assert runtime("pause", b.id).rc == 0
    r = runtime("update", "--pids-limit", "23", b.id)
    assert r.rc == 0, r
    assert cg.pids_max() == "23"
    assert b.state()["status"] == "paused"
    assert runtime("resume", b.id).rc == 0
    delete_and_check(b)


@pytest.fixture
def running(cg_bundle):
    b = cg_bundle({"memory": {"limit": 64 * MiB}, "pids": {"limit": 40}})
    b.start_detached("sleep 1000")
    yield b
    delete_and_check(b)


@pytest.mark.parametrize("flags,words", [
    (["--memory", "-5"], ["--memory", "-5"]),
    (["--memory", "12q"], ["--memory", "12q"]),
    (["--pids-limit", "abc"], ["--pids-limit", "abc"]),
    (["--cpu-quota", "1.5"], ["--cpu-quota", "1.5"]),
    (["--cpu-share", "-2"], ["--cpu-share"]),
    (["--memory", "1m", "--memory-swap", "512k"], ["memory.swap"]),
    (["--resources", "/nonexistent/resources.json"], ["/nonexistent/resources.json"]),
    (["--cpuset-cpus", "9999"], ["cpuset.cpus"]),
    ([], ["nothing to change"]),
    (["--bogus", "1"], ["bogus"]),
], ids=["memory-negative", "memory-unit", "pids-abc", "quota-float", "shares-negative",
        "swap-below-memory", "resources-missing", "cpuset-out-of-range", "no-flags", "unknown-flag"])
def test_update_bad_input(running, runtime, flags, words):
    """Each mistake: non-zero exit, one line naming what is wrong, the limits unchanged."""
    cg = running.cg
    r = runtime("update", *flags, running.id)
    one_line_error(r, *words)
    assert cg.memory_limit() == 64 * MiB
    assert cg.pids_max() == "40"


def test_update_bad_json(running, runtime, tmp_path):
    f = tmp_path / "r.json"
    f.write_text("{not json")
    one_line_error(runtime("update", "-r", f, running.id), "invalid JSON")
    f.write_text('{"memory": {"limit": "lots"}}')
    one_line_error(runtime("update", "-r", f, running.id), "memory.limit", "lots")
    f.write_text("[1, 2]")
    one_line_error(runtime("update", "-r", f, running.id), "object")
    assert running.cg.memory_limit() == 64 * MiB


def test_update_unknown_and_stopped_container(cg_bundle, runtime):
    one_line_error(runtime("update", "--memory", "10m", "kt-no-such-container"),
                   "kt-no-such-container", "does not exist")
    b = cg_bundle()
    b.sh("true")
    b.create_ok()
    assert b.start().rc == 0
    b.runtime.wait_status(b.id, "stopped")
    one_line_error(runtime("update", "--memory", "10m", b.id), b.id, "stopped")
    delete_and_check(b)


def test_update_resource_the_kernel_lacks(running, runtime):
    """Limits this kernel cannot apply are refused naming them (none is silently dropped).
    Kernel memory: v1 kernels since 5.16 accept memory.kmem.limit_in_bytes and ignore it; v2
    has no such file. Block i/o leaf weights: gone with CFQ. The block i/o weight itself needs
    blkio.weight (CFQ) or blkio.bfq.weight (BFQ): set it where one exists, else an error."""
    cg = running.cg
    r = runtime("update", "--kernel-memory", "32m", running.id)
    if r.rc != 0:
        one_line_error(r, "memory.kernel")
    else:  # a kernel that still enforces it: the value must really be there
        assert int(cg.read("memory", "memory.kmem.limit_in_bytes")) == 32 * MiB
    r = runtime("update", "-r", "-", running.id, input=json.dumps({"blockIO": {"leafWeight": 300}}))
    if os.path.exists(os.path.join(cg.dir("blkio") if "blkio" in V1 else "/nonexistent",
                                   "blkio.leaf_weight")):
        assert r.rc == 0, r
    else:
        one_line_error(r, "blockIO.leafWeight")
    r = runtime("update", "--blkio-weight", "500", running.id)
    weight_files = []
    if "blkio" in V1:
        weight_files = [f for f in ("blkio.weight", "blkio.bfq.weight")
                        if os.path.exists(os.path.join(cg.dir("blkio"), f))]
    if weight_files:
        assert r.rc == 0, r
        with open(os.path.join(cg.dir("blkio"), weight_files[0])) as f:
            assert f.read().split()[-1] == "500"
    elif "blkio" in V1:
        one_line_error(r, "blockIO.weight", "blkio.weight")
    else:
        assert r.rc == 0 or len(r.err_lines) == 1, r
    # nothing else moved
    assert cg.memory_limit() == 64 * MiB
    assert cg.pids_max() == "40"


# -- events ---------------------------------------------------------------------------------------

def test_events_stats(cg_bundle, runtime):
    """`events --stats`: one JSON line whose numbers agree with the cgroup and with `ps`."""
    limit = 64 * MiB
    b = cg_bundle({"memory": {"limit": limit}, "pids": {"limit": 40}})
    b.start_detached("sleep 1000 & sleep 1000 & x=$(head -c 4000000 /dev/zero | tr '\\000' a); wait")
    cg = b.cg
    # the shell has filled its variable once only it and its two sleeps are left
    assert wait_until(lambda: len(cg.procs("pids")) == 3), cg.procs("pids")
    r = runtime("ps", "--format", "json", b.id)
    assert r.rc == 0, r
    procs = json.loads(r.out)
    r = runtime("events", "--stats", b.id)
    assert r.rc == 0, r
    lines = r.out.splitlines()
    assert len(lines) == 1, r
    ev = json.loads(lines[0])
    assert ev["type"] == "stats" and ev["id"] == b.id, ev
    data = ev["data"]
    assert data["pids"]["current"] >= 1
    assert data["pids"]["current"] == len(cg.procs("pids")) == len(procs), (data["pids"], procs)
    assert data["pids"]["limit"] == 40
    mem = data["memory"]["usage"]
    assert mem["usage"] > 4_000_000, mem  # the shell holds 4 MB
    assert mem["usage"] <= mem["limit"] == limit, mem
    assert mem["max"] >= mem["usage"]
    assert data["cpu"]["usage"]["total"] > 0
    assert data["cpu"]["usage"]["total"] <= cg.cpu_usage_ns()
    assert {"periods", "throttledPeriods", "throttledTime"} <= data["cpu"]["throttling"].keys()
    delete_and_check(b)


def test_events_stream_until_stopped(cg_bundle, runtime):
    """--interval 200ms: a stats line about every 200 ms; the stream ends by itself when the
    container's init exits."""
    b = cg_bundle({"pids": {"limit": 10}})
    b.start_detached("i=0; while [ $i -lt 30 ]; do i=$((i+1)); sleep 0.05; done")
    t0 = time.monotonic()
    events = LineReader(runtime.popen("events", "--interval", "200ms", b.id))
    rc, evs = events.finish(timeout=15)
    took = time.monotonic() - t0
    assert rc == 0, evs
    stats = [e for e in evs if e["type"] == "stats"]
    assert all(e["id"] == b.id for e in evs)
    assert 3 <= len(stats) <= 20, len(stats)
    assert took < 8, f"events ran {took:.1f}s after a container of ~1.5s"
    totals = [e["data"]["cpu"]["usage"]["total"] for e in stats]
    assert totals == sorted(totals) and totals[-1] > 0, totals
    assert all(e["data"]["pids"]["limit"] == 10 for e in stats)
    assert b.state()["status"] == "stopped"
    delete_and_check(b)


def test_events_bad_input(cg_bundle, runtime):
    one_line_error(runtime("events", "--stats", "kt-no-such-container"), "does not exist")
    b = cg_bundle()
    b.start_detached("sleep 1000")
    one_line_error(runtime("events", "--interval", "soon", b.id), "--interval", "soon")
    one_line_error(runtime("events", "--interval", "0s", b.id), "--interval")
    delete_and_check(b)
    b2 = cg_bundle()
    b2.sh("true")
    b2.create_ok()
    assert b2.start().rc == 0
    b2.runtime.wait_status(b2.id, "stopped")
    one_line_error(runtime("events", "--stats", b2.id), b2.id)
    delete_and_check(b2)
