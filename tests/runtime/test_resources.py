"""linux.resources enforced for real through keel-runtime: each test runs a container in a
cgroup of its own ("/keel-test-<hex>" as linux.cgroupsPath), makes its processes run into the
limit (allocate past memory.limit, fork past pids.limit, spin under a cpu quota, count while
frozen) and checks the effect from the host and from inside the container.

The host's layout decides where a limit lives (v1: /sys/fs/cgroup/<controller>/<path>; v2: the
cgroup2 mount); `CG` below finds the files independently of keel's own code. Every test ends
with `delete --force` and proves no directory of its cgroup is left (the `runtime` fixture checks
it again, with processes and mounts).
"""

import glob
import json
import os
import threading
import time
import uuid

import pytest

from runtime_helpers import cgroup_dirs_for

MiB = 1 << 20


# -- where a cgroup's files are, found from the mount table (not from keel's code) ---------------

def _cgroup_mounts():
    """(v1 {controller: mountpoint}, cgroup2 mountpoint or None) from /proc/self/mountinfo."""
    v1, v2 = {}, None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fstype, _src, opts = (right.split() + ["", "", ""])[:3]
            mnt = left.split()[4]
            if fstype == "cgroup2" and v2 is None:
                v2 = mnt
            elif fstype == "cgroup":
                for o in opts.split(","):
                    v1.setdefault(o, mnt)
    return v1, v2


V1, V2 = _cgroup_mounts()


def v2_controllers():
    if not V2:
        return set()
    try:
        with open(os.path.join(V2, "cgroup.controllers")) as f:
            return set(f.read().split())
    except OSError:
        return set()


class CG:
    """One container cgroup "/keel-test-<hex>" (absolute cgroupsPath) on this host."""

    def __init__(self, name=None):
        self.name = name or f"/keel-test-{uuid.uuid4().hex[:12]}"

    def dir(self, ctrl):
        """The directory that holds `ctrl`'s files: its v1 hierarchy, else the cgroup2 one."""
        if ctrl in V1:
            return os.path.join(V1[ctrl], self.name.strip("/"))
        if V2 and ctrl in v2_controllers():
            return os.path.join(V2, self.name.strip("/"))
        pytest.skip(f"no {ctrl} controller on this host")

    def v1(self, ctrl):
        return ctrl in V1

    def path(self, ctrl, v1name, v2name=None):
        return os.path.join(self.dir(ctrl), v1name if self.v1(ctrl) else (v2name or v1name))

    def read(self, ctrl, v1name, v2name=None):
        with open(self.path(ctrl, v1name, v2name)) as f:
            return f.read().strip()

    def kv(self, ctrl, v1name, v2name=None):
        out = {}
        for line in self.read(ctrl, v1name, v2name).splitlines():
            k, _, v = line.partition(" ")
            out[k] = int(v) if v.strip().lstrip("-").isdigit() else v
        return out

    def procs(self, ctrl):
        with open(os.path.join(self.dir(ctrl), "cgroup.procs")) as f:
            return sorted(int(p) for p in f.read().split())

    # the numbers the tests compare, whatever the version
    def memory_limit(self):
        s = self.read("memory", "memory.limit_in_bytes", "memory.max")
        return -1 if s == "max" else int(s)

    def pids_max(self):
        return self.read("pids", "pids.max")

    def cpu_max(self):
        """(quota or -1, period) in microseconds."""
        if self.v1("cpu"):
            return int(self.read("cpu", "cpu.cfs_quota_us")), int(self.read("cpu", "cpu.cfs_period_us"))
        q, p = self.read("cpu", "cpu.max").split()
        return (-1 if q == "max" else int(q)), int(p)

    def cpu_usage_ns(self):
        if "cpuacct" in V1:
            return int(self.read("cpuacct", "cpuacct.usage"))
        return self.kv("cpu", "cpu.stat")["usage_usec"] * 1000

    def nr_throttled(self):
        return self.kv("cpu", "cpu.stat")["nr_throttled"]

    def oom_kills(self):
        name = "memory.oom_control" if self.v1("memory") else "memory.events"
        return self.kv("memory", name).get("oom_kill", 0)

    def frozen(self):
        if self.v1("freezer"):
            return self.read("freezer", "freezer.state")
        return "FROZEN" if self.kv("freezer", "cgroup.events").get("frozen") == 1 else "THAWED"

    def dirs(self):
        return cgroup_dirs_for(self.name)


