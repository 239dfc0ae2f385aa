"""`keel exec` end to end, podman's semantics: the command's exit code, stdio passed through,
the container's env plus -e, -u, -w, --privileged, -i, -it on a pty of the test's own, -d,
and clean failures; each test on keel-runtime and on runc, nothing left behind."""

import os
import re
import termios

import pytest

from interactive_helpers import (IMAGE, keel, no_leftovers, one_line_error, wait_for,  # noqa: F401
                                 wait_raw)
from keel.image.bundle import DOCKER_CAPS
from keel.kernel import caps


@pytest.fixture
def box(keel):
    """A running container named box, with an env var and a working dir of its own."""
    keel.ok("run", "-d", "--name", "box", "-e", "FROM_RUN=1", "-w", "/etc", IMAGE, "sleep", "1000")
    return "box"


def _sessions(keel, ref):
    d = keel.bundle(ref) / "exec"
    return sorted(os.listdir(d)) if d.is_dir() else []


def _session_conmons(keel):
    """conmon processes of exec sessions of this test (their command lines name our run root)."""
    out = []
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open(f"/proc/{p}/cmdline", "rb") as f:
                cmd = f.read().split(b"\0")
        except OSError:
            continue
        if cmd and cmd[0].endswith(b"conmon") and b"-e" in cmd and str(keel.runroot).encode() in b" ".join(cmd):
            out.append(int(p))
    return out


def _caps_eff(text):
    return int(re.search(r"CapEff:\s*([0-9a-f]+)", text).group(1), 16)


def test_exit_code_and_stdio(keel, box):
    assert keel("exec", box, "true").returncode == 0
    r = keel("exec", box, "sh", "-c", "echo out; echo err >&2; exit 7")
    assert (r.returncode, r.stdout, r.stderr) == (7, "out\n", "err\n")
    r = keel("exec", box, "sh", "-c", "kill -TERM $$")
    assert r.returncode == 128 + 15
    r = keel("exec", box, "cat", input="no -i: not passed\n")
    assert (r.returncode, r.stdout) == (0, "")
    r = keel("exec", "-t", box, "sh", "-c", "tty; echo err >&2; exit 2")   # no terminal on our side
    assert r.returncode == 2 and re.fullmatch(r"/dev/pts/\d+\nerr\n", r.stdout), r   # one pty for both streams
    assert _sessions(keel, box) == []


def test_env_user_workdir(keel, box, tmp_path):
    env = dict(line.split("=", 1) for line in keel.ok("exec", box, "env").splitlines())
    assert env["FROM_RUN"] == "1" and env["PATH"] and env["HOME"] == "/root"
    envfile = tmp_path / "envfile"
    envfile.write_text("# a comment\nFROM_FILE=f\nFROM_RUN=file\n")
    keel.env["FROM_HOST"] = "h"
    out = keel.ok("exec", "-e", "ADDED=a b", "--env-file", envfile, "-e", "FROM_HOST", box, "env")
    env = dict(line.split("=", 1) for line in out.splitlines())
    assert (env["ADDED"], env["FROM_FILE"], env["FROM_RUN"], env["FROM_HOST"]) == ("a b", "f", "file", "h")
    assert keel.ok("exec", box, "pwd") == "/etc\n"                      # the container's cwd
    assert keel.ok("exec", "-w", "/tmp", box, "pwd") == "/tmp\n"
    assert keel.ok("exec", box, "id").startswith("uid=0(root) gid=0(root)")
    assert keel.ok("exec", "-u", "nobody", box, "sh", "-c", "id -u; id -g; echo $HOME") == "65534\n65534\n/nonexistent\n"
    assert keel.ok("exec", "-u", "1234:5678", box, "sh", "-c", "id -u; id -g") == "1234\n5678\n"
    assert "nosuchuser" in one_line_error(keel("exec", "-u", "nosuchuser", box, "true"))
    assert _sessions(keel, box) == []


def test_privileged(keel, box):
    default = _caps_eff(keel.ok("exec", box, "cat", "/proc/self/status"))
    assert default == sum(1 << caps.CAP_NUMBERS[c] for c in DOCKER_CAPS)
    every = _caps_eff(keel.ok("exec", "--privileged", box, "cat", "/proc/self/status"))
    assert every == caps.current_bounding()   # all that keel may give (podman's rule)
    assert every & ~default


