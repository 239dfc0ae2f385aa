"""`keel run -i/-t`, `start -a -i`, `attach` and the detach keys, end to end on a pty of the
test's own (CI has no terminal), each container test on keel-runtime and on runc."""

import hashlib
import os
import subprocess
import termios

import pytest

from interactive_helpers import (IMAGE, conmon_fds, is_raw, keel, no_leftovers,  # noqa: F401
                                 one_line_error, wait_for, wait_raw)
from keel.cli.terminal import DetachKeys, parse_detach_keys
from keel.engine.errors import EngineError


def _assert_clean(keel):
    assert keel("ps", "-aq").stdout.split() == []
    assert os.listdir(keel.runroot / "containers") == []


# -- detach keys (no container) -----------------------------------------------------------------

def test_parse_detach_keys():
    assert parse_detach_keys("ctrl-p,ctrl-q") == b"\x10\x11"
    assert parse_detach_keys("ctrl-a,d") == b"\x01d"
    assert parse_detach_keys("ctrl-@,ctrl-[,ctrl-\\,ctrl-],ctrl-^,ctrl-_") == bytes([0, 27, 28, 29, 30, 31])
    assert parse_detach_keys("") == b""
    for bad in ("ctrl-", "ctrl-1", "ab", "ctrl-p,,ctrl-q", "ctrl-pp"):
        with pytest.raises(EngineError, match="--detach-keys"):
            parse_detach_keys(bad)


def test_detach_keys_scanner():
    k = DetachKeys(b"\x10\x11")
    assert k.feed(b"abc") == (b"abc", False)
    assert k.feed(b"x\x10") == (b"x", False)           # a possible start is held back
    assert k.feed(b"y") == (b"\x10y", False)           # ... and let go when it breaks
    assert k.feed(b"\x10\x10") == (b"\x10", False)     # the second ctrl-p may still start it
    assert k.feed(b"\x11rest") == (b"", True)
    k = DetachKeys(b"\x10\x11")
    assert k.feed(b"hi\x10\x11") == (b"hi", True)
    assert DetachKeys(b"").feed(b"\x10\x11") == (b"\x10\x11", False)


# -- terminals -----------------------------------------------------------------------------------

def test_run_it_is_a_real_terminal(keel):
    """A tty inside, sized like ours and following our resizes; typed input echoed and run;
    `exit 3` gives 3; our terminal is restored; --rm removes the container."""
    with keel.pty("run", "--rm", "-it", IMAGE, "sh", rows=33, cols=101) as s:
        s.expect(rb"# ")
        wait_raw(s)
        s.send(b"tty; stty size\r")
        s.expect(rb"/dev/pts/\d+\r\n33 101\r\n")
        s.set_size(40, 120)
        s.send(b"stty size\r")
        s.expect(rb"\r\n40 120\r\n")
        s.send(b"echo AB$((6*7))\r")
        s.expect(rb"echo AB\$\(\(6\*7\)\)")                     # the pty echoes what we type
        s.expect(rb"AB42\r\n")
        s.send(b"sh -c 'echo S$((1+1))T; exec sleep 100'\r")
        s.expect(rb"S2T\r\n")              # sleep is in the foreground of the container's tty
        s.send(b"\x03")                    # ctrl-c: the container's tty interrupts sleep, not keel
        s.expect(rb"\^C")
        s.send(b"echo CD$((5+5))\r")
        s.expect(rb"CD10\r\n")
        s.send(b"exit 3\r")
        assert s.wait() == 3
        assert termios.tcgetattr(s.master) == s.initial
    _assert_clean(keel)


def test_detach_and_attach_again(keel):
    with keel.pty("run", "-it", "--name", "box", IMAGE, "sh") as s:
        s.expect(rb"# ")
        wait_raw(s)
        s.send(b"echo AB$((1+1))\r")
        s.expect(rb"AB2\r\n")
        s.send(b"\x10\x11")                                    # ctrl-p ctrl-q
        assert s.wait() == 0
        assert termios.tcgetattr(s.master) == s.initial
    assert keel.inspect("box")["State"]["Status"] == "running"
    with keel.pty("attach", "box") as s:
        wait_raw(s)
        s.send(b"echo CD$((2+2))\r")
        s.expect(rb"CD4\r\n")
        s.send(b"exit 3\r")
        assert s.wait() == 3
    st = keel.inspect("box")["State"]
    assert (st["Status"], st["ExitCode"]) == ("exited", 3)


