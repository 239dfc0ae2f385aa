"""Helpers for keel-runtime's functional tests: a bundle, the runtime as a subprocess, a
console socket, and the leak checks run after every test (see conftest.py)."""

import copy
import glob
import json
import os
import select
import socket
import subprocess
import sys
import tempfile
import time

from keel.runtime.state import valid_id


def runtime_argv():
    """keel-runtime as CI runs it: the launcher next to this interpreter, else the module.
    KEEL_RUNTIME_UNDER_TEST=/path/to/binary runs the suite against another build (or runc)."""
    other = os.environ.get("KEEL_RUNTIME_UNDER_TEST")
    if other:
        return [other]
    launcher = os.path.join(os.path.dirname(sys.executable), "keel-runtime")
    if os.path.exists(launcher):
        return [launcher]
    return [sys.executable, "-c", "import sys; from keel.runtime.cli import main; sys.exit(main())"]


class Result:
    __slots__ = ("argv", "rc", "out", "err")

    def __init__(self, argv, rc, out, err):
        self.argv, self.rc, self.out, self.err = argv, rc, out, err

    def __repr__(self):
        return f"Result(rc={self.rc}, out={self.out!r}, err={self.err!r}, argv={self.argv!r})"

    @property
    def err_lines(self):
        return [line for line in self.err.splitlines() if line.strip()]

    def json(self):
        return json.loads(self.out)


class Runtime:
    """keel-runtime with a private --root; remembers every container id it was asked to make."""

    def __init__(self, root):
        self.root = str(root)
        self.argv = runtime_argv()
        self.ids = []
        self.pids = {}  # pid -> start time (field 22 of /proc/<pid>/stat)
        self.popens = []

    def cmd(self, *args):
        return self.argv + ["--root", self.root] + [str(a) for a in args]

    def _note(self, args):
        args = [str(a) for a in args]
        if args and args[0] in ("create", "run") and len(args) > 1 and args[-1] not in self.ids \
                and valid_id(args[-1]):  # an invalid id cannot name anything (and ".." would match all)
            self.ids.append(args[-1])

    def __call__(self, *args, check=False, timeout=30, input=None, pass_fds=(), cwd=None, env=None,
                 fd_map=None):
        """Run keel-runtime; fd_map {n: fd} gives the child fd `fd` as number n (e.g. 3 for
        --preserve-fds) without touching the test process's own fd n."""
        self._note(args)
        argv = self.cmd(*args)
        preexec = None
        if fd_map:
            pass_fds = tuple(pass_fds) + tuple(fd_map)

            def preexec():
                for n, fd in fd_map.items():
                    os.dup2(fd, n)
        # Files, not pipes: `create` hands its stdio to the container, whose init outlives it.
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            p = subprocess.run(argv, input=input, stdin=None if input is not None else subprocess.DEVNULL,
                               stdout=out, stderr=err, text=True, timeout=timeout, pass_fds=pass_fds,
                               cwd=cwd, env=env, preexec_fn=preexec)
            out.seek(0)
            err.seek(0)
            r = Result(argv, p.returncode, out.read().decode(errors="replace"), err.read().decode(errors="replace"))
        if check:
            assert r.rc == 0, r
        if args and args[0] in ("create", "run") and r.rc == 0:
            self._remember_init(str(args[-1]))
        return r

    def ok(self, *args, **kw):
        return self(*args, check=True, **kw)

    def popen(self, *args, **kw):
        """Start keel-runtime in the background (the test waits for it; teardown checks it ended)."""
        self._note(args)
        kw.setdefault("stdin", subprocess.DEVNULL)
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stderr", subprocess.PIPE)
        p = subprocess.Popen(self.cmd(*args), **kw)
        self.popens.append(p)
        return p

    def _remember_init(self, cid):
        try:
            with open(os.path.join(self.root, cid, "state.json")) as f:
                data = json.load(f)
        except (OSError, ValueError):
            return
        if data.get("pid"):
            self.pids[data["pid"]] = data.get("initStartTime")

    def state(self, cid):
        r = self("state", cid)
        assert r.rc == 0, r
        return r.json()

    def wait_status(self, cid, status, timeout=10):
        deadline = time.monotonic() + timeout
        while True:
            r = self("state", cid)
            st = r.json() if r.rc == 0 else {"status": f"missing ({r.err.strip()})"}
            if st["status"] == status:
                return st
            assert time.monotonic() < deadline, f"{cid} stayed {st['status']}, wanted {status}"
            time.sleep(0.02)


