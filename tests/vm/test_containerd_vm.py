"""containerd (through its io.containerd.runc.v2 shim) drives keel-vm as it drives runc; the
shim waits on keel-vm's shim pid and gets the exit code. Boots a VM (marker `vm`)."""

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "interop"))

import interop_helpers as h  # noqa: E402
import interop_peers as peers  # noqa: E402

from conftest import KEEL_VM  # noqa: E402

pytestmark = pytest.mark.vm


def test_ctr_run_in_a_vm(guest_release):
    for tool in ("containerd", "ctr", "containerd-shim-runc-v2"):
        if not h.shutil.which(tool):
            pytest.fail(f"{tool} is not installed (make apt-test installs it)", pytrace=False)
    daemon = peers.Containerd(peers.make_workdir("keel-vmctrd-"))
    img = peers.make_workdir("keel-vmimg-")
    try:
        daemon.start()
        archive = h.build_oci_archive(h.build_rootfs_tar(img), os.path.join(img, "busybox-oci.tar"))
        ctr = daemon.ctr(KEEL_VM)
        try:
            ctr.import_image(archive)
            r = ctr.run(h.unique_name(), "sh", "-c", "uname -r; exit 4", timeout=120)
            assert r.returncode == 4, (r.stdout, r.stderr)
            assert r.stdout.split()[0] == guest_release != os.uname().release
        finally:
            stray = ctr.cleanup()
        assert not stray, stray
    finally:
        daemon.stop()
        h.rmtree(img)