def swap_limit_supported():
    """A memory+swap limit can be set (v1 with swap accounting, or any v2)."""
    if "memory" in V1:
        return os.path.exists(os.path.join(V1["memory"], "memory.memsw.limit_in_bytes"))
    return True


# -- fixtures -----------------------------------------------------------------------------------

@pytest.fixture
def cg_bundle(make_bundle, runtime):
    """A factory: a bundle whose linux.cgroupsPath is a fresh "/keel-test-<hex>" and whose
    linux.resources is `resources` (the default devices rule kept). Returns the bundle with
    `.cg` (a CG) set; the cgroup name is registered for the leak check."""

    def make(resources=None, name=None):
        b = make_bundle(name)
        b.cg = CG()
        runtime.extra_cgroups.append(b.cg.name)
        b.linux["cgroupsPath"] = b.cg.name
        res = b.linux.setdefault("resources", {})
        res.update(resources or {})
        return b

    return make


@pytest.fixture
def out_dir(public_tmp):
    """A host directory the container sees as /out (bind mount)."""
    d = public_tmp / "out"
    d.mkdir()
    os.chmod(d, 0o777)
    return d


class LineReader:
    """Collects the lines a background process prints (a thread reads its stdout)."""

    def __init__(self, proc):
        self.proc = proc
        self.lines = []
        self._t = threading.Thread(target=self._read, daemon=True)
        self._t.start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line.decode(errors="replace").rstrip("\n"))

    def wait_for(self, pred, timeout=10):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(pred(line) for line in list(self.lines)):
                return True
            time.sleep(0.02)
        return False

    def finish(self, timeout=10):
        rc = self.proc.wait(timeout=timeout)
        self._t.join(timeout)
        return rc, [json.loads(line) for line in self.lines if line.strip()]


def wait_until(pred, timeout=10, interval=0.02):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v or time.monotonic() > deadline:
            return v
        time.sleep(interval)


def delete_and_check(b):
    r = b.delete("--force")
    assert r.rc == 0, r
    assert b.cg.dirs() == [], "cgroup left after delete --force"


def _comm(pid):
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return None


# -- memory -------------------------------------------------------------------------------------

HOG = "x=$(head -c 300000000 /dev/zero | tr '\\000' a); echo survived ${#x}"


def test_memory_limit_oom_kill_and_event(cg_bundle, runtime, out_dir):
    """A shell that holds 300 MB in a variable under a 32 MiB limit is OOM-killed: `run` exits
    137 (SIGKILL), and an `events` stream started before reports it as "oom" although `run`
    removes the cgroup right after (the stream must not miss a kill between two polls)."""
    limit = 32 * MiB
    mem = {"limit": limit}
    if swap_limit_supported():
        mem["swap"] = limit  # memory+swap == memory: nothing can be swapped out instead
    b = cg_bundle({"memory": mem})
    b.mount("/out", source=out_dir, options=["rbind"])
    inside = "/sys/fs/cgroup/memory/memory.limit_in_bytes" if b.cg.v1("memory") \
        else "/sys/fs/cgroup/memory.max"
    b.sh(f"cat {inside} > /out/limit; "
         "while [ ! -e /out/go ]; do sleep 0.02; done; " + HOG)
    b.save()
    run = runtime.popen("run", "--bundle", b.path, b.id)
    assert wait_until(lambda: (out_dir / "limit").exists(), 10), run.poll()
    st = runtime.state(b.id)
    runtime.pids[st["pid"]] = _start_time(st["pid"])
    assert b.cg.memory_limit() == limit
    assert (out_dir / "limit").read_text().strip() == str(limit), "the container sees another limit"
    assert b.cg.oom_kills() == 0

    events = LineReader(runtime.popen("events", "--interval", "200ms", b.id))
    assert events.wait_for(lambda line: '"stats"' in line), f"no stats line from events: {events.lines}"
    (out_dir / "go").touch()
    out, err = run.communicate(timeout=30)
    assert run.returncode == 137, (run.returncode, out, err)
    assert b"survived" not in out
    rc, evs = events.finish()
    assert rc == 0, evs
    kinds = [e["type"] for e in evs]
    assert "oom" in kinds, f"events saw no oom: {kinds}"
    assert all(e["id"] == b.id for e in evs)
    # `run` deleted the container and its cgroup
    assert runtime("state", b.id).rc != 0
    assert b.cg.dirs() == []


