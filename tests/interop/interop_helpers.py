"""Host-level helpers for the interop tests: images, mounts, cgroups, processes, ptys.

Everything here works on names and paths that the fixtures chose themselves (a unique
`keel-test-<hex>` name, a private temp dir), so clean-up never touches anything else on the host:
processes are found by our unique path in their command line or our unique cgroup in their
/proc/PID/cgroup, and killed by pid.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import io
import json
import os
import pty
import select
import shutil
import signal
import subprocess
import tarfile
import time
import uuid

from keel.testing.rootfs import make_rootfs

NAME_PREFIX = "keel-test-"
IMAGE_NAME_PODMAN = "localhost/keel-busybox:latest"
IMAGE_NAME_CONTAINERD = "docker.io/keel/busybox:latest"
IMAGE_CMD = ["/bin/sh"]
IMAGE_ENV = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]


CAPABILITIES = [
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER",
    "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE", "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE", "CAP_SYS_RESOURCE", "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE", "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
]


def cap_mask(names):
    """The /proc/PID/status bit mask of a list of capability names (as in config.json)."""
    return sum(1 << CAPABILITIES.index(n) for n in names)


def unique_name(prefix=NAME_PREFIX):
    return prefix + uuid.uuid4().hex[:12]


# --------------------------------------------------------------------------------------------
# commands


DEFAULT_TIMEOUT = float(os.environ.get("KEEL_INTEROP_TIMEOUT", "30"))


def run(argv, *, timeout=None, check=False, env=None, input=None):
    """subprocess.run with text output captured, a timeout (default KEEL_INTEROP_TIMEOUT, 30 s),
    and an error that shows everything. The command runs in its own session; on timeout the whole
    process group is SIGKILLed (e.g. podman and a runtime call it made that hangs)."""
    timeout = DEFAULT_TIMEOUT if timeout is None else timeout
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, start_new_session=True,
                            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL)
    try:
        out, err = proc.communicate(input, timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:  # a process outside the group (a daemonized conmon or shim) may hold our pipes
            out, err = proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            proc.stdout.close()
            proc.stderr.close()
            proc.wait()
            out, err = "(unread)", "(unread: the pipes stayed open)"
        raise AssertionError(f"timed out after {timeout}s: {' '.join(map(str, argv))}\n"
                             f"stdout: {out!r}\nstderr: {err!r}") from None
    res = subprocess.CompletedProcess(argv, proc.returncode, out, err)
    if check and res.returncode != 0:
        raise AssertionError(f"exit {res.returncode}: {' '.join(map(str, argv))}\n"
                             f"stdout: {res.stdout}\nstderr: {res.stderr}")
    return res


def wait_for(predicate, timeout=10.0, interval=0.05):
    """Poll `predicate` until it returns a truthy value or `timeout` passes; return its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


def run_in_pty(argv, send, *, env=None, timeout=30, ready=b"# "):
    """Run `argv` with stdin/stdout/stderr on a new pty (its controlling terminal), as a user at a
    terminal would. Once `ready` appears in the output (or after 5 s), write `send`.
    Returns (output bytes, exit code)."""
    master, slave = pty.openpty()

    def _ctty():
        os.setsid()
        import fcntl
        import termios
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env,
                            preexec_fn=_ctty, close_fds=True)
    os.close(slave)
    out = b""
    sent = False
    start = time.monotonic()
    try:
        while time.monotonic() - start < timeout:
            if not sent and (ready in out or time.monotonic() - start > 5):
                os.write(master, send)
                sent = True
            r, _, _ = select.select([master], [], [], 0.1)
            if r:
                try:
                    data = os.read(master, 4096)
                except OSError as e:  # EIO: every slave fd is closed
                    if e.errno != errno.EIO:
                        raise
                    break
                if not data:
                    break
                out += data
        else:
            proc.kill()
            raise AssertionError(f"pty session timed out after {timeout}s; output so far: {out!r}")
        return out, proc.wait(timeout=timeout)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()


_ARGV_LOGGER = r"""#!/bin/sh
# logs the argv a peer passes to the OCI runtime (one JSON object a line), then runs the real one
{
  printf '{"t": %s, "parent": "%s", "argv": [' "$(date +%s.%N)" "$(cat /proc/$PPID/comm 2>/dev/null)"
  sep=''
  for a in "$0" "$@"; do
    printf '%s"%s"' "$sep" "$(printf '%s' "$a" | sed 's/\\/\\\\/g; s/"/\\"/g' | tr '\n' ' ')"
    sep=', '
  done
  printf ']}\n'
} >> '@LOGFILE@'
exec '@REAL@' "$@"
"""


