#!/usr/bin/env python3
"""Benchmark: `keel pull` vs `skopeo copy` from a private local registry, interleaved
round-robin in one run, on a small busybox image and a ~200 MB multi-layer image.

    sudo .venv/bin/python bench/pull.py [--iterations 5] [--images small,large]

One keel sample:   keel --root FRESH_DIR pull --tls-verify=false -q 127.0.0.1:PORT/bench/IMG:latest
One skopeo sample: skopeo copy --quiet --src-tls-verify=false docker://127.0.0.1:PORT/bench/IMG:latest oci:FRESH_DIR:latest
Both fetch the manifest, the config and every layer, verify digests and sizes, and write them to
local storage (keel: its blob store + metadata db; skopeo: an OCI layout); both fsync each blob.
Wall time of the process, from spawn to exit. The destination is a new, empty dir on the same
filesystem each sample, removed afterwards (untimed); `sync` runs (untimed) before every sample;
nothing is dropped from the page cache. keel runs with a private, primed bytecode cache
(PYTHONPYCACHEPREFIX, as an installed package has its .pyc files; --no-pyc-cache: as the caller's
environment says).

The images are built offline by this script (see build_image; bench/unpack.py uses the same ones),
pushed with `skopeo copy oci:DIR:latest docker://...` to a docker-registry on 127.0.0.1 with its
own temp storage, and everything (registry process by pid, temp dirs) is removed at the end.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import gzip
import hashlib
import io
import json
import os
import shutil
import stat
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
MTIME = 1700000000
IMAGES = ("small", "large")
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"

# The large image: (layer name, source dirs walked in sorted order, uncompressed byte budget of
# the regular files taken). Deterministic on a given machine (sorted walk, fixed owner and mtime,
# gzip without a timestamp); about 200 MB of files, a mix of big shared objects and executables
# and many small files (python sources, docs, locale data), directories, symlinks, hardlinks.
LARGE_LAYERS = (
    ("libs", ("/usr/lib/x86_64-linux-gnu",), 60 << 20),
    ("bin", ("/usr/bin", "/usr/sbin"), 40 << 20),
    ("python", ("/usr/lib/python3", "/usr/lib/python3.11"), 40 << 20),
    ("share", ("/usr/share",), 40 << 20),
    ("misc", ("/usr/libexec", "/usr/include", "/usr/lib/gcc"), 20 << 20),
)


# ---------------------------------------------------------------------------------------------
# images (also used by bench/unpack.py)


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _reproducible(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    info.mtime = MTIME
    return info


def _put_blob(layout: str, data: bytes) -> str:
    d = _sha256(data)
    path = os.path.join(layout, "blobs", "sha256", d.split(":", 1)[1])
    with open(path, "wb") as f:
        f.write(data)
    return d


def _gzip_layer(layout: str, tar: bytes) -> dict:
    blob = gzip.compress(tar, compresslevel=6, mtime=0)
    return {"diff_id": _sha256(tar), "digest": _put_blob(layout, blob), "size": len(blob),
            "tar_size": len(tar)}


def _tar_of_tree(path: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name in sorted(os.listdir(path)):
            tf.add(os.path.join(path, name), arcname=name, filter=_reproducible)
    return buf.getvalue()


def _large_layer(layout: str, roots, budget: int) -> dict:
    """One layer of the large image: tar (in memory) of the sorted walk of `roots` until
    `budget` bytes of regular files are in, gzip-compressed into the layout's blobs."""
    buf = io.BytesIO()
    taken = 0
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        added_parents = set()

        def add(path, recursive=False):
            tf.add(path, arcname=path.lstrip("/"), recursive=recursive, filter=_reproducible)

        for root in roots:
            if not os.path.isdir(root) or taken >= budget:
                continue
            parts = root.strip("/").split("/")
            for i in range(1, len(parts)):
                parent = "/" + "/".join(parts[:i])
                if parent not in added_parents:
                    added_parents.add(parent)
                    add(parent)
            for dirpath, dirnames, filenames in os.walk(root):
                dirnames.sort()
                if taken >= budget:
                    dirnames[:] = []
                    break
                add(dirpath)
                for name in sorted(filenames):
                    p = os.path.join(dirpath, name)
                    try:
                        st = os.lstat(p)
                    except OSError:
                        continue
                    if stat.S_ISREG(st.st_mode):
                        if taken + st.st_size > budget:
                            continue        # too big for what is left (e.g. a 100 MB libLLVM)
                        try:
                            add(p)
                        except OSError:
                            continue
                        taken += st.st_size
                    elif stat.S_ISLNK(st.st_mode):
                        add(p)
                # directories symlinked (os.walk lists them in dirnames) are added as symlinks
                for name in list(dirnames):
                    p = os.path.join(dirpath, name)
                    if os.path.islink(p):
                        add(p)
                        dirnames.remove(name)
    return _gzip_layer(layout, buf.getvalue())