def test_detach_with_rm_then_attach(keel):
    """A --rm container left with the detach keys runs on; attaching again and ending it
    gives its exit code, and --rm removes it."""
    with keel.pty("run", "--rm", "-it", "--name", "box", IMAGE, "sh") as s:
        wait_raw(s)
        s.send(b"\x10\x11")
        assert s.wait() == 0
    assert keel.inspect("box")["State"]["Status"] == "running"
    with keel.pty("attach", "box") as s:
        wait_raw(s)
        s.send(b"exit 5\r")
        assert s.wait() == 5
    wait_for(lambda: keel("ps", "-aq").stdout.split() == [], what="--rm to remove it")
    _assert_clean(keel)


def test_custom_and_disabled_detach_keys(keel):
    """A broken prefix of the detach keys reaches the container; --detach-keys "" never
    detaches (ctrl-p ctrl-q are just bytes then)."""
    with keel.pty("run", "-it", "--name", "c1", "--detach-keys", "ctrl-x,x", IMAGE, "cat") as s:
        wait_raw(s)
        s.send(b"a\x18bc\x10\r")          # ctrl-x then b: no detach, both go through
        s.expect(rb"a\^Xbc\^P\r\n")        # the container's tty echoes control chars as ^X
        s.expect(rb"a\x18bc\x10\r\n")      # and cat prints the line back
        s.send(b"\x18x")
        assert s.wait() == 0
    assert keel.inspect("c1")["State"]["Status"] == "running"
    keel.ok("rm", "-f", "c1")
    # the container's tty must not eat ctrl-q as flow control (IXON) for this check
    with keel.pty("run", "--rm", "-it", "--detach-keys", "", IMAGE, "sh", "-c", "stty -ixon; echo ready; cat") as s:
        s.expect(rb"ready\r\n")
        s.send(b"\x10\x11\r")
        s.expect(rb"\x10\x11\r\n")
        s.send(b"\x04")                    # ctrl-d: EOF on the container's tty, cat ends
        assert s.wait() == 0
    _assert_clean(keel)


def test_attach_and_detach_leak_nothing_in_conmon(keel):
    cid = keel.ok("run", "-d", "-it", "--name", "box", IMAGE, "sh").strip()
    cfg = keel.inspect("box")["Config"]
    assert (cfg["Tty"], cfg["OpenStdin"], "TERM=xterm" in cfg["Env"]) == (True, True, True)
    def state():
        fds = conmon_fds(keel, "box")
        return [f for f in fds if f != "socket:"], fds.count("socket:")

    others = None
    for n in range(4):
        if n == 1:   # conmon opens its OOM watch fds after it reported the pid: count from here
            others = wait_for(lambda: state()[0], what="conmon's fds")
        with keel.pty("attach", "box") as s:
            wait_raw(s)
            s.send(f"echo X$(({n}*11))\r".encode())
            s.expect(f"X{n * 11}\r\n".encode())
            s.send(b"\x10\x11")
            assert s.wait() == 0
    # the listening attach socket, and at most the last client's: conmon closes a gone client's
    # socket when it next writes output to it
    assert wait_for(lambda: state()[0] == others and state()[1] <= 2, 10, "conmon's fds to settle")
    assert os.path.exists(keel.runroot / "containers" / cid / "attach")
    keel.ok("rm", "-f", "box")
    _assert_clean(keel)


def test_run_t_without_a_terminal(keel):
    """-t with no terminal on our side (CI): the container still gets a pty."""
    r = keel("run", "--rm", "-t", IMAGE, "sh", "-c", "tty; exit 2")
    assert r.returncode == 2, r.stderr
    assert r.stdout.startswith("/dev/pts/"), r.stdout
    _assert_clean(keel)


# -- stdin without a terminal --------------------------------------------------------------------

def test_run_i_pipes_stdin_and_eof_closes_it(keel):
    r = keel("run", "--rm", "-i", IMAGE, "sh", "-c", "cat; echo done", input="hi\nthere\n")
    assert (r.returncode, r.stdout, r.stderr) == (0, "hi\nthere\ndone\n", "")
    data = os.urandom(300_000)                          # many records of 8192 bytes, binary
    r = keel("run", "--rm", "-i", IMAGE, "md5sum", input=data)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[0].decode() == hashlib.md5(data).hexdigest()
    _assert_clean(keel)


def test_input_waits_while_the_container_does_not_read(keel):
    """The container reads nothing for a while: our input waits, its output still flows."""
    data = b"x" * 1_000_000
    r = keel("run", "--rm", "-i", IMAGE, "sh", "-c", "echo early; sleep 1; wc -c", input=data)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [b"early", b"1000000"]


