"""keel.engine.attach and keel.engine.exec through the Python API, on real conmon with
keel-runtime and runc: the attach socket protocol (stream bytes, input, EOF), the ctl fifo,
exec sessions, and their failures."""

import os
import socket
import threading

import pytest

import engine_helpers
from engine_helpers import RUNTIMES
from keel.engine import Engine, attach
from keel.engine import exec as exec_
from keel.engine.errors import EngineError, InvalidState

IMAGE = "localhost/busybox:latest"


@pytest.fixture(autouse=True)
def no_leftovers(tmp_path):
    """The conftest's check without its machine-wide netns count (other test runs on this
    machine change it; our containers' paths are under tmp_path, which the rest checks)."""
    before = engine_helpers.snapshot()
    yield
    problems = [p for p in engine_helpers.leftovers(tmp_path, before)
                if not p.startswith("network namespaces:")]
    assert not problems, "left behind: " + "; ".join(problems)


@pytest.fixture(params=RUNTIMES)
def engine(request, roots):
    e = Engine(*roots)
    e.test_runtime = request.param
    yield e
    for c in e.containers():
        e.remove(c["id"], force=True)
    e.close()


def _start_attached(engine, c):
    held = {}
    engine.start(c["id"], on_created=lambda cur: held.setdefault(
        "sock", attach.connect(engine.bundle_dir(cur["id"]), cur["name"])))
    return held["sock"]


def _pipes():
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    return out_r, out_w, err_r, err_w


def _drain(fd, into):
    def run():
        while True:
            b = os.read(fd, 65536)
            if not b:
                break
            into.append(b)
        os.close(fd)
    t = threading.Thread(target=run)
    t.start()
    return t


def _stream(sock, stdin_fd=None, **kw):
    out_r, out_w, err_r, err_w = _pipes()
    out, err = [], []
    threads = [_drain(out_r, out), _drain(err_r, err)]
    try:
        how = attach.stream(sock, stdin_fd=stdin_fd, stdout_fd=out_w, stderr_fd=err_w, **kw)
    finally:
        os.close(out_w)
        os.close(err_w)
        for t in threads:
            t.join(20)
    return how, b"".join(out), b"".join(err)


def test_output_streams_and_exit(engine):
    c = engine.create(IMAGE, ["sh", "-c", "echo out; echo err >&2; echo more; exit 9"], runtime=engine.test_runtime)
    sock = _start_attached(engine, c)
    how, out, err = _stream(sock)
    assert (how, out, err) == ("exited", b"out\nmore\n", b"err\n")
    assert sock.fileno() == -1                     # stream closes the socket
    assert engine.wait(c["id"]) == 9


def test_input_in_records_and_eof(engine):
    """Input goes in records of at most 8192 bytes (conmon drops the rest of a bigger one);
    EOF on our side closes the container's stdin."""
    c = engine.create(IMAGE, ["md5sum"], runtime=engine.test_runtime, interactive=True)
    sock = _start_attached(engine, c)
    data = os.urandom(100_000)
    r, w = os.pipe()
    writer = threading.Thread(target=lambda: (os.write(w, data), os.close(w)))
    writer.start()
    how, out, _ = _stream(sock, stdin_fd=r)
    writer.join()
    os.close(r)
    import hashlib

    assert how == "exited" and out.split()[0].decode() == hashlib.md5(data).hexdigest()
    assert engine.wait(c["id"]) == 0


def test_a_record_too_big_for_conmon_is_cut(engine):
    """Why stream() sends pieces: conmon reads one record into a buffer of 8192 bytes."""
    c = engine.create(IMAGE, ["wc", "-c"], runtime=engine.test_runtime, interactive=True)
    sock = _start_attached(engine, c)
    sock.send(b"x" * 8192)
    sock.shutdown(socket.SHUT_WR)
    how, out, _ = _stream(sock)
    assert out.split() == [b"8192"]


def test_input_filter_detaches(engine):
    """Detaching leaves a terminal container running (without a terminal, conmon closes the
    container's stdin when a client leaves: that is what -i without -t means to conmon)."""
    c = engine.create(IMAGE, ["cat"], runtime=engine.test_runtime, interactive=True, tty=True)
    sock = _start_attached(engine, c)
    r, w = os.pipe()
    os.write(w, b"abc")
    seen = []

    def filt(data):
        seen.append(data)
        return data, True

    how, _, _ = _stream(sock, stdin_fd=r, input_filter=filt)
    os.close(r)
    os.close(w)
    assert (how, seen) == ("detached", [b"abc"])
    assert engine.get(c["id"])["state"] == "running"


def test_resize_through_ctl(engine):
    # conmon reads the ctl fifo and the attach socket in no fixed order: the container
    # itself watches for the new size (10 s at most) instead of being told when to look
    script = ('stty size; i=0; while [ "$(stty size)" != "12 34" ] && [ $i -lt 200 ]; '
              'do sleep 0.05; i=$((i+1)); done; stty size')
    c = engine.create(IMAGE, ["sh", "-c", script], runtime=engine.test_runtime,
                      interactive=True, tty=True, console_size=(20, 70))
    assert c["config"]["process"]["terminal"] is True
    assert c["config"]["process"]["consoleSize"] == {"height": 20, "width": 70}
    sock = _start_attached(engine, c)
    bundle = engine.bundle_dir(c["id"])
    assert attach.resize(bundle, 12, 34)
    how, out, err = _stream(sock)
    assert how == "exited" and out.endswith(b"12 34\r\n") and err == b"", out
    assert engine.wait(c["id"]) == 0
    assert not attach.resize(bundle, 1, 1)        # conmon is gone: nobody reads ctl


def test_connect_errors(engine, tmp_path):
    with pytest.raises(EngineError, match="no attach socket"):
        attach.connect(str(tmp_path / "nowhere"), "container x")
    c = engine.create(IMAGE, ["true"], runtime=engine.test_runtime)
    with pytest.raises(EngineError, match="no attach socket"):
        attach.connect(engine.bundle_dir(c["id"]), "container x")


def test_exec_session_api(engine):
    c = engine.create(IMAGE, ["sleep", "1000"], runtime=engine.test_runtime)
    engine.start(c["id"])
    fds = sorted(os.listdir("/proc/self/fd"))
    sess = exec_.start(engine, c["name"], ["sh", "-c", "echo hi; exit 5"])
    assert sess.pid > 0 and os.path.isdir(sess.dir)
    how, out, _ = _stream(sess.sock)
    assert (how, out) == ("exited", b"hi\n")
    assert sess.wait() == 5
    assert not os.path.exists(sess.dir)
    with pytest.raises(exec_.ExecFailed, match="nosuch"):
        exec_.start(engine, c["id"], ["nosuch"])
    with pytest.raises(EngineError, match="no command"):
        exec_.start(engine, c["id"], [])
    with pytest.raises(EngineError, match="not a session id"):
        exec_.cleanup(engine, c["id"], "../../etc")
    assert os.listdir(exec_.sessions_dir(engine, c["id"])) == []
    assert sorted(os.listdir("/proc/self/fd")) == fds          # no pipe or socket of ours left


def test_exec_needs_a_running_container(engine):
    c = engine.create(IMAGE, ["true"], runtime=engine.test_runtime)
    with pytest.raises(InvalidState, match="can only create exec sessions on running containers"):
        exec_.start(engine, c["id"], ["true"])
    engine.start(c["id"])
    engine.wait(c["id"])
    with pytest.raises(InvalidState, match="is exited"):
        exec_.start(engine, c["id"], ["true"])
