"""Containers on any OCI runtime binary, daemonless: the podman role.

Where things live:

    <root>/engine.db                     container metadata (db.py)
    <root>/snapshots/active/<id>/        the container's writable overlay (keel.image.snapshot)
    <root>/containers/<id>/ctr.log       its log, CRI format, written by conmon
    <runroot>/containers/<id>/           the bundle: config.json, conmon's pid files, attach
                                         socket, ctl/winsz fifos, the runtime's log (oci-log)
    <runroot>/exits/<id>                 conmon's exit file (the exit code)
    <runroot>/locks/<id>                 flock serialising changes to one container
    <runroot>/runtime/                   the OCI runtime's --root (every runtime shares it)
    <root>/volumes/<name>/_data          named and anonymous volumes (volumes.py)

The security, resource and storage options of a container (caps, seccomp, limits, mounts,
--init) are checked by specgen.parse() and put into the config by specgen.apply().

Life of a container (podman's states): `create` claims the name in the database, prepares the
snapshot and writes the bundle (state "created"); `start` launches conmon, which runs
`RUNTIME create`, then runs `RUNTIME start` ("running"); when the process exits conmon writes
the exit file and runs `keel container cleanup ID`, which records the exit ("exited") and
deletes the runtime's state (and so its cgroup) and unmounts the rootfs overlay (mounted only
while the container runs, as podman does: `start` mounts it, `cp` mounts a stopped container's
for the copy); `--rm` containers are removed there too. `pause`/`unpause` run the runtime's
pause/resume ("paused"); kill and rm -f of a paused container thaw it after SIGKILL. A
container's state is always re-read from the exit file and conmon's liveness (pid, start time
and boot id) before it is shown or acted on, so another `keel` process, a restarted one, or one
after a reboot sees the truth: a container whose conmon is gone without an exit file is
"exited" with exit code -1 and an Error saying so, or "unknown" if the runtime still runs it.

Networking (keel.engine.network): "none" (a new, empty network namespace), "host", CNI
networks (a namespace keel makes and sets up with the CNI plugins at start, torn down at
cleanup and rm) and "container:<id>" (another container's namespace).
"""

import contextlib
import errno
import fcntl
import os
import re
import shutil
import signal as _signal
import sys
import time

from keel.engine import db as _db
from keel.engine import monitor, names, network as _network, networks as _networks, ociruntime
from keel.engine.errors import (ContainerNotFound, EngineError, InvalidState, MonitorFailed,
                                NameInUse, NotSupported, RuntimeFailed)

DEFAULT_STOP_TIMEOUT = 10
_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*\Z")
RUNNING_STATES = ("initialized", "running", "paused", "unknown")


def parse_signal(value) -> int:
    """A signal number from 9, "9", "KILL", "SIGKILL", "sigkill", "RTMIN+3"."""
    s = str(value).strip().upper()
    if s.isdigit():
        n = int(s)
    else:
        s = s[3:] if s.startswith("SIG") else s
        m = re.fullmatch(r"RTM(IN|AX)([+-]\d+)?", s)
        if m:
            base = _signal.SIGRTMIN if m.group(1) == "IN" else _signal.SIGRTMAX
            n = int(base) + int(m.group(2) or 0)
        else:
            try:
                n = int(_signal.Signals["SIG" + s])
            except KeyError:
                raise EngineError(f"invalid signal {value!r}") from None
    if not 1 <= n <= int(_signal.SIGRTMAX):
        raise EngineError(f"invalid signal {value!r}: out of range 1-{int(_signal.SIGRTMAX)}")
    return n


def format_time(t: float) -> str:
    """RFC 3339 in local time with microseconds, as podman prints times; zero for 0."""
    if not t:
        return "0001-01-01T00:00:00Z"
    import datetime

    return datetime.datetime.fromtimestamp(t).astimezone().isoformat()


DEFAULT_CGROUP_PARENT = "/keel"


def _step(name: str) -> None:
    """A named step of create/start. KEEL_TEST_STOP_AT=<name> makes the process stop itself
    (SIGSTOP) there, so the reliability tests can SIGKILL `keel` at exactly that step."""
    if os.environ.get("KEEL_TEST_STOP_AT") == name:
        os.kill(os.getpid(), _signal.SIGSTOP)


