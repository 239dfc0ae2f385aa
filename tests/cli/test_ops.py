"""`keel pause/unpause/top/stats`, `ps --filter/--last/--no-trunc/--size`, `container prune`,
`system prune`, `info`, `version` and `--log-opt max-size` end to end, on keel-runtime and runc,
with their bad inputs (one line, exit 125, nothing changed)."""

import json
import os
import re
import subprocess
import sys
import time

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "engine"))
from engine_helpers import RUNTIMES  # noqa: E402
from test_containers import Keel, no_leftovers  # noqa: E402,F401  (the leak check)

IMAGE = "localhost/busybox:latest"


class KeelIO(Keel):
    """The CLI driver, with bytes on stdin (input_bytes) and bytes back (binary)."""

    def __call__(self, *args, timeout=60, env=None, input_bytes=None, binary=False):
        argv = [sys.executable, "-m", "keel.cli.main", "--root", str(self.root),
                "--runroot", str(self.runroot), *map(str, args)]
        r = subprocess.run(argv, capture_output=True, timeout=timeout, input=input_bytes,
                           stdin=None if input_bytes is not None else subprocess.DEVNULL,
                           env=dict(os.environ, **(env or {})))
        if not binary:
            r.stdout, r.stderr = r.stdout.decode(errors="replace"), r.stderr.decode(errors="replace")
        else:
            r.stderr = r.stderr.decode(errors="replace")
        return r


@pytest.fixture(params=RUNTIMES)
def keel(request, tmp_path, oci_busybox):
    k = KeelIO(tmp_path, request.param)
    r = k("load", "-i", oci_busybox)
    assert r.returncode == 0, r.stderr
    if IMAGE not in r.stdout:
        k.ok("tag", r.stdout.strip().rsplit(" ", 1)[-1], IMAGE)
    yield k
    ids = k("ps", "-aq").stdout.split()
    if ids:
        k("rm", "-f", *ids)


def _fail(r, text):
    assert r.returncode == 125, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and text in lines[0], r.stderr


def _count(keel, name):
    r = keel("cp", f"{name}:/tmp/count", "-", binary=True)
    if r.returncode != 0:
        return 0
    import io
    import tarfile

    with tarfile.open(fileobj=io.BytesIO(r.stdout)) as tf:
        data = tf.extractfile("count").read().strip()
    return int(data) if data else 0


def test_pause_unpause(keel):
    keel.ok("run", "--runtime", keel.runtime, "-d", "--name", "p", IMAGE, "sh", "-c",
            "i=0; while true; do i=$((i+1)); echo $i > /tmp/count; sleep 0.05; done")
    deadline = time.monotonic() + 10
    while _count(keel, "p") < 2:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    cid = keel.ps()[0]["Id"]
    assert keel.ok("pause", "p").strip() == cid
    ps = keel.ps("-a")
    assert ps[0]["State"] == "paused" and ps[0]["Status"] == "Paused"
    state = json.loads(keel.ok("inspect", "p"))[0]["State"]
    assert state["Status"] == "paused" and state["Paused"] and not state["Running"] and state["Pid"] > 0
    n = _count(keel, "p")
    time.sleep(0.5)
    assert _count(keel, "p") == n                                   # frozen
    _fail(keel("pause", "p"), "is not running, can't pause: it is paused")
    _fail(keel("stop", "p"), "can only stop created or running containers")
    _fail(keel("rm", "p"), "stop it first or use rm -f")
    assert keel.ok("unpause", "p").strip() == cid
    deadline = time.monotonic() + 5
    while _count(keel, "p") <= n:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    _fail(keel("unpause", "p"), "is not paused, can't unpause: it is running")
    keel.ok("pause", "--all")
    assert keel.ps("-a")[0]["State"] == "paused"
    keel.ok("unpause", "-a")
    keel.ok("pause", "p")
    keel.ok("rm", "-f", "p")                                        # a paused container goes with -f
    assert keel.ps("-a") == []
    _fail(keel("pause", "nosuch"), "no container with name or id 'nosuch'")
    keel.run("--name", "done", IMAGE, "true")
    _fail(keel("pause", "done"), "can't pause: it is exited")
    _fail(keel("unpause"), "give at least one container, or --all")


