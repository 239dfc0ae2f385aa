"""`keel run` security and resource flags end to end (keel-runtime and runc), and bad values:
one line, exit 125, nothing made."""

import json
import os

import pytest

from test_containers import IMAGE, keel, no_leftovers  # noqa: F401 (fixtures)

DOCKER_CAPEFF = 0x00000000a80425fb


def status(out, field):
    return next(ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith(field + ":"))


def test_capabilities(keel):
    out = keel.ok("run", "--runtime", keel.runtime, "--rm", IMAGE, "cat", "/proc/self/status")
    assert int(status(out, "CapEff"), 16) == DOCKER_CAPEFF and status(out, "Seccomp") == "2"
    out = keel.ok("run", "--runtime", keel.runtime, "--rm", "--cap-drop", "all", "--cap-add", "net_admin",
                  "--cap-add", "CAP_KILL", IMAGE, "cat", "/proc/self/status")
    assert int(status(out, "CapEff"), 16) == (1 << 12) | (1 << 5)
    out = keel.ok("run", "--runtime", keel.runtime, "--rm", "--privileged", IMAGE, "cat", "/proc/self/status")
    assert int(status(out, "CapEff"), 16) > DOCKER_CAPEFF and status(out, "Seccomp") == "0"


def test_security_opts(keel):
    out = keel.ok("run", "--runtime", keel.runtime, "--rm", "--security-opt", "no-new-privileges", IMAGE,
                  "cat", "/proc/self/status")
    assert status(out, "NoNewPrivs") == "1"
    r = keel.run("--rm", IMAGE, "unshare", "-U", "true")
    assert r.returncode != 0 and "Operation not permitted" in r.stderr, r
    keel.ok("run", "--runtime", keel.runtime, "--rm", "--security-opt", "seccomp=unconfined", IMAGE,
            "unshare", "-U", "true")
    # podman's mask/unmask
    out = keel.ok("run", "--runtime", keel.runtime, "--rm", "--security-opt", "unmask=/proc/timer_list",
                  "--security-opt", "mask=/etc/hostname", IMAGE, "sh", "-c",
                  "wc -c < /proc/timer_list; wc -c < /etc/hostname")
    timers, hostname = map(int, out.split())
    assert timers > 0 and hostname == 0
    # docker's spellings scripts pass: all accepted
    out = keel.ok("run", "--runtime", keel.runtime, "--rm", "--security-opt", "apparmor=unconfined",
                  "--security-opt", "seccomp:unconfined", "--security-opt", "systempaths=unconfined",
                  "--security-opt", "label=disable", IMAGE, "sh", "-c",
                  "grep Seccomp: /proc/self/status; wc -c < /proc/timer_list")
    assert out.split()[1] == "0" and int(out.split()[2]) > 0, out


def test_read_only_and_resources_in_inspect(keel):
    r = keel.run("--rm", "--read-only", IMAGE, "sh", "-c", "touch /x; touch /tmp/y && echo TMP")
    assert "Read-only file system" in r.stderr and "TMP" in r.stdout, r
    cid = keel.ok("create", "--runtime", keel.runtime, "-m", "64m", "--cpus", "1.5", "--pids-limit", "50",
                  "--ulimit", "nofile=100:200", "--cap-add", "sys_time", "--read-only", IMAGE, "true").strip()
    info = json.loads(keel.ok("inspect", cid))[0]
    hc = info["HostConfig"]
    assert hc["Memory"] == 64 << 20 and hc["NanoCpus"] == 1_500_000_000 and hc["PidsLimit"] == 50
    assert hc["CapAdd"] == ["CAP_SYS_TIME"] and hc["ReadonlyRootfs"] is True
    assert hc["Ulimits"] == [{"Name": "RLIMIT_NOFILE", "Soft": 100, "Hard": 200}]
    with open(info["OCIConfigPath"]) as f:
        cfg = json.load(f)
    res = cfg["linux"]["resources"]
    assert res["memory"]["limit"] == 64 << 20 and res["cpu"] == {"quota": 150000, "period": 100000}
    assert res["pids"] == {"limit": 50} and cfg["root"]["readonly"] is True
    assert "CAP_SYS_TIME" in cfg["process"]["capabilities"]["bounding"]
    keel.ok("rm", cid)


def test_memory_limit_oom_kill_is_reported(keel):
    r = keel.run("--name", "hog", "-m", "24m", IMAGE, "dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1")
    assert r.returncode == 137, r
    state = json.loads(keel.ok("inspect", "hog"))[0]["State"]
    assert state["OOMKilled"] is True and state["ExitCode"] == 137
    r = keel.run("--name", "fits", "-m", "24m", IMAGE, "true")
    assert r.returncode == 0 and json.loads(keel.ok("inspect", "fits"))[0]["State"]["OOMKilled"] is False
    keel.ok("rm", "hog", "fits")


