"""`keel` container commands end to end: a private --root/--runroot per test, busybox loaded
offline, each test on keel-runtime and on runc, and nothing left behind afterwards."""

import json
import os
import subprocess
import sys
import time

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "engine"))
import engine_helpers  # noqa: E402
from engine_helpers import RUNTIMES  # noqa: E402

IMAGE = "localhost/busybox:latest"


class Keel:
    def __init__(self, tmp_path, runtime):
        self.root, self.runroot = tmp_path / "root", tmp_path / "run"
        self.runtime = runtime

    def __call__(self, *args, timeout=60, env=None):
        argv = [sys.executable, "-m", "keel.cli.main", "--root", str(self.root),
                "--runroot", str(self.runroot), *map(str, args)]
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL, env=dict(os.environ, **(env or {})))

    def run(self, *args, **kw):
        return self("run", "--runtime", self.runtime, *args, **kw)

    def ok(self, *args, **kw):
        r = self(*args, **kw)
        assert r.returncode == 0, (args, r.stdout, r.stderr)
        return r.stdout

    def ps(self, *args):
        return json.loads(self.ok("ps", "--format", "json", *args))


@pytest.fixture(autouse=True)
def no_leftovers(tmp_path):
    before = engine_helpers.snapshot()
    yield
    problems = engine_helpers.leftovers(tmp_path, before)
    assert not problems, "left behind: " + "; ".join(problems)


@pytest.fixture(params=RUNTIMES)
def keel(request, tmp_path, oci_busybox):
    k = Keel(tmp_path, request.param)
    r = k("load", "-i", oci_busybox)
    assert r.returncode == 0, r.stderr
    k.ok("tag", r.stdout.strip().rsplit(" ", 1)[-1], IMAGE) if IMAGE not in r.stdout else None
    yield k
    ids = k("ps", "-aq").stdout.split()
    if ids:
        k("rm", "-f", *ids)


def _wait_ready(keel, name, n):
    """Wait until the container printed "ready" n times: its traps are set (a signal sent
    earlier reaches a pid 1 without a handler, which ignores it)."""
    deadline = time.monotonic() + 10
    while keel.ok("logs", name).count("ready\n") < n:
        assert time.monotonic() < deadline, "container never printed ready"
        time.sleep(0.05)


def _assert_gone(keel):
    assert keel.ps("-a") == []
    for d in ("containers", "exits", "runtime", "locks"):
        assert os.listdir(keel.runroot / d) == [], d
    assert os.listdir(keel.root / "containers") == []
    assert os.listdir(keel.root / "snapshots" / "active") == []


def test_run_echo_and_exit_codes(keel):
    r = keel.run("--rm", IMAGE, "sh", "-c", "echo hello; echo oops >&2")
    assert (r.returncode, r.stdout, r.stderr) == (0, "hello\n", "oops\n")
    r = keel.run("--rm", IMAGE, "sh", "-c", "exit 3")
    assert r.returncode == 3 and r.stdout == r.stderr == ""
    r = keel.run("--rm", IMAGE, "/no/such/binary")
    assert r.returncode == 127 and r.stderr.startswith("Error: ") and len(r.stderr.splitlines()) == 1
    _assert_gone(keel)


def test_run_flags_reach_the_container(keel, tmp_path):
    envf = tmp_path / "env"
    envf.write_text("# comment\nFROM_FILE=1\nBOTH=file\n")
    out = keel.ok("run", "--runtime", keel.runtime, "--rm", "-e", "A=b c", "-e", "BOTH=flag",
                  "-e", "FROM_HOST", "--env-file", envf, "-w", "/work/dir", "-u", "65534:65534",
                  "--hostname", "box", IMAGE, "sh", "-c",
                  'echo "$A|$FROM_FILE|$BOTH|$FROM_HOST|$(pwd)|$(id -u):$(id -g)|$(hostname)"',
                  env={"FROM_HOST": "h"})
    assert out == "b c|1|flag|h|/work/dir|65534:65534|box\n"
    out = keel.ok("run", "--runtime", keel.runtime, "--rm", "--entrypoint", '["sh","-c"]', IMAGE, "echo $0", "x")
    assert out == "x\n"
    out = keel.ok("run", "--runtime", keel.runtime, "--rm", "--entrypoint", "echo", IMAGE, "a", "b")
    assert out == "a b\n"


def test_network_none_and_host(keel):
    none = keel.ok("run", "--runtime", keel.runtime, "--rm", IMAGE, "cat", "/proc/net/dev")
    assert [ln.split(":")[0].strip() for ln in none.splitlines()[2:]] == ["lo"]
    host = keel.ok("run", "--runtime", keel.runtime, "--rm", "--network", "host", IMAGE, "cat", "/proc/net/dev")
    with open("/proc/net/dev") as f:
        assert sorted(ln.split(":")[0].strip() for ln in host.splitlines()[2:]) == \
            sorted(ln.split(":")[0].strip() for ln in f.read().splitlines()[2:])
    r = keel.run("--network", "no-such-net", IMAGE, "true")
    assert r.returncode == 125 and r.stderr == "Error: network 'no-such-net' not found\n"