def test_top(keel):
    keel.ok("run", "--runtime", keel.runtime, "-d", "--name", "t", IMAGE, "sh", "-c",
            "sleep 1000 & exec sleep 999")
    deadline = time.monotonic() + 5
    while True:
        lines = keel.ok("top", "t").splitlines()
        if len(lines) == 3:
            break
        assert time.monotonic() < deadline, lines
        time.sleep(0.05)
    assert lines[0].split() == ["USER", "PID", "PPID", "%CPU", "ELAPSED", "TTY", "TIME", "COMMAND"]
    first = [ln for ln in lines[1:] if ln.split()[1] == "1"][0].split()
    assert first[0] == "root" and first[2] == "0" and first[-2:] == ["sleep", "999"]
    out = keel.ok("top", "t", "pid", "args").splitlines()
    rows = [ln.split(None, 1) for ln in out[1:]]
    assert out[0].split() == ["PID", "COMMAND"] and ["1", "sleep 999"] in rows
    assert sorted(r[1] for r in rows) == ["sleep 1000", "sleep 999"]
    ps = keel.ok("top", "t", "-ef").splitlines()                    # ps(1) options, docker style
    assert ps[0].split()[:2] == ["UID", "PID"] and len(ps) == 3
    assert sorted(ln.split(None, 7)[-1] for ln in ps[1:]) == ["sleep 1000", "sleep 999"]
    _fail(keel("top", "nosuch"), "no container with name or id 'nosuch'")
    _fail(keel("top", "t", "pid,nonsense"), "unknown descriptor or ps option")
    keel.ok("stop", "-t", "0", "t")
    _fail(keel("top", "t"), "top needs a running container")


