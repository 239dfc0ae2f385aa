"""`keel run --rm --network none IMAGE true` against `podman run --rm --network none IMAGE true`.

The same busybox image (an oci-archive made offline by keel.testing.ociimage) is loaded into a
private keel store and a private, isolated podman store (tests/interop/interop_peers.Podman: own
root, runroot, containers.conf, cgroupfs under a unique parent, conmon). Both engines run it with
keel-runtime (keel's default) and with runc; the four configurations are interleaved round-robin,
the one that goes first rotating, and each sample is the wall time of the whole command.
Reported: median, p90, min per configuration, and keel/podman ratios of medians per runtime.

Then the idle memory per running container: N detached `sleep` containers per engine, and the
RSS and PSS (/proc/PID/smaps_rollup) of each container's conmon, plus anything else the engine
keeps running (neither has a daemon: the check is that nothing else is left).

    sudo .venv/bin/python bench/run.py                 # 20 samples per configuration
    sudo .venv/bin/python bench/run.py -n 50 --memory 10 --json out.json
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests", "interop"))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests", "engine"))

IMAGE = "localhost/bench-busybox:latest"
VENV_BIN = os.path.dirname(sys.executable)


def _runtime_path(name):
    if name == "keel-runtime":
        path = os.path.join(VENV_BIN, "keel-runtime")
        if os.access(path, os.X_OK):
            return path
    found = shutil.which(name)
    if not found:
        sys.exit(f"bench: {name} not found")
    return found


class KeelSide:
    def __init__(self, workdir, cgroup_parent, src=None, label="keel"):
        """src: run keel from that source tree instead (another checkout, to compare versions):
        through PYTHONPATH, which its conmon exit commands inherit too."""
        self.label = label
        self.root = os.path.join(workdir, f"{label}-root")
        self.runroot = os.path.join(workdir, f"{label}-run")
        self.env = dict(os.environ, KEEL_CGROUP_PARENT=cgroup_parent)
        self.keel = os.path.join(VENV_BIN, "keel")
        if src:
            self.env["PYTHONPATH"] = os.path.abspath(src)
            self.keel = os.path.join(workdir, f"{label}-launcher")
            with open(self.keel, "w") as f:
                f.write(f"#!{sys.executable}\nimport sys\nfrom keel.cli.main import main\nsys.exit(main())\n")
            os.chmod(self.keel, 0o755)

    def argv(self, *args):
        return [self.keel, "--root", self.root, "--runroot", self.runroot, *args]

    def __call__(self, *args, check=True):
        r = subprocess.run(self.argv(*args), capture_output=True, text=True, env=self.env,
                           stdin=subprocess.DEVNULL, timeout=120)
        if check and r.returncode != 0:
            raise RuntimeError(f"keel {' '.join(args)}: {r.stderr.strip()}")
        return r

    def run_argv(self, runtime):
        extra = [] if runtime == "keel-runtime" else ["--runtime", runtime]  # keel's default
        return self.argv("run", "--rm", "--network", "none", *extra, IMAGE, "true")

    def conmon_pid(self, cid):
        return json.loads(self("inspect", cid).stdout)[0]["State"]["ConmonPid"]


class PodmanSide:
    def __init__(self, workdir, runtime_path):
        from interop_peers import Podman

        self.p = Podman(workdir, runtime_path)
        self.env = self.p.env

    def __call__(self, *args, check=True):
        r = self.p(*args, timeout=120)
        if check and r.returncode != 0:
            raise RuntimeError(f"podman {' '.join(args)}: {r.stderr.strip()}")
        return r

    def run_argv(self, runtime):
        return self.p.argv("run", "--rm", "--network", "none", IMAGE, "true")

    def conmon_pid(self, cid):
        return json.loads(self("inspect", cid).stdout)[0]["State"]["ConmonPid"]

    def close(self):
        self.p.close()


def _sample(argv, env):
    t = time.perf_counter()
    r = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    dt = time.perf_counter() - t
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:1])} ... failed ({r.returncode}): {r.stderr.decode().strip()}")
    return dt


def _p90(xs):
    s = sorted(xs)
    return s[max(0, int(round(0.9 * len(s))) - 1)]


def _rollup(pid):
    out = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("Rss", "Pss"):
                out[k] = int(v.split()[0])
    return out


def measure_memory(side, n, label):
    ids = []
    try:
        for _ in range(n):
            r = side("run", "-d", "--network", "none", IMAGE, "sleep", "1000")
            ids.append(r.stdout.strip().splitlines()[-1])
        time.sleep(1.0)   # let every conmon reach its idle state
        rss, pss = [], []
        for cid in ids:
            m = _rollup(side.conmon_pid(cid))
            rss.append(m["Rss"])
            pss.append(m["Pss"])
        return {"engine": label, "containers": n, "conmon_rss_kb": statistics.mean(rss),
                "conmon_pss_kb": statistics.mean(pss)}
    finally:
        if ids:
            side("rm", "-f", *ids, check=False)


def _other_processes(marker):
    """Processes naming `marker` in their command line, other than conmon (the containers'
    own processes do not name it)."""
    import engine_helpers

    return [(pid, cmd[:120]) for pid, cmd in engine_helpers._procs_mentioning(marker)
            if not cmd.startswith("/usr/bin/conmon ")]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", "--iterations", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--runtimes", default="keel-runtime,runc")
    ap.add_argument("--memory", type=int, default=5, metavar="N", help="containers per engine for the memory figure (0: skip)")
    ap.add_argument("--json", metavar="FILE")
    ap.add_argument("--compare-src", metavar="DIR",
                    help="also time keel from this source tree (e.g. a checkout of an older commit)")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        sys.exit("bench: run as root")
    runtimes = [r for r in args.runtimes.split(",") if r]
    work = tempfile.mkdtemp(prefix="kb-")   # short: podman refuses a runroot over 50 characters
    cgroup_parent = f"/keel-bench-{uuid.uuid4().hex[:12]}"
    from keel.testing.ociimage import busybox_oci_archive

    archive = busybox_oci_archive(os.path.join(work, "busybox.tar"), IMAGE, cmd=("/bin/sh",))
    keel = KeelSide(work, cgroup_parent)
    other = KeelSide(work, cgroup_parent, args.compare_src, "other") if args.compare_src else None
    podmans = {}
    configs = []
    try:
        keel("load", "-i", archive)
        if other:
            other("load", "-i", archive)
        for rt in runtimes:
            path = _runtime_path(rt)
            pod = podmans[rt] = PodmanSide(os.path.join(work, f"p{len(podmans)}"), path)
            pod("load", "-i", archive)
            configs.append((f"keel/{rt}", keel.run_argv(rt if rt == "keel-runtime" else path), keel.env))
            configs.append((f"podman/{rt}", pod.run_argv(rt), pod.env))
            if other:
                configs.append((f"other/{rt}", other.run_argv(rt if rt == "keel-runtime" else path), other.env))
        times = {name: [] for name, _, _ in configs}
        for i in range(args.warmup + args.iterations):
            order = configs[i % len(configs):] + configs[:i % len(configs)]
            for name, cmd, env in order:
                dt = _sample(cmd, env)
                if i >= args.warmup:
                    times[name].append(dt)
        rows = {}
        print(f"{'configuration':24} {'median ms':>10} {'p90 ms':>8} {'min ms':>8}   (n={args.iterations})")
        for name, xs in times.items():
            rows[name] = {"median": statistics.median(xs) * 1e3, "p90": _p90(xs) * 1e3, "min": min(xs) * 1e3}
            print(f"{name:24} {rows[name]['median']:10.1f} {rows[name]['p90']:8.1f} {rows[name]['min']:8.1f}")
        ratios = {}
        for rt in runtimes:
            ratios[rt] = rows[f"keel/{rt}"]["median"] / rows[f"podman/{rt}"]["median"]
            print(f"keel/podman with {rt}: {ratios[rt]:.2f} (median)")
            if other:
                print(f"other/podman with {rt}: {rows[f'other/{rt}']['median'] / rows[f'podman/{rt}']['median']:.2f}"
                      f" (median; other: {args.compare_src})")
        memory = []
        if args.memory > 0:
            memory.append(measure_memory(keel, args.memory, "keel"))
            memory.append(measure_memory(podmans[runtimes[-1]], args.memory, "podman"))
            for m in memory:
                print(f"idle memory per container, {m['engine']}: conmon RSS {m['conmon_rss_kb']:.0f} kB, "
                      f"PSS {m['conmon_pss_kb']:.0f} kB (mean of {m['containers']})")
            others = _other_processes(keel.root)
            print(f"other processes keel keeps running: {len(others)}" + (f" {others}" if others else ""))
        versions = {"podman": podmans[runtimes[0]].p("--version").stdout.strip() if podmans else "",
                    "conmon": subprocess.run(["conmon", "--version"], capture_output=True, text=True).stdout.split("\n")[0]}
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"times_ms": rows, "ratios": ratios, "memory": memory, "versions": versions,
                           "iterations": args.iterations}, f, indent=2)
        return 0
    finally:
        for side in (keel, other) if other else (keel,):
            ids = side("ps", "-aq", check=False).stdout.split()
            if ids:
                side("rm", "-f", *ids, check=False)
        for pod in podmans.values():
            pod.close()
        for h in os.listdir("/sys/fs/cgroup"):
            d = os.path.join("/sys/fs/cgroup", h, cgroup_parent.lstrip("/"))
            if os.path.isdir(d):
                try:
                    os.rmdir(d)
                except OSError as e:
                    print(f"bench: cannot remove {d}: {e}", file=sys.stderr)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
