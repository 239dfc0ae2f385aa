"""exec: a new process in a running container's namespaces, cgroup and rootfs."""

import json
import os
import time

import pytest

import runtime_helpers as h
from keel.kernel.caps import CAP_NUMBERS


@pytest.fixture
def running(bundle):
    bundle.config["hostname"] = "exec-host"
    bundle.process["env"].append("FROM_CONFIG=yes")
    bundle.start_detached()
    return bundle


def _status(out):
    return dict(line.split(":\t", 1) for line in out.splitlines() if ":\t" in line)


def test_exec_args_and_output(running, runtime):
    r = runtime("exec", running.id, "sh", "-c", 'echo "[$1] [$2]"; hostname; echo err >&2', "sh", "a b", "c")
    assert r.rc == 0, r
    assert r.out == "[a b] [c]\nexec-host\n"
    assert r.err == "err\n"


@pytest.mark.parametrize("code", [0, 1, 7, 255])
def test_exec_exit_code(running, runtime, code):
    assert runtime("exec", running.id, "sh", "-c", f"exit {code}").rc == code


def test_exec_killed_exit_code(running, runtime):
    # a process that is not pid 1 dies of its own SIGTERM
    assert runtime("exec", running.id, "sh", "-c", "kill -TERM $$").rc == 128 + 15


def test_exec_stdin(running, runtime):
    r = runtime("exec", running.id, "sh", "-c", "read x; echo got-$x", input="line\n")
    assert r.out == "got-line\n", r


def test_exec_joins_every_namespace(running, runtime):
    pid = running.state()["pid"]
    names = ("pid", "net", "mnt", "ipc", "uts", "cgroup")
    r = runtime("exec", running.id, "sh", "-c", "; ".join(f"readlink /proc/self/ns/{n}" for n in names))
    assert r.rc == 0, r
    assert r.out.split() == [os.readlink(f"/proc/{pid}/ns/{n}") for n in names]


def test_exec_in_container_cgroup_and_pid_ns(running, runtime, tmp_path):
    pidfile = tmp_path / "exec.pid"
    r = runtime("exec", "--detach", "--pid-file", pidfile, running.id, "sleep", "1000")
    assert r.rc == 0, r
    pid = int(pidfile.read_text())
    assert open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")[0] == b"sleep"
    nspid = _status(open(f"/proc/{pid}/status").read())["NSpid"].split()
    assert len(nspid) == 2 and int(nspid[0]) == pid and int(nspid[1]) > 1
    assert pid in runtime.ok("ps", "--format", "json", running.id).json()


def test_exec_env(running, runtime):
    r = runtime("exec", "--env", "NEW=1", "-e", "FROM_CONFIG=overridden", running.id, "env")
    env = r.out.splitlines()
    assert "NEW=1" in env
    assert "FROM_CONFIG=overridden" in env and "FROM_CONFIG=yes" not in env
    assert any(e.startswith("PATH=") for e in env)


def test_exec_inherits_container_env(running, runtime):
    assert "FROM_CONFIG=yes" in runtime("exec", running.id, "env").out.splitlines()


def test_exec_cwd(running, runtime):
    assert runtime("exec", "--cwd", "/etc", running.id, "pwd").out == "/etc\n"


def test_exec_user(running, runtime):
    r = runtime("exec", "--user", "1000:1001", "--additional-gids", "5", running.id, "sh", "-c", "id -u; id -g; id -G")
    assert r.rc == 0, r
    lines = r.out.splitlines()
    assert lines[:2] == ["1000", "1001"]
    assert set(lines[2].split()) == {"1001", "5"}


def test_exec_user_uid_only(running, runtime):
    r = runtime("exec", "-u", "33", running.id, "sh", "-c", "id -u; id -g")
    assert r.out.split() == ["33", "0"]


def test_exec_cap(running, runtime):
    base = runtime("exec", running.id, "grep", "^CapEff", "/proc/self/status").out.split()[1]
    assert not int(base, 16) & (1 << CAP_NUMBERS["CAP_SYS_ADMIN"])
    r = runtime("exec", "--cap", "CAP_SYS_ADMIN", running.id, "grep", "^Cap", "/proc/self/status")
    st = {k: int(v, 16) for k, v in _status(r.out).items()}
    bit = 1 << CAP_NUMBERS["CAP_SYS_ADMIN"]
    assert st["CapEff"] & bit and st["CapBnd"] & bit and st["CapPrm"] & bit


