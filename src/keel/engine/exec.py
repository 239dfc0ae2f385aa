"""`exec`: another process in a running container, under its own conmon, as podman does it.

Each exec session gets a directory `<bundle>/exec/<session id>/` holding the process spec
(process.json: the container's process with the command, env, user, cwd, terminal and
capabilities of the exec), conmon's pid files, the runtime's log, conmon's exit dir, and
conmon's attach socket and ctl/winsz fifos. conmon is started with `--exec
--exec-process-spec process.json`; it runs `RUNTIME exec --process process.json --detach
--pid-file ... [--tty --console-socket ...] ID` and stays with the process as its monitor.

The handshake (three pipes, their fd numbers in conmon's environment):
  _OCI_STARTPIPE   keel writes once so that conmon starts, and once more, after connecting
                   to the attach socket, so that the runtime's exec starts (no output is lost);
  _OCI_ATTACHPIPE  conmon writes {"data": 0} once the attach socket listens (--exec-attach);
  _OCI_SYNCPIPE    conmon writes {"data": PID} once the process runs, or {"data": <0,
                   "message": "..."} when the runtime failed, then {"data": EXIT CODE} when
                   the process exited.

`keel exec -d` starts conmon without --exec-attach and returns once the process runs: conmon
keeps it company, and its exit command (`keel container cleanup --exec SESSION ID`) removes
the session directory when the process exits, so nothing is left behind. A foreground exec
removes its session itself once it has the exit code (the exit command finds nothing to do).
Removing a container waits for its sessions' conmons first (wait_sessions).

Chosen over running `RUNTIME exec` directly: the same monitor, attach socket, resize path and
exit-code handling serve containers and exec sessions alike, and a session outlives `keel`.
"""

import contextlib
import copy
import json
import os
import re
import shutil
import subprocess
import time

from keel.engine import attach, monitor
from keel.engine.errors import EngineError, InvalidState, MonitorFailed, RuntimeFailed

_SESSION_ID = re.compile(r"[0-9a-f]{64}\Z")
SESSION_WAIT = 10.0


class ExecFailed(RuntimeFailed):
    """The runtime could not start the command (not found, not executable, ...)."""


def sessions_dir(eng, cid: str) -> str:
    return os.path.join(eng.bundle_dir(cid), "exec")


def process_spec(eng, c: dict, argv: list[str], *, tty: bool, env=(), user: str | None = None,
                 workdir: str | None = None, privileged: bool = False,
                 console_size: tuple[int, int] | None = None) -> dict:
    """The OCI process of an exec: the container's own, with podman's exec overrides."""
    from keel.image import bundle
    from keel.image.errors import ImageError

    if not argv:
        raise EngineError("exec: no command given")
    proc = copy.deepcopy((c["config"] or {}).get("process") or {})
    proc["args"] = list(argv)
    proc["terminal"] = bool(tty)
    proc.pop("consoleSize", None)
    if tty and console_size:
        proc["consoleSize"] = {"height": console_size[0], "width": console_size[1]}
    envs = list(proc.get("env") or [])
    if user is not None:
        rootfs = ((c["config"] or {}).get("root") or {}).get("path", "")
        try:
            uid, gid, extra, home = bundle.resolve_user(rootfs, user)
        except ImageError as e:
            raise EngineError(f"exec: {e}") from None
        proc["user"] = {"uid": uid, "gid": gid, **({"additionalGids": extra} if extra else {})}
        envs = bundle._merge_env(envs, [f"HOME={home}"])
    if tty and not any(e.startswith("TERM=") for e in envs):
        envs.append("TERM=xterm")
    proc["env"] = bundle._merge_env(envs, list(env))
    if workdir:
        proc["cwd"] = workdir if workdir.startswith("/") else "/" + workdir
    if privileged:   # podman's: every capability keel itself may hand on (its bounding set)
        from keel.kernel import caps

        every = caps.names(caps.current_bounding())
        proc["capabilities"] = {s: list(every) for s in ("bounding", "effective", "permitted")}
    return proc