def _start_time(pid):
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    return int(data[data.rindex(b")") + 2:].split()[19])


def test_memory_under_limit_survives(cg_bundle, runtime, out_dir):
    """The same hog with room to spare finishes (the limit, not the hog, killed it above), and
    the events stream of that run, whose cgroup `run` removes just as fast, reports no oom."""
    b = cg_bundle({"memory": {"limit": 512 * MiB}})
    b.mount("/out", source=out_dir, options=["rbind"])
    b.sh("touch /out/up; while [ ! -e /out/go ]; do sleep 0.02; done; "
         "x=$(head -c 20000000 /dev/zero | tr '\\000' a); echo survived ${#x}")
    b.save()
    run = runtime.popen("run", "--bundle", b.path, b.id)
    assert wait_until(lambda: (out_dir / "up").exists(), 10), run.poll()
    st = runtime.state(b.id)
    runtime.pids[st["pid"]] = _start_time(st["pid"])
    events = LineReader(runtime.popen("events", "--interval", "200ms", b.id))
    assert events.wait_for(lambda line: '"stats"' in line), events.lines
    (out_dir / "go").touch()
    out, err = run.communicate(timeout=30)
    assert run.returncode == 0, (out, err)
    assert b"survived 20000000" in out
    rc, evs = events.finish()
    assert rc == 0 and [e["type"] for e in evs if e["type"] != "stats"] == [], evs
    assert b.cg.dirs() == []


# -- pids ---------------------------------------------------------------------------------------

def test_pids_limit_stops_fork_loop(cg_bundle, runtime):
    """`sleep 30 &` a hundred times under pids.limit 12: forks fail with EAGAIN, and the number
    of tasks in the cgroup never passes the limit."""
    limit = 12
    b = cg_bundle({"pids": {"limit": limit}})
    st = b.start_detached("sleep 1000")
    assert b.cg.pids_max() == str(limit)
    r = runtime("exec", b.id, "sh", "-c",
                "n=0; for i in $(seq 100); do sleep 30 & n=$((n+1)); echo $n; done; echo looped")
    assert r.rc != 0 and "looped" not in r.out, r
    assert "can't fork" in r.err or "Resource temporarily unavailable" in r.err, r
    started = int(r.out.split()[-1])
    # every child of the loop has exec'd sleep (under load one may still be a forked shell)
    others = lambda: [p for p in b.cg.procs("pids") if p != st["pid"]]  # noqa: E731
    assert wait_until(lambda: all(_comm(p) == "sleep" for p in others()), 5), \
        {p: _comm(p) for p in others()}
    pids = b.cg.procs("pids")
    sleeps = {p: _start_time(p) for p in others()}
    assert len(pids) <= limit, pids
    # init + the looping shell + its sleeps filled the limit (a task still exiting elsewhere in
    # the cgroup, e.g. the exec's helper on a loaded host, may have taken a slot or two)
    assert started == len(sleeps), (started, {p: _comm(p) for p in pids})
    assert limit - 4 <= started <= limit - 2, (started, {p: _comm(p) for p in pids})
    # and the cgroup stays full: five more cannot start (at most the looping shell's slot and
    # those of the transients above are free)
    r = runtime("exec", b.id, "sh", "-c", "for i in 1 2 3 4 5; do sleep 30 & done; echo forked",
                timeout=15)
    assert r.rc != 0 and "forked" not in r.out, r
    assert "can't fork" in r.err or "unavailable" in r.err, r
    assert len(b.cg.procs("pids")) <= limit
    if os.path.exists(os.path.join(b.cg.dir("pids"), "pids.events")):
        assert b.cg.kv("pids", "pids.events").get("max", 0) > 0
    delete_and_check(b)
    assert all(_dying(p, s) for p, s in sleeps.items()), "sleeps survived delete --force"