def test_detached_ps_inspect_logs_rm(keel):
    cid = keel.ok("run", "--runtime", keel.runtime, "-d", "--name", "web", "--label", "tier=front",
                  IMAGE, "sh", "-c", "echo started; exec sleep 100").strip()
    assert len(cid) == 64
    [c] = keel.ps()                                   # another keel process sees it
    for key in ("Id", "Names", "Image", "ImageID", "Command", "Created", "State", "Status",
                "ExitCode", "Pid", "Labels"):
        assert key in c
    assert c["Id"] == cid and c["Names"] == ["web"] and c["State"] == "running"
    assert c["Image"] == IMAGE and len(c["ImageID"]) == 64 and c["Labels"] == {"tier": "front"}
    assert c["Command"] == ["sh", "-c", "echo started; exec sleep 100"] and c["Pid"] > 0
    assert c["Status"].startswith("Up ")
    assert keel.ok("ps", "-q") == cid[:12] + "\n"
    table = keel.ok("ps").splitlines()
    assert table[0].split()[:2] == ["CONTAINER", "ID"] and table[1].split()[0] == cid[:12]
    assert table[1].split()[-1] == "web"
    [info] = json.loads(keel.ok("inspect", "web"))
    assert info["Id"] == cid and info["Name"] == "web" and info["OCIRuntime"] == keel.runtime
    assert info["State"]["Status"] == "running" and info["State"]["Running"] is True
    assert info["State"]["Pid"] == c["Pid"] and info["State"]["ExitCode"] == 0
    assert info["Config"]["Cmd"] == ["sh", "-c", "echo started; exec sleep 100"]
    assert info["Config"]["Labels"] == {"tier": "front"} and info["Config"]["Image"] == IMAGE
    assert "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" in info["Config"]["Env"]
    assert info["Image"] == c["ImageID"]
    [img] = json.loads(keel.ok("inspect", IMAGE))    # inspect still finds images
    assert img["Id"] == c["ImageID"]
    deadline = time.monotonic() + 5
    while keel.ok("logs", "web") != "started\n" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert keel.ok("logs", "web") == "started\n"
    r = keel("rm", "web")
    assert r.returncode == 125 and "stop it first" in r.stderr
    assert keel.ok("rm", "-f", "web") == cid + "\n"
    assert not os.path.exists(f"/proc/{c['Pid']}") or \
        open(f"/proc/{c['Pid']}/stat").read().split()[2] == "Z"
    _assert_gone(keel)


def test_logs_after_exit_and_wait(keel):
    script = "echo one; echo two; echo three >&2; printf partial; exit 5"
    cid = keel.ok("run", "--runtime", keel.runtime, "-d", IMAGE, "sh", "-c", script).strip()
    assert keel.ok("wait", cid) == "5\n"
    log = open(json.loads(keel.ok("inspect", cid))[0]["LogPath"]).read()
    assert " stdout F one\n" in log and " stderr F three\n" in log and " stdout P partial\n" in log
    r = keel("logs", cid)
    assert r.stdout == "one\ntwo\npartial" and r.stderr == "three\n"
    assert keel("logs", "--tail", "1", cid).stdout == "partial"
    r = keel("logs", "-t", cid)
    first = r.stdout.splitlines()[0]
    assert first.endswith(" one") and first[:4].isdigit() and "T" in first.split()[0]
    assert keel("logs", "--since", "2999-01-01", cid).stdout == ""
    assert keel("logs", "--since", "10m", cid).stdout == "one\ntwo\npartial"
    assert keel("logs", "-f", cid).stdout == "one\ntwo\npartial"   # exited: -f returns
    [c] = keel.ps("-a")
    assert c["State"] == "exited" and c["ExitCode"] == 5 and c["Status"].startswith("Exited (5) ")
    assert keel.ps() == []


def test_create_start_attach_and_follow(keel):
    cid = keel.ok("create", "--runtime", keel.runtime, "--name", "job", IMAGE,
                  "sh", "-c", "echo a; sleep 0.5; echo b; exit 4").strip()
    assert keel.ps("-a")[0]["State"] == "created"
    r = keel("start", "-a", "job")
    assert (r.returncode, r.stdout) == (4, "a\nb\n")
    assert keel.ok("start", "job") == "job\n"
    assert keel("logs", "-f", "job").stdout == "a\nb\na\nb\n"
    assert keel.ok("wait", "job") == "4\n"
    keel.ok("rm", cid)


