"""The per-container monitor: conmon, the C monitor podman and CRI-O use.

conmon is started the way podman starts it. It forks (the first process exits at once, having
written --conmon-pidfile), the daemon becomes a subreaper in its own session, runs
`RUNTIME <runtime-args> create --bundle B --pid-file P ID` with pipes as the container's
stdout/stderr, and reports on the sync pipe (fd number in $_OCI_SYNCPIPE) one JSON line:
`{"data": PID}` once the container is created, or `{"data": -1, "message": "..."}` when the
runtime failed. It then writes the container's output to the log file in the Kubernetes CRI
format, and when the container exits it drains the pipes, syncs the log, writes the exit code
(128+N for a signal) to <exit-dir>/<id>, and runs the --exit-command (`keel container cleanup`)
before it exits itself. `keel` never waits for conmon: the container outlives it.
"""

import contextlib
import json
import os
import select
import shutil
import subprocess
import time

from keel.engine.errors import MonitorFailed
from keel.kernel.boot import boot_id  # engine.py calls it as monitor.boot_id too

CONMON = "conmon"
SYNC_TIMEOUT = 120.0
MIN_LOG_SIZE = 8192  # podman's floor for --log-opt max-size


def find_conmon() -> str:
    path = os.environ.get("KEEL_CONMON") or shutil.which(CONMON) or "/usr/bin/conmon"
    if not os.access(path, os.X_OK):
        raise MonitorFailed("conmon not found: install the conmon package (or set KEEL_CONMON)")
    return path


def start_time(pid: int) -> str:
    """Field 22 of /proc/PID/stat (start time in clock ticks), '' if no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return ""
    return data[data.rindex(b")") + 2:].split()[19].decode()


def alive(pid: int, start: str, boot: str) -> bool:
    """Is the process we started (same pid, start time and boot) still there (not a zombie)?"""
    if pid <= 0 or not start or boot != boot_id():
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return False
    rest = data[data.rindex(b")") + 2:].split()
    return rest[0] != b"Z" and rest[19].decode() == start


@contextlib.contextmanager
def console_tmpdir(env: dict, terminal: bool):
    """With a terminal, conmon binds its console socket at $TMPDIR/conmon-term.XXXXXX and
    removes it only once the runtime connected: a runtime that fails earlier leaves it behind
    (podman leaks these in /tmp). Give conmon a private TMPDIR, removed when the launch is
    over either way. Its path is short: conmon cuts a console socket path at 107 bytes."""
    if not terminal:
        yield
        return
    import tempfile

    base = tempfile.gettempdir()
    if len(base) > 60:
        base = "/tmp"
    d = tempfile.mkdtemp(prefix="keel-console-", dir=base)
    env["TMPDIR"] = d
    try:
        yield
    finally:
        shutil.rmtree(d, ignore_errors=True)


def launch(*, cid: str, name: str, runtime_path: str, runtime_root: str, bundle: str,
           log_path: str, exit_dir: str, exit_command: list[str], runtime_log: str,
           terminal: bool = False, stdin: bool = False,
           log_size_max: int | None = None, exit_delay: int = 0) -> tuple[int, int]:
    """Start conmon for container `cid` (bundle already written); wait for the runtime's create.
    Returns (container pid, conmon pid). MonitorFailed carries the runtime's error.

    terminal: conmon takes the pty master the runtime sends to its console socket (-t);
    else stdin: conmon keeps a pipe to the container's stdin for attach clients (-i). As in
    podman, -t alone carries stdin too: the pty master is the container's input.
    log_size_max: conmon starts the log afresh when the next write would pass that many bytes
    (podman's --log-opt max-size)."""
    conmon = find_conmon()
    pidfile = os.path.join(bundle, "pidfile")
    conmon_pidfile = os.path.join(bundle, "conmon.pid")
    argv = [conmon, "--api-version", "1", "-c", cid, "-u", cid, "-r", runtime_path, "-b", bundle,
            "-p", pidfile, "-n", name, "--exit-dir", exit_dir, "--full-attach",
            "--socket-dir-path", bundle, "-l", f"k8s-file:{log_path}", "--log-level", "warning",
            "--runtime-arg", "--root", "--runtime-arg", runtime_root,
            "--runtime-arg", "--log-format=json", "--runtime-arg", "--log",
            "--runtime-arg", runtime_log, "--conmon-pidfile", conmon_pidfile,
            *(["-t"] if terminal else ["-i"] if stdin else []), "--exit-command", exit_command[0]]
    if log_size_max is not None and log_size_max > 0:
        argv += ["--log-size-max", str(log_size_max)]
    if exit_delay:
        argv += ["--exit-delay", str(exit_delay)]
    for a in exit_command[1:]:
        argv += ["--exit-command-arg", a]
    r, w = os.pipe()
    os.set_inheritable(w, True)
    env = dict(os.environ, _OCI_SYNCPIPE=str(w))
    env.pop("_OCI_STARTPIPE", None)
    try:
        with console_tmpdir(env, terminal):
            try:
                proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, cwd=bundle, env=env, pass_fds=(w,))
            except OSError as e:
                raise MonitorFailed(f"{conmon}: {(e.strerror or str(e)).lower()}") from None
            os.close(w)
            w = -1
            out, _ = proc.communicate(timeout=SYNC_TIMEOUT)
            if proc.returncode != 0:
                text = out.decode(errors="replace").strip().splitlines()
                raise MonitorFailed(f"conmon: {text[-1] if text else f'exit status {proc.returncode}'}")
            msg = read_sync(r)   # the console was taken (or the runtime failed) before this
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)
    try:
        with open(conmon_pidfile) as f:
            conmon_pid = int(f.read().strip())
    except (OSError, ValueError):
        conmon_pid = 0
    if msg is None:
        raise MonitorFailed(_runtime_error(runtime_log) or "conmon exited without reporting the container's pid")
    pid = msg.get("data")
    if not isinstance(pid, int) or pid <= 0:
        why = (msg.get("message") or "").strip()
        why = why.splitlines()[-1] if why else ""
        from keel.engine.ociruntime import error_text

        raise MonitorFailed(error_text(why) if why else (_runtime_error(runtime_log) or "runtime create failed"))
    return pid, conmon_pid