def test_device_and_shm_size(keel):
    out = keel.ok("run", "--runtime", keel.runtime, "--rm", "--device", "/dev/loop-control", "--shm-size", "8m",
                  IMAGE, "sh", "-c", "stat -c %F /dev/loop-control; grep ' /dev/shm ' /proc/mounts")
    assert "character special file" in out and "size=8192k" in out, out
    cid = keel.ok("create", "--runtime", keel.runtime, "--device", "/dev/loop-control:/dev/lc:r", IMAGE, "true").strip()
    hc = json.loads(keel.ok("inspect", cid))[0]["HostConfig"]
    assert hc["Devices"] == [{"PathOnHost": "/dev/loop-control", "PathInContainer": "/dev/lc",
                              "CgroupPermissions": "r"}] and hc["ShmSize"] == 64 << 20
    keel.ok("rm", cid)


def test_init_flag(keel):
    out = keel.ok("run", "--runtime", keel.runtime, "--rm", "--init", IMAGE, "sh", "-c",
                  "cat /proc/1/cmdline | tr '\\0' ' '; echo; echo $PPID")
    first, ppid = out.splitlines()[:2]
    assert first.startswith("/run/keel-init -- sh -c") and ppid == "1", out
    # tini instead, on a read-only root (the init lands on the /run tmpfs)
    out = keel.ok("run", "--runtime", keel.runtime, "--rm", "--read-only", "--init-path",
                  "/usr/bin/tini-static", IMAGE, "sh", "-c", "echo $PPID; /run/keel-init --version")
    assert out.split()[:2] == ["1", "tini"], out


BAD = [
    (["--cap-add", "FOO"], "unknown capability CAP_FOO"),
    (["--cap-drop", "CAP_BAR"], "unknown capability CAP_BAR"),
    (["--security-opt", "seccomp=/no/such.json"], "no such file"),
    (["--security-opt", "bogus"], "unknown security option"),
    (["--security-opt", "no-new-privileges=2"], "not true or false"),
    (["--memory", "12q"], "invalid size"),
    (["--memory-swap", "1g"], "needs --memory"),
    (["--cpus", "999"], "range of CPUs"),
    (["--pids-limit", "x"], "not a whole number"),
    (["--ulimit", "nofile=a"], "not a whole number"),
    (["--sysctl", "kernel.panic=1"], "not a namespaced sysctl"),
    (["--read-only-tmpfs=maybe"], "true or false"),
    (["-v", "/no/such/dir:/x"], "host path /no/such/dir: no such file"),
    (["-v", "/tmp:relative"], "must be an absolute path"),
    (["-v", "/tmp:/"], "cannot replace the container's root"),
    (["-v", "bad!name:/x"], "invalid volume name"),
    (["-v", "/tmp:/x:bogus"], "unknown option 'bogus'"),
    (["-v", "/tmp:/x", "-v", "/etc:/x"], "duplicate mount destination /x"),
    (["--tmpfs", "relative"], "must be an absolute path"),
    (["--tmpfs", "/t:size=big"], "is not a size"),
    (["--tmpfs", "/t:wat"], "unknown tmpfs option"),
    (["--mount", "type=nfs,target=/x"], "type 'nfs'"),
    (["--mount", "type=bind,target=/x"], "source= is required"),
    (["--mount", "type=volume,target=/x,colour=red"], "unknown key 'colour'"),
    (["--init-path", "/no/such/init"], "no such executable"),
    (["--device", "/dev/nope"], "no such file"),
    (["--device", "/dev/null:/dev/x:rwz"], "a combination of r, w and m"),
    (["--shm-size", "0"], "must be more than 0"),
]


def test_bad_values_one_line_exit_125_nothing_made(keel):
    for flags, message in BAD:
        r = keel.run(*flags, "-v", "made-too-early:/data", IMAGE, "true")
        assert r.returncode == 125, (flags, r.stderr)
        assert r.stderr.startswith("Error: ") and r.stderr.count("\n") == 1, (flags, r.stderr)
        assert message in r.stderr, (flags, r.stderr)
    assert keel.ps("-a") == []
    assert keel.ok("volume", "ls", "-q") == ""
    for d in (keel.root / "snapshots" / "active", keel.runroot / "containers", keel.root / "volumes"):
        assert not d.exists() or [n for n in os.listdir(d) if n != ".lock"] == [], d


@pytest.mark.parametrize("flag", ["--privileged", "--read-only"])
def test_boolean_flags_take_no_value(keel, flag):
    r = keel.run(f"{flag}=yes", IMAGE, "true")
    assert r.returncode == 125 and r.stderr.count("\n") == 1