def _write_layout(layout: str, layers: list[dict], created_by: str) -> dict:
    cfg = {
        "created": "2023-11-14T22:13:20Z", "architecture": "amd64", "os": "linux",
        "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                   "Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": [la["diff_id"] for la in layers]},
        "history": [{"created": "2023-11-14T22:13:20Z", "created_by": created_by} for _ in layers],
    }
    cfg_bytes = json.dumps(cfg, sort_keys=True, separators=(",", ":")).encode()
    cfg_digest = _put_blob(layout, cfg_bytes)
    manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                "config": {"mediaType": OCI_CONFIG, "digest": cfg_digest, "size": len(cfg_bytes)},
                "layers": [{"mediaType": OCI_LAYER_GZIP, "digest": la["digest"], "size": la["size"]}
                           for la in layers]}
    m_bytes = json.dumps(manifest, separators=(",", ":")).encode()
    m_digest = _put_blob(layout, m_bytes)
    with open(os.path.join(layout, "index.json"), "w") as f:
        json.dump({"schemaVersion": 2, "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": m_digest, "size": len(m_bytes),
             "annotations": {"org.opencontainers.image.ref.name": "latest"}}]}, f)
    with open(os.path.join(layout, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    return {"path": layout, "manifest_digest": m_digest, "layers": layers,
            "compressed_bytes": sum(la["size"] for la in layers) + len(cfg_bytes) + len(m_bytes),
            "uncompressed_bytes": sum(la["tar_size"] for la in layers)}


def build_image(kind: str, layout: str) -> dict:
    """Write the `kind` ("small" or "large") image as an OCI layout at `layout` (ref "latest").
    Returns {"path", "manifest_digest", "layers": [{diff_id, digest, size, tar_size}],
    "compressed_bytes", "uncompressed_bytes", "build_seconds"}."""
    t0 = time.perf_counter()
    os.makedirs(os.path.join(layout, "blobs", "sha256"))
    if kind == "small":
        if os.path.join(REPO, "src") not in sys.path:
            sys.path.insert(0, os.path.join(REPO, "src"))
        from keel.testing.rootfs import make_rootfs

        tmp = tempfile.mkdtemp(prefix="rootfs-", dir=os.path.dirname(layout))
        try:
            make_rootfs(os.path.join(tmp, "rootfs"))
            layers = [_gzip_layer(layout, _tar_of_tree(os.path.join(tmp, "rootfs")))]
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    elif kind == "large":
        workers = max(1, min(len(LARGE_LAYERS), os.cpu_count() or 1))
        with concurrent.futures.ProcessPoolExecutor(max_workers=workers) as pool:
            futures = [pool.submit(_large_layer, layout, roots, budget)
                       for _, roots, budget in LARGE_LAYERS]
            layers = [f.result() for f in futures]
    else:
        raise ValueError(f"unknown image {kind!r} (known: {', '.join(IMAGES)})")
    info = _write_layout(layout, layers, f"keel bench ({kind})")
    info["build_seconds"] = time.perf_counter() - t0
    return info


def parse_images(text: str) -> list[str]:
    wanted = [x.strip() for x in text.split(",") if x.strip()]
    unknown = [x for x in wanted if x not in IMAGES]
    if unknown or not wanted:
        sys.exit(f"--images: unknown {', '.join(unknown) or '(none given)'} (known: {', '.join(IMAGES)})")
    return wanted


# ---------------------------------------------------------------------------------------------
# helpers shared with bench/unpack.py


def percentile(values, p):
    """Nearest-rank percentile (p in 0..100) of a non-empty list."""
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(-(-p * len(s) // 100)) - 1))
    return s[k]


def version_of(argv) -> str:
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except OSError as e:
        return f"? ({e})"
    lines = (res.stdout or res.stderr).strip().splitlines()
    return lines[0] if lines else "?"


def keel_version() -> str:
    try:
        from importlib.metadata import version
        return "keel " + version("keel")
    except Exception:
        return "keel ?"


def machine_note() -> str:
    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{os.cpu_count()} cpus ({model}), python {sys.version.split()[0]}"


def summarize(samples: dict, nbytes: int, order: list[str]) -> dict:
    out = {}
    for tool in order:
        s = samples.get(tool) or []
        if s:
            med = statistics.median(s)
            out[tool] = {"n": len(s), "median": med, "min": min(s), "max": max(s),
                         "p90": percentile(s, 90), "mb_per_s": nbytes / 1e6 / med if med else 0.0}
    return out


def print_table(title: str, summary: dict, order: list[str], nbytes_label: str):
    print(title)
    hdr = f"  {'tool':18s} {'n':>3s} {'median s':>9s} {'min s':>8s} {'max s':>8s} {'MB/s':>8s}"
    print(hdr)
    print("  " + "-" * (len(hdr) - 2))
    for tool in order:
        m = summary.get(tool)
        if not m:
            print(f"  {tool:18s} {0:3d} {'-':>9s} {'-':>8s} {'-':>8s} {'-':>8s}")
            continue
        print(f"  {tool:18s} {m['n']:3d} {m['median']:9.3f} {m['min']:8.3f} {m['max']:8.3f} "
              f"{m['mb_per_s']:8.1f}")
    print(f"  (MB/s = {nbytes_label} / median seconds; MB = 10^6 bytes)")


def run_logged(argv, log_path, env=None) -> tuple[float, int]:
    """Run argv with stdout/stderr to log_path; (wall seconds spawn..exit, exit status)."""
    with open(log_path, "wb") as log:
        t0 = time.perf_counter()
        rc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env).returncode
        return time.perf_counter() - t0, rc


def tail(path, n=1500) -> str:
    try:
        with open(path, errors="replace") as f:
            return f.read()[-n:].strip()
    except OSError:
        return ""


# ---------------------------------------------------------------------------------------------
# the pull benchmark


def summarize_collapsed(path: str, top: int = 15) -> str:
    """Self time per function (share of all samples, all threads) of py-spy's raw output."""
    import collections

    total, own, phase = 0, collections.Counter(), collections.Counter()
    phases = (("imports (module loading)", "_find_and_load"), ("blob fetch threads", "fetch_blob"),
              ("manifest fetch (and /v2/ probe)", "get_manifest"),
              ("http client setup", "RegistryClient.__init__"), ("store metadata", "Store."),
              ("cli parsing", "build_parser"))
    with open(path) as f:
        for line in f:
            stack, _, n = line.rstrip().rpartition(" ")
            if not stack or not n.isdigit():
                continue
            total += int(n)
            leaf = stack.split(";")[-1] or "(no python frame)"
            own[leaf.replace(REPO + "/src/", "").replace(sys.prefix + "/lib/", "")] += int(n)
            phase[next((name for name, mark in phases if mark in stack), "other (incl. idle pool workers)")] += int(n)
    pct = lambda n: f"{100 * n / max(total, 1):5.1f}%"  # noqa: E731
    lines = [f"py-spy, one keel pull, all threads ({total} samples at 500 Hz), by phase:"]
    lines += [f"  {pct(n)}  {name}" for name, n in phase.most_common()]
    lines.append("self time by function:")
    lines += [f"  {pct(n)}  {name}" for name, n in own.most_common(top)]
    return "\n".join(lines)


def profile_keel_pull(args, ref: str, dests: str, env: dict) -> str:
    dest = tempfile.mkdtemp(prefix="profile-", dir=dests)
    keel_argv = ["--root", os.path.join(dest, "root"), "pull", "--tls-verify=false", "-q", ref]
    spy = os.path.join(os.path.dirname(sys.executable), "py-spy")
    spy = spy if os.access(spy, os.X_OK) else shutil.which("py-spy")
    try:
        os.sync()
        if spy:
            subprocess.run([spy, "record", "-r", "500", "--format", "raw", "-o", args.profile, "--",
                            args.keel] + keel_argv, check=True, env=env, stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            return f"{summarize_collapsed(args.profile)}\n(collapsed stacks in {args.profile})"
        subprocess.run([sys.executable, "-m", "cProfile", "-o", args.profile, args.keel] + keel_argv,
                       check=True, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        return (f"cProfile of one keel pull (main thread only: the fetch threads are not in it) "
                f"written to {args.profile}")
    finally:
        shutil.rmtree(dest, ignore_errors=True)


def _tool_env(work: str) -> dict:
    """The environment of both keel and skopeo: an empty private auth file, nothing else changed
    (both read the system's registries.conf and policy)."""
    authfile = os.path.join(work, "auth.json")
    with open(authfile, "w") as f:
        f.write('{"auths": {}}')
    return dict(os.environ, REGISTRY_AUTH_FILE=authfile)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--iterations", "-n", type=int, default=5, help="samples per tool and image (default 5)")
    ap.add_argument("--warmup", type=int, default=1, help="unrecorded samples per tool first (default 1)")
    ap.add_argument("--images", default=",".join(IMAGES), help="comma list of small,large (default both)")
    ap.add_argument("--keel", default=os.path.join(os.path.dirname(sys.executable), "keel"),
                    help="keel CLI (default: the one next to this python)")
    ap.add_argument("--skopeo", default=shutil.which("skopeo") or "/usr/bin/skopeo")
    ap.add_argument("--no-pyc-cache", action="store_true",
                    help="run keel with the caller's bytecode settings as they are (by default a "
                         "private PYTHONPYCACHEPREFIX, primed before the samples, so that keel "
                         "starts as an installed package does)")
    ap.add_argument("--json", metavar="FILE", help="also write samples and summary as JSON")
    ap.add_argument("--profile", metavar="FILE",
                    help="after the samples, pull the last image once more with keel under py-spy "
                         "(all threads, collapsed stacks in FILE; `pip install py-spy` into the "
                         "venv) or, without py-spy, cProfile (main thread only, pstats in FILE)")
    ap.add_argument("--tmpdir", default="/var/tmp",
                    help="where the work dir goes (registry storage, images, destinations; default "
                         "/var/tmp: a disk, not a tmpfs)")
    args = ap.parse_args(argv)
    images = parse_images(args.images)
    for p, what in ((args.keel, "keel"), (args.skopeo, "skopeo")):
        if not os.access(p, os.X_OK):
            sys.exit(f"pull.py: {what} not found at {p}")
    sys.path.insert(0, os.path.join(REPO, "tests", "image"))
    sys.path.insert(0, os.path.join(REPO, "src"))
    from registry_fixtures import REGISTRY_BIN, Registry

    if not os.path.exists(REGISTRY_BIN):
        sys.exit("pull.py: docker-registry not installed (apt-get install docker-registry)")

    work = tempfile.mkdtemp(prefix="keel-bench-pull-", dir=args.tmpdir)
    registry = None
    tools = ("keel", "skopeo")
    results = {}
    failures = []
    profile_summary = None
    try:
        env = _tool_env(work)
        keel_env = dict(env)
        if not args.no_pyc_cache:
            # an installed keel has its bytecode compiled; this checkout (pip -e) may run with
            # PYTHONDONTWRITEBYTECODE=1 and would compile every module of keel on every run
            keel_env.pop("PYTHONDONTWRITEBYTECODE", None)
            keel_env["PYTHONPYCACHEPREFIX"] = os.path.join(work, "pycache")
            subprocess.run([sys.executable, "-c",
                            "import keel.cli.main, keel.cli.images, keel.image.registry, "
                            "keel.image.store, keel.image.registries, keel.image.auth, keel.image.transport, tomllib"],
                           check=False, env=keel_env)
        registry = Registry(os.path.join(work, "registry"))
        infos = {}
        for kind in images:
            info = build_image(kind, os.path.join(work, "images", kind))
            ref = f"{registry.host}/bench/{kind}:latest"
            t0 = time.perf_counter()
            subprocess.run([args.skopeo, "copy", "--quiet", "--dest-tls-verify=false",
                            f"oci:{info['path']}:latest", f"docker://{ref}"],
                           check=True, env=env, stdin=subprocess.DEVNULL)
            info["push_seconds"] = time.perf_counter() - t0
            info["ref"] = ref
            infos[kind] = info
            print(f"{kind}: {len(info['layers'])} layer(s), {info['uncompressed_bytes'] / 1e6:.1f} MB "
                  f"uncompressed, {info['compressed_bytes'] / 1e6:.1f} MB compressed; built in "
                  f"{info['build_seconds']:.1f} s, pushed in {info['push_seconds']:.1f} s; manifest "
                  f"{info['manifest_digest'][:19]}", flush=True)

        dests = os.path.join(work, "dest")
        os.makedirs(dests)
        log = os.path.join(work, "last.log")
        for kind in images:
            ref = infos[kind]["ref"]
            samples = {t: [] for t in tools}
            for i in range(args.warmup + args.iterations):
                k = i % len(tools)
                for tool in tools[k:] + tools[:k]:      # rotate who goes first
                    dest = tempfile.mkdtemp(prefix=f"{kind}-{tool}-{i}-", dir=dests)
                    if tool == "keel":
                        argv = [args.keel, "--root", os.path.join(dest, "root"), "pull",
                                "--tls-verify=false", "-q", ref]
                    else:
                        argv = [args.skopeo, "copy", "--quiet", "--src-tls-verify=false",
                                f"docker://{ref}", f"oci:{os.path.join(dest, 'layout')}:latest"]
                    os.sync()                   # untimed: no sample pays for another's dirty pages
                    elapsed, rc = run_logged(argv, log, keel_env if tool == "keel" else env)
                    if rc != 0:
                        failures.append(f"{kind} {tool} iteration {i}: exit {rc}: {' '.join(argv)}\n"
                                        f"    {tail(log)}")
                    elif i >= args.warmup:
                        samples[tool].append(elapsed)
                    shutil.rmtree(dest, ignore_errors=True)
                if failures:
                    break
            results[kind] = {"samples": samples,
                             "summary": summarize(samples, infos[kind]["compressed_bytes"], list(tools))}
            if failures:
                break
        if args.profile and not failures:
            profile_summary = profile_keel_pull(args, infos[images[-1]]["ref"], dests, keel_env)
    finally:
        if registry is not None:
            registry.stop()                        # by pid (SIGTERM, then SIGKILL)
        shutil.rmtree(work, ignore_errors=True)

    print()
    print(f"pull from a local docker-registry (127.0.0.1, plain http), {args.iterations} samples per "
          f"tool (+{args.warmup} warm-up), interleaved round-robin; wall seconds per pull")
    print(f"machine: {machine_note()}")
    print(f"versions: {keel_version()} ({args.keel}); {version_of([args.skopeo, '--version'])}; "
          f"{version_of([REGISTRY_BIN, '--version'])}")
    for kind in results:
        info = infos[kind]
        summary = results[kind]["summary"]
        print()
        print_table(f"{kind}: {len(info['layers'])} layer(s), {info['compressed_bytes'] / 1e6:.1f} MB "
                    f"compressed ({info['uncompressed_bytes'] / 1e6:.1f} MB uncompressed)",
                    summary, list(tools), "compressed bytes (layers + config + manifest)")
        if "keel" in summary and "skopeo" in summary:
            k, s = summary["keel"], summary["skopeo"]
            print(f"  keel/skopeo: median {k['median'] / s['median']:.2f}x   "
                  f"min {k['min'] / s['min']:.2f}x")
    if profile_summary:
        print()
        print(profile_summary)
    for f in failures:
        print("FAILED " + f)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"iterations": args.iterations, "warmup": args.warmup,
                       "images": {k: {kk: v for kk, v in infos[k].items() if kk != "path"}
                                  for k in results},
                       "results": results, "failures": failures}, f, indent=1)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
