"""A terminal through --console-socket, and linux.resources sizing the VM (marker `vm`)."""

import json
import os
import select
import socket
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.vm


def _read_until(fd, needle, timeout=30):
    out = b""
    deadline = time.monotonic() + timeout
    while needle not in out and time.monotonic() < deadline:
        r, _, _ = select.select([fd], [], [], 0.5)
        if r:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
    return out


def test_terminal_via_console_socket(vm_runtime, vm_bundle, tmp_path):
    vm_bundle.config["process"]["terminal"] = True
    vm_bundle.config["process"]["consoleSize"] = {"height": 33, "width": 111}
    vm_bundle.write(["sh"])
    path = str(tmp_path / "console.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    log = str(tmp_path / "create.out")
    with open(log, "wb") as f:
        p = subprocess.Popen(vm_runtime.argv("create", "--console-socket", path, "--bundle", vm_bundle.path,
                                             vm_bundle.id), stdin=subprocess.DEVNULL, stdout=f, stderr=f,
                             env=vm_runtime.env)
    master = None
    try:
        listener.settimeout(120)
        conn, _ = listener.accept()
        _, fds, _, _ = socket.recv_fds(conn, 4096, 4)
        conn.close()
        assert len(fds) == 1
        master = fds[0]
        assert p.wait(timeout=60) == 0, open(log).read()
        assert vm_runtime("start", vm_bundle.id).returncode == 0
        os.write(master, b"stty size; tty; echo hi-$((6*7))\n")
        out = _read_until(master, b"hi-42\r\n")
        assert b"33 111" in out and b"/dev/pts/" in out and b"hi-42\r\n" in out, out
        # exec -t: its own pty; a resize of the master reaches the process in the guest
        epath = str(tmp_path / "exec-console.sock")
        elistener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        elistener.bind(epath)
        elistener.listen(1)
        e = subprocess.Popen(vm_runtime.argv("exec", "-t", "--console-socket", epath, vm_bundle.id, "sh", "-c",
                                             "sleep 2; stty size; tty; exit 4"),
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             env=vm_runtime.env)
        elistener.settimeout(60)
        econn, _ = elistener.accept()
        _, efds, _, _ = socket.recv_fds(econn, 4096, 4)
        econn.close()
        elistener.close()
        emaster = efds[0]
        try:
            import fcntl
            import struct
            import termios

            fcntl.ioctl(emaster, termios.TIOCSWINSZ, struct.pack("HHHH", 21, 77, 0, 0))
            eout = _read_until(emaster, b"/dev/pts/")
            assert e.wait(timeout=60) == 4
        finally:
            os.close(emaster)
        assert b"21 77" in eout, eout
        os.write(master, b"exit 3\n")
        deadline = time.monotonic() + 30
        while vm_runtime.state(vm_bundle.id)["status"] != "stopped" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert vm_runtime.raw_state(vm_bundle.id)["exitStatus"] == 3 << 8
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        if master is not None:
            os.close(master)
        listener.close()


def test_resources_size_the_vm_and_limit_the_guest_cgroup(vm_runtime, vm_bundle):
    limit = 200 << 20
    vm_bundle.config["linux"]["resources"] = {"memory": {"limit": limit}, "pids": {"limit": 50},
                                              "cpu": {"quota": 200000, "period": 100000}}
    vm_bundle.write(["sh", "-c", "cat /proc/self/cgroup /sys/fs/cgroup/pids.max /sys/fs/cgroup/memory.max "
                     "/sys/fs/cgroup/cpu.max; grep MemTotal /proc/meminfo; nproc"])
    r = vm_runtime("run", "--keep", "--bundle", vm_bundle.path, vm_bundle.id)
    assert r.returncode == 0, r.stderr
    # the limits also hold inside the guest, in the container's own cgroup (its cgroup ns root)
    assert r.stdout.splitlines()[:4] == ["0::/", "50", str(limit), "200000 100000"], r.stdout
    mem_kib = int(r.stdout.split("MemTotal:")[1].split()[0])
    assert limit // 1024 < mem_kib <= (limit >> 10) + 96 * 1024, r.stdout
    vcpus = min(2, os.cpu_count())
    assert r.stdout.split()[-1] == str(vcpus)
    vm = vm_runtime.raw_state(vm_bundle.id)["vm"]
    assert (vm["memoryMiB"], vm["vcpus"]) == (200 + 96, vcpus)
    assert vm_runtime("delete", vm_bundle.id).returncode == 0
    json.dumps(vm)


def test_run_terminal_on_our_own_tty(vm_runtime, vm_bundle):
    """`run` of a terminal container without --console-socket uses the caller's terminal."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "interop"))
    import interop_helpers as h

    vm_bundle.config["process"]["terminal"] = True
    vm_bundle.write(["sh"])
    out, code = h.run_in_pty(vm_runtime.argv("run", "--bundle", vm_bundle.path, vm_bundle.id),
                             b"tty; echo t-$((6*7)); exit 6\r", env=vm_runtime.env, timeout=120)
    assert code == 6, out
    assert b"/dev/pts/" in out and b"t-42" in out, out


def test_bad_console_socket_is_a_clean_error(vm_runtime, vm_bundle, tmp_path):
    vm_bundle.config["process"]["terminal"] = True
    vm_bundle.write(["sh"])
    missing = str(tmp_path / "no-such.sock")
    r = vm_runtime("create", "--console-socket", missing, "--bundle", vm_bundle.path, vm_bundle.id)
    assert r.returncode == 1
    assert r.stderr.strip() == f"keel-vm: --console-socket {missing}: no such file or directory", r.stderr
    assert not os.path.exists(os.path.join(vm_runtime.root, vm_bundle.id))  # and the fixture: no VM left
