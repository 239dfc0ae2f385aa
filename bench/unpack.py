#!/usr/bin/env python3
"""Benchmark: keel's layer unpack vs `umoci unpack` (and `umoci raw unpack`) of the same OCI
images, interleaved round-robin in one run, on a small busybox image and a ~200 MB multi-layer
image (the images of bench/pull.py, as OCI layouts; no registry).

    sudo .venv/bin/python bench/unpack.py [--iterations 5] [--images small,large]

One sample, wall time:
  keel       Snapshotter(FRESH/snapshots).ensure_layers(image, store), in this process: every
             layer gunzipped, its diff id verified, unpacked into its own layer dir (what
             `keel run` / `keel image mount` do before mounting), synced (syncfs) and renamed
             into place. The image was imported into a keel Store with
             keel.image.archive.import_oci_layout once per image beforehand (untimed): only the
             unpack is timed, not the import, not the interpreter's start.
  umoci      umoci unpack --image LAYOUT:latest FRESH/bundle   (process spawn..exit: the layers into
             one rootfs, plus config.json, the mtree manifest of the whole rootfs, umoci.json)
  umoci-raw  umoci raw unpack --image LAYOUT:latest FRESH/rootfs   (the rootfs only: the same
             work as keel's, minus the sync; spawn..exit)
FRESH is a new empty dir on the same filesystem as the store and the layout, removed after the
sample (untimed). `sync` runs (untimed) before every sample, so that no sample pays for writing
back another's dirty pages; nothing is dropped from the page cache (the blobs are read warm).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import stat
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(REPO, "src"))

import pull as _bench  # noqa: E402  (bench/pull.py: the images and the report helpers)

TOOLS = ("keel", "umoci", "umoci-raw")


def tree_bytes(path: str) -> tuple[int, int]:
    """(regular-file bytes counting each inode once, entries) under path, not following links."""
    seen, total, entries = set(), 0, 0
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            entries += 1
            st = os.lstat(os.path.join(dirpath, name))
            if stat.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_size
    return total, entries


def _mounts_under(path: str) -> list[str]:
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mp = line.split(" ")[4].replace("\\040", " ")
            if mp == path or mp.startswith(path.rstrip("/") + "/"):
                out.append(mp)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--iterations", "-n", type=int, default=5, help="samples per tool and image (default 5)")
    ap.add_argument("--warmup", type=int, default=1, help="unrecorded samples per tool first (default 1)")
    ap.add_argument("--images", default=",".join(_bench.IMAGES), help="comma list of small,large (default both)")
    ap.add_argument("--umoci", default=shutil.which("umoci") or "/usr/bin/umoci")
    ap.add_argument("--tools", default=",".join(TOOLS), help=f"comma list of {','.join(TOOLS)}")
    ap.add_argument("--json", metavar="FILE", help="also write samples and summary as JSON")
    ap.add_argument("--profile", metavar="FILE",
                    help="after the samples, run keel's unpack of the last image once more under "
                         "cProfile and write the stats to FILE (pstats format)")
    ap.add_argument("--tmpdir", default="/var/tmp", help="where the work dir goes (default /var/tmp)")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        sys.exit("unpack.py: run as root (layers carry root-owned files, devices, xattrs)")
    images = _bench.parse_images(args.images)
    tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    if not tools or any(t not in TOOLS for t in tools):
        sys.exit(f"--tools: expected a comma list of {', '.join(TOOLS)}")
    if any(t.startswith("umoci") for t in tools) and not os.access(args.umoci, os.X_OK):
        sys.exit(f"unpack.py: umoci not found at {args.umoci} (apt-get install umoci)")

    from keel.image.archive import import_oci_layout
    from keel.image.snapshot import Snapshotter
    from keel.image.store import Store

    work = tempfile.mkdtemp(prefix="keel-bench-unpack-", dir=args.tmpdir)
    results, infos, failures, checks = {}, {}, [], {}
    stores = []
    try:
        for kind in images:
            info = _bench.build_image(kind, os.path.join(work, "images", kind))
            store = Store(os.path.join(work, "stores", kind))
            stores.append(store)
            t0 = time.perf_counter()
            (img,) = import_oci_layout(store, info["path"])
            info["import_seconds"] = time.perf_counter() - t0
            info["store"], info["image"] = store, img
            infos[kind] = info
            print(f"{kind}: {len(info['layers'])} layer(s), {info['uncompressed_bytes'] / 1e6:.1f} MB "
                  f"uncompressed, {info['compressed_bytes'] / 1e6:.1f} MB compressed; built in "
                  f"{info['build_seconds']:.1f} s, imported into a keel store in "
                  f"{info['import_seconds']:.1f} s; manifest {info['manifest_digest'][:19]}", flush=True)

        dests = os.path.join(work, "dest")
        os.makedirs(dests)
        log = os.path.join(work, "last.log")
        for kind in images:
            info = infos[kind]
            samples = {t: [] for t in tools}
            for i in range(args.warmup + args.iterations):
                k = i % len(tools)
                for tool in tools[k:] + tools[:k]:       # rotate who goes first
                    dest = tempfile.mkdtemp(prefix=f"{kind}-{tool}-{i}-", dir=dests)
                    os.sync()                             # untimed: start with no dirty pages
                    if tool == "keel":
                        out = os.path.join(dest, "snapshots")
                        t0 = time.perf_counter()
                        try:
                            Snapshotter(out).ensure_layers(info["image"], info["store"])
                            elapsed, rc = time.perf_counter() - t0, 0
                        except Exception as e:  # noqa: BLE001 - reported as a failed sample
                            elapsed, rc = 0.0, 1
                            with open(log, "w") as f:
                                f.write(f"{type(e).__name__}: {e}")
                        argv = ["Snapshotter.ensure_layers"]
                        tree = os.path.join(out, "layers")
                    elif tool == "umoci":
                        out = os.path.join(dest, "bundle")
                        argv = [args.umoci, "unpack", "--image", f"{info['path']}:latest", out]
                        elapsed, rc = _bench.run_logged(argv, log)
                        tree = os.path.join(out, "rootfs")
                    else:
                        out = os.path.join(dest, "rootfs")
                        argv = [args.umoci, "raw", "unpack", "--image", f"{info['path']}:latest", out]
                        elapsed, rc = _bench.run_logged(argv, log)
                        tree = out
                    if rc != 0:
                        failures.append(f"{kind} {tool} iteration {i}: exit {rc}: {' '.join(argv)}\n"
                                        f"    {_bench.tail(log)}")
                    else:
                        if i >= args.warmup:
                            samples[tool].append(elapsed)
                        if (kind, tool) not in checks:   # once: what landed on disk (untimed)
                            checks[(kind, tool)] = tree_bytes(tree)
                    shutil.rmtree(dest, ignore_errors=True)
                if failures:
                    break
            results[kind] = {"samples": samples,
                             "summary": _bench.summarize(samples, info["uncompressed_bytes"], tools)}
            if failures:
                break

        if args.profile and not failures:
            import cProfile

            kind = images[-1]
            out = tempfile.mkdtemp(prefix="profile-", dir=dests)
            os.sync()
            prof = cProfile.Profile()
            prof.enable()
            Snapshotter(os.path.join(out, "snapshots")).ensure_layers(infos[kind]["image"], infos[kind]["store"])
            prof.disable()
            prof.dump_stats(args.profile)
            shutil.rmtree(out, ignore_errors=True)
            print(f"cProfile of keel's unpack of {kind} written to {args.profile}")
    finally:
        for s in stores:
            s.close()
        for mp in sorted(_mounts_under(work), key=len, reverse=True):   # none expected
            subprocess.run(["umount", "-l", mp], check=False)
        shutil.rmtree(work, ignore_errors=True)

    umoci_start = None
    if any(t.startswith("umoci") for t in tools):
        ts = []
        for _ in range(10):
            t0 = time.perf_counter()
            subprocess.run([args.umoci, "--version"], stdout=subprocess.DEVNULL, check=False)
            ts.append(time.perf_counter() - t0)
        umoci_start = statistics.median(ts)

    print()
    print(f"unpack of an OCI image, {args.iterations} samples per tool (+{args.warmup} warm-up), "
          f"interleaved round-robin, sync before each sample, page cache warm; wall seconds")
    print(f"machine: {_bench.machine_note()}")
    print(f"versions: {_bench.keel_version()}; {_bench.version_of([args.umoci, '--version'])}")
    for kind in results:
        info = infos[kind]
        summary = results[kind]["summary"]
        print()
        _bench.print_table(f"{kind}: {len(info['layers'])} layer(s), {info['uncompressed_bytes'] / 1e6:.1f} MB "
                           f"uncompressed ({info['compressed_bytes'] / 1e6:.1f} MB compressed)",
                           summary, tools, "uncompressed layer bytes (tar streams)")
        for other in ("umoci", "umoci-raw"):
            if "keel" in summary and other in summary:
                k, o = summary["keel"], summary[other]
                print(f"  keel/{other}: median {k['median'] / o['median']:.2f}x   "
                      f"min {k['min'] / o['min']:.2f}x")
        for tool in tools:
            if (kind, tool) in checks:
                b, n = checks[(kind, tool)]
                print(f"  on disk after {tool}: {b / 1e6:.1f} MB in regular files, {n} entries")
    if umoci_start is not None:
        print(f"\n`umoci --version` (process start alone): median {umoci_start * 1e3:.1f} ms; keel's "
              f"samples run in-process (no interpreter start, no imports)")
    for f in failures:
        print("FAILED " + f)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"iterations": args.iterations, "warmup": args.warmup,
                       "images": {k: {kk: v for kk, v in infos[k].items()
                                      if kk not in ("path", "store", "image")} for k in results},
                       "results": results, "failures": failures,
                       "on_disk": {f"{k}/{t}": v for (k, t), v in checks.items()}}, f, indent=1)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
