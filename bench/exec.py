#!/usr/bin/env python3
"""Benchmark: `keel exec CTR true` against `podman exec CTR true`, runc on both sides, the same
busybox image (built offline), each in a running container of its own, interleaved round-robin
in one run; medians and the ratio. Also `-i` with 1 MB of stdin piped through (`wc -c`).

    sudo .venv/bin/python bench/exec.py [--iterations 20]

One sample = the wall time of the whole command, from spawn to exit (what a user waits for).
Both engines run the command under a conmon of their own (podman's way, which keel follows).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "src"))
sys.path.insert(0, os.path.join(REPO, "tests", "interop"))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=20)
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/exec.py: run as root")
    import interop_helpers as h
    import interop_peers as peers

    work = tempfile.mkdtemp(prefix="keel-bench-exec-")
    os.environ["KEEL_CGROUP_PARENT"] = "/" + h.unique_name("keel-bench-")
    runc = shutil.which("runc") or "/usr/sbin/runc"
    keel = [os.path.join(os.path.dirname(sys.executable), "keel"), "--root", os.path.join(work, "k-root"),
            "--runroot", os.path.join(work, "k-run")]
    podman = peers.Podman(os.path.join(work, "podman"), runc)
    data = b"x" * 1_000_000
    try:
        tar = h.build_rootfs_tar(work)
        podman.import_image(tar)
        layout = os.path.join(work, "layout")
        h.build_oci_archive(tar, layout + ".tar", name="localhost/busybox:latest")
        subprocess.run(keel + ["load", "-i", layout + ".tar"], check=True, capture_output=True)
        subprocess.run(keel + ["run", "-d", "--runtime", "runc", "--name", "b", "localhost/busybox:latest",
                               "sleep", "100000"], check=True, capture_output=True)
        podman("run", "-d", "--name", "b", podman.image, "sleep", "100000", check=True)
        cases = {
            "keel exec true": (keel + ["exec", "b", "true"], None),
            "podman exec true": (podman.argv("exec", "b", "true"), None),
            "keel exec -i wc -c (1 MB)": (keel + ["exec", "-i", "b", "wc", "-c"], data),
            "podman exec -i wc -c (1 MB)": (podman.argv("exec", "-i", "b", "wc", "-c"), data),
        }
        times = {k: [] for k in cases}
        for _ in range(args.iterations):
            for name, (argv, stdin) in cases.items():
                t = time.perf_counter()
                r = subprocess.run(argv, input=stdin, capture_output=True, env=podman.env)
                times[name].append(time.perf_counter() - t)
                if r.returncode != 0:
                    sys.exit(f"{name}: exit {r.returncode}: {r.stderr.decode(errors='replace').strip()}")
        med = {k: statistics.median(v) * 1000 for k, v in times.items()}
        for k, v in med.items():
            print(f"{k:32s} median {v:7.1f} ms")
        print(f"ratio keel/podman exec true:       {med['keel exec true'] / med['podman exec true']:.2f}")
        print(f"ratio keel/podman exec -i (1 MB):  "
              f"{med['keel exec -i wc -c (1 MB)'] / med['podman exec -i wc -c (1 MB)']:.2f}")
    finally:
        subprocess.run(keel + ["rm", "-f", "b"], capture_output=True)
        podman.remove_all_containers()
        podman.close()
        for d in os.listdir("/sys/fs/cgroup"):
            p = os.path.join("/sys/fs/cgroup", d, os.environ["KEEL_CGROUP_PARENT"].lstrip("/"))
            if os.path.isdir(p):
                os.rmdir(p)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
