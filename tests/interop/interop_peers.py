"""Real peers, fully isolated in temp dirs, driving any runc-compatible runtime binary.

`Podman`: podman + conmon with their own storage, run root, tmp dir, containers.conf,
storage.conf and registries.conf, cgroupfs under a unique cgroup parent, no network.

`Containerd` / `Ctr`: a private containerd daemon (own root, state, sockets, config) and a `ctr`
bound to one namespace and one runtime binary (io.containerd.runc.v2 shim, `--runc-binary`).

Nothing here writes the host's /etc/containers, /run/containers, /var/lib/containerd or the shared
/dev/shm/libpod_lock; podman still reads /etc/containers/policy.json (no flag or variable moves it
for `podman import`) and writes its blob-info cache in /var/lib/containers/cache (removed again if
we created it). What still lands outside the temp dirs,
and is cleaned up by name: cgroups (`/keel-test-<hex>/...`, containerd's `/<namespace>/<id>`),
containerd shim sockets (/run/containerd/s/<hash>). Podman passes no `--root` to the runtime, so
the runtime keeps podman's containers in its default root (runc: /run/runc) under their unique
64-hex ids; `leftovers()` asks the runtime itself (`<runtime> state <id>` must fail) that they are
gone.
"""

from __future__ import annotations

import json
import os
import time
import re
import signal
import subprocess
import tempfile

import interop_helpers as h

CONMON = "/usr/bin/conmon"
HOST_BLOB_CACHE_DIR = "/var/lib/containers/cache"


def _toml_str(s):
    return json.dumps(str(s))


# ============================================================================================
# podman


