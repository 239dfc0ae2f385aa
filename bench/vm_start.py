#!/usr/bin/env python3
"""Benchmark: `run` of a busybox bundle, keel-vm cold vs keel-vm from the warm pool vs
keel-runtime, side by side; plus the RSS of an idle pool VM.

    sudo .venv/bin/python bench/vm_start.py [--iterations 5]

One sample = one whole command, `<runtime> --root R run --bundle B ID` of `echo ready`:
    launch-to-output  spawn until the first byte of "ready" arrives on our stdout pipe
    launch-to-exit    spawn until the command has exited (container gone, VM stopped, deleted)
keel-vm cold: KEEL_VM_POOL_SIZE=0, a fresh VM booted per sample.
keel-vm warm: KEEL_VM_POOL_SIZE=1; before each sample the pool is refilled (we wait until its
keeper reports a VM ready), so the sample measures taking a pre-booted VM, not booting one.
Idle VM memory: RSS and PSS of the ready pool VM's QEMU + virtiofsd (smaps_rollup; both
map the guest's memory, so the RSS sum counts those pages twice).
Target (issue 6): keel-vm warm launch-to-exit at or below 0.3 s under emulation. Needs root.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src"))

from keel.testing.rootfs import make_rootfs  # noqa: E402
from keel.vm import pool  # noqa: E402

BIN = os.path.dirname(sys.executable)


def sample(argv, env):
    """(launch-to-output, launch-to-exit) seconds of one command printing "ready"."""
    t0 = time.monotonic()
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    first = None
    out = b""
    while True:
        r, _, _ = select.select([p.stdout], [], [], 120)
        if not r:
            p.kill()
            raise SystemExit(f"timed out: {' '.join(argv)}")
        chunk = os.read(p.stdout.fileno(), 4096)
        if not chunk:
            break
        if first is None:
            first = time.monotonic() - t0
        out += chunk
    err = p.stderr.read()
    rc = p.wait()
    total = time.monotonic() - t0
    if rc != 0 or out.strip() != b"ready":
        raise SystemExit(f"{' '.join(argv)}: exit {rc}, stdout {out!r}, stderr {err.decode()!r}")
    return first, total


def mem_kib(pid, field):
    """Rss or Pss of a process (smaps_rollup): QEMU and virtiofsd both map the guest's memory,
    so their RSS counts its pages twice and PSS splits them."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def pool_vm_pids(root):
    """QEMU and virtiofsd pids of the pool's ready VMs (their working directory is in .pool)."""
    pool_dir = os.path.join(root, pool.POOL_DIR)
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            cwd = os.readlink(f"/proc/{name}/cwd")
            exe = os.readlink(f"/proc/{name}/exe")
        except OSError:
            continue
        if cwd.startswith(pool_dir + "/") and ("qemu" in exe or "virtiofsd" in exe):
            pids.append(int(name))
    return pids


def wait_ready(root, timeout=180):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = pool.status(root)
        if st and st.get("ready"):
            return
        time.sleep(0.05)
    raise SystemExit(f"the pool never had a VM ready: {pool.status(root)}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--iterations", type=int, default=5)
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root")
    work = tempfile.mkdtemp(prefix="keel-vmbench-", dir="/tmp")
    keel_vm, keel_rt = os.path.join(BIN, "keel-vm"), os.path.join(BIN, "keel-runtime")
    try:
        bundle = os.path.join(work, "bundle")
        make_rootfs(os.path.join(bundle, "rootfs"))
        subprocess.run([keel_rt, "spec", "--bundle", bundle], check=True)
        with open(os.path.join(bundle, "config.json")) as f:
            config = json.load(f)
        config["process"].update(terminal=False, args=["echo", "ready"])
        with open(os.path.join(bundle, "config.json"), "w") as f:
            json.dump(config, f)
        vm_root, rt_root = os.path.join(work, "vm"), os.path.join(work, "rt")
        cold_env = dict(os.environ, KEEL_VM_POOL_SIZE="0")
        warm_env = dict(os.environ, KEEL_VM_POOL_SIZE="1", KEEL_VM_POOL_IDLE="120")
        results = {"keel-vm cold": [], "keel-vm warm": [], "keel-runtime": []}
        rss, pss = [], []
        # one cold run first: fetches/builds the guest assets and caches the accelerator probe
        sample([keel_vm, "--root", vm_root, "run", "--bundle", bundle, "warmup"], cold_env)
        subprocess.run([keel_vm, "--root", vm_root, "run", "--bundle", bundle, "keeper"], env=warm_env,
                       stdout=subprocess.DEVNULL, check=True)  # starts the pool keeper
        for _ in range(args.iterations):
            cid = uuid.uuid4().hex[:8]
            results["keel-runtime"].append(sample([keel_rt, "--root", rt_root, "run", "--bundle", bundle, "r" + cid], cold_env))
            results["keel-vm cold"].append(sample([keel_vm, "--root", vm_root, "run", "--bundle", bundle, "c" + cid], cold_env))
            wait_ready(vm_root)
            time.sleep(0.5)  # let the refilled VM's guest settle (its boot is over at HELLO)
            pids = pool_vm_pids(vm_root)
            rss.append(sum(mem_kib(p, "Rss") for p in pids))
            pss.append(sum(mem_kib(p, "Pss") for p in pids))
            results["keel-vm warm"].append(sample([keel_vm, "--root", vm_root, "run", "--bundle", bundle, "w" + cid], warm_env))
        base = statistics.median(t for _, t in results["keel-runtime"])
        print(f"{'runtime':<14} {'launch-to-output':>18} {'launch-to-exit':>16} {'min exit':>10} {'x keel-runtime':>15}")
        for name, rows in results.items():
            out = statistics.median(o for o, _ in rows)
            ext = statistics.median(t for _, t in rows)
            print(f"{name:<14} {out * 1000:>15.0f} ms {ext * 1000:>13.0f} ms {min(t for _, t in rows) * 1000:>7.0f} ms "
                  f"{ext / base:>14.1f}x")
        print(f"idle pool VM (QEMU + virtiofsd): RSS {statistics.median(rss) / 1024:.0f} MiB, "
              f"PSS {statistics.median(pss) / 1024:.0f} MiB (median over {len(rss)} VMs)")
        warm = statistics.median(t for _, t in results["keel-vm warm"])
        print(f"target: keel-vm warm launch-to-exit <= 300 ms: {'met' if warm <= 0.3 else 'NOT met'} "
              f"({warm * 1000:.0f} ms median, {args.iterations} samples, {os.cpu_count()} cpus)")
    finally:
        keepers = []
        for name in os.listdir("/proc"):
            if name.isdigit():
                try:
                    cmd = open(f"/proc/{name}/cmdline", "rb").read()
                except OSError:
                    continue
                if b"keeper_main" in cmd and work.encode() in cmd:
                    keepers.append(int(name))
        for p in keepers:
            os.kill(p, signal.SIGTERM)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and any(os.path.exists(f"/proc/{p}") for p in keepers):
            time.sleep(0.05)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