def argv_logging_wrapper(directory, real_binary, logfile):
    """Write an executable sh script that appends its argv, as one JSON object a line
    ({"t", "parent", "argv"}), to `logfile` and execs `real_binary`. Returns the script's path."""
    path = os.path.join(directory, os.path.basename(real_binary) + "-argv-logger")
    with open(path, "w") as f:
        f.write(_ARGV_LOGGER.replace("@LOGFILE@", logfile).replace("@REAL@", real_binary))
    os.chmod(path, 0o755)
    return path


def read_argv_log(logfile):
    with open(logfile) as f:
        return [json.loads(line) for line in f if line.strip()]


# --------------------------------------------------------------------------------------------
# images


def _tar_add_tree(tar, root):
    """Add `root`'s contents to `tar` deterministically: sorted, root-owned, mtime 0."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in [None] + sorted(dirnames + filenames):
            if name is None:
                if dirpath == root:
                    continue
                full = dirpath
            elif name in dirnames:
                continue  # added when walked into
            else:
                full = os.path.join(dirpath, name)
            arc = os.path.relpath(full, root)
            info = tar.gettarinfo(full, arcname=arc)
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            info.mtime = 0
            if info.isfile():
                with open(full, "rb") as fh:
                    tar.addfile(info, fh)
            else:
                tar.addfile(info)


def build_rootfs_tar(workdir):
    """make_rootfs into workdir/rootfs and tar it up (uncompressed); returns the tar's path."""
    rootfs = make_rootfs(os.path.join(workdir, "rootfs"))
    path = os.path.join(workdir, "rootfs.tar")
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        _tar_add_tree(tar, rootfs)
    return path


def build_oci_archive(rootfs_tar, path, name=IMAGE_NAME_CONTAINERD, cmd=IMAGE_CMD):
    """Write an oci-archive (a tar of an OCI image layout, one uncompressed layer) at `path`.

    The manifest descriptor carries `io.containerd.image.name` (what `ctr images import` names the
    image) and `org.opencontainers.image.ref.name` (the tag, as the image-layout spec says)."""
    blobs = {}

    def add(data):
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        blobs[digest] = data
        return {"digest": digest, "size": len(data)}

    with open(rootfs_tar, "rb") as f:
        layer = f.read()
    layer_desc = add(layer)
    config = {
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": list(cmd), "Env": list(IMAGE_ENV), "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [layer_desc["digest"]]},
        "history": [{"created_by": "keel tests: make_rootfs (busybox-static)"}],
    }
    config_desc = add(json.dumps(config, sort_keys=True).encode())
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config_desc},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", **layer_desc}],
    }
    manifest_desc = add(json.dumps(manifest, sort_keys=True).encode())
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json", **manifest_desc,
            "platform": {"architecture": "amd64", "os": "linux"},
            "annotations": {"io.containerd.image.name": name,
                            "org.opencontainers.image.ref.name": name.rsplit(":", 1)[-1]},
        }],
    }

    def member(tar, arcname, data=None):
        info = tarfile.TarInfo(arcname)
        info.mtime = 0
        if data is None:
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
            tar.addfile(info)
        else:
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))

    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        member(tar, "oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode())
        member(tar, "index.json", json.dumps(index, sort_keys=True).encode())
        member(tar, "blobs")
        member(tar, "blobs/sha256")
        for digest, data in blobs.items():
            member(tar, "blobs/sha256/" + digest.split(":", 1)[1], data)
    return path


# --------------------------------------------------------------------------------------------
# mounts

def _unescape(field):
    # mountinfo escapes space, tab, newline and backslash as \ooo
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and len(field[i + 1:i + 4]) == 3 and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mountinfo():
    """[(mount point, fstype, source)] of this mount namespace."""
    result = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields = left.split()
            rfields = right.split()
            result.append((_unescape(fields[4]), rfields[0], _unescape(rfields[1])))
    return result


def mounts_under(path):
    path = os.path.realpath(path).rstrip("/")
    return [mp for mp, _, _ in mountinfo() if mp == path or mp.startswith(path + "/")]


def mounts_containing(text):
    return [mp for mp, _, _ in mountinfo() if text in mp]


_libc = ctypes.CDLL(None, use_errno=True)
MNT_DETACH = 2


def umount_under(path):
    """Lazily unmount everything mounted at or below `path`, deepest first; returns what it did."""
    done = []
    for _ in range(5):  # stacked mounts need several passes
        mps = sorted(set(mounts_under(path)), key=lambda p: (p.count("/"), p), reverse=True)
        if not mps:
            break
        for mp in mps:
            if _libc.umount2(mp.encode(), MNT_DETACH) == 0:
                done.append(mp)
    return done


# --------------------------------------------------------------------------------------------
# cgroups

def cgroup_roots():
    """Mount points of every cgroup v1 hierarchy and cgroup2 in this mount namespace."""
    return sorted({mp for mp, fstype, _ in mountinfo() if fstype in ("cgroup", "cgroup2")})


def cgroup_dirs(relpath):
    """Existing directories for cgroup `relpath` (e.g. "/keel-test-abc") in every hierarchy."""
    rel = relpath.strip("/")
    return [os.path.join(r, rel) for r in cgroup_roots() if os.path.isdir(os.path.join(r, rel))]


def cgroup_dirs_named(parent, text):
    """Cgroup directories below `parent` (in any hierarchy) whose name contains `text`."""
    found = []
    for top in cgroup_dirs(parent):
        for dirpath, dirnames, _ in os.walk(top):
            found.extend(os.path.join(dirpath, d) for d in dirnames if text in d)
    return found


def _cgroup_procs(d):
    try:
        with open(os.path.join(d, "cgroup.procs")) as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def remove_cgroup(relpath, timeout=5.0):
    """Remove cgroup `relpath` and everything below it in every hierarchy, SIGKILLing any process
    still inside (these cgroups are ours by their unique name). Returns the dirs it could not
    remove."""
    deadline = time.monotonic() + timeout
    left = []
    while True:
        left = []
        for top in cgroup_dirs(relpath):
            for dirpath, _, _ in sorted(os.walk(top), key=lambda t: t[0].count("/"), reverse=True):
                for pid in _cgroup_procs(dirpath):
                    _kill(pid, signal.SIGKILL)
                try:
                    os.rmdir(dirpath)
                except FileNotFoundError:
                    pass
                except OSError:
                    left.append(dirpath)
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.05)


