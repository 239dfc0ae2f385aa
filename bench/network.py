#!/usr/bin/env python3
"""Benchmark: `run --rm --network NET IMAGE true` on a CNI bridge network, keel vs podman (its
CNI backend, the same Debian plugins), both with runc under conmon, interleaved round-robin in
one run; `--network none` of both alongside, so the cost of the network set-up and tear-down
(netns, CNI ADD, CNI DEL) shows as the difference.

    sudo .venv/bin/python bench/network.py [--iterations 20]

Each side gets its own bridge network made for the run (keel: masquerading off; podman: as its
`network create` writes it) and its own storage in a temp dir (podman through the interop tests'
isolated Podman); both are removed at the end. No traffic leaves the host: the containers only
run `true`. Needs root.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests", "interop"))

import interop_helpers as h  # noqa: E402
import interop_peers as peers  # noqa: E402


def timed(argv, env=None):
    t0 = time.perf_counter()
    p = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, env=env)
    elapsed = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:3])} ... failed ({p.returncode}): {p.stderr.strip()[-500:]}")
    return elapsed


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=20)
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root")
    runc = shutil.which("runc") or "/usr/sbin/runc"
    work = tempfile.mkdtemp(prefix="keel-bench-net-")
    tag = os.urandom(3).hex()
    keel_net, keel_bridge = f"kb-{tag}", f"kb{tag}"
    pod_net, pod_bridge = f"pb-{tag}", None
    keel = [sys.executable, "-m", "keel.cli.main", "--root", os.path.join(work, "keel-root"),
            "--runroot", os.path.join(work, "keel-run"), "--network-config-dir", os.path.join(work, "keel-net")]
    podman = peers.Podman(os.path.join(work, "podman"), runc)
    parent = f"/keel-bench-{tag}"
    env = dict(os.environ, KEEL_CGROUP_PARENT=parent)
    try:
        tar = h.build_rootfs_tar(work)
        archive = h.build_oci_archive(tar, os.path.join(work, "busybox-oci.tar"))
        out = subprocess.run(keel + ["load", "-i", archive], capture_output=True, text=True, check=True).stdout
        image = out.strip().rsplit(" ", 1)[-1]
        subprocess.run(keel + ["network", "create", "--interface-name", keel_bridge, "-o", "masquerade=false",
                               keel_net], check=True, capture_output=True)
        podman.import_image(tar)
        podman("network", "create", "--subnet", "10.93.253.0/24", pod_net, check=True)
        pod_bridge = json.loads(podman("network", "inspect", pod_net, check=True).stdout)[0]["network_interface"]
        cases = {
            "keel bridge": keel + ["run", "--rm", "--runtime", "runc", "--network", keel_net, image, "true"],
            "podman bridge": podman.argv("run", "--rm", "--network", pod_net, podman.image, "true"),
            "keel none": keel + ["run", "--rm", "--runtime", "runc", "--network", "none", image, "true"],
            "podman none": podman.argv("run", "--rm", "--network", "none", podman.image, "true"),
        }
        envs = {k: (podman.env if k.startswith("podman") else env) for k in cases}
        for name, argv in cases.items():   # warm-up: caches, first network set-up
            timed(argv, envs[name])
        samples = {k: [] for k in cases}
        for _ in range(args.iterations):
            for name, argv in cases.items():
                samples[name].append(timed(argv, envs[name]))
        med = {k: statistics.median(v) * 1000 for k, v in samples.items()}
        print(f"run --rm ... true, runc, {args.iterations} interleaved runs each (median ms):")
        for k, v in med.items():
            print(f"  {k:14s} {v:8.1f}")
        print(f"keel/podman bridge: {med['keel bridge'] / med['podman bridge']:.2f}x   "
              f"none: {med['keel none'] / med['podman none']:.2f}x")
        print(f"network cost (bridge - none): keel {med['keel bridge'] - med['keel none']:.1f} ms, "
              f"podman {med['podman bridge'] - med['podman none']:.1f} ms")
    finally:
        subprocess.run(keel + ["network", "rm", "-f", keel_net], capture_output=True)
        podman("network", "rm", "-f", pod_net)
        podman.close()
        for bridge in (keel_bridge, pod_bridge):
            if bridge and os.path.exists(f"/sys/class/net/{bridge}"):
                subprocess.run(["ip", "link", "delete", bridge], capture_output=True)
        shutil.rmtree(f"/var/lib/cni/networks/{pod_net}", ignore_errors=True)   # podman's host-local state
        h.remove_cgroup(parent)
        h.umount_under(work)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