class Engine:
    def __init__(self, root: str, runroot: str, cgroup_parent: str | None = None,
                 network_config_dir: str | None = None):
        self.root = os.path.abspath(root)
        self.runroot = os.path.abspath(runroot)
        # Containers' cgroups go under this parent (podman's cgroup_parent); env KEEL_CGROUP_PARENT.
        parent = cgroup_parent or os.environ.get("KEEL_CGROUP_PARENT") or DEFAULT_CGROUP_PARENT
        if not parent.startswith("/") or ":" in parent or ".." in parent.split("/"):
            raise EngineError(f"cgroup parent {parent!r}: must be an absolute cgroupfs path")
        self.cgroup_parent = parent.rstrip("/") or "/"
        self.db = _db.DB(os.path.join(self.root, "engine.db"))
        self.runtime_root = os.path.join(self.runroot, "runtime")
        self.exit_dir = os.path.join(self.runroot, "exits")
        for d in (self.runtime_root, self.exit_dir, os.path.join(self.runroot, "containers"),
                  os.path.join(self.runroot, "locks"), os.path.join(self.root, "containers")):
            os.makedirs(d, 0o700, exist_ok=True)
        self._store = None
        self._snap = None
        self.networks = _networks.Networks(_networks.config_dir(network_config_dir), self.runroot)

    def close(self):
        self.db.close()
        if self._store is not None:
            self._store.close()

    # -- helpers ---------------------------------------------------------------------------------

    @property
    def store(self):
        if self._store is None:
            from keel.image.store import Store

            self._store = Store(self.root)
        return self._store

    @property
    def snapshotter(self):
        if self._snap is None:
            from keel.image.snapshot import Snapshotter

            self._snap = Snapshotter(os.path.join(self.root, "snapshots"))
        return self._snap

    @property
    def volumes(self):
        from keel.engine.volumes import Volumes

        return Volumes(self.root)

    def bundle_dir(self, cid: str) -> str:
        return os.path.join(self.runroot, "containers", cid)

    def userdata_dir(self, cid: str) -> str:
        return os.path.join(self.root, "containers", cid)

    def runtime(self, c: dict) -> ociruntime.OCIRuntime:
        return ociruntime.OCIRuntime(c["runtime"], self.runtime_root)

    @contextlib.contextmanager
    def _lock(self, cid: str):
        path = os.path.join(self.runroot, "locks", cid)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield path
        finally:
            os.close(fd)

    def exit_command(self, cid: str, remove: bool, attached: bool = False) -> list[str]:
        """conmon's exit command: `keel container cleanup`. attached: a foreground `run --rm`
        removes the container itself the moment it exits; conmon then runs the command after
        a delay, through sh, and only if the bundle is still there (keel was killed): no
        Python start competes with the removal on the critical path."""
        # the `keel` beside the interpreter when there is one (the Makefile's launcher skips
        # site and runpy: this runs after every container exit)
        launcher = os.path.join(os.path.dirname(sys.executable), "keel")
        argv = [launcher] if os.access(launcher, os.X_OK) else [sys.executable, "-P", "-m", "keel.cli.main"]
        argv += ["--root", self.root, "--runroot", self.runroot, "container", "cleanup",
                 *(["--rm"] if remove else []), cid]
        if attached:
            argv = ["/bin/sh", "-c", '[ -d "$0" ] || exit 0; exec "$@"', self.bundle_dir(cid), *argv]
        return argv

    # -- queries -----------------------------------------------------------------------------------

    def get(self, ref: str) -> dict:
        """The container named or id'd `ref`, its state refreshed."""
        return self._sync(self.db.find(ref))

    def containers(self, all: bool = True) -> list[dict]:
        out = [self._sync(c) for c in self.db.all()]
        return out if all else [c for c in out if c["state"] in RUNNING_STATES]

    def _sync(self, c: dict) -> dict:
        """Bring the recorded state up to date with conmon's exit file and liveness."""
        if c["state"] not in RUNNING_STATES:
            return c
        ex = monitor.read_exit_file(self.exit_dir, c["id"])
        fields = None
        if ex is not None:
            fields = {"state": "exited", "exit_code": ex[0], "finished": ex[1], "pid": 0}
        elif c["state"] == "initialized" and monitor.alive(c["conmon_pid"], c["conmon_start"], c["boot_id"]):
            # `keel start` died between the runtime's start and recording it: ask the runtime
            st = self.runtime(c).state(c["id"])
            if st and st.get("status") == "running":
                fields = {"state": "running", "started": time.time()}
        elif not monitor.alive(c["conmon_pid"], c["conmon_start"], c["boot_id"]):
            st = self.runtime(c).state(c["id"]) if c["boot_id"] == monitor.boot_id() else None
            if st and st.get("status") in ("created", "running", "paused"):
                if c["state"] != "unknown":
                    fields = {"state": "unknown",
                              "error": f"conmon (pid {c['conmon_pid']}) is gone: the container runs unmonitored"}
            else:
                fields = {"state": "exited", "exit_code": -1, "finished": time.time(), "pid": 0,
                          "error": f"conmon (pid {c['conmon_pid']}) died before recording the exit code"}
        if fields:
            with contextlib.suppress(ContainerNotFound):
                self.db.update(c["id"], **fields)
            c = dict(c, **fields)
        return c

    # -- create ------------------------------------------------------------------------------------

    def create(self, image: str, command: list[str] | None = None, *, name: str | None = None,
               entrypoint: list[str] | None = None, env: list[str] | None = None,
               workdir: str | None = None, user: str | None = None, hostname: str | None = None,
               runtime: str | None = None, labels: dict | None = None, network: str | None = None,
               remove: bool = False, stop_signal: str | None = None,
               stop_timeout: int | None = None, run_options: dict | None = None,
               interactive: bool = False, tty: bool = False,
               console_size: tuple[int, int] | None = None,
               ports: list[str] | None = None, dns: list[str] | None = None,
               dns_search: list[str] | None = None, dns_options: list[str] | None = None,
               add_hosts: list[str] | None = None, ip: str | None = None,
               network_aliases: list[str] | None = None,
               log_size_max: int | None = None) -> dict:
        """Make a container (state "created"): name claimed, snapshot prepared, bundle written.
        `run_options` are the security, resource and storage options from specgen.parse().
        interactive: keep its stdin open for attach clients (-i); tty: give it a pty (-t),
        first sized console_size (rows, cols)."""
        from keel.engine import specgen, volumes as _volumes
        from keel.image import bundle as _bundle

        net = _network.plan(self, network, ports=ports, dns=dns, dns_search=dns_search,
                            dns_options=dns_options, add_hosts=add_hosts, hostname=hostname, ip=ip,
                            aliases=network_aliases)
        network = net["requested"]
        if name is not None and not _NAME.match(name):
            raise EngineError(f"invalid container name {name!r}: [a-zA-Z0-9][a-zA-Z0-9_.-]* is allowed")
        if stop_timeout is not None and stop_timeout < 0:
            raise EngineError(f"--stop-timeout {stop_timeout}: must not be negative")
        if log_size_max is not None and 0 <= log_size_max < monitor.MIN_LOG_SIZE:
            raise EngineError(f"log size max {log_size_max}: must be negative (no limit) or at least "
                              f"{monitor.MIN_LOG_SIZE} bytes")
        runtime_path = ociruntime.find(runtime)
        from keel.image.errors import ImageError

        try:
            img = self.store.get(image)
        except ImageError as e:
            raise EngineError(str(e)) from None
        img_cfg = img.config.get("config") or {}
        sig_spec = stop_signal or img_cfg.get("StopSignal") or "SIGTERM"
        stop_sig = parse_signal(sig_spec)
        cid = os.urandom(32).hex()
        all_labels = dict(img_cfg.get("Labels") or {})
        all_labels.update(labels or {})
        options = {"command": list(command or []), "entrypoint": entrypoint, "env": list(env or []),
                   "workdir": workdir, "user": user, "hostname": hostname, "network": network, "net": net,
                   "remove": bool(remove), "stop_signal": stop_sig,
                   "stop_timeout": DEFAULT_STOP_TIMEOUT if stop_timeout is None else stop_timeout,
                   "log_size_max": log_size_max,
                   "run": specgen.add_image_volumes(
                       run_options if run_options is not None else specgen.parse(network=network), img_cfg),
                   "interactive": bool(interactive), "tty": bool(tty)}
        rec = {"id": cid, "name": name, "image_id": img.id.partition(":")[2], "image_name": image,
               "config": {}, "options": options, "labels": all_labels, "runtime": runtime_path,
               "state": "configured", "created": time.time(),
               "log_path": os.path.join(self.userdata_dir(cid), "ctr.log")}
        if name is not None:
            self.db.insert(rec)
        else:
            for _ in range(20):
                rec["name"] = names.generate()
                try:
                    self.db.insert(rec)
                    break
                except NameInUse:
                    continue
            else:
                rec["name"] = f"keel_{cid[:12]}"
                self.db.insert(rec)
        # the name is ours: build the rest, undoing everything on failure
        _step("claimed")
        try:
            os.makedirs(self.userdata_dir(cid), 0o700)
            rootfs = self.snapshotter.prepare(cid, img, self.store)
            _step("snapshot")
            if hostname is None:
                hostname = os.uname().nodename if network == "host" else cid[:12]
            spec = _bundle.bundle_spec(img, rootfs, command or None, entrypoint=entrypoint, env=env,
                                       workdir=workdir, user=user, hostname=hostname, terminal=tty)
            if tty and console_size:
                spec["process"]["consoleSize"] = {"height": console_size[0], "width": console_size[1]}
            _bundle.mkdir_in_root(rootfs, spec["process"]["cwd"])
            linux = spec.setdefault("linux", {})
            linux["cgroupsPath"] = f"{self.cgroup_parent.rstrip('/')}/{cid}"
            _network.configure_spec(self, cid, spec, net)
            specgen.apply(spec, options["run"], volumes=self.volumes, rootfs=rootfs, network=network,
                          used_elsewhere=lambda v: _volumes.used_elsewhere(self, v, cid))
            _write_config(self.bundle_dir(cid), spec)
            with self._lock(cid):           # mounted only while it runs: start mounts it
                self._unmount_rootfs(cid)
            _step("bundle")
            self.db.update(cid, config=spec, state="created")
        except ImageError as e:
            self._discard(cid, volumes=True)
            raise EngineError(str(e)) from None
        except BaseException:
            self._discard(cid, volumes=True)
            raise
        return self.db.get(cid)

    def _discard(self, cid: str, volumes: bool = False) -> None:
        """Remove everything of a container that is not running (best effort, idempotent);
        with `volumes`, its anonymous volumes too."""
        with contextlib.suppress(EngineError, OSError):
            if cid in self.snapshotter.snapshots():
                self.snapshotter.remove(cid)
        shutil.rmtree(self.bundle_dir(cid), ignore_errors=True)
        shutil.rmtree(self.userdata_dir(cid), ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(self.exit_dir, cid))
        c = self.db.get(cid)
        self.db.delete(cid, c["exit_code"] if c else None)
        if c and (volumes or c["options"].get("remove")):
            from keel.engine import volumes as _volumes

            _volumes.remove_container_volumes(self, c)

    # -- start -------------------------------------------------------------------------------------

    def start(self, ref: str, on_created=None, attached_rm: bool = False) -> dict:
        """Run a created (or exited) container: conmon + `RUNTIME create`, then `RUNTIME start`.
        on_created(container) runs in between (an attach client connects there, so it sees
        all the output). attached_rm: the caller removes the container when it exits (see
        exit_command)."""
        c = self.db.find(ref)
        with self._lock(c["id"]):
            c = self._sync(self.db.find(c["id"]))
            if c["state"] == "running":
                return c
            if c["state"] == "paused":
                raise InvalidState(f"container {c['name']} is paused: unpause it")
            if c["state"] in ("initialized", "unknown"):
                raise InvalidState(f"container {c['name']} is {c['state']}: remove it with rm -f")
            if c["state"] not in ("created", "exited"):
                raise InvalidState(f"container {c['name']} is {c['state']}: it cannot be started")
            cid = c["id"]
            rt = self.runtime(c)
            if c["state"] == "exited":
                rt.delete(cid, force=True)   # a restart: drop what cleanup may not have
            self._mount_rootfs(cid)          # mounted only while it runs (podman's habit)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(self.exit_dir, cid))
            bundle = self.bundle_dir(cid)
            for f in ("pidfile", "conmon.pid", "oci-log", "oom"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(bundle, f))
            _network.setup(self, c)
            try:
                pid, conmon_pid = monitor.launch(
                    cid=cid, name=c["name"], runtime_path=c["runtime"], runtime_root=self.runtime_root,
                    bundle=bundle, log_path=c["log_path"], exit_dir=self.exit_dir,
                    exit_command=self.exit_command(cid, c["options"].get("remove", False), attached_rm),
                    exit_delay=1 if attached_rm else 0,
                    runtime_log=os.path.join(bundle, "oci-log"),
                    terminal=c["options"].get("tty", False), stdin=c["options"].get("interactive", False),
                    log_size_max=c["options"].get("log_size_max"))
            except MonitorFailed as e:
                with contextlib.suppress(EngineError):
                    rt.delete(cid, force=True)
                _network.teardown(self, cid)
                self._unmount_rootfs(cid)
                self.db.update(cid, state="exited" if c["state"] == "exited" else "created", error=str(e))
                msg = str(e)
                raise MonitorFailed(msg if msg.startswith(rt.name) else f"{rt.name}: {msg}") from None
            _step("monitor")
            self.db.update(cid, state="initialized", pid=pid, conmon_pid=conmon_pid,
                           conmon_start=monitor.start_time(conmon_pid), boot_id=monitor.boot_id(),
                           exit_code=None, error="", finished=0)
            started = time.time()
            _step("initialized")
            try:
                if on_created is not None:
                    on_created(self.db.get(cid))
                rt.start(cid)
            except EngineError as e:   # the runtime's start, or the attach before it
                with contextlib.suppress(EngineError):
                    rt.kill(cid, 9)
                self.db.update(cid, error=str(e))
                raise
            _step("started")
            self.db.update(cid, state="running", started=started)
            return self.db.get(cid)

    # -- wait, stop, kill --------------------------------------------------------------------------

    def _wait_exit(self, cid: str, timeout: float | None) -> dict | None:
        """Poll until the container exited (None on timeout); a removed container returns
        a record with its remembered exit code."""
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.01
        while True:
            c = self.db.get(cid)
            if c is None:
                code = self.db.exit_code(cid)
                if code is None:
                    raise ContainerNotFound(f"container {cid} was removed and its exit code is unknown")
                return {"id": cid, "state": "removed", "exit_code": code}
            c = self._sync(c)
            if c["state"] in ("exited", "created"):
                return c
            if deadline is not None and time.monotonic() >= deadline:
                return None
            time.sleep(delay)
            delay = min(delay * 1.5, 0.1)

    def _wait_monitor(self, c: dict, timeout: float = 30.0) -> None:
        """Wait until conmon (and so its exit command, the cleanup) has finished."""
        deadline = time.monotonic() + timeout
        while monitor.alive(c.get("conmon_pid", 0), c.get("conmon_start", ""), c.get("boot_id", "")):
            if time.monotonic() >= deadline:
                raise MonitorFailed(f"conmon (pid {c['conmon_pid']}) of {c['id'][:12]} did not exit in {timeout:.0f}s")
            time.sleep(0.02)

    def wait(self, ref: str) -> int:
        """Block until the container exits; its exit code (a created container waits to be
        started and to exit, as podman's wait does)."""
        c = self.db.find(ref)
        while True:
            done = self._wait_exit(c["id"], None)
            if done["state"] != "created":
                break
            time.sleep(0.1)
        if done["state"] == "exited":
            self._wait_monitor(c | done)
        return done["exit_code"]

    def kill(self, ref: str, signal="KILL") -> dict:
        sig = parse_signal(signal)
        c = self.get(ref)
        if c["state"] not in RUNNING_STATES:
            raise InvalidState(f"can only kill running containers: {c['name']} is in state {c['state']}")
        try:
            self._send_signal(c, sig)
        except RuntimeFailed:
            if self.get(c["id"])["state"] in RUNNING_STATES:
                raise
        return c

    def _send_signal(self, c: dict, sig: int) -> None:
        """Signal the container; a paused one is thawed after SIGKILL so that it dies (a
        frozen v1 cgroup holds even SIGKILL), as podman's rm -f and docker's kill do."""
        rt = self.runtime(c)
        rt.kill(c["id"], sig)
        if c["state"] == "paused" and sig == _signal.SIGKILL:
            with contextlib.suppress(RuntimeFailed):
                rt.resume(c["id"])
            with contextlib.suppress(ContainerNotFound):
                self.db.update(c["id"], state="running")

    # -- pause ---------------------------------------------------------------------------------------

    def pause(self, ref: str) -> dict:
        """Freeze every process of a running container (`RUNTIME pause`)."""
        return self._set_paused(ref, True)

    def unpause(self, ref: str) -> dict:
        """Thaw a paused container (`RUNTIME resume`)."""
        return self._set_paused(ref, False)

    def _set_paused(self, ref: str, pause: bool) -> dict:
        c = self.db.find(ref)
        want, verb = ("running", "pause") if pause else ("paused", "unpause")
        with self._lock(c["id"]):
            c = self._sync(self.db.find(c["id"]))
            if c["state"] != want:
                raise InvalidState(f"container {c['name']} is not {want}, can't {verb}: it is {c['state']}")
            rt = self.runtime(c)
            (rt.pause if pause else rt.resume)(c["id"])
            self.db.update(c["id"], state="paused" if pause else "running")
            return self.db.get(c["id"])

    # -- the rootfs mount -----------------------------------------------------------------------------

    def _mount_rootfs(self, cid: str) -> str:
        """Mount the container's overlay (unmounted while it is not running); lock held."""
        from keel.image.errors import ImageError

        try:
            return self.snapshotter.mount(cid)
        except ImageError as e:
            raise EngineError(str(e)) from None

    def _unmount_rootfs(self, cid: str) -> None:
        """Unmount the overlay of a container that no longer runs (best effort: rm and start
        cope with a mounted one); lock held."""
        from keel.image.errors import ImageError

        with contextlib.suppress(ImageError, OSError):
            self.snapshotter.unmount(cid)

    def stop(self, ref: str, timeout: int | None = None) -> dict:
        """The stop signal, then SIGKILL after `timeout` seconds (the container's stop timeout
        by default); returns once the exit is recorded."""
        c = self.get(ref)
        if c["state"] not in RUNNING_STATES:
            return c
        if c["state"] == "paused":
            raise InvalidState(f"can only stop created or running containers: {c['name']} is paused")
        t = c["options"].get("stop_timeout", DEFAULT_STOP_TIMEOUT) if timeout is None else timeout
        rt = self.runtime(c)
        done = None
        if t > 0:
            with contextlib.suppress(RuntimeFailed):
                rt.kill(c["id"], c["options"].get("stop_signal") or 15)
            done = self._wait_exit(c["id"], t)
        if done is None:
            with contextlib.suppress(RuntimeFailed):
                rt.kill(c["id"], 9)
            done = self._wait_exit(c["id"], 30)
            if done is None:
                raise EngineError(f"container {c['name']}: still running 30s after SIGKILL")
        if done["state"] == "exited":
            self._wait_monitor(c)
        return done

    # -- cleanup and remove ------------------------------------------------------------------------

    def cleanup(self, ref: str, remove: bool = False) -> None:
        """conmon's exit command: record the exit, delete the runtime's state (its cgroup);
        with remove, remove the container."""
        try:
            c = self.db.find(ref)
        except ContainerNotFound:
            return
        with self._lock(c["id"]):
            c = self.db.get(c["id"])
            if c is None:
                return
            c = self._sync(c)
            if c["state"] != "exited":
                return
            if remove:
                self._remove_locked(c)   # deletes the runtime's state and the network too
            else:
                self.runtime(c).delete(c["id"], force=True)
                errors = _network.teardown(self, c["id"])
                if errors:
                    self.db.update(c["id"], error="network teardown: " + errors[0])
                self._unmount_rootfs(c["id"])

    def remove(self, ref: str, force: bool = False, timeout: float = 10.0,
               volumes: bool = False) -> str:
        """Remove a container and all it owns; a running one only with force (SIGKILL);
        with `volumes`, its anonymous volumes (`rm -v`; `--rm` containers always)."""
        c = self.get(ref)
        if c["state"] in RUNNING_STATES:
            if not force:
                raise InvalidState(f"cannot remove container {c['name']}: it is {c['state']}; "
                                   "stop it first or use rm -f")
            rt = self.runtime(c)
            with contextlib.suppress(RuntimeFailed):
                self._send_signal(c, _signal.SIGKILL)
            if c["state"] == "unknown" or self._wait_exit(c["id"], timeout) is None:
                with contextlib.suppress(RuntimeFailed):
                    rt.delete(c["id"], force=True)
            with contextlib.suppress(MonitorFailed):
                self._wait_monitor(c, timeout)
            if monitor.alive(c["conmon_pid"], c["conmon_start"], c["boot_id"]):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(c["conmon_pid"], _signal.SIGKILL)
        elif c["state"] in ("configured", "created"):
            self._stop_unrecorded(c, timeout)
        with self._lock(c["id"]):
            cur = self.db.get(c["id"])
            if cur is not None:
                cur = self._sync(cur)
                if cur["state"] in ("initialized", "running") and not force:
                    raise InvalidState(f"cannot remove container {cur['name']}: it is {cur['state']}")
                self._remove_locked(cur, volumes)
        return c["id"]

    def _stop_unrecorded(self, c: dict, timeout: float) -> None:
        """A `keel start` killed after conmon and `RUNTIME create` ran but before it recorded
        them leaves a conmon and a created container the database does not know: find conmon
        by its pid file, delete the runtime's container, and let conmon exit (or kill it)."""
        cid = c["id"]
        try:
            with open(os.path.join(self.bundle_dir(cid), "conmon.pid")) as f:
                pid = int(f.read().strip())
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                ours = cid.encode() in f.read().split(b"\0")
        except (OSError, ValueError):
            ours, pid = False, 0
        if os.path.isdir(os.path.join(self.runtime_root, cid)):
            with contextlib.suppress(RuntimeFailed):
                self.runtime(c).delete(cid, force=True)
        if ours:
            rec = {"id": cid, "conmon_pid": pid, "conmon_start": monitor.start_time(pid),
                   "boot_id": monitor.boot_id()}
            with contextlib.suppress(MonitorFailed):
                self._wait_monitor(rec, timeout)
            if monitor.alive(pid, rec["conmon_start"], rec["boot_id"]):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, _signal.SIGKILL)

    def _remove_locked(self, c: dict, volumes: bool = False) -> None:
        cid = c["id"]
        if c["state"] in RUNNING_STATES or c["state"] == "exited" or \
                os.path.isdir(os.path.join(self.runtime_root, cid)):
            self.runtime(c).delete(cid, force=True)
        from keel.engine import exec as exec_

        exec_.wait_sessions(self, cid)   # their conmons write in the bundle dir until they exit
        _network.teardown(self, cid)
        self._discard(cid, volumes)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(self.runroot, "locks", cid))


def _write_config(bundle_dir: str, spec: dict) -> None:
    import json

    os.makedirs(bundle_dir, 0o700, exist_ok=True)
    path = os.path.join(bundle_dir, "config.json")
    tmp = path + ".tmp"
    try:
        with open(tmp, "w") as f:   # run state: no fsync (a reboot makes it stale anyway)
            json.dump(spec, f, indent=2)
        os.rename(tmp, path)
    except OSError as e:
        raise EngineError(f"bundle {bundle_dir}: writing config.json: "
                          f"{(e.strerror or errno.errorcode.get(e.errno, str(e))).lower()}") from None