# -- cpu ----------------------------------------------------------------------------------------

def test_cpu_quota_throttles_busy_loop(cg_bundle, runtime):
    """Two busy loops side by side, one under quota 10000/100000 (a tenth of a cpu): the
    limited one is throttled (cpu.stat nr_throttled > 0) and stays near its tenth of a cpu over
    wall time; the free one is never throttled. (How much the free one gets depends on the
    host's load, so the shares are compared with the quota, not with each other.)"""
    limited = cg_bundle({"cpu": {"quota": 10000, "period": 100000}}, name="cpu-limited")
    free = cg_bundle({}, name="cpu-free")
    busy = "while :; do :; done"
    limited.start_detached(busy)
    free.start_detached(busy)
    assert limited.cg.cpu_max() == (10000, 100000)
    assert free.cg.cpu_max()[0] == -1
    u0 = (limited.cg.cpu_usage_ns(), free.cg.cpu_usage_ns())
    t0 = time.monotonic()
    time.sleep(1.0)
    u1 = (limited.cg.cpu_usage_ns(), free.cg.cpu_usage_ns())
    wall = time.monotonic() - t0
    lim_share = (u1[0] - u0[0]) / 1e9 / wall
    free_share = (u1[1] - u0[1]) / 1e9 / wall
    assert limited.cg.nr_throttled() > 0
    assert free.cg.nr_throttled() == 0
    # the kernel never lets it run past 10 ms a period; 0.3 leaves room for period edges
    assert 0 < lim_share < 0.3, f"limited loop used {lim_share:.2f} cpu (quota 0.1; free {free_share:.2f})"
    assert free_share > 0
    delete_and_check(limited)
    delete_and_check(free)


# -- pause / resume -----------------------------------------------------------------------------

def test_pause_freezes_counter(cg_bundle, runtime, out_dir):
    """A tight counter loop writing to a host directory stops while paused, goes on after."""
    b = cg_bundle()
    b.mount("/out", source=out_dir, options=["rbind"])
    b.start_detached("i=0; while true; do i=$((i+1)); echo $i > /out/c; done")
    counter = out_dir / "c"

    def value():
        try:
            return int(counter.read_text() or 0)
        except ValueError:  # caught between truncate and write
            return None

    assert wait_until(lambda: (value() or 0) > 10), "the counter never ran"
    r = runtime("pause", b.id)
    assert r.rc == 0, r
    assert b.state()["status"] == "paused"
    assert b.cg.frozen() == "FROZEN"
    v1 = value()
    time.sleep(0.4)
    assert value() == v1, "the counter moved while paused"
    r = runtime("pause", b.id)
    assert r.rc != 0 and len(r.err_lines) == 1, r
    r = runtime("resume", b.id)
    assert r.rc == 0, r
    assert b.state()["status"] == "running"
    assert b.cg.frozen() == "THAWED"
    assert wait_until(lambda: (value() or 0) > (v1 or 0), 5), "the counter did not resume"
    delete_and_check(b)


# -- ps / kill --all ----------------------------------------------------------------------------

def test_ps_json_and_kill_all(cg_bundle, runtime):
    """`ps --format json` lists exactly the cgroup's processes (init, its children, an exec'd
    one); `kill --all` kills every one of them."""
    b = cg_bundle()
    st = b.start_detached("sleep 1000 & sleep 1000 & sleep 1000 & wait")
    r = runtime("exec", "--detach", b.id, "sleep", "1000")
    assert r.rc == 0, r
    assert wait_until(lambda: len(b.cg.procs("pids")) == 5), b.cg.procs("pids")
    r = runtime("ps", "--format", "json", b.id)
    assert r.rc == 0, r
    listed = sorted(json.loads(r.out))
    for ctrl in ("pids", "memory", "freezer"):
        assert listed == b.cg.procs(ctrl), ctrl
    assert st["pid"] in listed and len(listed) == 5
    starts = {p: _start_time(p) for p in listed}
    r = runtime("kill", "--all", b.id, "KILL")
    assert r.rc == 0, r
    # every process got the SIGKILL: gone, a zombie, or exiting (PF_EXITING). The init of a pid
    # namespace stays in exit until its last zombie is reaped: the detached exec's is the host
    # init's to reap, which may take a while on some hosts.
    assert wait_until(lambda: all(_dying(p, s) for p, s in starts.items()), 5), \
        {p: (_comm(p), _stat_field(p, 0)) for p in listed}
    assert wait_until(lambda: b.cg.procs("pids") == [], 5), b.cg.procs("pids")
    b.runtime.wait_status(b.id, "stopped", timeout=15)
    r = runtime("ps", "--format", "json", b.id)
    assert r.rc == 0 and json.loads(r.out) == [], r
    delete_and_check(b)