def read_sync(fd: int, timeout: float | None = SYNC_TIMEOUT) -> dict | None:
    """The next JSON line conmon writes on a sync pipe (None on EOF); timeout None waits
    as long as it takes (an exec session's exit code comes when its process exits)."""
    buf = b""
    deadline = None if timeout is None else time.monotonic() + timeout
    while b"\n" not in buf:
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            raise MonitorFailed(f"conmon: no answer on the sync pipe in {timeout:.0f}s")
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        chunk = os.read(fd, 1)   # byte by byte: a second message must stay in the pipe
        if not chunk:
            break
        buf += chunk
    line = buf.split(b"\n", 1)[0].strip()
    if not line:
        return None
    try:
        msg = json.loads(line)
    except ValueError:
        raise MonitorFailed(f"conmon: unexpected sync message {line[:100]!r}") from None
    return msg if isinstance(msg, dict) else None


def _runtime_error(runtime_log: str) -> str:
    """The last error the runtime logged (--log, --log-format=json)."""
    try:
        with open(runtime_log, errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return ""
    for ln in reversed(lines):
        try:
            entry = json.loads(ln)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("level") in ("error", "fatal") and entry.get("msg"):
            return str(entry["msg"])
    return ""


def read_exit_file(exit_dir: str, cid: str) -> tuple[int, float] | None:
    """(exit code, time written) from conmon's exit file, or None when not written yet."""
    path = os.path.join(exit_dir, cid)
    try:
        with open(path) as f:
            text = f.read().strip()
        mtime = os.stat(path).st_mtime
    except OSError:
        return None
    try:
        return int(text), mtime
    except ValueError:
        return None