class Podman:
    """podman isolated in `workdir`, running containers with `runtime` (a path).

    Call it like the command: `podman("run", "--rm", podman.image, "echo", "ok")` returns a
    CompletedProcess (text). For `run` and `create` it adds `--cgroup-parent=/<name>` and
    `--network=none` unless the caller gave them, so every container's cgroup is under our unique
    parent and no netavark/CNI set-up happens.
    """

    def __init__(self, workdir, runtime, *, name=None, storage_driver=None):
        self.workdir = os.path.realpath(workdir)
        self.runtime = runtime
        self.name = name or h.unique_name()
        self.cgroup_parent = "/" + self.name
        self.image = h.IMAGE_NAME_PODMAN
        d = self.dir
        for sub in ("root", "runroot", "tmp", "volumes", "networks", "tmpdir", "conmon-tmp"):
            os.makedirs(d(sub), exist_ok=True)
        self.storage_driver = storage_driver or os.environ.get("KEEL_INTEROP_PODMAN_DRIVER") or "overlay"
        self._write_configs()
        self.env = dict(os.environ)
        self.env.update({
            "CONTAINERS_CONF": d("containers.conf"),
            "CONTAINERS_STORAGE_CONF": d("storage.conf"),
            "CONTAINERS_REGISTRIES_CONF": d("registries.conf"),
            # podman's big temporary files (image copies) go to $TMPDIR, default /var/tmp
            "TMPDIR": d("tmpdir"),
        })
        # c/image writes its blob-info cache to /var/lib/containers/cache whatever --root says
        # (podman 4.3, any image copy: import, load); remove it at the end if we created it
        self._host_cache_existed = os.path.exists(HOST_BLOB_CACHE_DIR)
        self.env.pop("CONTAINER_HOST", None)
        self.env.pop("CONTAINER_CONNECTION", None)
        self.base = [
            "podman", "--root", d("root"), "--runroot", d("runroot"), "--tmpdir", d("tmp"),
            "--storage-driver", self.storage_driver, "--runtime", runtime,
            "--cgroup-manager", "cgroupfs", "--events-backend", "file", "--conmon", CONMON,
            "--network-config-dir", d("networks"), "--volumepath", d("volumes"),
        ]

    def dir(self, *parts):
        return os.path.join(self.workdir, *parts)

    def _write_configs(self):
        d = self.dir
        with open(d("containers.conf"), "w") as f:
            f.write(f"""# written by keel's interop tests
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
log_driver = "k8s-file"
netns = "none"

[network]
network_config_dir = {_toml_str(d("networks"))}

[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = {_toml_str(d("events.log"))}
runtime = "runc"
conmon_path = [{_toml_str(CONMON)}]
# conmon's whole environment; TMPDIR puts its console sockets (conmon-term.XXXXXX, left behind
# when the runtime fails) in our temp dir instead of /tmp
conmon_env_vars = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", {_toml_str("TMPDIR=" + d("conmon-tmp"))}]
tmp_dir = {_toml_str(d("tmp"))}
volume_path = {_toml_str(d("volumes"))}
# file locks in tmp_dir/locks instead of the host-wide /dev/shm/libpod_lock
lock_type = "file"
""")
        with open(d("storage.conf"), "w") as f:
            f.write(f"""[storage]
driver = {_toml_str(self.storage_driver)}
graphroot = {_toml_str(d("root"))}
runroot = {_toml_str(d("runroot"))}
""")
        with open(d("registries.conf"), "w") as f:
            f.write("# no registry: nothing is pulled by the interop tests\n"
                    "unqualified-search-registries = []\n"
                    "short-name-mode = \"disabled\"\n")

    def argv(self, *args):
        args = [str(a) for a in args]
        if args and args[0] in ("run", "create"):
            extra = []
            if not any(a.startswith("--cgroup-parent") for a in args):
                extra.append("--cgroup-parent=" + self.cgroup_parent)
            if not any(a.startswith(("--network", "--net=")) or a == "--net" for a in args):
                extra.append("--network=none")
            args = [args[0]] + extra + args[1:]
        return self.base + args

    def __call__(self, *args, timeout=None, check=False, input=None):
        return h.run(self.argv(*args), timeout=timeout, check=check, env=self.env, input=input)

    def popen(self, *args, **kw):
        return subprocess.Popen(self.argv(*args), env=self.env, **kw)

    def import_image(self, rootfs_tar):
        self("import", "--change", "CMD=/bin/sh", rootfs_tar, self.image, check=True, timeout=120)

    def inspect(self, ctr):
        res = self("inspect", ctr, check=True)
        return json.loads(res.stdout)[0]

    def oci_config(self, cid):
        """The config.json podman wrote for container `cid` (full id)."""
        path = self.dir("root", f"{self.storage_driver}-containers", cid, "userdata", "config.json")
        with open(path) as f:
            return json.load(f)

    # ---- leftovers and clean-up -------------------------------------------------------------

    def leftovers(self, cid, pids=()):
        """What of container `cid` (full id) is still on the host: processes (given pids, conmon
        and anything naming the id, processes in its cgroup), mounts, cgroups, and the runtime's
        own record (`<runtime> state <id>` must fail). {} when clean."""
        found = {}
        procs = sorted(set([p for p in pids if p and h.pid_alive(p)]
                           + h.pids_with_cmdline(cid) + h.pids_in_cgroup(cid)))
        if procs:
            found["processes"] = {p: h.describe_pid(p) for p in procs}
        mounts = h.mounts_containing(cid)
        if mounts:
            found["mounts"] = mounts
        cgroups = h.cgroup_dirs_named(self.cgroup_parent, cid)
        if cgroups:
            found["cgroups"] = cgroups
        state = h.runtime_state(self.runtime, cid)
        if state is not None:
            found["runtime_state"] = state
        return found

    def wait_clean(self, cid, pids=(), timeout=10):
        """Wait (conmon and `podman container cleanup` finish asynchronously) until nothing of
        `cid` remains; return what remains at the end."""
        h.wait_for(lambda: not self.leftovers(cid, pids), timeout)
        return self.leftovers(cid, pids)

    def remove_all_containers(self):
        """`podman rm -af -t 0`; then kill by pid whatever of ours is still running.
        Returns {pid: description} of what had to be killed."""
        try:
            self("rm", "-af", "-t", "0", timeout=60)
        except AssertionError:
            pass
        # conmon runs podman's exit command (container cleanup) after the container died: give
        # the peer's own processes time to finish before calling anything a leftover.
        deadline = time.monotonic() + 15
        while True:
            stray = sorted(set(h.pids_in_cgroup(self.cgroup_parent + "/")
                               + h.pids_with_cmdline(self.workdir)))
            if not stray or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        described = {p: h.describe_pid(p) for p in stray}
        h.kill_and_reap(stray)
        return described

    def close(self):
        """Remove everything: containers, processes, mounts, cgroups, the workdir."""
        self.remove_all_containers()
        h.umount_under(self.workdir)
        h.remove_cgroup(self.cgroup_parent)
        h.rmtree(self.workdir)
        if not self._host_cache_existed:
            try:
                os.unlink(os.path.join(HOST_BLOB_CACHE_DIR, "blob-info-cache-v1.boltdb"))
                os.rmdir(HOST_BLOB_CACHE_DIR)
                os.rmdir(os.path.dirname(HOST_BLOB_CACHE_DIR))
            except OSError:
                pass