def test_exec_cap_has_real_effect(running, runtime):
    r = runtime("exec", running.id, "sh", "-c", "mount -t tmpfs tmpfs /tmp 2>&1; echo rc=$?")
    assert "rc=0" not in r.out
    r = runtime("exec", "--cap", "CAP_SYS_ADMIN", running.id, "sh", "-c",
                "mount -t tmpfs tmpfs /tmp && grep -c ' /tmp ' /proc/self/mountinfo")
    assert r.rc == 0 and r.out == "1\n", r


def test_exec_keeps_no_new_privs(running, runtime):
    assert runtime("exec", running.id, "grep", "^NoNewPrivs", "/proc/self/status").out.split()[1] == "1"


def test_exec_process_json(running, runtime, tmp_path):
    proc = {"args": ["sh", "-c", "echo $PJ; pwd; id -u; grep ^NoNewPrivs /proc/self/status"],
            "env": ["PATH=/bin", "PJ=from-process-json"], "cwd": "/tmp",
            "user": {"uid": 7, "gid": 7}, "noNewPrivileges": False}
    (tmp_path / "process.json").write_text(json.dumps(proc))
    r = runtime("exec", "--process", tmp_path / "process.json", running.id)
    assert r.rc == 0, r
    lines = r.out.splitlines()
    assert lines[:3] == ["from-process-json", "/tmp", "7"]
    assert lines[3].split() == ["NoNewPrivs:", "0"]


def test_exec_process_json_invalid(running, runtime, tmp_path):
    (tmp_path / "process.json").write_text(json.dumps({"args": "not-a-list", "cwd": "/"}))
    r = runtime("exec", "-p", tmp_path / "process.json", running.id)
    assert r.rc != 0
    assert len(r.err_lines) == 1 and "process.args" in r.err, r


def test_exec_tty(running, runtime, console):
    r = runtime("exec", "--tty", "--detach", "--console-socket", console.path, running.id, "sh")
    assert r.rc == 0, r
    master = console.receive()
    os.write(master, b"tty; echo $((20+22)); exit\n")
    out = h.pty_read_until(master, b"42\r\n")
    assert b"/dev/pts/" in out


def test_exec_tty_foreground(running, runtime, console):
    p = runtime.popen("exec", "-t", "--console-socket", console.path, running.id, "sh", "-c",
                      "read x; test -t 0 && echo tty-$x; exit 9")
    master = console.receive()
    os.write(master, b"ok\n")
    assert b"tty-ok" in h.pty_read_until(master, b"tty-ok")
    assert p.wait(timeout=10) == 9


def test_exec_missing_binary(running, runtime):
    r = runtime("exec", running.id, "no-such-binary")
    assert r.rc != 0
    assert len(r.err_lines) == 1 and "no-such-binary" in r.err, r


def test_exec_no_command(running, runtime):
    r = runtime("exec", running.id)
    assert r.rc != 0 and len(r.err_lines) == 1, r


def test_exec_missing_container(runtime):
    r = runtime("exec", "no-such-container", "true")
    assert r.rc != 0
    assert r.err_lines == ["keel-runtime: container 'no-such-container' does not exist"], r


def test_exec_into_stopped_container_fails(bundle, runtime):
    bundle.sh("true").create_ok()
    bundle.start()
    runtime.wait_status(bundle.id, "stopped")
    r = runtime("exec", bundle.id, "true")
    assert r.rc != 0
    assert len(r.err_lines) == 1 and "stopped" in r.err, r


def test_exec_into_created_container(bundle, runtime):
    bundle.sh("sleep 1000").create_ok()
    r = runtime("exec", bundle.id, "sh", "-c", "echo $$")
    assert r.rc == 0 and int(r.out) > 1, r
    assert bundle.state()["status"] == "created"


def test_exec_detached_outlives_runtime(running, runtime, tmp_path):
    pidfile = tmp_path / "p"
    t0 = time.monotonic()
    r = runtime("exec", "-d", "--pid-file", pidfile, running.id, "sleep", "1000")
    assert r.rc == 0 and time.monotonic() - t0 < 5
    pid = int(pidfile.read_text())
    assert os.path.exists(f"/proc/{pid}")
    runtime.ok("kill", "--all", running.id, "KILL")
