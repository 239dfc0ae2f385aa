"""keel-vm boots a real microVM per container (marker `vm`; `make test SKIP_VM=1` skips them).

Here /dev/kvm cannot boot a stock guest, so the probe picks TCG: these tests cover the TCG path
and the probe's decision; the same tests run on KVM where a probe boot under it succeeds.
Each test boots once or twice and kills what it started by pid on failure (the vm_runtime
fixture), so they stay few and short on a 2-core machine.
"""

import json
import os
import signal
import subprocess
import time

import pytest

from conftest import alive, pids_mentioning

pytestmark = pytest.mark.vm


def _wait(pred, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    return pred()


def test_guest_kernel_isolation_writes_and_exit_code(vm_runtime, vm_bundle, guest_release):
    host = subprocess.Popen(["sleep", "1000.4242"])  # a host process the container must not see
    try:
        data = os.path.join(os.path.dirname(vm_bundle.path), "data")
        os.mkdir(data)
        with open(os.path.join(data, "in"), "w") as f:
            f.write("from-host\n")
        vm_bundle.config["mounts"] += [
            {"destination": "/data", "type": "bind", "source": data, "options": ["rbind", "rw"]},
            {"destination": "/ro", "type": "bind", "source": data, "options": ["rbind", "ro"]}]
        vm_bundle.write(["sh", "-c", "read l; uname -r; echo \"in:$l\"; echo \"home:$HOME\"; echo lo:$(cat /sys/class/net/lo/flags); ps -o args; echo written > /from-guest; "
                         "cat /data/in >&2; echo out > /data/out; touch /ro/no 2>/dev/null || "
                         "echo ro-refused >&2; head -c 300000 /dev/zero | tr '\\0' x; exit 7"], readonly=False)
        r = vm_runtime("run", "--bundle", vm_bundle.path, vm_bundle.id, input=b"piped-in\n")
    finally:
        host.kill()
        host.wait()
    assert r.returncode == 7, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == guest_release and lines[0] != os.uname().release
    assert lines[1] == "in:piped-in"  # stdin reaches the process in the guest
    assert lines[2] == "home:/root"  # HOME from the container's /etc/passwd, as runc
    assert lines[3] == "lo:0x9"  # its own network namespace, loopback up
    assert lines[-1] == "x" * 300000  # bulk output arrives whole
    assert "1000.4242" not in r.stdout  # host processes are invisible
    assert any("ps -o args" in ln for ln in lines)  # ...while the container's own are there
    assert "from-host" not in r.stdout  # stderr stays apart from stdout
    assert r.stderr == "from-host\nro-refused\n"  # bind mounts: host data in, read-only kept
    assert open(os.path.join(data, "out")).read() == "out\n"
    assert not os.path.exists(os.path.join(data, "no"))
    with open(os.path.join(vm_bundle.rootfs, "from-guest")) as f:
        assert f.read() == "written\n"  # the write reached the bundle's rootfs on the host


def test_readonly_root_and_lifecycle_verbs(vm_runtime, vm_bundle):
    # pid 1 of a pid namespace ignores TERM unless it handles it: the trap makes it stop
    hookdir = os.path.dirname(vm_bundle.path)
    vm_bundle.config["hooks"] = {kind: [{"path": "/bin/sh", "args": ["sh", "-c", f"cat > {hookdir}/{kind}.json"]}]
                                 for kind in ("prestart", "createRuntime", "poststart", "poststop")}
    vm_bundle.write(["sh", "-c", "trap 'exit 9' TERM; touch /x 2>&1; sleep 300 & wait"], readonly=True)
    out = os.path.join(os.path.dirname(vm_bundle.path), "out")
    with open(out, "wb") as f:
        # the shim keeps create's stdio as the container's: files, never pipes we wait on
        r = subprocess.run(vm_runtime.argv("create", "--bundle", vm_bundle.path, "--pid-file",
                                           vm_bundle.path + "/pid", vm_bundle.id),
                           stdout=f, stderr=f, stdin=subprocess.DEVNULL, timeout=120)
    assert r.returncode == 0, open(out).read()
    st = vm_runtime.state(vm_bundle.id)
    assert st["status"] == "created" and st["pid"] == int(open(vm_bundle.path + "/pid").read())
    for kind in ("prestart", "createRuntime"):  # host hooks, with the state on stdin
        assert json.load(open(f"{hookdir}/{kind}.json"))["pid"] == st["pid"]
    assert not os.path.exists(f"{hookdir}/poststart.json")
    assert os.path.exists(f"/proc/{st['pid']}")
    assert vm_runtime("start", vm_bundle.id).returncode == 0
    assert vm_runtime.state(vm_bundle.id)["status"] == "running"
    assert json.load(open(f"{hookdir}/poststart.json"))["status"] == "running"
    assert vm_runtime("start", vm_bundle.id).returncode == 1  # twice is an error
    e = vm_runtime("exec", vm_bundle.id, "sh", "-c", "cat /proc/1/cmdline | tr '\\0' ' '; exit 4")
    assert e.returncode == 4 and "trap 'exit 9' TERM" in e.stdout, (e.stdout, e.stderr)
    assert _wait(lambda: "Read-only file system" in open(out).read(), 10)
    ps = vm_runtime("ps", vm_bundle.id).stdout.splitlines()  # the processes inside the guest
    assert ps[0].startswith("PID") and ps[1].split()[0] == "1" and "trap 'exit 9' TERM" in ps[1], ps
    assert any(ln.split(None, 1)[1] == "sleep 300" for ln in ps[2:]), ps
    assert json.loads(vm_runtime("ps", "--format", "json", vm_bundle.id).stdout) == [st["pid"]]
    ev = json.loads(vm_runtime("events", "--stats", vm_bundle.id).stdout)  # the VM's host cgroup
    assert ev["type"] == "stats" and ev["id"] == vm_bundle.id and ev["data"]["memory"]["usage"]["usage"] > 0
    assert vm_runtime("update", "--pids-limit", "77", vm_bundle.id).returncode == 0  # guest cgroup
    assert vm_runtime("exec", vm_bundle.id, "cat", "/sys/fs/cgroup/pids.max").stdout == "77\n"
    r = vm_runtime("update", "--memory", "64g", vm_bundle.id)
    assert r.returncode == 1 and "more than the VM's" in r.stderr
    assert vm_runtime("pause", vm_bundle.id).returncode == 0
    assert vm_runtime.state(vm_bundle.id)["status"] == "paused"
    assert vm_runtime("pause", vm_bundle.id).returncode == 1
    assert vm_runtime("resume", vm_bundle.id).returncode == 0
    assert vm_runtime.state(vm_bundle.id)["status"] == "running"
    assert not os.path.exists(os.path.join(vm_bundle.rootfs, "x"))
    listed = json.loads(vm_runtime("list", "--format", "json").stdout)
    assert [c["id"] for c in listed] == [vm_bundle.id]
    assert vm_runtime("delete", vm_bundle.id).returncode == 1  # running: needs --force
    pids = vm_runtime.vm_pids(vm_bundle.id)
    assert vm_runtime("kill", vm_bundle.id, "TERM").returncode == 0
    assert _wait(lambda: vm_runtime.state(vm_bundle.id)["status"] == "stopped", 30)
    assert _wait(lambda: not any(os.path.exists(f"/proc/{p}") for p in pids), 10), pids
    assert vm_runtime.raw_state(vm_bundle.id)["exitStatus"] == 9 << 8
    assert vm_runtime("delete", vm_bundle.id).returncode == 0
    assert json.load(open(f"{hookdir}/poststop.json"))["status"] == "stopped"
    assert not os.path.exists(os.path.join(vm_runtime.root, vm_bundle.id))


def test_missing_command_is_a_clean_error(vm_runtime, vm_bundle):
    vm_bundle.write(["no-such-command-keel"])
    r = vm_runtime("create", "--bundle", vm_bundle.path, vm_bundle.id)
    assert r.returncode == 1
    assert r.stderr.strip() == ('keel-vm: exec: "no-such-command-keel": executable file not found '
                                'in $PATH'), r.stderr
    assert not os.path.exists(os.path.join(vm_runtime.root, vm_bundle.id))
    assert not pids_mentioning(vm_runtime.root)


def test_kill_mid_boot_leaves_nothing(vm_runtime, vm_bundle):
    vm_bundle.write(["true"])
    p = vm_runtime.popen("create", "--bundle", vm_bundle.path, vm_bundle.id,
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # kill create once QEMU runs (the VM is booting)
        assert _wait(lambda: any(b"qemu" in open(f"/proc/{q}/cmdline", "rb").read()
                                 for q in pids_mentioning(vm_runtime.root) if os.path.exists(f"/proc/{q}")), 30)
        p.send_signal(signal.SIGKILL)
    finally:
        p.wait()
    assert _wait(lambda: not pids_mentioning(vm_runtime.root), 15), pids_mentioning(vm_runtime.root)
    assert vm_runtime.state(vm_bundle.id)["status"] == "stopped"
    assert vm_runtime("delete", "--force", vm_bundle.id).returncode == 0
    assert not vm_runtime.leftovers()


def test_kill_during_run_returns_signal_status(vm_runtime, vm_bundle):
    vm_bundle.write(["sh", "-c", "sleep 300 & sleep 301 & wait"])
    p = vm_runtime.popen("run", "--bundle", vm_bundle.path, vm_bundle.id,
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert _wait(lambda: vm_runtime.raw_state(vm_bundle.id).get("status") == "running", 60)
        pids = vm_runtime.vm_pids(vm_bundle.id)
        assert len(pids) == 3
        e = vm_runtime("exec", vm_bundle.id, "sh", "-c", "ps -o args | grep -c '^sleep 30'")
        assert e.stdout.strip() == "2", (e.stdout, e.stderr)
        assert vm_runtime("kill", "--all", vm_bundle.id, "KILL").returncode == 0  # every process
        assert p.wait(timeout=30) == 128 + 9
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert not any(os.path.exists(f"/proc/{q}") for q in pids)
    assert not vm_runtime.leftovers()  # run deleted the container: no state, no sockets


def test_guest_panic_is_reported(vm_runtime, vm_bundle):
    cfg = vm_bundle.config
    cfg["linux"]["readonlyPaths"] = []
    cfg["linux"]["maskedPaths"] = []
    vm_bundle.write(["sh", "-c", "echo c > /proc/sysrq-trigger; sleep 30"])
    r = vm_runtime("run", "--bundle", vm_bundle.path, vm_bundle.id, timeout=120)
    assert r.returncode == 255, (r.stdout, r.stderr)
    assert "the VM stopped" in r.stderr and "Kernel panic" in r.stderr, r.stderr
    assert not vm_runtime.leftovers()


def test_features_report_the_accelerator(vm_runtime):
    r = vm_runtime("features")
    assert r.returncode == 0, r.stderr
    feats = json.loads(r.stdout)
    assert feats["hooks"] == ["prestart", "createRuntime", "poststart", "poststop"]
    vm = feats["vm"]
    assert vm["accelerator"] in ("kvm", "tcg") and vm["acceleratorReason"]
    if not os.path.exists("/dev/kvm"):
        assert vm["accelerator"] == "tcg"


def test_shim_killed_outright_takes_its_vm_along(vm_runtime, vm_bundle):
    """QEMU drops root (-runas), which clears a death signal; it runs as pid 2 of a pid namespace
    whose pid 1 keeps one, so a SIGKILLed shim still leaves no QEMU or virtiofsd behind."""
    from keel.vm.qemu import descendants

    vm_bundle.write(["sleep", "300"])
    assert vm_runtime("create", "--bundle", vm_bundle.path, vm_bundle.id).returncode == 0
    st = vm_runtime.raw_state(vm_bundle.id)
    vm = st["vm"]
    procs = descendants(vm["qemuPid"]) + [vm["virtiofsdPid"]]
    assert len(procs) == 4  # A, pid 1 of QEMU's namespace, QEMU, virtiofsd
    assert open(f"/proc/{procs[2]}/comm").read().startswith("qemu-system")
    os.kill(st["pid"], signal.SIGKILL)  # the shim, a process this test started through create
    assert _wait(lambda: not [p for p in procs if alive(p)], 15), procs
    assert vm_runtime.state(vm_bundle.id)["status"] == "stopped"
    assert vm_runtime("delete", vm_bundle.id).returncode == 0
