#!/usr/bin/env python3
"""Benchmark: what a seccomp profile costs at container start: `RUNTIME run` of a busybox
`/bin/true` bundle with keel's default profile (a refuse-list), with containers-common's
seccomp.json (podman's allow-list, Docker's shape) and with none, on keel-runtime and runc,
interleaved round-robin in one run; medians and the ratio to no profile.

    sudo .venv/bin/python bench/seccomp_profiles.py [-n 20]

The configs come from keel.engine.specgen, as `keel run` makes them (Docker's capabilities,
masked paths, ...); only the seccomp part differs between the variants. Needs root.
"""

import argparse
import copy
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

PODMAN_PROFILE = "/usr/share/containers/seccomp.json"


def main():
    from keel.engine import specgen
    from keel.oci.spec import default_spec
    from keel.testing.rootfs import make_rootfs

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", "--iterations", type=int, default=20)
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="keel-bench-seccomp-")
    try:
        rootfs = make_rootfs(os.path.join(work, "rootfs"))
        base = default_spec()
        base["process"].update(terminal=False, args=["/bin/true"])
        base["root"] = {"path": rootfs, "readonly": True}
        variants = {"none": ["seccomp=unconfined"], "keel default": []}
        if os.path.exists(PODMAN_PROFILE):
            variants["podman seccomp.json"] = [f"seccomp={PODMAN_PROFILE}"]
        bundles = {}
        for name, opts in variants.items():
            spec = copy.deepcopy(base)
            specgen.apply(spec, specgen.parse(security_opt=opts))
            bundle = os.path.join(work, name.replace(" ", "-"))
            os.makedirs(bundle)
            with open(os.path.join(bundle, "config.json"), "w") as f:
                json.dump(spec, f)
            bundles[name] = bundle
        runtimes = {"keel-runtime": os.path.join(os.path.dirname(sys.executable), "keel-runtime"),
                    "runc": shutil.which("runc")}
        samples = {(rt, v): [] for rt in runtimes for v in bundles}
        for i in range(args.iterations + 1):
            for rt, path in runtimes.items():
                for v, bundle in bundles.items():
                    t = time.perf_counter()
                    subprocess.run([path, "--root", os.path.join(work, "state"), "run", "--bundle",
                                    bundle, f"b{i}-{rt}-{len(samples[(rt, v)])}-{v[:4]}"],
                                   check=True, capture_output=True)
                    if i:   # the first round warms caches and is not recorded
                        samples[(rt, v)].append(time.perf_counter() - t)
        print(f"{'runtime':14} {'profile':22} {'median':>9} {'vs none':>8}")
        for rt in runtimes:
            none = statistics.median(samples[(rt, "none")])
            for v in bundles:
                med = statistics.median(samples[(rt, v)])
                print(f"{rt:14} {v:22} {med * 1000:7.1f}ms {med / none:7.2f}x")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