def _stat_field(pid, i):
    """Field i of /proc/PID/stat counted from the state (0: state, 6: flags); None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    return data[data.rindex(b")") + 2:].split()[i].decode()


def _dying(pid, start):
    """The process that started at `start` is gone, a zombie, or exiting."""
    try:
        if _start_time(pid) != start:
            return True
    except OSError:
        return True
    state, flags = _stat_field(pid, 0), _stat_field(pid, 6)
    return state in (None, "Z", "X") or flags is None or int(flags) & 0x4 != 0  # PF_EXITING


# -- the cgroup v2 path on this host: hugetlb ------------------------------------------------------

def _hugepage_sizes():
    """Hugepage sizes as cgroup file names ("2MB", "1GB") that the kernel offers."""
    out = []
    for d in glob.glob("/sys/kernel/mm/hugepages/hugepages-*kB"):
        kb = int(d.rsplit("-", 1)[1][:-2])
        out.append(f"{kb >> 20}GB" if kb >= 1 << 20 else f"{kb >> 10}MB" if kb >= 1 << 10 else f"{kb}KB")
    return sorted(out)


@pytest.mark.skipif("hugetlb" in V1 or "hugetlb" not in v2_controllers(),
                    reason="hugetlb is not a cgroup v2 controller on this host")
def test_hugepage_limits_on_cgroup2(cg_bundle, runtime):
    """Only hugepageLimits in linux.resources: they land in the cgroup2 hierarchy
    (<cgroup2>/<path>/hugetlb.<size>.max), the container's processes are in that cgroup, and
    `events --stats` reports hugetlb from there."""
    sizes = _hugepage_sizes()
    if not sizes:
        pytest.skip("the kernel offers no hugepage size")
    limits = [{"pageSize": s, "limit": (i + 2) * (1 << 30)} for i, s in enumerate(sizes)]
    b = cg_bundle()
    b.linux["resources"] = {"hugepageLimits": limits}
    st = b.start_detached("sleep 1000")
    d = os.path.join(V2, b.cg.name.strip("/"))
    assert os.path.isdir(d)
    for h in limits:
        with open(os.path.join(d, f"hugetlb.{h['pageSize']}.max")) as f:
            assert int(f.read()) == h["limit"], h
        rsvd = os.path.join(d, f"hugetlb.{h['pageSize']}.rsvd.max")
        if os.path.exists(rsvd):
            assert int(open(rsvd).read()) == h["limit"]
    with open(os.path.join(d, "cgroup.procs")) as f:
        assert st["pid"] in [int(p) for p in f.read().split()]
    with open(f"/proc/{st['pid']}/cgroup") as f:
        line = [x for x in f.read().splitlines() if x.startswith("0::")][0]
    assert line == "0::" + b.cg.name, line  # seen from the host's cgroup namespace
    r = runtime("events", "--stats", b.id)
    assert r.rc == 0, r
    data = json.loads(r.out)["data"]
    assert set(data.get("hugetlb", {})) == set(sizes), data.get("hugetlb")
    # an update of the limit goes to the same file
    r = runtime("update", "-r", "-", b.id, input=json.dumps(
        {"hugepageLimits": [{"pageSize": sizes[0], "limit": 1 << 30}]}))
    assert r.rc == 0, r
    with open(os.path.join(d, f"hugetlb.{sizes[0]}.max")) as f:
        assert int(f.read()) == 1 << 30
    delete_and_check(b)
