"""podman's resource flags through the runtime under test: the limits podman asks for are in the
container's cgroup (seen from inside the container and from the host) and bite; `podman pause`
/`unpause` freeze and thaw it; `podman update` (which calls `<runtime> update --resources=F ID`)
changes a running container; `podman stats` reads numbers for it. Parametrized over the runtime
like the other interop tests (KEEL_INTEROP_RUNTIMES)."""

import json
import os
import re
import time

import pytest

import interop_helpers as h

pytestmark = pytest.mark.interop

MiB = 1 << 20


def _cgroup_mounts():
    v1, v2 = {}, None
    for mp, fstype, _src in h.mountinfo():
        if fstype == "cgroup2" and v2 is None:
            v2 = mp
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            parts = right.split()
            if parts and parts[0] == "cgroup":
                for o in parts[2].split(","):
                    v1.setdefault(o, left.split()[4])
    return v1, v2


V1, V2 = _cgroup_mounts()
# a memory+swap limit can be set (v1 with swap accounting, or v2)
SWAP_LIMITS = "memory" not in V1 or os.path.exists(os.path.join(V1["memory"], "memory.memsw.limit_in_bytes"))


class HostCgroup:
    """The container's cgroup `path` (podman's cgroupsPath) as the host sees it."""

    def __init__(self, path):
        self.path = path.strip("/")

    def file(self, ctrl, v1name, v2name=None):
        if ctrl in V1:
            return os.path.join(V1[ctrl], self.path, v1name)
        return os.path.join(V2, self.path, v2name or v1name)

    def read(self, ctrl, v1name, v2name=None):
        with open(self.file(ctrl, v1name, v2name)) as f:
            return f.read().strip()

    def memory_limit(self):
        s = self.read("memory", "memory.limit_in_bytes", "memory.max")
        return -1 if s == "max" else int(s)

    def pids_max(self):
        return self.read("pids", "pids.max")

    def cpu_max(self):
        if "cpu" in V1:
            return int(self.read("cpu", "cpu.cfs_quota_us")), int(self.read("cpu", "cpu.cfs_period_us"))
        q, p = self.read("cpu", "cpu.max").split()
        return (-1 if q == "max" else int(q)), int(p)

    def cpu_stat(self):
        return {k: int(v) for k, v in (line.split() for line in self.read("cpu", "cpu.stat").splitlines())}

    def cpu_usage(self):
        if "cpuacct" in V1:
            return int(self.read("cpuacct", "cpuacct.usage"))
        return self.cpu_stat()["usage_usec"] * 1000

    def frozen(self):
        if "freezer" in V1:
            return self.read("freezer", "freezer.state")
        ev = dict(line.split() for line in self.read("freezer", "cgroup.events").splitlines())
        return "FROZEN" if ev.get("frozen") == "1" else "THAWED"


# inside the container: the same numbers through its own /sys/fs/cgroup
INSIDE_V1 = ("cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/pids/pids.max "
             "/sys/fs/cgroup/cpu/cpu.cfs_quota_us /sys/fs/cgroup/cpu/cpu.cfs_period_us")
INSIDE_V2 = "cat /sys/fs/cgroup/memory.max /sys/fs/cgroup/pids.max; cat /sys/fs/cgroup/cpu.max"


def run_detached(podman, *args):
    res = podman("run", "-d", *args, check=True)
    cid = res.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"[0-9a-f]{64}", cid), res.stdout
    return cid


def host_cgroup(podman, cid):
    path = podman.oci_config(cid)["linux"]["cgroupsPath"]
    assert path == f"{podman.cgroup_parent}/libpod-{cid}", path
    return HostCgroup(path)


def remove(podman, cid, pids=()):
    res = podman("rm", "-f", "-t", "0", cid)
    assert res.returncode == 0, res.stderr
    left = podman.wait_clean(cid, pids)
    assert not left, f"container {cid[:12]} left behind: {left}"
    assert h.cgroup_dirs_named(podman.cgroup_parent, cid) == []


def test_run_limits_seen_inside_and_on_host(podman):
    """--memory 64m --pids-limit 50 --cpus 0.5: in config.json, in the host's cgroup files, and
    in the container's own /sys/fs/cgroup."""
    cid = run_detached(podman, "--memory", "64m", "--pids-limit", "50", "--cpus", "0.5",
                       podman.image, "sleep", "100")
    res = podman.oci_config(cid)["linux"]["resources"]
    assert res["memory"]["limit"] == 64 * MiB and res["pids"]["limit"] == 50, res
    assert (res["cpu"]["quota"], res["cpu"]["period"]) == (50000, 100000), res
    cg = host_cgroup(podman, cid)
    assert cg.memory_limit() == 64 * MiB
    assert cg.pids_max() == "50"
    assert cg.cpu_max() == (50000, 100000)
    pid = podman.inspect(cid)["State"]["Pid"]
    assert h.process_cgroup(pid, "memory") == "/" + cg.path
    r = podman("exec", cid, "sh", "-c", INSIDE_V1 if "memory" in V1 else INSIDE_V2)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [str(64 * MiB), "50", "50000", "100000"], r.stdout
    remove(podman, cid, (pid,))


