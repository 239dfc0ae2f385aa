"""The warm pool (KEEL_VM_POOL_SIZE=1): a keeper starts on demand, a container takes a pre-booted
VM (path=warm in --debug), writes reach the bundle, and no VM serves two containers."""

import json
import os
import time

import pytest

from keel.vm import pool

pytestmark = pytest.mark.vm


def _wait_ready(root, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = pool.status(root)
        if st and st.get("ready"):
            return st
        time.sleep(0.1)
    raise AssertionError(f"the pool never had a VM ready: {pool.status(root)}")


def _gone(pid, timeout=10):
    """The process is gone or a zombie (an orphan waits for pid 1 here to reap it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return True
        except OSError:
            return True
        time.sleep(0.05)
    return False


def _run_kept(vm_runtime, vm_bundle, cid, log):
    vm_bundle.write(["sh", "-c", f"echo {cid} > /{cid}; exit 6"], readonly=False)
    r = vm_runtime("--debug", "--log", log, "run", "--keep", "--bundle", vm_bundle.path, cid)
    assert r.returncode == 6, (r.stdout, r.stderr, open(log).read())
    with open(os.path.join(vm_bundle.rootfs, cid)) as f:
        assert f.read() == cid + "\n"
    with open(os.path.join(vm_runtime.root, cid, "state.json")) as f:
        vm = json.load(f)["vm"]
    assert _gone(vm["qemuPid"])  # used once, then discarded
    assert vm_runtime("delete", cid).returncode == 0
    return vm


def test_warm_pool_serves_each_vm_once(vm_runtime, vm_bundle, tmp_path):
    vm_runtime.env.update(KEEL_VM_POOL_SIZE="1", KEEL_VM_POOL_IDLE="30")
    log = str(tmp_path / "debug.log")
    stale = os.path.join(vm_runtime.root, pool.POOL_DIR, "0-1")  # a holder of a keeper long gone
    os.makedirs(stale)
    with open(os.path.join(stale, "holder.pid"), "w") as f:
        f.write("999999999 1\n")
    first = _run_kept(vm_runtime, vm_bundle, vm_bundle.id + "a", log)
    assert first["path"] == "cold"  # no keeper yet: this create started it
    _wait_ready(vm_runtime.root)
    assert not os.path.exists(stale)  # the new keeper removed it
    second = _run_kept(vm_runtime, vm_bundle, vm_bundle.id + "b", log)
    assert second["path"] == "warm" and "path=warm" in open(log).read()
    _wait_ready(vm_runtime.root)
    third = _run_kept(vm_runtime, vm_bundle, vm_bundle.id + "c", log)
    assert third["path"] == "warm" and third["qemuPid"] != second["qemuPid"]
    assert vm_runtime.stop_keeper()
    assert not os.path.exists(os.path.join(vm_runtime.root, ".pool"))  # keeper removed its VMs
