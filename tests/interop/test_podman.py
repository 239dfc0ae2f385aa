"""podman (+ conmon) drives the runtime under test with podman's defaults: cgroupfs under our own
cgroup parent, podman's seccomp profile and capability set, ulimits from containers.conf, no
network. Every test ends by proving nothing of its container is left: no process, no mount, no
cgroup."""

import re
import time

import pytest

import interop_helpers as h

pytestmark = pytest.mark.interop

TRAP_TERM = 'trap "exit 42" TERM; sleep 100 & wait'


def cid_of(path):
    with open(path) as f:
        return f.read().strip()


def assert_clean(podman, cid, pids=()):
    left = podman.wait_clean(cid, pids)
    assert not left, f"container {cid[:12]} left behind: {left}"


def run_detached(podman, *cmd):
    res = podman("run", "-d", podman.image, *cmd, check=True)
    cid = res.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"[0-9a-f]{64}", cid), res.stdout
    return cid


def test_run_echo(podman, tmp_path):
    cidfile = tmp_path / "cid"
    res = podman("run", "--rm", "--cidfile", cidfile, podman.image, "echo", "ok")
    assert res.returncode == 0, res.stderr
    assert res.stdout == "ok\n"
    assert_clean(podman, cid_of(cidfile))


def test_podman_config_is_honoured(podman):
    """The config.json podman writes (its defaults: seccomp profile, capability set, rlimits from
    containers.conf, hostname, cgroups path, new network namespace) is what the process gets."""
    script = ("grep -E '^(Seccomp|CapEff|CapPrm|CapBnd|NoNewPrivs):' /proc/self/status; "
              "echo nofile=$(ulimit -n); echo nproc=$(ulimit -u); echo host=$(hostname); "
              "echo cgroup=$(grep -E ':memory:' /proc/self/cgroup); echo net=$(ls /sys/class/net); "
              "echo pid=$$; echo user=$(id -u):$(id -g); echo cwd=$(pwd)")
    res = podman("create", podman.image, "sh", "-c", script, check=True)
    cid = res.stdout.strip().splitlines()[-1]
    res = podman("start", "--attach", cid)
    assert res.returncode == 0, res.stderr
    config = podman.oci_config(cid)
    proc = config["process"]
    out = dict(re.findall(r"^(\w+)[:=]\s*(.*)$", res.stdout, re.M))
    assert config["linux"].get("seccomp"), "podman's default seccomp profile is expected in config.json"
    assert out["Seccomp"] == "2", res.stdout  # a seccomp filter is installed
    assert int(out["CapEff"], 16) == h.cap_mask(proc["capabilities"]["effective"]), res.stdout
    assert int(out["CapPrm"], 16) == h.cap_mask(proc["capabilities"]["permitted"]), res.stdout
    assert int(out["CapBnd"], 16) == h.cap_mask(proc["capabilities"]["bounding"]), res.stdout
    assert out["NoNewPrivs"] == ("1" if proc.get("noNewPrivileges") else "0"), res.stdout
    rl = {r["type"]: r for r in proc.get("rlimits", [])}
    assert out["nofile"] == str(rl["RLIMIT_NOFILE"]["soft"]) == "20000", res.stdout
    assert out["nproc"] == str(rl["RLIMIT_NPROC"]["soft"]) == "32768", res.stdout
    assert out["host"] == config["hostname"] == cid[:12], res.stdout
    assert config["linux"]["cgroupsPath"] == f"{podman.cgroup_parent}/libpod-{cid}"
    assert out["cgroup"].endswith(":" + config["linux"]["cgroupsPath"]), res.stdout
    assert out["pid"] == "1", res.stdout
    assert out["net"] == "lo", res.stdout  # --network none: a new netns with only lo
    assert out["user"] == "0:0" and out["cwd"] == "/", res.stdout
    podman("rm", cid, check=True)
    assert_clean(podman, cid)


def test_exit_code_propagates(podman, tmp_path):
    cidfile = tmp_path / "cid"
    res = podman("run", "--rm", "--cidfile", cidfile, podman.image, "sh", "-c", "exit 7")
    assert res.returncode == 7, res.stderr
    assert_clean(podman, cid_of(cidfile))


def test_interactive_tty(podman, tmp_path):
    """`podman run -it` through a pty we open ourselves (CI has no terminal): conmon passes
    --console-socket to the runtime, which must hand back the container's pty master."""
    cidfile = tmp_path / "cid"
    argv = podman.argv("run", "-it", "--rm", "--cidfile", cidfile, podman.image, "sh")
    out, rc = h.run_in_pty(argv, b"echo hi; tty; exit 5\n", env=podman.env, timeout=60)
    text = out.decode(errors="replace")
    assert rc == 5, text
    assert re.search(r"^hi\r?$", text, re.M), text
    assert re.search(r"^/dev/pts/\d+\r?$", text, re.M), text
    assert_clean(podman, cid_of(cidfile))


