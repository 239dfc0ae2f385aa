"""Helpers for the tests of `keel run -i/-t`, `attach` and `exec`.

PtySession: CI has no terminal and no stdin, so each test opens its own pty, makes it the
controlling terminal of the command, types into its master side and reads what a user would
see. Keel: the `keel` command with a private --root/--runroot (busybox loaded offline)."""

import errno
import json
import fcntl
import os
import re
import select
import signal
import struct
import subprocess
import termios
import sys
import time

import pytest

# engine_helpers (the engine tests' leftover checks and RUNTIMES) lives beside tests/cli.
_ENGINE_TESTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "engine")
if _ENGINE_TESTS not in sys.path:
    sys.path.insert(0, _ENGINE_TESTS)
import engine_helpers  # noqa: E402


class PtySession:
    def __init__(self, argv, *, env=None, rows=24, cols=80):
        self.master, slave = os.openpty()
        self.set_size(rows, cols, fd=slave)
        self.initial = termios.tcgetattr(self.master)   # what keel must restore

        def ctty():
            os.setsid()
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        self.proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env,
                                     preexec_fn=ctty, close_fds=True)
        os.close(slave)
        self.out = b""
        self.seen = 0   # expect() searches from here

    def set_size(self, rows, cols, fd=None):
        """TIOCSWINSZ: the kernel sends SIGWINCH to the terminal's foreground process group."""
        fcntl.ioctl(self.master if fd is None else fd, termios.TIOCSWINSZ,
                    struct.pack("HHHH", rows, cols, 0, 0))

    def _read(self, timeout):
        r, _, _ = select.select([self.master], [], [], timeout)
        if not r:
            return True
        try:
            data = os.read(self.master, 65536)
        except OSError as e:
            if e.errno != errno.EIO:   # EIO: no slave fd is open any more
                raise
            data = b""
        if not data:
            return False
        self.out += data
        return True

    def expect(self, pattern, timeout=20.0):
        """Wait for `pattern` (bytes regex) in the output after the last match; the match."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            m = rx.search(self.out, self.seen)
            if m:
                self.seen = m.end()
                return m
            left = deadline - time.monotonic()
            if left <= 0 or not self._read(min(left, 0.2)) and not rx.search(self.out, self.seen):
                if left <= 0 or self.proc.poll() is not None:
                    raise AssertionError(f"{pattern!r} not seen; output: {self.out!r}")

    def send(self, data):
        os.write(self.master, data)

    def wait(self, timeout=30.0):
        """Exit code of the command; drains the output meanwhile."""
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            if time.monotonic() >= deadline:
                raise AssertionError(f"command still running after {timeout}s; output: {self.out!r}")
            self._read(0.1)
        while self._read(0.05) and self._pending():
            pass
        return self.proc.returncode

    def _pending(self):
        r, _, _ = select.select([self.master], [], [], 0)
        return bool(r)

    def close(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        os.close(self.master)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def wait_raw(session, timeout=20.0):
    """Wait until the command put its terminal in raw mode (no echo): from then on what the
    test types goes to the container, not to the local line discipline."""
    deadline = time.monotonic() + timeout
    while termios.tcgetattr(session.master)[3] & termios.ECHO:
        if time.monotonic() >= deadline or session.proc.poll() is not None:
            raise AssertionError(f"the terminal never went raw; output: {session.out!r}")
        session._read(0.05)


def is_raw(session):
    return not termios.tcgetattr(session.master)[3] & (termios.ECHO | termios.ICANON)


IMAGE = "localhost/busybox:latest"


class Keel:
    """`keel` with private roots; calls return CompletedProcess (text unless input is bytes)."""

    def __init__(self, tmp_path, runtime):
        self.root, self.runroot = tmp_path / "root", tmp_path / "run"
        self.runtime = runtime
        self.env = dict(os.environ)

    def argv(self, *args):
        args = [str(a) for a in args]
        if args and args[0] in ("run", "create"):
            args = [args[0], "--runtime", self.runtime] + args[1:]
        return [sys.executable, "-m", "keel.cli.main", "--root", str(self.root),
                "--runroot", str(self.runroot), *args]

    def __call__(self, *args, input=None, timeout=60):
        return subprocess.run(self.argv(*args), capture_output=True, timeout=timeout, env=self.env,
                              input=input, text=not isinstance(input, bytes),
                              stdin=None if input is not None else subprocess.DEVNULL)

    def ok(self, *args, **kw):
        r = self(*args, **kw)
        assert r.returncode == 0, (args, r.stdout, r.stderr)
        return r.stdout

    def pty(self, *args, rows=24, cols=80):
        return PtySession(self.argv(*args), env=self.env, rows=rows, cols=cols)

    def inspect(self, ref):
        return json.loads(self.ok("container", "inspect", ref))[0]

    def bundle(self, ref):
        return self.runroot / "containers" / self.inspect(ref)["Id"]


def make_keel(tmp_path, runtime, oci_busybox):
    k = Keel(tmp_path, runtime)
    r = k("load", "-i", oci_busybox)
    assert r.returncode == 0, r.stderr
    image_id = r.stdout.strip().rsplit(" ", 1)[-1]
    k.ok("tag", image_id, IMAGE)
    return k


def remove_all(keel):
    ids = keel("ps", "-aq").stdout.split()
    if ids:
        keel("rm", "-f", *ids)


def conmon_fds(keel, ref):
    """What the container's conmon has open: the sorted fd targets, socket/pipe inode numbers
    left out (conmon keeps the last client's socket until its next write to it fails, so the
    same count can sit on another fd number)."""
    pid = keel.inspect(ref)["State"]["ConmonPid"]
    out = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            out.append(re.sub(r"\[\d+\]$", "", os.readlink(f"/proc/{pid}/fd/{fd}")))
        except OSError:
            pass
    return sorted(out)


def wait_for(predicate, timeout=20.0, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def one_line_error(r):
    """The command failed like podman: exit 125 and exactly one line 'Error: ...'."""
    err = r.stderr if isinstance(r.stderr, str) else r.stderr.decode()
    assert r.returncode == 125, (r.returncode, r.stdout, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), err
    return lines[0]


def own_leftovers(tmp_path, before):
    """engine_helpers.leftovers without its machine-wide netns count, which other test runs on
    this machine change at the same time; our containers' netns paths are under tmp_path and
    its mount check sees them."""
    return [p for p in engine_helpers.leftovers(tmp_path, before)
            if not p.startswith("network namespaces:")]


# Fixtures of test_interactive.py and test_keel_exec.py (each imports them by name).

@pytest.fixture(autouse=True)
def no_leftovers(tmp_path):
    before = engine_helpers.snapshot()
    yield
    problems = own_leftovers(tmp_path, before)
    assert not problems, "left behind: " + "; ".join(problems)


@pytest.fixture(params=engine_helpers.RUNTIMES)
def keel(request, tmp_path, oci_busybox):
    k = make_keel(tmp_path, request.param, oci_busybox)
    yield k
    remove_all(k)