class Bundle:
    """One OCI bundle (rootfs + config.json) with the id it is run under."""

    def __init__(self, runtime, path, cid, config, rootfs):
        self.runtime = runtime
        self.path = str(path)
        self.id = cid
        self.config = config
        self.rootfs = str(rootfs)

    @property
    def process(self):
        return self.config["process"]

    @property
    def linux(self):
        return self.config["linux"]

    def args(self, *args):
        self.process["args"] = [str(a) for a in args]
        return self

    def sh(self, script):
        return self.args("sh", "-c", script)

    def save(self):
        with open(os.path.join(self.path, "config.json"), "w") as f:
            json.dump(self.config, f, indent=1)
        return self

    def mount(self, destination, type="bind", source=None, options=None):
        m = {"destination": destination, "type": type}
        if source is not None:
            m["source"] = str(source)
        if options is not None:
            m["options"] = list(options)
        self.config.setdefault("mounts", []).append(m)
        return self

    def drop_mount(self, destination):
        self.config["mounts"] = [m for m in self.config.get("mounts") or () if m["destination"] != destination]
        return self

    def namespaces(self):
        return {ns["type"]: ns for ns in self.linux.get("namespaces") or ()}

    def set_namespace(self, kind, path=None, remove=False):
        nss = [ns for ns in self.linux.get("namespaces") or () if ns["type"] != kind]
        if not remove:
            nss.append({"type": kind, **({"path": str(path)} if path else {})})
        self.linux["namespaces"] = nss
        return self

    def rootfs_path(self, rel):
        return os.path.join(self.rootfs, rel.lstrip("/"))

    def write_rootfs_file(self, rel, content, mode=0o644):
        """Write a file in the rootfs; files are hard links into the shared base: unlink first."""
        path = self.rootfs_path(rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if os.path.lexists(path):
            os.unlink(path)
        with open(path, "w") as f:
            f.write(content)
        os.chmod(path, mode)
        return path

    # -- lifecycle through the runtime, saving the config first
    def run(self, *flags, **kw):
        self.save()
        return self.runtime("run", "--bundle", self.path, *flags, self.id, **kw)

    def run_ok(self, *flags, **kw):
        r = self.run(*flags, **kw)
        assert r.rc == 0, r
        return r

    def create(self, *flags, **kw):
        self.save()
        return self.runtime("create", "--bundle", self.path, *flags, self.id, **kw)

    def create_ok(self, *flags, **kw):
        r = self.create(*flags, **kw)
        assert r.rc == 0, r
        return r

    def start(self, **kw):
        return self.runtime("start", self.id, **kw)

    def state(self):
        return self.runtime.state(self.id)

    def delete(self, *flags):
        return self.runtime("delete", *flags, self.id)

    def exec(self, *args, **kw):
        return self.runtime("exec", *args[:-1], self.id, *args[-1], **kw) if args and isinstance(args[-1], list) \
            else self.runtime("exec", self.id, *args, **kw)

    def start_detached(self, script="sleep 1000"):
        """create + start a long-running container; returns its state."""
        self.sh(script)
        self.create_ok()
        r = self.start()
        assert r.rc == 0, r
        return self.state()


class ConsoleSocket:
    """The --console-socket end: listens on a unix socket, hands back the pty master fd."""

    def __init__(self, path):
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(self.path)
        self.sock.listen(4)
        self.fds = []

    def receive(self, timeout=10):
        self.sock.settimeout(timeout)
        conn, _ = self.sock.accept()
        try:
            conn.settimeout(timeout)
            msg, fds, _flags, _addr = socket.recv_fds(conn, 4096, 4)
        finally:
            conn.close()
        assert len(fds) == 1, f"expected one fd, got {fds} ({msg!r})"
        self.fds.extend(fds)
        return fds[0]

    def close(self):
        for fd in self.fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self.fds = []
        self.sock.close()


def pty_read_until(fd, marker, timeout=10):
    """Read from a pty master until `marker` (bytes) appears; returns everything read."""
    buf = b""
    deadline = time.monotonic() + timeout
    while marker not in buf:
        left = deadline - time.monotonic()
        assert left > 0, f"no {marker!r} from the pty; got {buf!r}"
        r, _, _ = select.select([fd], [], [], left)
        if not r:
            continue
        try:
            data = os.read(fd, 4096)
        except OSError:  # EIO: the other side closed
            break
        if not data:
            break
        buf += data
    assert marker in buf, f"no {marker!r} from the pty; got {buf!r}"
    return buf


# -- leak checks ----------------------------------------------------------------------------

def _proc_start(pid):
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None, None
    rest = data[data.rindex(b")") + 2:].split()
    return int(rest[19]), rest[0].decode()


def _own_cgroups():
    out = {}
    with open("/proc/self/cgroup") as f:
        for line in f:
            _hid, ctrls, path = line.rstrip("\n").split(":", 2)
            for c in (ctrls.split(",") if ctrls else [""]):
                out[c] = path
    return out


def cgroup_dirs_for(name):
    """Every directory a container cgroup named `name` could have been made as on this host."""
    found = set()
    own = _own_cgroups()
    for mnt in glob.glob("/sys/fs/cgroup/*"):
        if not os.path.isdir(mnt) or os.path.islink(mnt):
            continue
        found.update(glob.glob(os.path.join(mnt, name.strip("/"))))
        ctrl_names = os.path.basename(mnt).split(",")
        key = "" if os.path.basename(mnt) == "unified" else ctrl_names[0]
        if key == "systemd":
            key = "name=systemd"
        if key in own:
            found.update(glob.glob(os.path.join(mnt, own[key].strip("/"), name.strip("/"))))
    # relative cgroup paths are relative to the caller's memory cgroup (/process_api/<x>)
    found.update(glob.glob(os.path.join("/sys/fs/cgroup/memory/process_api/*", name.strip("/"))))
    return sorted(d for d in found if os.path.isdir(d))


def leftover_processes(ids, root, pids):
    """Live processes that belong to these containers: a recorded init, anything whose
    command line names the id or the --root, anything in a cgroup named after the id."""
    found = []
    me = os.getpid()
    for pid, start in pids.items():
        s, st = _proc_start(pid)
        if s is not None and s == start and st not in ("Z", "X"):
            found.append(f"init pid {pid} ({_cmdline(pid)})")
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        pid = int(entry)
        _s, st = _proc_start(pid)
        if st in (None, "Z", "X"):
            continue
        args = _cmdline_args(pid)
        hit = any(a == root or a in ids for a in args)
        if not hit:
            try:
                with open(f"/proc/{pid}/cgroup") as f:
                    cg = f.read()
            except OSError:
                continue
            hit = any(line.endswith("/" + cid) or f"/{cid}/" in line for line in cg.splitlines() for cid in ids)
        if hit:
            found.append(f"pid {pid} ({' '.join(args)})")
    return sorted(set(found))


def _cmdline_args(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def _cmdline(pid):
    return " ".join(_cmdline_args(pid))


def mounts_under(path):
    with open("/proc/self/mountinfo") as f:
        return [line.strip() for line in f if path in line]


def check_nothing_left(runtime, tmpdir, extra_cgroups=()):
    """Force-delete every container; then assert no state, cgroup, mount or process remains."""
    problems = []
    for cid in runtime.ids:
        if os.path.exists(os.path.join(runtime.root, cid)):
            r = runtime("delete", "--force", cid)
            if r.rc != 0:
                problems.append(f"delete --force {cid}: {r.err.strip()}")
    for p in runtime.popens:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            problems.append(f"keel-runtime {p.args[3:]} (pid {p.pid}) still running")
            p.kill()
            p.wait()
        for stream in (p.stdout, p.stderr):
            if stream:
                stream.close()
    deadline = time.monotonic() + 5
    while True:
        procs = leftover_processes(runtime.ids, runtime.root, runtime.pids)
        if not procs or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    problems += [f"leftover process: {p}" for p in procs]
    if os.path.isdir(runtime.root):
        left = os.listdir(runtime.root)
        if left:
            problems.append(f"state left in {runtime.root}: {left}")
    for name in list(runtime.ids) + list(extra_cgroups):
        for d in cgroup_dirs_for(name):
            problems.append(f"cgroup left: {d}")
    problems += [f"mount left: {m}" for m in mounts_under(str(tmpdir))]
    return problems


def deep(config):
    return copy.deepcopy(config)