class ExecSession:
    """A started exec: its pid, its attach socket (None with detach) and its exit code."""

    def __init__(self, eng, c, sid, directory, pid, sock, sync_fd):
        self.eng, self.container, self.id, self.dir = eng, c, sid, directory
        self.pid, self.sock, self._sync = pid, sock, sync_fd

    def resize(self, rows: int, cols: int) -> None:
        attach.resize(self.dir, rows, cols)

    def wait(self) -> int:
        """Block until the process exits; its exit code (128+N for signal N). The session's
        directory is gone afterwards."""
        try:
            msg = monitor.read_sync(self._sync, None)
        finally:
            self.close()
        code = msg.get("data") if msg else None
        if not isinstance(code, int):
            ex = monitor.read_exit_file(os.path.join(self.dir, "exit"), self.container["id"])
            code = ex[0] if ex else None
        shutil.rmtree(self.dir, ignore_errors=True)
        if code is None:
            raise MonitorFailed(f"exec session {self.id[:12]}: conmon exited without its exit code")
        return code

    def close(self) -> None:
        if self._sync >= 0:
            os.close(self._sync)
            self._sync = -1
        if self.sock is not None:
            self.sock.close()


def start(eng, ref: str, argv: list[str], *, tty: bool = False, interactive: bool = False,
          detach: bool = False, env=(), user: str | None = None, workdir: str | None = None,
          privileged: bool = False, console_size: tuple[int, int] | None = None) -> ExecSession:
    """Start `argv` in running container `ref` under a new conmon. Unless detach, the
    session's attach socket is connected before the process starts."""
    c = eng.get(ref)
    if c["state"] != "running":
        raise InvalidState(f"can only create exec sessions on running containers: "
                           f"container {c['name']} is {c['state']}")
    proc = process_spec(eng, c, argv, tty=tty, env=env, user=user, workdir=workdir,
                        privileged=privileged, console_size=console_size)
    sid = os.urandom(32).hex()
    d = os.path.join(sessions_dir(eng, c["id"]), sid)
    os.makedirs(os.path.join(d, "exit"), 0o700)
    try:
        with open(os.path.join(d, "process.json"), "w") as f:
            json.dump(proc, f)
        return _launch(eng, c, sid, d, tty=tty, interactive=interactive, attach_first=not detach)
    except BaseException:
        shutil.rmtree(d, ignore_errors=True)
        raise