def test_interactive_stdin(keel, box):
    r = keel("exec", "-i", box, "sh", "-c", "cat; echo done", input="a\nb\n")
    assert (r.returncode, r.stdout) == (0, "a\nb\ndone\n")
    data = os.urandom(200_000) + b"\x10\x11"          # detach keys are data without a terminal
    r = keel("exec", "-i", box, "wc", "-c", input=data)
    assert (r.returncode, r.stdout.split()) == (0, [str(len(data)).encode()])


def test_exec_it_is_a_real_terminal(keel, box):
    with keel.pty("exec", "-it", box, "sh", rows=30, cols=90) as s:
        wait_raw(s)
        s.send(b"tty; stty size; echo $TERM\r")
        s.expect(rb"/dev/pts/\d+\r\n30 90\r\nxterm\r\n")
        s.set_size(31, 91)
        s.send(b"stty size\r")
        s.expect(rb"\r\n31 91\r\n")
        s.send(b"exit 4\r")
        assert s.wait() == 4
        assert termios.tcgetattr(s.master) == s.initial
    assert _sessions(keel, box) == []


def test_exec_it_detach_leaves_it_running(keel, box):
    with keel.pty("exec", "-it", box, "sh") as s:
        wait_raw(s)
        s.send(b"echo $$ > /tmp/shell; echo AB$((1+2))\r")
        s.expect(rb"AB3\r\n")
        s.send(b"\x10\x11")
        assert s.wait() == 0
    pid = keel.ok("exec", box, "cat", "/tmp/shell").strip()
    assert pid in keel.ok("exec", box, "ps", "-o", "pid").split()
    assert len(_sessions(keel, box)) == 1
    keel.ok("exec", box, "kill", "-9", pid)
    wait_for(lambda: _sessions(keel, box) == [], what="the session's exit command to clean up")


def test_detached(keel, box):
    r = keel("exec", "-d", box, "sh", "-c", "echo $$ > /tmp/pid; exec sleep 1000")
    assert r.returncode == 0, r.stderr
    sid = r.stdout.strip()
    assert re.fullmatch(r"[0-9a-f]{64}", sid)
    pid = wait_for(lambda: keel("exec", box, "cat", "/tmp/pid").stdout.strip(), what="the pid file")
    assert "sleep 1000" in keel.ok("exec", box, "ps", "-o", "pid,args")
    assert _sessions(keel, box) == [sid]
    # (the conmons of the foreground execs above may still be finishing their exit command)
    wait_for(lambda: len(_session_conmons(keel)) == 1, what="one session conmon")
    keel.ok("exec", box, "kill", pid)
    wait_for(lambda: _sessions(keel, box) == [] and not _session_conmons(keel),
             what="the detached session to be cleaned up")
    assert keel.inspect(box)["State"]["Status"] == "running"


def test_rm_with_sessions_running(keel, box):
    keel.ok("exec", "-d", box, "sleep", "1000")
    keel.ok("exec", "-d", "-it", box, "sh")
    assert len(_sessions(keel, box)) == 2
    keel.ok("rm", "-f", box)
    assert not _session_conmons(keel)
    assert os.listdir(keel.runroot / "containers") == []


def test_failures(keel, box):
    r = keel("exec", box, "nosuchcommand")
    assert r.returncode == 127, r.stderr
    assert r.stderr.startswith("Error: ") and "nosuchcommand" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    r = keel("exec", box, "/etc/passwd")
    assert r.returncode == 126, r.stderr
    assert keel("exec", box, "/no/such/file").returncode == 127
    one_line_error(keel("exec", box))                                    # no command
    r = keel("exec", "-w", "/no/such/dir", box, "true")
    assert r.returncode in (125, 126, 127) and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "nosuch" in one_line_error(keel("exec", "nosuch", "true"))
    assert "--detach-keys" in one_line_error(keel("exec", "--detach-keys", "ctrl-", box, "true"))
    assert _sessions(keel, box) == []
    assert not _session_conmons(keel)


def test_not_running(keel):
    keel.ok("create", "--name", "made", IMAGE, "sleep", "100")
    assert "running" in one_line_error(keel("exec", "made", "true"))
    keel.ok("run", "--name", "done", IMAGE, "true")
    assert "running" in one_line_error(keel("exec", "done", "true"))
    assert "running" in one_line_error(keel("exec", "-d", "done", "true"))
    assert not _session_conmons(keel)