def test_large_output_arrives_whole(keel):
    """Output comes through the attach socket in records of 8192 bytes: none lost, none
    reordered, on stdout and on stderr."""
    r = keel("run", "--rm", IMAGE, "sh", "-c", "seq 1 300000; seq 1 1000 >&2", input=b"")
    assert r.returncode == 0
    assert r.stdout == "".join(f"{i}\n" for i in range(1, 300001)).encode()
    assert r.stderr == "".join(f"{i}\n" for i in range(1, 1001)).encode()


def test_run_without_i_gives_no_stdin(keel):
    r = keel("run", "--rm", IMAGE, "cat", input="not for the container\n")
    assert (r.returncode, r.stdout) == (0, "")


def test_stdout_and_stderr_stay_apart(keel):
    r = keel("run", "--rm", "-i", IMAGE, "sh", "-c", "read x; echo out $x; echo err $x >&2; exit 5",
             input="v\n")
    assert (r.returncode, r.stdout, r.stderr) == (5, "out v\n", "err v\n")


def test_run_d_i_then_attach_with_stdin(keel):
    keel.ok("run", "-d", "-i", "--name", "cat", IMAGE, "sh", "-c", "cat; exit 4")
    r = keel("attach", "cat", input="hello\n")
    assert (r.returncode, r.stdout) == (4, "hello\n"), r.stderr


def test_attach_no_stdin(keel):
    """--no-stdin: our input is not read; the container waits for a client that sends it,
    and both clients see its output."""
    keel.ok("run", "-d", "-i", "--name", "cat", IMAGE, "sh", "-c", "read x; echo got $x")
    fds = len(conmon_fds(keel, "cat"))
    proc = subprocess.Popen(keel.argv("attach", "--no-stdin", "cat"), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE)
    try:
        proc.stdin.write(b"ignored\n")
        proc.stdin.close()
        wait_for(lambda: len(conmon_fds(keel, "cat")) == fds + 1, what="the first client to connect")
        r = keel("attach", "cat", input="sent\n")
        assert (r.returncode, r.stdout) == (0, "got sent\n")
        assert (proc.wait(timeout=20), proc.stdout.read()) == (0, b"got sent\n")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()


def test_start_attach_interactive(keel):
    keel.ok("create", "-i", "--name", "c", IMAGE, "sh", "-c", "read x; echo [$x]; exit 6")
    r = keel("start", "-a", "-i", "c", input="in\n")
    assert (r.returncode, r.stdout) == (6, "[in]\n"), r.stderr
    keel.ok("create", "-i", "--name", "d", IMAGE, "sh", "-c", "read x; echo [$x]")
    r = keel("start", "-i", "d", input="only -i\n")          # -i alone attaches too
    assert (r.returncode, r.stdout) == (0, "[only -i]\n"), r.stderr


# -- errors ----------------------------------------------------------------------------------------

def test_attach_errors(keel):
    keel.ok("create", "--name", "made", IMAGE, "true")
    assert "running" in one_line_error(keel("attach", "made"))
    one_line_error(keel("attach", "nosuch"))
    keel.ok("run", "--name", "done", IMAGE, "true")
    assert "running" in one_line_error(keel("attach", "done"))


def test_bad_detach_keys_make_nothing(keel):
    assert "--detach-keys" in one_line_error(keel("run", "--detach-keys", "ctrl-9", IMAGE, "true"))
    assert keel("ps", "-aq").stdout.split() == []
    keel.ok("run", "-d", "-i", "--name", "c", IMAGE, "cat")
    assert "--detach-keys" in one_line_error(keel("attach", "--detach-keys", "nope", "c"))
    assert keel.inspect("c")["State"]["Status"] == "running"


def test_terminal_restored_when_the_container_is_killed(keel):
    with keel.pty("run", "-it", "--name", "box", IMAGE, "sh") as s:
        wait_raw(s)
        assert is_raw(s)
        keel.ok("kill", "box")
        assert s.wait() == 137
        assert termios.tcgetattr(s.master) == s.initial


def test_runtime_failing_before_the_console_leaves_nothing(keel):
    """conmon's console socket is removed even when the runtime fails before connecting to
    it (podman leaves /tmp/conmon-term.* behind then)."""
    def consoles():
        return {n for n in os.listdir("/tmp") if n.startswith("conmon-term.")}

    before = consoles()
    r = keel("run", "--rm", "-t", "--runtime", "/bin/false", IMAGE, "true")
    assert r.returncode == 125 and r.stderr.startswith("Error: "), r.stderr
    keel.ok("run", "-d", "--name", "box", IMAGE, "sleep", "100")
    r = keel("exec", "-t", "box", "nosuch")
    assert r.returncode == 127, r.stderr
    assert consoles() - before == set()
    keel.ok("rm", "-f", "box")
    _assert_clean(keel)