# --------------------------------------------------------------------------------------------
# processes

def _kill(pid, sig):
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _proc_read(pid, name):
    try:
        with open(f"/proc/{pid}/{name}", "rb") as f:
            return f.read()
    except OSError:
        return b""


def pid_alive(pid):
    """True while `pid` exists and is not a zombie."""
    stat = _proc_read(pid, "stat")
    if not stat:
        return False
    state = stat.rsplit(b")", 1)[-1].split()[0]
    return state not in (b"Z", b"X")


def _pids():
    return [int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) != os.getpid()]


def pids_with_cmdline(text):
    """Live processes whose command line contains `text` (our unique dir or container id)."""
    t = text.encode()
    return [p for p in _pids() if t in _proc_read(p, "cmdline") and pid_alive(p)]


def pids_in_cgroup(text):
    """Live processes whose /proc/PID/cgroup mentions `text` (our unique cgroup name or id)."""
    t = text.encode()
    return [p for p in _pids() if t in _proc_read(p, "cgroup") and pid_alive(p)]


def describe_pid(pid):
    """ "comm: cmdline (cgroup)" of a process, for error messages."""
    comm = _proc_read(pid, "comm").decode(errors="replace").strip()
    cmd = _proc_read(pid, "cmdline").replace(b"\0", b" ").decode(errors="replace").strip()
    return f"{comm}: {cmd[:300]} (memory cgroup {process_cgroup(pid) or '?'})"


def kill_and_reap(pids, timeout=5.0):
    """SIGKILL each pid (found by our unique names) and wait until they are gone."""
    for p in pids:
        _kill(p, signal.SIGKILL)
    wait_for(lambda: not any(pid_alive(p) for p in pids), timeout)
    for p in pids:  # our own children must be reaped
        try:
            os.waitpid(p, os.WNOHANG)
        except ChildProcessError:
            pass
    return [p for p in pids if pid_alive(p)]


def process_cgroup(pid, controller="memory"):
    """The cgroup path of `pid` in `controller`'s hierarchy ("" if unknown)."""
    for line in _proc_read(pid, "cgroup").decode().splitlines():
        _, controllers, path = line.split(":", 2)
        if controller in controllers.split(","):
            return path
    return ""


def runtime_state(runtime, container_id, root=None):
    """The runtime's `state` of `container_id` (a dict, or the raw output) if the runtime still
    knows it; None once it reports the container does not exist (runc: exit 1)."""
    argv = [runtime] + (["--root", root] if root else []) + ["state", container_id]
    res = run(argv, timeout=30)
    if res.returncode != 0:
        return None
    try:
        return json.loads(res.stdout)
    except ValueError:
        return res.stdout or "(empty output, exit 0)"


def rmtree(path):
    """Unmount everything below `path`, then remove it."""
    umount_under(path)
    shutil.rmtree(path, ignore_errors=True)
