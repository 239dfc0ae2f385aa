"""keel's own engine runs and execs in a container with `--runtime keel-vm` (marker `vm`),
through the same runc command line as podman: conmon waits on the shim, the exit code comes
back."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from conftest import KEEL_VM, left_running

_TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(_TESTS, "image"))
_spec = importlib.util.spec_from_file_location("image_conftest_for_vm", os.path.join(_TESTS, "image", "conftest.py"))
_image_conftest = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_image_conftest)
busybox_tar = _image_conftest.busybox_tar
oci_busybox = _image_conftest.oci_busybox

pytestmark = pytest.mark.vm
IMAGE = "localhost/busybox:latest"


def test_keel_run_with_keel_vm(tmp_path, oci_busybox, guest_release):
    root, runroot = tmp_path / "root", tmp_path / "run"

    def keel(*args):
        return subprocess.run([sys.executable, "-m", "keel.cli.main", "--root", str(root), "--runroot",
                               str(runroot), *map(str, args)], capture_output=True, text=True, timeout=180,
                              stdin=subprocess.DEVNULL, env=dict(os.environ, KEEL_VM_POOL_SIZE="0"))

    r = keel("load", "-i", oci_busybox)
    assert r.returncode == 0, r.stderr
    if IMAGE not in r.stdout:
        assert keel("tag", r.stdout.strip().rsplit(" ", 1)[-1], IMAGE).returncode == 0
    try:
        r = keel("run", "--runtime", KEEL_VM, "--name", "vmc", IMAGE, "sh", "-c", "uname -r; exit 5")
        assert r.returncode == 5, (r.stdout, r.stderr)
        assert r.stdout.splitlines()[0] == guest_release != os.uname().release
        info = json.loads(keel("inspect", "vmc").stdout)
        info = info[0] if isinstance(info, list) else info
        assert info["State"]["ExitCode"] == 5 and info["OCIRuntime"] == "keel-vm"
        r = keel("run", "-d", "--runtime", KEEL_VM, "--name", "vmd", IMAGE, "sleep", "300")
        assert r.returncode == 0, r.stderr
        r = keel("exec", "vmd", "sh", "-c", "echo $((6*7)); cat /proc/1/cmdline; exit 3")
        assert r.returncode == 3 and r.stdout.startswith("42\nsleep"), (r.stdout, r.stderr)
    finally:
        keel("rm", "-f", "vmc", "vmd")
    left = left_running(str(tmp_path))
    assert not left, left


def test_keel_run_it_with_keel_vm(tmp_path, oci_busybox, guest_release):
    """`keel run -it`: conmon takes the pty master from keel-vm's --console-socket."""
    sys.path.insert(0, os.path.join(_TESTS, "interop"))
    import interop_helpers as h

    base = [sys.executable, "-m", "keel.cli.main", "--root", str(tmp_path / "root"), "--runroot",
            str(tmp_path / "run")]
    env = dict(os.environ, KEEL_VM_POOL_SIZE="0")
    r = subprocess.run(base + ["load", "-i", oci_busybox], capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr
    image = r.stdout.strip().rsplit(" ", 1)[-1]
    out, code = h.run_in_pty(base + ["run", "-it", "--rm", "--runtime", KEEL_VM, image, "sh"],
                             b"tty; echo x$((6*7)); exit 5\r", env=env, timeout=120)
    assert code == 5, out
    assert b"/dev/pts/" in out and b"x42" in out, out
    left = left_running(str(tmp_path))
    assert not left, left


def test_keel_network_and_published_port_reach_the_vm(tmp_path, oci_busybox, guest_release):
    """keel's CNI bridge network and `-p`: the port published on the host's loopback reaches
    httpd inside the VM (DNAT -> bridge -> veth -> tc mirred -> tap -> the guest's NIC)."""
    sys.path.insert(0, os.path.join(_TESTS, "engine"))
    from net_helpers import free_port, http_get, links

    env = dict(os.environ, KEEL_NETWORK_CONFIG_DIR=str(tmp_path / "net.d"), KEEL_VM_POOL_SIZE="0")
    base = [sys.executable, "-m", "keel.cli.main", "--root", str(tmp_path / "root"), "--runroot",
            str(tmp_path / "run")]

    def keel(*args):
        return subprocess.run(base + list(args), capture_output=True, text=True, timeout=180,
                              stdin=subprocess.DEVNULL, env=env)

    r = keel("load", "-i", oci_busybox)
    assert r.returncode == 0, r.stderr
    image = r.stdout.strip().rsplit(" ", 1)[-1]
    tag = os.urandom(3).hex()
    name, bridge = f"kvn-{tag}", f"kvb{tag}"
    r = keel("network", "create", "--interface-name", bridge, "-o", "masquerade=false", name)
    assert r.returncode == 0, r.stderr
    try:
        port = free_port()
        r = keel("run", "-d", "--runtime", KEEL_VM, "--name", "web", "--network", name, "-p",
                 f"127.0.0.1:{port}:80", image, "sh", "-c",
                 "mkdir /www && uname -r > /www/index.html && exec httpd -f -p 80 -h /www")
        assert r.returncode == 0, r.stderr
        assert http_get(f"http://127.0.0.1:{port}/", timeout=60) == guest_release + "\n"
    finally:
        keel("rm", "-f", "web")
        keel("network", "rm", name)
    assert not [ln["ifname"] for ln in links() if bridge in ln["ifname"]]
    left = left_running(str(tmp_path))
    assert not left, left
