#!/usr/bin/env python3
"""Benchmark: create + start + wait + delete of a busybox `/bin/true` bundle, keel-runtime vs
runc vs crun, interleaved round-robin in one run.

    sudo .venv/bin/python bench/runtime_start.py [--iterations 30] [--runtimes keel-runtime,runc,crun]

One sample = the wall time from the moment `create` is spawned until `delete` returns:
    <rt> --root R create --bundle B --pid-file P ID
    <rt> --root R start ID
    wait until the container's init (pid from P) has exited   (pidfd, no runtime call)
    <rt> --root R delete ID
Every runtime is driven by an identical worker process (this script with --worker); crun's worker
lives in a private mount namespace without /sys/fs/cgroup/unified, made once before the first
sample (see bench/README.md for why that is the fair way). Needs root.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
CGROUP_UNIFIED = "/sys/fs/cgroup/unified"
RUNTIMES = ("keel-runtime", "runc", "crun")


def default_paths():
    venv_keel = os.path.join(os.path.dirname(sys.executable), "keel-runtime")
    return {
        "keel-runtime": venv_keel if os.path.exists(venv_keel) else shutil.which("keel-runtime"),
        "runc": shutil.which("runc") or ("/usr/sbin/runc" if os.path.exists("/usr/sbin/runc") else None),
        "crun": shutil.which("crun"),
    }


# ---------------------------------------------------------------------------------------------
# worker: runs samples for one runtime on request (one JSON line in, one JSON line out)


def _run(argv, log):
    log.seek(0)
    log.truncate()
    # stdout/stderr go to a file, never a pipe: `create` hands its stdio to the container's init,
    # which would keep a pipe open until it exits
    return subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log).returncode


def _wait_exit(pid, timeout):
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    except OSError:  # no pidfd (old kernel): poll /proc
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with open(f"/proc/{pid}/stat", "rb") as f:
                    if f.read().rsplit(b")", 1)[-1].split()[0] in (b"Z", b"X"):
                        return True
            except OSError:
                return True
            time.sleep(0.0005)
        return False
    try:
        return bool(select.select([fd], [], [], timeout)[0])
    finally:
        os.close(fd)


def _reap():
    """Reap orphaned container inits reparented to us (we are a child subreaper, like conmon and
    the containerd shim)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def one_sample(runtime, root, bundle, cid, log):
    pidfile = os.path.join(root, cid + ".pid")
    g = [runtime, "--root", root]
    t0 = time.perf_counter()
    rc = _run(g + ["create", "--bundle", bundle, "--pid-file", pidfile, cid], log)
    if rc != 0:
        return {"ok": False, "step": "create", "rc": rc}
    try:
        with open(pidfile) as f:
            pid = int(f.read().strip())
    except (OSError, ValueError) as e:
        _run(g + ["delete", "--force", cid], log)
        return {"ok": False, "step": "create", "rc": 0, "error": f"pid file {pidfile}: {e}"}
    rc = _run(g + ["start", cid], log)
    if rc != 0:
        _run(g + ["delete", "--force", cid], open(os.devnull, "w"))
        return {"ok": False, "step": "start", "rc": rc}
    if not _wait_exit(pid, 10):
        _run(g + ["delete", "--force", cid], open(os.devnull, "w"))
        return {"ok": False, "step": "wait", "rc": 0, "error": f"init {pid} still running after 10 s"}
    _reap()
    rc = _run(g + ["delete", cid], log)
    elapsed = time.perf_counter() - t0
    if rc != 0:
        _run(g + ["delete", "--force", cid], open(os.devnull, "w"))
        return {"ok": False, "step": "delete", "rc": rc}
    try:
        os.unlink(pidfile)
    except OSError:
        pass
    return {"ok": True, "elapsed": elapsed}


def worker(runtime, root, bundle):
    import ctypes
    PR_SET_CHILD_SUBREAPER = 36
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    os.makedirs(root, exist_ok=True)
    log_path = os.path.join(root, "..", "last-command.log")
    with open(log_path, "w+") as log:
        print(json.dumps({"ready": True, "unified_mounted": os.path.ismount(CGROUP_UNIFIED)}), flush=True)
        for line in sys.stdin:
            req = json.loads(line)
            res = one_sample(runtime, root, bundle, req["id"], log)
            if not res["ok"]:
                log.seek(0)
                res["output"] = log.read()[-2000:]
            print(json.dumps(res), flush=True)


# ---------------------------------------------------------------------------------------------
# driver