def test_stats(keel):
    keel.ok("run", "--runtime", keel.runtime, "-d", "--name", "s", IMAGE, "sleep", "1000")
    out = json.loads(keel.ok("stats", "--no-stream", "--format", "json"))
    assert len(out) == 1
    e = out[0]
    assert list(e) == ["id", "name", "cpu_time", "cpu_percent", "avg_cpu", "mem_usage",
                       "mem_percent", "net_io", "block_io", "pids"]             # podman's keys, in order
    cid = keel.ps()[0]["Id"]
    assert e["id"] == cid[:12] and e["name"] == "s" and e["pids"] == "1" and e["net_io"] == "0B / 0B"
    assert e["cpu_percent"].endswith("%") and " / " in e["mem_usage"]
    assert json.loads(keel.ok("stats", "--no-stream", "--no-trunc", "--format", "json"))[0]["id"] == cid
    table = keel.ok("stats", "--no-stream", "s").splitlines()
    assert table[0].split()[:3] == ["ID", "NAME", "CPU"] and table[1].split()[:2] == [cid[:12], "s"]
    # streaming: two readings, one interval apart, then it is stopped
    p = subprocess.Popen([sys.executable, "-m", "keel.cli.main", "--root", str(keel.root), "--runroot",
                          str(keel.runroot), "stats", "--format", "json", "-i", "1", "s"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        seen = 0
        deadline = time.monotonic() + 20
        buf = ""
        while seen < 2:
            assert time.monotonic() < deadline
            line = p.stdout.readline()
            buf += line
            if line == "]\n":
                assert json.loads(buf)[0]["name"] == "s"
                buf, seen = "", seen + 1
    finally:
        p.kill()
        p.wait()
    _fail(keel("stats", "--no-stream", "nosuch"), "no container with name or id 'nosuch'")
    _fail(keel("stats", "--no-stream", "--format", "yaml"), "--format 'yaml'")
    keel.ok("stop", "-t", "0", "s")
    _fail(keel("stats", "--no-stream", "s"), "stats need a running container")
    assert json.loads(keel.ok("stats", "--no-stream", "--format", "json")) == []
    stopped = json.loads(keel.ok("stats", "-a", "--no-stream", "--format", "json"))
    assert [(x["name"], x["mem_usage"], x["pids"]) for x in stopped] == [("s", "-- / --", "--")]


def test_ps_filters_last_no_trunc_size(keel):
    keel.ok("create", "--runtime", keel.runtime, "--name", "one", "-l", "app=web", IMAGE, "true")
    keel.run("--name", "two", "-l", "app=db", IMAGE, "sh", "-c", "echo xxxxxxxxxx > /f; exit 4")
    keel.ok("run", "--runtime", keel.runtime, "-d", "--name", "three", "-l", "app=web", IMAGE, "sleep", "1000")

    def names(*args):
        return [e["Names"][0] for e in keel.ps(*args)]

    assert names() == ["three"]
    assert names("--filter", "label=app=web") == ["three", "one"]          # a filter implies --all
    assert names("--filter", "label=app=web", "--filter", "status=created") == ["one"]
    assert names("-f", "status=exited", "-f", "status=created") == ["two", "one"]
    assert names("-f", "exited=4") == ["two"]
    assert names("-f", "name=^t") == ["three", "two"]
    assert names("-f", f"ancestor={IMAGE}", "-n", "2") == ["three", "two"]
    assert names("--last", "1") == ["three"] and names("-l") == ["three"]
    ids = keel.ok("ps", "-aq", "--no-trunc").split()
    assert [len(i) for i in ids] == [64, 64, 64]
    assert keel.ok("ps", "-q", "-f", f"id={ids[1][:10]}").split() == [ids[1][:12]]
    sized = {e["Names"][0]: e["Size"] for e in keel.ps("-a", "--size")}
    assert sized["two"]["rwSize"] >= 11 and sized["two"]["rootFsSize"] > sized["two"]["rwSize"]
    assert "SIZE" in keel.ok("ps", "-as").splitlines()[0]
    _fail(keel("ps", "--filter", "colour=red"), "invalid filter 'colour'")
    _fail(keel("ps", "--filter", "status=bogus"), "status must be one of")
    _fail(keel("ps", "--filter", "noequals"), "expected key=value")


def test_container_and_system_prune(keel, tmp_path):
    keel.ok("run", "--runtime", keel.runtime, "-d", "--name", "up", IMAGE, "sleep", "1000")
    keel.ok("create", "--runtime", keel.runtime, "--name", "new", IMAGE, "true")
    keel.run("--name", "old", IMAGE, "sh", "-c", "head -c 200000 /dev/zero > /big")
    ids = {e["Names"][0]: e["Id"] for e in keel.ps("-a")}
    r = keel("container", "prune")                                  # no answer: nothing removed
    assert r.returncode == 0 and len(keel.ps("-a")) == 3
    assert keel.ok("container", "prune", "-f", "--filter", "name=^old$").split() == [ids["old"]]
    _fail(keel("container", "prune", "-f", "--filter", "colour=red"), "invalid filter 'colour'")
    r = keel("container", "prune", input_bytes=b"y\n")
    assert r.returncode == 0 and r.stdout.split() == [ids["new"]]
    assert [e["Names"][0] for e in keel.ps("-a")] == ["up"]
    keel.run("--name", "old2", IMAGE, "sh", "-c", "head -c 200000 /dev/zero > /big")
    old2 = keel.ps("-a", "-f", "name=old2")[0]["Id"]
    out = keel.ok("system", "prune", "-f").splitlines()
    assert out[:2] == ["Deleted Containers", old2] and len(out) == 3     # no image is unused
    assert re.fullmatch(r"Total reclaimed space: (2\d\d(\.\d+)?kB|[\d.]+MB)", out[2]), out[2]  # /big
    assert [e["Names"][0] for e in keel.ps("-a")] == ["up"]
    assert "localhost/busybox" in keel.ok("images")                  # in use: kept
    keel.ok("rm", "-f", "up")
    out = keel.ok("system", "prune", "-f", "-a").splitlines()        # every unused image
    assert out[out.index("Deleted Images") + 1] and "Total reclaimed space" in out[-1]
    assert json.loads(keel.ok("images", "--format", "json")) == []
    _fail(keel("system", "prune", "--bogus"), "unknown flag: --bogus")


def test_log_opt_max_size(keel):
    _fail(keel("run", "--log-opt", "max-size=100", IMAGE, "true"), "at least 8192")
    _fail(keel("run", "--log-opt", "max-file=3", IMAGE, "true"), "unknown log option")
    _fail(keel("run", "--log-opt", "max-size=lots", IMAGE, "true"), "invalid size")
    r = keel.run("--name", "big", "--log-opt", "max-size=8k", IMAGE, "sh", "-c",
                 "i=0; while [ $i -lt 300 ]; do i=$((i+1)); echo line-$i-yyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyy; done")
    assert r.returncode == 0
    lines = keel.ok("logs", "big").splitlines()
    assert lines[-1].startswith("line-300-") and "line-1-" not in lines[0]
    assert 0 < len(lines) < 300
    log = json.loads(keel.ok("inspect", "big"))[0]["LogPath"]
    assert os.path.getsize(log) <= 8192
    assert keel.ps("-a") and not any("configured" == e["State"] for e in keel.ps("-a"))


def test_info_and_version(keel):
    info = json.loads(keel.ok("info", "--format", "json"))
    host, store = info["host"], info["store"]
    assert host["cgroupManager"] == "cgroupfs" and host["os"] == "linux"
    from keel.kernel import cgroups

    mode = cgroups.detect().mode
    assert host["cgroupMode"] == mode and host["cgroupVersion"] == ("v2" if mode == "v2" else "v1")
    assert "memory" in host["cgroupControllers"] and "runc" in host["runtimes"]
    assert host["ociRuntime"]["name"] == "keel-runtime" and host["ociRuntime"]["path"]
    assert host["conmon"]["version"].startswith("conmon version")
    assert store["graphRoot"] == str(keel.root) and store["runRoot"] == str(keel.runroot)
    assert store["imageStore"]["number"] == 1 and store["containerStore"]["number"] == 0
    assert "cgroupVersion:" in keel.ok("system", "info")
    from keel import __version__

    v = json.loads(keel.ok("version", "--format", "json"))["Client"]
    assert v["Version"] == __version__ and v["OsArch"].startswith("linux/")
    assert keel.ok("version").splitlines()[0].split() == ["Version:", __version__]
    _fail(keel("info", "--format", "xml"), "--format 'xml'")


def test_logs_follow_across_log_restarts(keel):
    """`logs -f` reads each file to its end before the one conmon starts afresh (tail -F)."""
    script = ("i=0; while [ $i -lt 600 ]; do i=$((i+1)); echo line-$i-zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz; "
              "[ $((i % 50)) -eq 0 ] && sleep 0.3; done")
    keel.ok("run", "--runtime", keel.runtime, "-d", "--name", "f", "--log-opt", "max-size=8192",
            IMAGE, "sh", "-c", script)
    r = keel("logs", "-f", "f", timeout=120)
    assert r.returncode == 0, r.stderr
    assert [int(ln.split("-")[1]) for ln in r.stdout.splitlines()] == list(range(1, 601))
    log = json.loads(keel.ok("inspect", "f"))[0]["LogPath"]
    assert os.path.getsize(log) <= 8192


def test_system_prune_volumes_networks_and_cp_into_a_stopped_containers_volume(keel, tmp_path):
    env = {"KEEL_NETWORK_CONFIG_DIR": str(tmp_path / "net.d")}
    keel.ok("network", "create", "-o", "masquerade=false", "--subnet", "10.97.31.0/24", "unusednet", env=env)
    keel.ok("volume", "create", "unused")
    keel.run("--name", "v", "-v", "kept:/data", IMAGE, "sh", "-c", "cat /data/note 2>/dev/null || echo none")
    (tmp_path / "note").write_text("copied in\n")
    keel.ok("cp", tmp_path / "note", "v:/data/note")                # into the volume, not the overlay
    mp = json.loads(keel.ok("volume", "inspect", "kept"))[0]["Mountpoint"]
    assert open(os.path.join(mp, "note")).read() == "copied in\n"
    keel.ok("start", "-a", "v")
    assert keel.ok("logs", "v").splitlines() == ["none", "copied in"]
    assert [e["Names"][0] for e in keel.ps("-f", "volume=kept")] == ["v"]
    assert [e["Names"][0] for e in keel.ps("-f", "volume=/data")] == ["v"]
    assert keel.ps("-f", "volume=unused") == []
    out = keel.ok("system", "prune", "-f", "--volumes", env=env).splitlines()
    i = out.index("Deleted Volumes")
    assert out[i + 1:i + 3] == ["kept", "unused"]                      # kept's container went first
    assert keel.ok("volume", "ls", "-q").split() == []                # v was stopped: pruned first
    i = out.index("Deleted Networks")
    assert out[i + 1] == "unusednet" and keel.ok("network", "ls", "-q", env=env).split() == ["keel"]
    assert out[-1].startswith("Total reclaimed space: ")


@pytest.fixture(params=RUNTIMES)
def netkeel(request, tmp_path, oci_busybox):
    from test_network_cli import _keel

    yield from _keel(tmp_path, oci_busybox, request.param)


def test_stats_net_io_of_a_container_on_a_network(netkeel):
    from keel.engine.stats import human_size

    name, _bridge = netkeel.network()
    gateway = json.loads(netkeel.ok("network", "inspect", name))[0]["subnets"][0]["gateway"]
    netkeel.ok("run", "--runtime", netkeel.runtime, "-d", "--name", "n", "--network", name, IMAGE, "sh", "-c",
               f"ping -c 3 -i 0.2 -W 1 {gateway} >/dev/null; echo pinged; sleep 1000")
    deadline = time.monotonic() + 20
    while "pinged" not in netkeel.ok("logs", "n"):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    pid = [e for e in netkeel.ps() if e["Names"] == ["n"]][0]["Pid"]
    def eth0():
        with open(f"/proc/{pid}/net/dev") as f:
            fields = [ln.split(":", 1)[1].split() for ln in f if ln.strip().startswith("eth0:")][0]
        return int(fields[0]), int(fields[8])

    for _ in range(10):   # a stray ARP or router solicitation may move the counters: read around it
        before = eth0()
        e = json.loads(netkeel.ok("stats", "--no-stream", "--format", "json", "n"))[0]
        if eth0() == before:
            break
    rx, tx = before
    assert rx > 3 * 84 and tx > 3 * 84                                # three pings, both ways
    assert e["net_io"] == f"{human_size(rx)} / {human_size(tx)}"