def test_stop_graceful_and_escalating(keel):
    trap = "trap 'exit 0' TERM; echo ready; while true; do sleep 0.1; done"
    keel.ok("run", "--runtime", keel.runtime, "-d", "--name", "polite", IMAGE, "sh", "-c", trap)
    _wait_ready(keel, "polite", 1)
    keel.ok("run", "--runtime", keel.runtime, "-d", "--name", "deaf", IMAGE, "sleep", "100")
    t = time.monotonic()
    assert keel.ok("stop", "polite") == "polite\n"
    assert time.monotonic() - t < 5
    t = time.monotonic()
    assert keel.ok("stop", "-t", "1", "deaf") == "deaf\n"     # pid 1 ignores SIGTERM
    assert 1 <= time.monotonic() - t < 8
    codes = {c["Names"][0]: (c["State"], c["ExitCode"]) for c in keel.ps("-a")}
    assert codes == {"polite": ("exited", 0), "deaf": ("exited", 137)}
    cid = keel.ok("restart", "polite").strip()
    [c] = keel.ps()
    assert c["Id"] == cid and c["Names"] == ["polite"] and c["State"] == "running"
    _wait_ready(keel, "polite", 2)
    t = time.monotonic()
    keel.ok("restart", "-t", "5", "polite")
    assert time.monotonic() - t < 5
    assert keel.ps()[0]["State"] == "running"
    keel.ok("rm", "-f", "polite")
    keel.ok("rm", "deaf")


def test_kill_signal(keel):
    keel.ok("run", "--runtime", keel.runtime, "-d", "--name", "k", IMAGE, "sh", "-c",
            "trap 'exit 7' USR1; echo ready; while true; do sleep 0.1; done")
    _wait_ready(keel, "k", 1)
    assert keel.ok("kill", "-s", "USR1", "k") == "k\n"
    assert keel.ok("wait", "k") == "7\n"
    r = keel("kill", "k")
    assert r.returncode == 125 and "can only kill running containers" in r.stderr
    r = keel("kill", "-s", "NOPE", "k")
    assert (r.returncode, r.stderr) == (125, "Error: invalid signal 'NOPE'\n")
    keel.ok("rm", "k")


def test_rm_removes_everything(keel):
    cid = keel.ok("run", "--runtime", keel.runtime, "-d", "--rm", IMAGE, "sh", "-c", "exit 2").strip()
    deadline = time.monotonic() + 10
    while keel.ps("-a") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert keel("inspect", cid).returncode == 125
    keel.ok("run", "--runtime", keel.runtime, "-d", IMAGE, "sleep", "100")
    keel.ok("rm", "-f", *keel("ps", "-aq").stdout.split())
    _assert_gone(keel)


def test_two_creates_race_for_one_name(keel):
    argv = [sys.executable, "-m", "keel.cli.main", "--root", str(keel.root), "--runroot", str(keel.runroot),
            "create", "--runtime", keel.runtime, "--name", "race", IMAGE, "true"]
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = sorted((p.wait(timeout=60), p.stderr.read()) for p in procs)
    for p in procs:
        p.stdout.close()
        p.stderr.close()
    assert [code for code, _ in results] == [0, 125]
    assert "already in use" in results[1][1]
    [c] = keel.ps("-a")
    assert c["Names"] == ["race"]
    assert os.listdir(keel.root / "snapshots" / "active") == [c["Id"]]
    keel.ok("rm", "race")


def test_names_unique_and_bad_input(keel):
    keel.ok("create", "--runtime", keel.runtime, "--name", "dup", IMAGE, "true")
    r = keel.run("--name", "dup", IMAGE, "true")
    assert r.returncode == 125 and r.stdout == ""
    assert r.stderr == "Error: the container name 'dup' is already in use: remove that container or choose another name\n"
    for args, words in ((["Bad//Name"], "invalid reference 'Bad//Name'"), (["localhost/missing:1"], "image not found"),
                        (["--bogus", IMAGE], "unknown flag: --bogus"),
                        (["--stop-timeout", "x", IMAGE], "invalid int value")):
        r = keel.run(*args, "true")
        assert r.returncode == 125 and r.stdout == "", (args, r.stderr)
        assert len(r.stderr.splitlines()) == 1 and words in r.stderr, (args, r.stderr)
    r = keel("ps", "--bogus")
    assert r.returncode == 125 and len(r.stderr.splitlines()) == 1
    r = keel("rm", "nope")
    assert r.returncode == 125 and r.stderr == "Error: no container with name or id 'nope' found\n"
    assert [c["Names"] for c in keel.ps("-a")] == [["dup"]]
    keel.ok("rm", "dup")
    _assert_gone(keel)
