"""Fixtures for keel-vm's tests.

Tests that boot a VM carry the `vm` marker (`make test SKIP_VM=1` skips them). On this kind of
host /dev/kvm cannot boot a stock guest, so keel-vm's probe picks TCG and these tests exercise
the TCG path and the probe's decision only; on a host with working KVM the same tests run on KVM.

  guest_release  session: the guest kernel's release (builds the guest assets when missing)
  vm_runtime   function: keel-vm with a private --root under a short temp dir. After the test
               every container is force-deleted; any QEMU, virtiofsd or shim of ours still alive
               (by the pids in its state, or by our unique root in its command line) is killed by
               pid and the test fails; no file may be left under the root.
  vm_bundle    function: a busybox bundle (fresh rootfs, `keel-vm spec` config, terminal off)
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid

import pytest

from keel.testing.rootfs import make_rootfs

KEEL_VM = os.path.join(os.path.dirname(sys.executable), "keel-vm")


def pids_mentioning(text):
    """Pids whose command line or cwd contains `text` (our unique root or container id)."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(f"/proc/{name}/cwd")
        except OSError:
            continue
        if text in cmd or cwd.startswith(text):
            found.append(int(name))
    return found


def alive(pid):
    """True while `pid` runs (a zombie waiting for its reaper is not running)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            st = f.read()
    except OSError:
        return False
    return st[st.rindex(b")") + 2:][:1] not in (b"Z", b"X")


def left_running(text, timeout=15.0):
    """Live pids mentioning `text` once they had `timeout` seconds to finish (conmon runs its
    exit command a moment after the container ended; pid 1 reaps orphans late here)."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        left = [p for p in pids_mentioning(text) if alive(p)]
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.1)


def describe(pids):
    out = {}
    for p in pids:
        try:
            with open(f"/proc/{p}/cmdline", "rb") as f:
                out[p] = f.read().replace(b"\0", b" ").decode(errors="replace")[:200]
        except OSError:
            out[p] = "(gone)"
    return out


def kill_pids(pids):
    for p in pids:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(os.path.exists(f"/proc/{p}") for p in pids):
        for p in pids:
            try:
                os.waitpid(p, os.WNOHANG)
            except ChildProcessError:
                pass
        time.sleep(0.05)


class VMRuntime:
    def __init__(self, root):
        self.root = root
        # the warm pool is off unless a test turns it on (pool tests set KEEL_VM_POOL_SIZE)
        self.env = dict(os.environ, KEEL_VM_POOL_SIZE="0")

    def argv(self, *args):
        return [KEEL_VM, "--root", self.root] + [str(a) for a in args]

    def __call__(self, *args, timeout=120, input=None):
        # stdout/stderr go to files, not pipes: a shim keeps the caller's stdio open as runc's
        # init does, so a pipe would not reach EOF until the container ends
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            r = subprocess.run(self.argv(*args), stdout=out, stderr=err, timeout=timeout, env=self.env,
                               **({"stdin": subprocess.DEVNULL} if input is None else {"input": input}))
            out.seek(0)
            err.seek(0)
            return subprocess.CompletedProcess(r.args, r.returncode, out.read().decode(),
                                               err.read().decode())

    def popen(self, *args, **kw):
        return subprocess.Popen(self.argv(*args), env=self.env, **kw)

    def state(self, cid):
        r = self("state", cid)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    def raw_state(self, cid):
        try:
            with open(os.path.join(self.root, cid, "state.json")) as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}

    def vm_pids(self, cid):
        st = self.raw_state(cid)
        vm = st.get("vm") or {}
        return [p for p in (st.get("pid"), vm.get("qemuPid"), vm.get("virtiofsdPid")) if p]

    def leftovers(self):
        """What of ours is still on the host: processes naming our root, files under it."""
        found = {}
        procs = pids_mentioning(self.root)
        if procs:
            found["processes"] = procs
        files = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            files += [os.path.join(dirpath, n) for n in filenames + dirnames]
        if files:
            found["files"] = files
        return found

    def stop_keeper(self):
        """SIGTERM the pool keeper of our root (it removes its unclaimed VMs); True if one ran."""
        keepers = [p for p in pids_mentioning(self.root)
                   if b"keeper_main" in open(f"/proc/{p}/cmdline", "rb").read()]
        for p in keepers:
            os.kill(p, signal.SIGTERM)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and any(os.path.exists(f"/proc/{p}") for p in keepers):
            time.sleep(0.05)
        return bool(keepers)

    def cleanup(self):
        try:
            self.stop_keeper()
        except OSError:
            pass
        ours = []
        for cid in (c for c in os.listdir(self.root) if c != ".pool") if os.path.isdir(self.root) else ():
            ours += self.vm_pids(cid)
            self("delete", "--force", cid, timeout=30)
        # what delete --force did not end (pids from the state, or naming our root), allowing a
        # VM that was killed a moment ago the time to go
        deadline = time.monotonic() + 10
        while True:
            stray = sorted(set([p for p in ours if alive(p)] + [p for p in pids_mentioning(self.root) if alive(p)]))
            if not stray or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        kill_pids(stray)
        return stray


@pytest.fixture(scope="session")
def guest_release(needs_root):
    """The guest kernel's release (fetches and builds the guest assets once if missing)."""
    from keel.vm import assets

    if shutil.which("qemu-system-x86_64") is None:
        pytest.fail("qemu-system-x86_64 is not installed (make apt-test installs it)", pytrace=False)
    return assets.ensure().release


@pytest.fixture(scope="session")
def needs_root():
    if os.geteuid() != 0:
        pytest.skip("keel-vm tests need root (mount namespaces for the share)")


@pytest.fixture
def vm_runtime(needs_root):
    d = tempfile.mkdtemp(prefix="kvm-", dir="/tmp")
    rt = VMRuntime(os.path.join(d, "root"))
    os.mkdir(rt.root)
    try:
        yield rt
        stray = rt.cleanup()
        assert not stray, f"processes left after delete --force: {describe(stray)}"
        left = rt.leftovers()
        assert not left, f"left behind: {left}"
    finally:
        kill_pids(rt.cleanup())
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def base_rootfs(tmp_path_factory):
    path = tmp_path_factory.mktemp("vmbase") / "rootfs"
    make_rootfs(str(path))
    return str(path)


@pytest.fixture(scope="session")
def base_config(tmp_path_factory):
    d = tmp_path_factory.mktemp("vmspec")
    r = subprocess.run([KEEL_VM, "spec", "--bundle", str(d)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    with open(d / "config.json") as f:
        config = json.load(f)
    config["process"]["terminal"] = False
    return config


class Bundle:
    def __init__(self, path, config):
        self.path, self.config = path, config
        self.rootfs = os.path.join(path, "rootfs")
        self.id = "vm-" + uuid.uuid4().hex[:10]

    def write(self, args=None, **root):
        if args is not None:
            self.config["process"]["args"] = args
        self.config["root"].update(root)
        with open(os.path.join(self.path, "config.json"), "w") as f:
            json.dump(self.config, f)
        return self


@pytest.fixture
def vm_bundle(tmp_path, base_rootfs, base_config):
    path = tmp_path / "bundle"
    path.mkdir()
    shutil.copytree(base_rootfs, path / "rootfs", symlinks=True)
    return Bundle(str(path), json.loads(json.dumps(base_config)))


@pytest.fixture(autouse=True)
def _vm_assets_first(request):
    """A VM test starts with the guest built, so a first boot never includes the download."""
    if request.node.get_closest_marker("vm"):
        request.getfixturevalue("guest_release")
