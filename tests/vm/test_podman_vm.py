"""podman drives keel-vm as its OCI runtime (`--runtime $(command -v keel-vm)`), conmon waiting on
the shim's pid exactly as it waits on runc's init. Boots a VM per container (marker `vm`)."""

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "interop"))

import interop_helpers as h  # noqa: E402
import interop_peers as peers  # noqa: E402

from conftest import KEEL_VM  # noqa: E402

pytestmark = pytest.mark.vm


@pytest.fixture(scope="module")
def podman_vm(guest_release):
    for tool in ("podman", "conmon"):
        if not h.shutil.which(tool):
            pytest.fail(f"{tool} is not installed (make apt-test installs it)", pytrace=False)
    p = peers.Podman(peers.make_workdir("keel-vmpod-"), KEEL_VM)
    try:
        p.import_image(h.build_rootfs_tar(p.dir()))
        yield p
    finally:
        p.close()


def test_podman_runs_busybox_in_a_vm_and_gets_its_exit_code(podman_vm, guest_release):
    name = h.unique_name()
    r = podman_vm("run", "--name", name, podman_vm.image, "sh", "-c",
                  "uname -r; hostname; echo done; exit 5", timeout=120)
    assert r.returncode == 5, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == guest_release != os.uname().release
    assert lines[-1] == "done"
    st = podman_vm("inspect", "--format", "{{.State.ExitCode}} {{.State.Status}}", name, check=True)
    assert st.stdout.split() == ["5", "exited"]
    cid = podman_vm.inspect(name)["Id"]
    assert lines[1] == cid[:12]  # podman's hostname for the container (uts namespace in the guest)
    podman_vm("rm", name, check=True)
    assert not podman_vm.wait_clean(cid)
    stray = podman_vm.remove_all_containers()
    assert not stray, stray


def test_podman_exec_in_a_vm(podman_vm):
    name = h.unique_name()
    podman_vm("run", "-d", "--name", name, podman_vm.image, "sleep", "300", check=True, timeout=120)
    try:
        r = podman_vm("exec", name, "sh", "-c", "echo $((6*7)); cat /proc/1/cmdline; exit 3", timeout=60)
        assert r.returncode == 3 and r.stdout.startswith("42\nsleep"), (r.stdout, r.stderr)
        r = podman_vm("exec", "-t", name, "tty", timeout=60)
        assert r.returncode == 0 and r.stdout.startswith("/dev/pts/"), (r.stdout, r.stderr)
    finally:
        podman_vm("rm", "-f", "-t", "0", name, timeout=60)
    stray = podman_vm.remove_all_containers()
    assert not stray, stray