def test_detached_exec_and_inspect(podman):
    cid = run_detached(podman, "sleep", "100")
    info = podman.inspect(cid)
    state = info["State"]
    assert state["Status"] == "running" and state["Running"] is True, state
    pid, conmon_pid = state["Pid"], state["ConmonPid"]
    assert pid > 0 and h.pid_alive(pid), state
    assert conmon_pid > 0 and h.pid_alive(conmon_pid), state
    assert info["OCIRuntime"] == podman.runtime
    assert h._proc_read(pid, "cmdline") == b"sleep\x00100\x00"
    assert h.process_cgroup(pid, "memory") == f"{podman.cgroup_parent}/libpod-{cid}"
    assert h.process_cgroup(pid, "pids") == f"{podman.cgroup_parent}/libpod-{cid}"
    # the leak detector sees a running container (so that assert_clean means something)
    running = podman.leftovers(cid, (pid, conmon_pid))
    assert {"processes", "mounts", "cgroups", "runtime_state"} <= running.keys(), running

    ps = podman("ps", "--format", "{{.ID}} {{.Status}}", check=True).stdout
    assert cid[:12] in ps and "Up" in ps, ps

    res = podman("exec", cid, "echo", "inside")
    assert (res.returncode, res.stdout) == (0, "inside\n"), res.stderr
    res = podman("exec", cid, "sh", "-c", "exit 4")
    assert res.returncode == 4, res.stderr
    # the exec'd process joins the container: same pid namespace and cgroup
    res = podman("exec", cid, "sh", "-c", "echo $$; grep :memory: /proc/self/cgroup")
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines()[1].endswith(f"/libpod-{cid}"), res.stdout
    assert int(res.stdout.splitlines()[0]) > 1

    res = podman("rm", "-f", "-t", "0", cid)
    assert res.returncode == 0, res.stderr
    assert_clean(podman, cid, (pid, conmon_pid))


def test_stop_escalates_to_sigkill(podman):
    """`sleep` as pid 1 ignores SIGTERM: podman sends TERM, waits 2 s, then KILL -> 137."""
    cid = run_detached(podman, "sleep", "100")
    pid = podman.inspect(cid)["State"]["Pid"]
    t0 = time.monotonic()
    res = podman("stop", "-t", "2", cid)
    took = time.monotonic() - t0
    assert res.returncode == 0, res.stderr
    assert 1.5 < took < 20, took
    state = podman.inspect(cid)["State"]
    assert state["Status"] == "exited" and state["Running"] is False, state
    assert state["ExitCode"] in (137, 143), state
    assert not h.pid_alive(pid)
    podman("rm", cid, check=True)
    assert_clean(podman, cid, (pid,))


def test_stop_graceful(podman):
    """A container that handles SIGTERM stops at once with its own exit code."""
    cid = run_detached(podman, "sh", "-c", 'trap "exit 143" TERM; sleep 100 & wait')
    t0 = time.monotonic()
    res = podman("stop", "-t", "10", cid)
    assert res.returncode == 0, res.stderr
    assert time.monotonic() - t0 < 8, "SIGTERM was not delivered (stop waited for its timeout)"
    state = podman.inspect(cid)["State"]
    assert state["ExitCode"] == 143, state
    podman("rm", cid, check=True)
    assert_clean(podman, cid)


@pytest.mark.parametrize("signal,cmd,expected", [
    ("KILL", ["sleep", "100"], 137),
    ("TERM", ["sh", "-c", TRAP_TERM], 42),
], ids=["KILL", "TERM"])
def test_kill(podman, signal, cmd, expected):
    cid = run_detached(podman, *cmd)
    pid = podman.inspect(cid)["State"]["Pid"]
    res = podman("kill", "-s", signal, cid)
    assert res.returncode == 0, res.stderr
    res = podman("wait", cid, timeout=30)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == str(expected)
    assert podman.inspect(cid)["State"]["ExitCode"] == expected
    podman("rm", cid, check=True)
    assert_clean(podman, cid, (pid,))


def test_rm_force_running(podman):
    """`podman rm -f` of a running container: SIGTERM (handled at once here), delete, unmount."""
    cid = run_detached(podman, "sh", "-c", TRAP_TERM)
    state = podman.inspect(cid)["State"]
    t0 = time.monotonic()
    res = podman("rm", "-f", cid)
    assert res.returncode == 0, res.stderr
    assert time.monotonic() - t0 < 8, "SIGTERM was not delivered (rm -f waited for its timeout)"
    ps = podman("ps", "-a", "--format", "{{.ID}}", check=True).stdout
    assert cid[:12] not in ps
    assert_clean(podman, cid, (state["Pid"], state["ConmonPid"]))


def test_rm_force_running_kill(podman):
    """`podman rm -f -t 0`: straight to SIGKILL."""
    cid = run_detached(podman, "sleep", "100")
    state = podman.inspect(cid)["State"]
    res = podman("rm", "-f", "-t", "0", cid)
    assert res.returncode == 0, res.stderr
    assert cid[:12] not in podman("ps", "-a", "--format", "{{.ID}}", check=True).stdout
    assert_clean(podman, cid, (state["Pid"], state["ConmonPid"]))


def test_exec_interactive_tty(podman):
    """`podman exec -it` through our own pty: conmon passes --tty --console-socket to `exec`."""
    cid = run_detached(podman, "sleep", "100")
    argv = podman.argv("exec", "-it", cid, "sh")
    out, rc = h.run_in_pty(argv, b"echo hi; tty; exit 6\n", env=podman.env, timeout=60)
    text = out.decode(errors="replace")
    assert rc == 6, text
    assert re.search(r"^hi\r?$", text, re.M), text
    assert re.search(r"^/dev/pts/\d+\r?$", text, re.M), text
