"""`make demo`: the stack a user cares about, offline. An image is made from Debian's
busybox-static (an OCI archive, keel.testing.ociimage), loaded into a private keel store with
`keel load`, run in the foreground with `keel run --rm` (it prints from inside its own
namespaces), then a detached one: `keel run -d`, `keel ps`, `keel logs`, `keel rm -f`.
Everything lives in a temporary root and run root that are removed at the end."""

import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time

from keel.testing.ociimage import busybox_oci_archive

IMAGE = "localhost/demo-busybox:latest"
SCRIPT = r"""
echo "== inside a keel container =="
echo "hostname:     $(hostname)"
echo "my pid:       $$  (pid 1 of its own pid namespace)"
echo "processes:    $(ps -o pid= | wc -l) visible"
echo "uid:          $(id)"
echo "root fs:      $(sed -n 's/^overlay \/ overlay.*/overlay (the image + a writable layer)/p' /proc/self/mounts)"
echo "network:      $(ls /sys/class/net | tr '\n' ' ')(its own network namespace)"
"""
TICKER = 'i=0; while :; do i=$((i+1)); echo "tick $i"; sleep 0.2; done'


class Demo:
    def __init__(self, work):
        self.keel = os.path.join(os.path.dirname(sys.executable), "keel")
        self.root, self.runroot = os.path.join(work, "root"), os.path.join(work, "run")

    def __call__(self, *args, show=True, check=True):
        shown = "keel " + " ".join(shlex.quote(a) if "\n" not in a else "'...script...'" for a in args)
        if show:
            print(f"\n$ {shown}", flush=True)
        r = subprocess.run([self.keel, "--root", self.root, "--runroot", self.runroot, *args],
                           stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)
        if show:
            sys.stdout.write(r.stdout)
            sys.stdout.flush()
        if check and r.returncode != 0:
            raise SystemExit(f"demo: `{shown}` failed with exit status {r.returncode}")
        return r.stdout


def main():
    # short paths: conmon's attach socket lives under the run root (a unix socket path is at
    # most 107 bytes)
    work = tempfile.mkdtemp(prefix="keel-demo-")
    keel = Demo(work)
    try:
        archive = os.path.join(work, "busybox.tar")
        print(f"building {IMAGE} offline from busybox-static: an OCI archive, {archive}")
        busybox_oci_archive(archive, IMAGE)
        keel("load", "-i", archive)
        keel("images")
        keel("run", "--rm", "--hostname", "keel-demo", IMAGE, "sh", "-c", SCRIPT)
        cid = keel("run", "-d", "--name", "demo-ticker", IMAGE, "sh", "-c", TICKER).strip()
        keel("ps")
        deadline = time.monotonic() + 10
        while keel("logs", cid, show=False).count("\n") < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        keel("logs", "--tail", "3", "demo-ticker")
        keel("rm", "-f", "demo-ticker")
        keel("ps", "-a")
        print("\nall done: the image, both containers and their state are removed with", work)
        return 0
    finally:
        ids = keel("ps", "-aq", show=False, check=False).split()
        if ids:
            keel("rm", "-f", *ids, show=False, check=False)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