def _launch(eng, c, sid, d, *, tty, interactive, attach_first) -> ExecSession:
    cid = c["id"]
    argv = [monitor.find_conmon(), "--api-version", "1", "-c", cid, "-u", sid, "-r", c["runtime"],
            "-b", d, "-p", os.path.join(d, "exec_pid"), "-n", c["name"],
            "--exit-dir", os.path.join(d, "exit"), "--full-attach", "-l", "none",
            "--log-level", "warning", *(["-t"] if tty else []), *(["-i"] if interactive else []),
            "-e", *(["--exec-attach"] if attach_first else []),
            "--exec-process-spec", os.path.join(d, "process.json"),
            "--runtime-arg", "--root", "--runtime-arg", eng.runtime_root,
            "--runtime-arg", "--log-format=json", "--runtime-arg", "--log",
            "--runtime-arg", os.path.join(d, "oci-log"),
            "--conmon-pidfile", os.path.join(d, "conmon.pid")]
    exit_command = eng.exit_command(cid, False)
    exit_command[-1:-1] = ["--exec", sid]
    argv += ["--exit-command", exit_command[0]]
    for a in exit_command[1:]:
        argv += ["--exit-command-arg", a]
    fds = []   # every pipe end we hold until the handshake is over
    try:
        sync_r, sync_w = os.pipe()
        fds += [sync_r, sync_w]
        start_r, start_w = os.pipe()
        fds += [start_r, start_w]
        env = dict(os.environ, _OCI_SYNCPIPE=str(sync_w), _OCI_STARTPIPE=str(start_r))
        child_fds = [sync_w, start_r]
        if attach_first:
            att_r, att_w = os.pipe()
            fds += [att_r, att_w]
            env["_OCI_ATTACHPIPE"] = str(att_w)
            child_fds.append(att_w)
        for fd in child_fds:
            os.set_inheritable(fd, True)
        with monitor.console_tmpdir(env, tty):
            try:
                proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, cwd=d, env=env, pass_fds=child_fds)
            except OSError as e:
                raise MonitorFailed(f"{argv[0]}: {(e.strerror or str(e)).lower()}") from None
            for fd in child_fds:
                fds.remove(fd)
                os.close(fd)
            os.write(start_w, b"0")   # conmon waits for this before it forks
            out, _ = proc.communicate(timeout=monitor.SYNC_TIMEOUT)
            if proc.returncode != 0:
                text = out.decode(errors="replace").strip().splitlines()
                raise MonitorFailed(f"conmon: {text[-1] if text else f'exit status {proc.returncode}'}")
            sock = None
            if attach_first:
                ready = monitor.read_sync(att_r)
                if ready is not None:   # None: conmon died; the sync pipe says why
                    sock = attach.connect(d, f"exec session {sid[:12]}")
                    os.write(start_w, b"0")   # the runtime's exec may start now
            msg = monitor.read_sync(sync_r)   # the console was taken (or exec failed) by now
        pid = msg.get("data") if msg else None
        if not isinstance(pid, int) or pid <= 0:
            if sock is not None:
                sock.close()
            raise ExecFailed(_failure(msg, d, c))
        fds.remove(sync_r)
        return ExecSession(eng, c, sid, d, pid, sock, sync_r)
    finally:
        for fd in fds:
            os.close(fd)


def _failure(msg, d, c) -> str:
    from keel.engine.ociruntime import error_text

    rt = os.path.basename(c["runtime"])
    why = ((msg or {}).get("message") or "").strip()
    text = error_text(why) if why else monitor._runtime_error(os.path.join(d, "oci-log"))
    text = text or "conmon exited without starting the process"
    return text if text.startswith(rt) else f"{rt} exec: {text}"


def cleanup(eng, ref: str, sid: str) -> None:
    """conmon's exit command for a session: remove its directory (idempotent)."""
    from keel.engine.errors import ContainerNotFound

    if not _SESSION_ID.match(sid):
        raise EngineError(f"exec session {sid!r}: not a session id")
    try:
        c = eng.db.find(ref)
    except ContainerNotFound:
        return
    shutil.rmtree(os.path.join(sessions_dir(eng, c["id"]), sid), ignore_errors=True)


def wait_sessions(eng, cid: str, timeout: float = SESSION_WAIT) -> None:
    """Wait for the conmons of a container's exec sessions to exit (their processes die with
    the container); SIGKILL what is left after `timeout`, so that removing the container's
    directories does not race with a conmon still writing in them."""
    base = sessions_dir(eng, cid)
    deadline = time.monotonic() + timeout
    for sid in (os.listdir(base) if os.path.isdir(base) else []):
        pid = _session_conmon(os.path.join(base, sid), sid)
        while pid and _is_session_conmon(pid, sid):
            if time.monotonic() >= deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, 9)
                break
            time.sleep(0.02)


def _session_conmon(d: str, sid: str) -> int:
    try:
        with open(os.path.join(d, "conmon.pid")) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return 0


def _is_session_conmon(pid: int, sid: str) -> bool:
    """Is `pid` still the session's conmon (its command line names the session; a zombie
    or a recycled pid does not count)?"""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read()
        with open(f"/proc/{pid}/stat", "rb") as f:
            st = f.read()
    except OSError:
        return False
    return sid.encode() in cmd and st[st.rindex(b")") + 2:st.rindex(b")") + 3] != b"Z"
