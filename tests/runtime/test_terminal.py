"""process.terminal: the pty master handed over --console-socket, consoleSize, run -t."""

import os
import time

import runtime_helpers as h


def _talk(master, script, marker=b"END-OF-TEST"):
    os.write(master, script.encode() + b"; echo END-OF-TEST\n")
    # the echo of the typed line holds the marker too: read up to the second one
    out = h.pty_read_until(master, marker)
    if out.count(marker) < 2:
        out += h.pty_read_until(master, marker)
    return out.decode(errors="replace")


def test_console_socket(bundle, runtime, console):
    bundle.process["terminal"] = True
    bundle.process["consoleSize"] = {"height": 33, "width": 111}
    bundle.args("sh")
    bundle.create_ok("--console-socket", console.path)
    master = console.receive()
    assert bundle.start().rc == 0
    out = _talk(master, "echo $((6*7)); tty; stty size; ls -l /proc/self/fd/0; test -t 0 && echo is-a-tty")
    assert "42" in out
    assert "/dev/pts/0" in out
    assert "33 111" in out
    assert "is-a-tty" in out
    os.write(master, b"exit 5\n")
    runtime.wait_status(bundle.id, "stopped")


def test_console_is_controlling_terminal(bundle, runtime, console):
    bundle.process["terminal"] = True
    bundle.args("sh")
    bundle.create_ok("--console-socket", console.path)
    master = console.receive()
    bundle.start()
    out = _talk(master, "cat /proc/self/stat | cut -d' ' -f7; ls -l /dev/console")
    # tty_nr is non-zero with a controlling terminal; /dev/console is the same pty
    lines = [line.strip() for line in out.splitlines()]
    assert any(line.isdigit() and int(line) != 0 for line in lines), out
    assert "/dev/console" in out
    os.write(master, b"exit\n")
    runtime.wait_status(bundle.id, "stopped")


def test_console_size_default(bundle, runtime, console):
    bundle.process["terminal"] = True
    bundle.args("sh")
    bundle.create_ok("--console-socket", console.path)
    master = console.receive()
    bundle.start()
    out = _talk(master, "stty size")
    # no consoleSize: the pty keeps the kernel's 0x0 (busybox stty refuses to print that)
    assert "0 0" in out or "stty: standard input" in out, out
    os.write(master, b"exit\n")
    runtime.wait_status(bundle.id, "stopped")


def test_run_with_console_socket(bundle, runtime, console):
    bundle.process["terminal"] = True
    bundle.sh("read x; echo got-$x; exit 4").save()
    p = runtime.popen("run", "--console-socket", console.path, "--bundle", bundle.path, bundle.id)
    master = console.receive()
    os.write(master, b"hello\n")
    out = h.pty_read_until(master, b"got-hello")
    assert b"got-hello" in out
    assert p.wait(timeout=10) == 4


def test_run_terminal_without_console_socket(bundle, runtime):
    """run -t in the foreground proxies the pty to its own stdio (here pipes: CI has no tty)."""
    bundle.process["terminal"] = True
    bundle.sh("test -t 1 && echo on-a-tty; exit 6")
    r = bundle.run()
    assert r.rc == 6, r
    assert "on-a-tty" in r.out


def test_terminal_needs_console_socket_for_create(bundle, runtime):
    bundle.process["terminal"] = True
    r = bundle.create()
    assert r.rc != 0
    assert len(r.err_lines) == 1 and "console-socket" in r.err, r


def test_console_socket_needs_terminal(bundle, runtime, console):
    r = bundle.create("--console-socket", console.path)
    assert r.rc != 0
    assert len(r.err_lines) == 1 and "terminal" in r.err, r


def test_console_socket_missing(bundle, runtime, tmp_path):
    bundle.process["terminal"] = True
    r = bundle.create("--console-socket", tmp_path / "nope.sock")
    assert r.rc != 0
    assert len(r.err_lines) == 1 and "nope.sock" in r.err, r


def test_detached_run_with_terminal(bundle, runtime, console):
    bundle.process["terminal"] = True
    bundle.args("sh")
    r = bundle.run("--detach", "--console-socket", console.path)
    assert r.rc == 0, r
    master = console.receive()
    assert "ok-7" in _talk(master, "echo ok-$((3+4))")
    os.write(master, b"exit\n")
    runtime.wait_status(bundle.id, "stopped")
    time.sleep(0)