def test_limits_bite(podman, tmp_path, monkeypatch):
    """The hog is OOM-killed under --memory 32m (exit 137); forks past --pids-limit fail; a busy
    loop under --cpus 0.1 is throttled."""
    # conmon notices the OOM and creates an empty "oom" file in its working directory, which
    # it inherits from podman: keep it out of the checkout
    monkeypatch.chdir(tmp_path)
    # memory+swap == memory where the kernel accounts swap: the hog cannot swap out instead
    swap = ["--memory-swap", "32m"] if SWAP_LIMITS else []
    cidfile = os.path.join(podman.workdir, f"cid-{time.monotonic_ns()}")
    res = podman("run", "--cidfile", cidfile, "--memory", "32m", *swap, podman.image, "sh", "-c",
                 "x=$(head -c 300000000 /dev/zero | tr '\\000' a); echo survived ${#x}", timeout=60)
    assert res.returncode == 137 and "survived" not in res.stdout, (res.returncode, res.stdout, res.stderr)
    with open(cidfile) as f:
        cid = f.read().strip()
    assert podman.inspect(cid)["State"]["ExitCode"] == 137
    assert (tmp_path / "oom").exists(), "conmon saw no OOM"
    remove(podman, cid)

    cid = run_detached(podman, "--pids-limit", "8", "--cpus", "0.1", podman.image, "sh", "-c",
                       "while :; do :; done")
    cg = host_cgroup(podman, cid)
    r = podman("exec", cid, "sh", "-c", "for i in $(seq 30); do sleep 30 & done; echo forked")
    assert r.returncode != 0 and "forked" not in r.stdout, (r.stdout, r.stderr)
    assert "can't fork" in r.stderr or "unavailable" in r.stderr, r.stderr
    with open(cg.file("pids", "cgroup.procs")) as f:
        assert len(f.read().split()) <= 8
    assert h.wait_for(lambda: cg.cpu_stat()["nr_throttled"] > 0, 5)
    remove(podman, cid)


def test_pause_unpause(podman):
    cid = run_detached(podman, podman.image, "sh", "-c", "i=0; while true; do i=$((i+1)); done")
    cg = host_cgroup(podman, cid)
    res = podman("pause", cid)
    assert res.returncode == 0, res.stderr
    try:
        assert podman.inspect(cid)["State"]["Status"] == "paused"
        assert cg.frozen() == "FROZEN"
        ps = podman("ps", "-a", "--format", "{{.ID}} {{.Status}}", check=True).stdout
        assert re.search(rf"^{cid[:12]} .*paused", ps, re.M | re.I), ps
        busy = cg.cpu_usage()
        time.sleep(0.3)
        assert cg.cpu_usage() == busy, "a frozen busy loop used cpu"
    except BaseException:
        podman("unpause", cid)
        raise
    res = podman("unpause", cid)
    assert res.returncode == 0, res.stderr
    assert podman.inspect(cid)["State"]["Status"] == "running"
    assert cg.frozen() == "THAWED"
    busy = cg.cpu_usage()
    assert h.wait_for(lambda: cg.cpu_usage() > busy, 5), "the loop did not run again"
    remove(podman, cid)


def test_update_running_container(podman, runtime_name):
    """`podman update --memory --cpus` on a running container: podman rewrites the resources and
    runs `<runtime> update --resources=F ID`; the host's files change. (podman 4.3 has no
    --pids-limit for update; pids.max must survive the update untouched.)"""
    cid = run_detached(podman, "--memory", "64m", "--pids-limit", "50", "--cpus", "0.5",
                       podman.image, "sleep", "100")
    cg = host_cgroup(podman, cid)
    swap = ["--memory-swap", "192m"] if SWAP_LIMITS else []
    res = podman("update", "--memory", "96m", *swap, "--cpus", "0.25", cid)
    assert res.returncode == 0, (res.stdout, res.stderr)
    assert cg.memory_limit() == 96 * MiB
    assert cg.cpu_max() == (25000, 100000)
    assert cg.pids_max() == "50"
    r = podman("exec", cid, "cat", "/sys/fs/cgroup/memory/memory.limit_in_bytes" if "memory" in V1
               else "/sys/fs/cgroup/memory.max")
    assert r.returncode == 0 and r.stdout.strip() == str(96 * MiB), (r.stdout, r.stderr)
    # the container still runs normally afterwards
    assert podman.inspect(cid)["State"]["Status"] == "running"
    r = podman("exec", cid, "echo", "ok")
    assert r.stdout == "ok\n", r.stderr
    remove(podman, cid)


def test_stats_no_stream(podman):
    cid = run_detached(podman, "--memory", "64m", "--pids-limit", "50", podman.image, "sh", "-c",
                       "sleep 100 & sleep 100 & wait")
    assert h.wait_for(lambda: len(_procs(podman, cid)) == 3, 5), _procs(podman, cid)
    res = podman("stats", "--no-stream", "--format", "json", cid, timeout=60)
    assert res.returncode == 0, res.stderr
    stats = json.loads(res.stdout)
    assert isinstance(stats, list) and len(stats) == 1, res.stdout
    s = stats[0]
    assert cid.startswith(s["id"]), s
    assert s["pids"] == "3", s
    used, _, limit = s["mem_usage"].partition("/")
    assert _bytes(used) > 0, s
    assert abs(_bytes(limit) - 64 * MiB) < 10_000, s  # "67.11MB"
    assert float(s["mem_percent"].rstrip("%")) > 0, s
    assert re.fullmatch(r"[\d.]+(ns|µs|us|ms|s)|[\dhms.]+", s["cpu_time"]) and s["cpu_time"][0] != "0", s
    remove(podman, cid)


def _procs(podman, cid):
    path = podman.oci_config(cid)["linux"]["cgroupsPath"].strip("/")
    f = os.path.join(V1["pids"] if "pids" in V1 else V2, path, "cgroup.procs")
    try:
        with open(f) as fh:
            return fh.read().split()
    except OSError:
        return []


_UNITS = {"b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30}


def _bytes(text):
    """podman's human sizes ("942.1kB", "67.11MB": SI units, rounded) -> bytes."""
    m = re.fullmatch(r"\s*([\d.]+)\s*([A-Za-z]*)\s*", text)
    assert m, text
    return float(m.group(1)) * _UNITS[(m.group(2) or "b").lower()]
