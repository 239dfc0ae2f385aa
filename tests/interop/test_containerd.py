"""A private containerd drives the runtime under test through the io.containerd.runc.v2 shim
(`ctr run --runc-binary`). Every test ends by proving nothing of its container is left: no
process (container or shim), no mount, no cgroup, no runtime state."""

import os
import re
import time

import pytest

import interop_helpers as h

pytestmark = pytest.mark.interop

TRAP_TERM = 'trap "exit 42" TERM; sleep 100 & wait'


def assert_clean(ctr, cid, pids=()):
    left = ctr.wait_clean(cid, pids)
    assert not left, f"container {cid} left behind: {left}"


def start_detached(ctr, *cmd):
    cid = h.unique_name("c-")
    res = ctr.run(cid, *cmd, detach=True)
    assert res.returncode == 0, res.stderr
    pid, status = ctr.tasks()[cid]
    assert status == "RUNNING" and pid > 0 and h.pid_alive(pid), (pid, status)
    return cid, pid


def wait_stopped(ctr, cid, timeout=10):
    return h.wait_for(lambda: ctr.task_status(cid) == "STOPPED", timeout)


@pytest.mark.parametrize("cmd,stdout,code", [
    (["echo", "ok"], "ok\n", 0),
    (["sh", "-c", "echo out; echo err >&2; exit 3"], "out\n", 3),
], ids=["echo", "exit3"])
def test_run_output_and_exit_code(ctr, cmd, stdout, code):
    cid = h.unique_name("c-")
    res = ctr.run(cid, *cmd)
    assert res.returncode == code, res.stderr
    assert res.stdout == stdout
    if code:
        assert "err" in res.stderr
    assert cid not in ctr("containers", "ls", "--quiet").stdout.split()  # --rm
    assert_clean(ctr, cid)


def test_run_config_is_honoured(ctr):
    """ctr's default spec is honoured: cgroupsPath /<namespace>/<id>, its own pid and mount
    namespaces, PATH from the image config."""
    cid = h.unique_name("c-")
    script = ("echo pid=$$; echo cgroup=$(grep -E ':memory:' /proc/self/cgroup); "
              "echo path=$PATH; echo mnt=$(readlink /proc/self/ns/mnt)")
    res = ctr.run(cid, "sh", "-c", script)
    assert res.returncode == 0, res.stderr
    out = dict(line.split("=", 1) for line in res.stdout.splitlines() if "=" in line)
    assert out["pid"] == "1", res.stdout
    assert out["cgroup"].endswith(f":/{ctr.namespace}/{cid}"), res.stdout
    assert out["path"] == h.IMAGE_ENV[0].split("=", 1)[1], res.stdout
    assert out["mnt"] != os.readlink("/proc/self/ns/mnt"), res.stdout
    assert_clean(ctr, cid)


def test_detached_task_exec_kill_delete(ctr):
    cid, pid = start_detached(ctr, "sh", "-c", TRAP_TERM)
    assert h.process_cgroup(pid, "memory") == f"/{ctr.namespace}/{cid}"
    # the leak detector sees a running container (so that assert_clean means something)
    running = ctr.leftovers(cid, (pid,))
    assert {"processes", "mounts", "cgroups", "runtime_state"} <= running.keys(), running

    res = ctr.exec(cid, "echo", "inside")
    assert (res.returncode, res.stdout) == (0, "inside\n"), res.stderr
    res = ctr.exec(cid, "sh", "-c", "exit 4")
    assert res.returncode == 4, res.stderr
    res = ctr.exec(cid, "sh", "-c", "echo $$; grep :memory: /proc/self/cgroup")
    assert res.returncode == 0, res.stderr
    assert int(res.stdout.split()[0]) > 1
    assert res.stdout.splitlines()[1].endswith(f":/{ctr.namespace}/{cid}"), res.stdout

    # `ctr tasks ps` makes the shim call `<runtime> ps --format json <id>`
    res = ctr("tasks", "ps", cid)
    assert res.returncode == 0, res.stderr
    assert str(pid) in res.stdout.split(), res.stdout

    res = ctr("tasks", "kill", cid)  # SIGTERM
    assert res.returncode == 0, res.stderr
    assert wait_stopped(ctr, cid), ctr.tasks()
    res, code = ctr.delete_task(cid)
    assert res.returncode == 0, res.stderr
    assert code == 42, res.stderr
    ctr("containers", "delete", cid, check=True)
    assert_clean(ctr, cid, (pid,))


def test_kill_sigkill_and_delete(ctr):
    cid, pid = start_detached(ctr, "sleep", "100")
    res = ctr("tasks", "kill", "--signal", "SIGKILL", cid)
    assert res.returncode == 0, res.stderr
    assert wait_stopped(ctr, cid), ctr.tasks()
    assert not h.pid_alive(pid)
    res, code = ctr.delete_task(cid)
    assert res.returncode == 0, res.stderr
    assert code == 137, res.stderr
    ctr("containers", "delete", cid, check=True)
    assert_clean(ctr, cid, (pid,))


def test_delete_force_running(ctr):
    """`ctr tasks delete --force` of a running task: the shim kills it and deletes it."""
    cid, pid = start_detached(ctr, "sleep", "100")
    t0 = time.monotonic()
    res = ctr("tasks", "delete", "--force", cid)
    assert res.returncode == 0, res.stderr
    assert time.monotonic() - t0 < 10
    assert cid not in ctr.tasks()
    ctr("containers", "delete", cid, check=True)
    assert_clean(ctr, cid, (pid,))


def test_exec_tty(ctr):
    """`ctr tasks exec -t` through our own pty: the shim passes --console-socket to `exec`."""
    cid, pid = start_detached(ctr, "sleep", "100")
    argv = ctr.argv("tasks", "exec", "-t", "--exec-id", h.unique_name("exec-"), "--fifo-dir",
                    ctr.fifo_dir, cid, "sh")
    out, rc = h.run_in_pty(argv, b"echo hi; tty; exit 6\n", timeout=60)
    text = out.decode(errors="replace")
    assert rc == 6, text
    assert re.search(r"^hi\r*$", text, re.M), text
    assert re.search(r"^/dev/pts/\d+\r*$", text, re.M), text
    ctr("tasks", "kill", "-s", "KILL", cid)
    assert wait_stopped(ctr, cid), ctr.tasks()
    ctr.delete_task(cid)
    ctr("containers", "delete", cid, check=True)
    assert_clean(ctr, cid, (pid,))