# ============================================================================================
# containerd


class Containerd:
    """A private containerd: own root, state, grpc/ttrpc/debug sockets, config, opt dir.

    The CRI plugin (and snapshotters that cannot work here) are disabled: the tests drive the
    runtime through the task service and the io.containerd.runc.v2 shim only."""

    def __init__(self, workdir):
        self.workdir = os.path.realpath(workdir)
        self.address = self.dir("containerd.sock")
        self.config = self.dir("config.toml")
        self.proc = None
        self.namespaces = []  # every namespace handed out (their cgroups are /<ns>/...)
        self._shim_sockets = set()
        self._run_containerd_existed = {p: os.path.exists(p) for p in (
            "/run/containerd", "/run/containerd/s", "/run/containerd/fifo", "/run/containerd/runc")}

    def dir(self, *parts):
        return os.path.join(self.workdir, *parts)

    def start(self, timeout=20):
        os.makedirs(self.workdir, exist_ok=True)
        with open(self.config, "w") as f:
            f.write(f"""# written by keel's interop tests
version = 2
root = {_toml_str(self.dir("root"))}
state = {_toml_str(self.dir("state"))}
temp = {_toml_str(self.dir("tmp"))}
oom_score = 0
disabled_plugins = [
  "io.containerd.grpc.v1.cri",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing",
]

[grpc]
  address = {_toml_str(self.address)}

[ttrpc]
  address = {_toml_str(self.address + ".ttrpc")}

[debug]
  address = {_toml_str(self.dir("debug.sock"))}
  level = "info"

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = {_toml_str(self.dir("opt"))}

# this machine refuses a negative oom_score_adj (no CAP_SYS_RESOURCE); only matters if the CRI
# plugin is enabled, kept so that the config stays valid if someone does
[plugins."io.containerd.grpc.v1.cri"]
  restrict_oom_score_adj = true
""")
        os.makedirs(self.dir("tmp"), exist_ok=True)
        self.log = open(self.dir("containerd.log"), "wb")
        self.proc = subprocess.Popen(["containerd", "--config", self.config], stdout=self.log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        ok = h.wait_for(lambda: self.proc.poll() is not None or (
            os.path.exists(self.address) and h.run(
                ["ctr", "--address", self.address, "version"], timeout=5).returncode == 0), timeout, 0.05)
        if not ok or self.proc.poll() is not None:
            raise AssertionError(f"containerd did not come up:\n{self.read_log()[-4000:]}")
        return self

    def read_log(self):
        try:
            with open(self.dir("containerd.log"), errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def ctr(self, runtime, namespace=None):
        ns = namespace or h.unique_name()
        self.namespaces.append(ns)
        return Ctr(self, runtime, ns)

    def remember_shim_sockets(self):
        """Each v2 shim writes its socket address into the bundle (`address`); record them so a
        shim we must kill does not leave its /run/containerd/s/<hash> behind."""
        base = self.dir("state", "io.containerd.runtime.v2.task")
        for dirpath, _, files in os.walk(base):
            if "address" in files:
                try:
                    with open(os.path.join(dirpath, "address")) as f:
                        addr = f.read().strip()
                except OSError:
                    continue
                if addr.startswith("unix://"):
                    self._shim_sockets.add(addr[len("unix://"):])

    def stop(self):
        """Stop the daemon (SIGTERM its pid, wait), kill our shims and their containers by pid,
        unmount, remove our cgroups, shim sockets and the workdir."""
        self.remember_shim_sockets()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        # shims outlive containerd by design; ours carry our socket path in their argv
        stray = h.pids_with_cmdline(self.workdir)
        for ns in self.namespaces:
            stray += h.pids_in_cgroup("/" + ns + "/")
        h.kill_and_reap(sorted(set(stray)))
        h.umount_under(self.workdir)
        for ns in self.namespaces:
            h.remove_cgroup("/" + ns)
        for sock in self._shim_sockets:
            try:
                os.unlink(sock)
            except OSError:
                pass
        # directories containerd's shims and ctr create in /run/containerd: remove them only if
        # they did not exist before us and are empty now
        for path in sorted(self._run_containerd_existed, key=len, reverse=True):
            if not self._run_containerd_existed[path]:
                try:
                    os.rmdir(path)
                except OSError:
                    pass
        if getattr(self, "log", None):
            self.log.close()
        h.rmtree(self.workdir)


class Ctr:
    """`ctr --address <ours> -n <namespace>` that runs containers with `runtime` through the
    io.containerd.runc.v2 shim: `--runc-binary <runtime> --runc-root <workdir>/runc`, FIFOs in the
    workdir. Cgroups: ctr's default, `/<namespace>/<id>`."""

    def __init__(self, daemon, runtime, namespace):
        self.daemon = daemon
        self.runtime = runtime
        self.namespace = namespace
        self.image = h.IMAGE_NAME_CONTAINERD
        self.runc_root = daemon.dir("runc-root")
        # the shim runs the runtime with --root <runc-root>/<namespace>
        self.runtime_root = os.path.join(self.runc_root, namespace)
        self.fifo_dir = daemon.dir("fifo")
        os.makedirs(self.fifo_dir, exist_ok=True)
        self.base = ["ctr", "--address", daemon.address, "--namespace", namespace]

    def argv(self, *args):
        return self.base + [str(a) for a in args]

    def __call__(self, *args, timeout=None, check=False, input=None):
        return h.run(self.argv(*args), timeout=timeout, check=check, input=input)

    def popen(self, *args, **kw):
        return subprocess.Popen(self.argv(*args), **kw)

    def run_args(self, container_id, *cmd, detach=False, rm=None, extra=()):
        mode = ["--detach"] if detach else (["--rm"] if rm is not False else [])
        return ["run", *mode, "--runc-binary", self.runtime, "--runc-root", self.runc_root,
                "--fifo-dir", self.fifo_dir, *extra, self.image, container_id, *cmd]

    def run(self, container_id, *cmd, detach=False, rm=None, extra=(), timeout=None, check=False):
        """`ctr run [--rm | --detach] --runc-binary RUNTIME ... IMAGE ID CMD...`"""
        return self(*self.run_args(container_id, *cmd, detach=detach, rm=rm, extra=extra),
                    timeout=timeout, check=check)

    def exec(self, container_id, *cmd, exec_id=None, timeout=None, check=False):
        exec_id = exec_id or h.unique_name("exec-")
        return self("tasks", "exec", "--exec-id", exec_id, "--fifo-dir", self.fifo_dir,
                    container_id, *cmd, timeout=timeout, check=check)

    def import_image(self, oci_archive):
        self("images", "import", oci_archive, check=True, timeout=120)

    def tasks(self):
        """{container id: (pid, status)} from `ctr tasks ls`."""
        out = self("tasks", "ls", check=True).stdout.splitlines()[1:]
        result = {}
        for line in out:
            parts = line.split()
            if len(parts) >= 3:
                result[parts[0]] = (int(parts[1]), parts[2])
        return result

    def task_status(self, container_id):
        return self.tasks().get(container_id, (0, None))[1]

    def delete_task(self, container_id, force=False):
        """`ctr tasks delete`; returns (CompletedProcess, exit status parsed from ctr's
        "exit with non-zero exit code N" warning, 0 when there is none)."""
        res = self("tasks", "delete", *(["--force"] if force else []), container_id)
        m = re.search(r"exit with non-zero exit code (\d+)", res.stderr)
        return res, int(m.group(1)) if m else 0

    # ---- leftovers and clean-up -------------------------------------------------------------

    def cgroup(self, container_id):
        return f"/{self.namespace}/{container_id}"

    def leftovers(self, container_id, pids=()):
        """What of `container_id` is still on the host: the given pids, its shim (argv names the
        id and our namespace), processes in its cgroup, its mounts, its cgroup dirs, and the
        runtime's own record (`<runtime> --root R state <id>` must fail). {} when clean."""
        found = {}
        shim = [p for p in h.pids_with_cmdline(self.namespace)
                if b"-id\0" + container_id.encode() + b"\0" in h._proc_read(p, "cmdline") + b"\0"]
        procs = sorted(set([p for p in pids if p and h.pid_alive(p)] + shim
                           + h.pids_in_cgroup(self.cgroup(container_id))))
        if procs:
            found["processes"] = {p: h.describe_pid(p) for p in procs}
        mounts = [m for m in h.mounts_containing(f"/{self.namespace}/{container_id}")]
        if mounts:
            found["mounts"] = mounts
        cgroups = h.cgroup_dirs(self.cgroup(container_id))
        if cgroups:
            found["cgroups"] = cgroups
        state = h.runtime_state(self.runtime, container_id, self.runtime_root)
        if state is not None:
            found["runtime_state"] = state
        return found

    def wait_clean(self, container_id, pids=(), timeout=10):
        h.wait_for(lambda: not self.leftovers(container_id, pids), timeout)
        return self.leftovers(container_id, pids)

    def cleanup(self):
        """Kill and delete every task, delete every container of our namespace; kill by pid
        whatever is left in our cgroups; remove our cgroups. Returns {pid: description} of what
        had to be killed by pid."""
        self.daemon.remember_shim_sockets()
        try:
            for cid in self.tasks():
                self("tasks", "kill", "--all", "--signal", "SIGKILL", cid, timeout=15)
            h.wait_for(lambda: all(s != "RUNNING" for _, s in self.tasks().values()), 5)
            for cid in self.tasks():
                self("tasks", "delete", "--force", cid, timeout=15)
            ids = self("containers", "ls", "--quiet", timeout=15).stdout.split()
            if ids:
                self("containers", "delete", *ids, timeout=15)
        except AssertionError:
            pass
        stray = sorted(set(h.pids_in_cgroup("/" + self.namespace + "/")
                           + h.pids_with_cmdline(self.runtime_root)))
        described = {p: h.describe_pid(p) for p in stray}
        h.kill_and_reap(stray)
        h.remove_cgroup("/" + self.namespace)
        return described


def make_workdir(prefix):
    """A private temp dir with a short path (unix socket paths must stay under 108 bytes)."""
    return tempfile.mkdtemp(prefix=prefix, dir="/tmp")