class Worker:
    def __init__(self, name, runtime, root, bundle, private_cgroup_ns):
        argv = [sys.executable, os.path.abspath(__file__), "--worker", runtime, root, bundle]
        if private_cgroup_ns:
            # crun 1.8 refuses the hybrid layout: give it a mount namespace without cgroup2, once
            argv = ["unshare", "-m", "--propagation", "private", "sh", "-c",
                    f'umount {CGROUP_UNIFIED} && exec "$0" "$@"'] + argv
        self.name = name
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        hello = self.proc.stdout.readline()
        if not hello:
            raise RuntimeError(f"{name}: worker did not start (exit {self.proc.wait()})")
        self.hello = json.loads(hello)

    def sample(self, cid):
        self.proc.stdin.write(json.dumps({"id": cid}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            return {"ok": False, "step": "worker", "rc": self.proc.wait()}
        return json.loads(line)

    def close(self):
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def make_bundle(path, cgroups_path, runc):
    sys.path.insert(0, os.path.join(os.path.dirname(HERE), "src"))
    from keel.testing.rootfs import make_rootfs

    os.makedirs(path)
    make_rootfs(os.path.join(path, "rootfs"))
    subprocess.run([runc, "spec", "--bundle", path], check=True)
    cfg_path = os.path.join(path, "config.json")
    with open(cfg_path) as f:
        cfg = json.load(f)
    cfg["process"]["terminal"] = False
    cfg["process"]["args"] = ["/bin/true"]
    cfg["linux"]["cgroupsPath"] = cgroups_path
    with open(cfg_path, "w") as f:
        json.dump(cfg, f, indent=1)
    return cfg


def version_of(name, path):
    try:
        res = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30)
    except OSError as e:
        return f"? ({e})"
    first = (res.stdout or res.stderr).strip().splitlines()
    text = first[0] if first else ""
    if name == "keel-runtime":
        try:
            from importlib.metadata import version
            text = (text + f" (keel package {version('keel')})").strip()
        except Exception:
            pass
    return text if res.returncode == 0 else f"{text} [--version exit {res.returncode}]".strip()


def percentile(values, p):
    """Nearest-rank percentile (p in 0..100) of a non-empty list."""
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(-(-p * len(s) // 100)) - 1))
    return s[k]


def cgroup_roots():
    roots = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            if right.split()[0] in ("cgroup", "cgroup2"):
                roots.append(left.split()[4])
    return roots


def remove_cgroups(rel):
    for r in cgroup_roots():
        top = os.path.join(r, rel.strip("/"))
        if not os.path.isdir(top):
            continue
        for dirpath, _, _ in sorted(os.walk(top), key=lambda t: t[0].count("/"), reverse=True):
            try:
                os.rmdir(dirpath)
            except OSError as e:
                print(f"note: could not remove cgroup {dirpath}: {e}", file=sys.stderr)


def wrapper_cost(n=20):
    """Median cost of the per-command crun wrapper alone (unshare + sh + umount + exec true)."""
    argv = ["unshare", "-m", "--propagation", "private", "sh", "-c",
            f'umount {CGROUP_UNIFIED} && exec "$0" "$@"', "/bin/true"]
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        subprocess.run(argv, check=True)
        times.append(time.perf_counter() - t0)
    t_true = []
    for _ in range(n):
        t0 = time.perf_counter()
        subprocess.run(["/bin/true"], check=True)
        t_true.append(time.perf_counter() - t0)
    return statistics.median(times), statistics.median(t_true)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--iterations", "-n", type=int, default=30, help="samples per runtime (default 30)")
    ap.add_argument("--warmup", type=int, default=2, help="unrecorded samples per runtime first (default 2)")
    ap.add_argument("--runtimes", default=",".join(RUNTIMES),
                    help="comma list of keel-runtime,runc,crun (default: all; missing ones are skipped)")
    for name in RUNTIMES:
        ap.add_argument(f"--{name}", dest=name.replace("-", "_"), metavar="PATH", help=f"path of {name}")
    ap.add_argument("--json", metavar="FILE", help="also write samples and summary as JSON")
    ap.add_argument("--wrapper-cost", action="store_true",
                    help="also measure what a per-command crun wrapper would have cost")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (bundles, roots, logs)")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        sys.exit("runtime_start.py: run as root (runtimes create cgroups and namespaces)")

    paths = default_paths()
    for name in RUNTIMES:
        given = getattr(args, name.replace("-", "_"))
        if given:
            paths[name] = given
    wanted = [r.strip() for r in args.runtimes.split(",") if r.strip()]
    unknown = [r for r in wanted if r not in RUNTIMES]
    if unknown:
        sys.exit(f"--runtimes: unknown {', '.join(unknown)} (known: {', '.join(RUNTIMES)})")
    notes = []
    chosen = []
    for name in wanted:
        p = paths.get(name)
        if not p or not os.access(p, os.X_OK):
            notes.append(f"{name}: skipped, not found" + (f" at {p}" if p else " on PATH"))
        else:
            chosen.append(name)
    if not chosen:
        sys.exit("no runtime to measure: " + "; ".join(notes))
    runc_for_spec = paths.get("runc")
    if not runc_for_spec:
        sys.exit("runc is needed to write the bundle's config.json (`runc spec`)")

    work = tempfile.mkdtemp(prefix="keel-bench-", dir="/tmp")
    cg_parent = "/keel-bench-" + uuid.uuid4().hex[:12]
    workers = {}
    samples = {n: [] for n in chosen}
    failures = {}
    try:
        for name in chosen:
            bundle = os.path.join(work, name, "bundle")
            make_bundle(bundle, f"{cg_parent}/{name}", runc_for_spec)
            try:
                workers[name] = Worker(name, paths[name], os.path.join(work, name, "root"), bundle,
                                       private_cgroup_ns=(name == "crun" and os.path.ismount(CGROUP_UNIFIED)))
            except RuntimeError as e:
                failures[name] = str(e)
        active = [n for n in chosen if n in workers]
        total = args.warmup + args.iterations
        for i in range(total):
            k = i % len(active) if active else 0
            order = active[k:] + active[:k]  # rotate who goes first
            for name in order:
                if name in failures:
                    continue
                res = workers[name].sample(f"bench-{name}-{i}")
                if not res["ok"]:
                    failures[name] = (f"iteration {i}: `{res['step']}` failed (exit {res.get('rc')})"
                                      f" {res.get('error', '')}\n    " +
                                      res.get("output", "").strip().replace("\n", "\n    "))
                elif i >= args.warmup:
                    samples[name].append(res["elapsed"])
    finally:
        for w in workers.values():
            w.close()
        remove_cgroups(cg_parent)
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    # ---- report ---------------------------------------------------------------------------
    print(f"create+start+wait+delete of busybox /bin/true, {args.iterations} samples per runtime "
          f"(+{args.warmup} warm-up), interleaved round-robin; ms")
    print()
    print("versions:")
    for name in chosen:
        print(f"  {name:13s} {version_of(name, paths[name])}  ({paths[name]})")
    print()
    summary = {}
    hdr = f"{'runtime':13s} {'n':>4s} {'median':>8s} {'p90':>8s} {'min':>8s} {'max':>8s}"
    print(hdr)
    print("-" * len(hdr))
    for name in chosen:
        s = samples[name]
        if not s:
            print(f"{name:13s} {0:4d} {'-':>8s} {'-':>8s} {'-':>8s} {'-':>8s}")
            continue
        summary[name] = {"n": len(s), "median": statistics.median(s), "p90": percentile(s, 90),
                         "min": min(s), "max": max(s)}
        m = summary[name]
        print(f"{name:13s} {m['n']:4d} {m['median']*1e3:8.1f} {m['p90']*1e3:8.1f} "
              f"{m['min']*1e3:8.1f} {m['max']*1e3:8.1f}")
    print()
    if "keel-runtime" in summary:
        for other in ("runc", "crun"):
            if other in summary:
                k, o = summary["keel-runtime"], summary[other]
                print(f"keel/{other}: median {k['median']/o['median']:.2f}x   p90 {k['p90']/o['p90']:.2f}x")
    else:
        print("keel/runc, keel/crun: n/a (no keel-runtime samples)")
    if "crun" in workers:
        print(f"\ncrun ran in a private mount namespace without {CGROUP_UNIFIED} "
              f"(made once, before the first sample; its cost is in no sample)")
    if args.wrapper_cost:
        w, t = wrapper_cost()
        print(f"a per-command wrapper (unshare+sh+umount+exec) would add ~{(w - t)*1e3:.1f} ms per "
              f"runtime command (median {w*1e3:.1f} ms vs {t*1e3:.1f} ms for /bin/true alone), "
              f"x3-4 commands a sample")
    for n in notes:
        print("note: " + n)
    for name, why in failures.items():
        print(f"FAILED {name}: {why}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"iterations": args.iterations, "warmup": args.warmup,
                       "versions": {n: version_of(n, paths[n]) for n in chosen},
                       "samples": samples, "summary": summary, "failures": failures, "notes": notes},
                      f, indent=1)
    return 1 if failures else 0


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "--worker":
        worker(*sys.argv[2:5])
    else:
        sys.exit(main())
