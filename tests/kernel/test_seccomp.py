"""keel.kernel.seccomp against the real kernel and libseccomp.

Every filter is loaded in a forked child (a filter can never be removed); the child
sends its observations back as JSON through a pipe and exits, and the parent checks them
and the child's exit status.
"""

import ctypes
import errno
import json
import os
import platform
import resource
import select
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from keel.kernel import seccomp
from keel.kernel.errors import SeccompError

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")

SRC = str(Path(__file__).resolve().parents[2] / "src")
PODMAN_PROFILE = Path("/usr/share/containers/seccomp.json")
# containers.conf default_capabilities of podman 4.3 (Debian 12)
PODMAN_CAPS = {
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL",
    "CAP_NET_BIND_SERVICE", "CAP_SETFCAP", "CAP_SETGID", "CAP_SETPCAP", "CAP_SETUID",
    "CAP_SYS_CHROOT",
}

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
NR = {name: seccomp.resolve_syscall(name) for name in (
    "uname", "umask", "kill", "personality", "getppid", "getpid", "bpf", "vmsplice", "add_key",
    "keyctl", "socket", "close", "mkdir", "mkdirat",
)}


def sys_call(name, *args):
    """The raw syscall (no glibc wrapper logic): returns 0 / the result, or -errno."""
    ctypes.set_errno(0)
    res = _libc.syscall(NR[name], *(ctypes.c_ulong(a & 0xFFFFFFFFFFFFFFFF) for a in args))
    return -ctypes.get_errno() if res == -1 else res


def run_child(body, timeout=10.0):
    """Runs body() in a forked child; returns (wait status, what body returned or None)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 0
        try:
            os.close(r)
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # core_pattern is "core"
            data = json.dumps({"ok": body()})
        except BaseException as e:  # noqa: BLE001 - reported to the parent
            data, code = json.dumps({"error": f"{type(e).__name__}: {e}"}), 99
        try:
            os.write(w, data.encode())
        finally:
            os._exit(code)
    os.close(w)
    chunks = []
    deadline = time.monotonic() + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([r], [], [], left)[0]:
                os.kill(pid, signal.SIGKILL)
                pytest.fail("child timed out")
            chunk = os.read(r, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(r)
        _, status = os.waitpid(pid, 0)
    out = json.loads(b"".join(chunks)) if chunks else None
    if out and "error" in out:
        pytest.fail(f"child failed: {out['error']}")
    return status, (out or {}).get("ok")


def load_and(profile, body, log=None):
    """A child that loads `profile` and then runs body(); returns (status, result)."""
    f = seccomp.Filter(profile, log=log)  # built in the parent: the child inherits it

    def child():
        f.load()
        return body()

    try:
        return run_child(child)
    finally:
        f.release()


def exited(status, code=0):
    return os.WIFEXITED(status) and os.WEXITSTATUS(status) == code


def killed_by(status):
    return os.WTERMSIG(status) if os.WIFSIGNALED(status) else None


def allow_but(*rules, **extra):
    return {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": list(rules), **extra}


def os_errno(fn, *args):
    try:
        fn(*args)
    except OSError as e:
        return e.errno
    return 0


# -- actions -------------------------------------------------------------------------------


def test_errno_rule_fails_exactly_those_syscalls_with_that_errno(tmp_path):
    profile = allow_but(
        {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EXDEV},
        {"names": ["uname"], "action": "SCMP_ACT_ERRNO"},  # no errnoRet: EPERM
    )
    status, res = load_and(profile, lambda: [
        os_errno(os.mkdir, str(tmp_path / "d")),
        os_errno(os.uname),
        os_errno(os.listdir, str(tmp_path)),
    ])
    assert exited(status)
    assert res == [errno.EXDEV, errno.EPERM, 0]
    assert not (tmp_path / "d").exists()


def test_default_errno_ret_with_an_allow_list():
    keep = ["write", "exit_group", "exit", "brk", "mmap", "munmap", "mremap", "madvise",
            "rt_sigreturn", "rt_sigprocmask", "rt_sigaction", "futex", "getpid", "gettid",
            "close", "fstat", "newfstatat", "lseek", "read", "getrandom", "sigaltstack"]
    profile = {
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": errno.ENXIO,
        "syscalls": [{"names": keep, "action": "SCMP_ACT_ALLOW"},
                     {"names": ["umask"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EROFS}],
    }
    status, res = load_and(profile, lambda: [
        os_errno(os.uname), sys_call("getppid"), sys_call("umask", 0o22), sys_call("getpid") > 0,
    ])
    assert exited(status)
    assert res == [errno.ENXIO, -errno.ENXIO, -errno.EROFS, True]


def test_default_action_errno_without_errno_ret_is_eperm():
    profile = {"defaultAction": "SCMP_ACT_ERRNO",
               "syscalls": [{"names": ["write", "exit_group", "brk", "mmap", "munmap",
                                       "rt_sigreturn", "rt_sigprocmask", "futex"],
                             "action": "SCMP_ACT_ALLOW"}]}
    status, res = load_and(profile, lambda: os_errno(os.uname))
    assert exited(status) and res == errno.EPERM


@pytest.mark.parametrize("action", ["SCMP_ACT_KILL", "SCMP_ACT_KILL_THREAD",
                                    "SCMP_ACT_KILL_PROCESS"])
def test_kill_actions_kill_the_child_with_sigsys(action):
    status, res = load_and(allow_but({"names": ["uname"], "action": action}),
                           lambda: os.uname() and "survived")
    assert killed_by(status) == signal.SIGSYS and res is None


def test_trap_delivers_sigsys_to_a_handler():
    def body():
        got = []
        signal.signal(signal.SIGSYS, lambda signum, frame: got.append(signum))
        sys_call("uname", 0)
        for _ in range(100):  # the handler runs at the next bytecode boundary
            if got:
                break
        return got

    status, res = load_and(allow_but({"names": ["uname"], "action": "SCMP_ACT_TRAP"}), body)
    assert exited(status) and res == [signal.SIGSYS]


def test_log_allows():
    status, res = load_and(allow_but({"names": ["uname"], "action": "SCMP_ACT_LOG"}),
                           lambda: os.uname().sysname)
    assert exited(status) and res == "Linux"


def test_rule_equal_to_default_action_is_skipped():
    profile = {"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": errno.EPERM, "syscalls": [
        {"names": ["umask"], "action": "SCMP_ACT_ERRNO"},  # == default: libseccomp refuses
        {"names": ["write", "exit_group", "brk", "mmap", "munmap", "rt_sigreturn", "futex"],
         "action": "SCMP_ACT_ALLOW"},
        {"names": ["write"], "action": "SCMP_ACT_ALLOW"},  # repeated: fine
    ]}
    status, res = load_and(profile, lambda: sys_call("umask", 0o22))
    assert exited(status) and res == -errno.EPERM


# -- argument conditions -------------------------------------------------------------------


def test_args_eq_only_that_value_is_refused():
    profile = allow_but({"names": ["personality"], "action": "SCMP_ACT_ERRNO",
                         "errnoRet": errno.EDOM,
                         "args": [{"index": 0, "value": 0xFFFFFFFF, "op": "SCMP_CMP_EQ"}]})
    status, res = load_and(profile, lambda: [sys_call("personality", 0xFFFFFFFF),
                                             sys_call("personality", 0)])
    assert exited(status) and res == [-errno.EDOM, 0]


def test_args_masked_eq_and_comparisons():
    profile = allow_but(
        # (mode & 0o700) == 0o700
        {"names": ["umask"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EROFS,
         "args": [{"index": 0, "value": 0o700, "valueTwo": 0o700, "op": "SCMP_CMP_MASKED_EQ"}]},
        {"names": ["personality"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EDOM,
         "args": [{"index": 0, "value": 0x10, "op": "SCMP_CMP_GT"}]},
    )
    status, res = load_and(profile, lambda: [
        sys_call("umask", 0o777), sys_call("umask", 0o750), sys_call("umask", 0o022),
        sys_call("personality", 0x11), sys_call("personality", 0xFFFFFFFF),
        sys_call("personality", 0),
    ])
    assert exited(status)
    assert res[:2] == [-errno.EROFS, -errno.EROFS] and res[2] >= 0
    assert res[3:] == [-errno.EDOM, -errno.EDOM, 0]


def test_conditions_on_different_args_all_must_match():
    def body():
        me = os.getpid()
        return [sys_call("kill", me, 0), sys_call("kill", 1, 0),
                sys_call("kill", me, signal.SIGWINCH)]

    def profile_for(pid):
        return allow_but({"names": ["kill"], "action": "SCMP_ACT_ERRNO", "errnoRet": 77,
                          "args": [{"index": 0, "value": pid, "op": "SCMP_CMP_EQ"},
                                   {"index": 1, "value": 0, "op": "SCMP_CMP_EQ"}]})

    # The pid is only known in the child: build the filter there.
    def child():
        seccomp.Filter(profile_for(os.getpid())).load()
        return body()

    status, res = run_child(child)
    assert exited(status) and res == [-77, 0, 0]


def test_conditions_on_the_same_arg_become_separate_rules_like_runc():
    profile = allow_but({"names": ["umask"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EROFS,
                         "args": [{"index": 0, "value": 0o777, "op": "SCMP_CMP_EQ"},
                                  {"index": 0, "value": 0o770, "op": "SCMP_CMP_EQ"}]})
    status, res = load_and(profile, lambda: [sys_call("umask", 0o777), sys_call("umask", 0o770),
                                             sys_call("umask", 0o022) >= 0])
    assert exited(status) and res == [-errno.EROFS, -errno.EROFS, True]


# -- names, architectures, flags, no_new_privs -----------------------------------------------


def test_unknown_syscall_names_are_skipped_and_logged():
    lines = []
    profile = allow_but({"names": ["no_such_syscall_keel", "uname"], "action": "SCMP_ACT_ERRNO"})
    status, res = load_and(profile, lambda: os_errno(os.uname), log=lines.append)
    assert exited(status) and res == errno.EPERM
    assert lines == ['seccomp: unknown syscall "no_such_syscall_keel" skipped '
                     "(linux.seccomp.syscalls[0])"]


def test_architectures_and_flags_load():
    supported = seccomp.features()["supportedFlags"]
    profile = allow_but({"names": ["uname"], "action": "SCMP_ACT_ERRNO"},
                        architectures=["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
                        flags=supported)
    if platform.machine() != "x86_64":
        profile["architectures"] = []
    status, res = load_and(profile, lambda: os_errno(os.uname))
    assert exited(status) and res == errno.EPERM


def test_loads_without_no_new_privs_and_leaves_it_unset():
    def status_fields():
        with open("/proc/self/status") as f:
            fields = dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)
        return [fields["NoNewPrivs"], fields["Seccomp"]]

    assert status_fields()[0] == "0"  # pytest itself: no NNP, but CAP_SYS_ADMIN
    status, res = load_and(allow_but({"names": ["uname"], "action": "SCMP_ACT_ERRNO"}),
                           status_fields)
    assert exited(status) and res == ["0", "2"]


# -- validation ----------------------------------------------------------------------------

ALLOW = {"defaultAction": "SCMP_ACT_ALLOW"}


def one(**entry):
    return {**ALLOW, "syscalls": [{"names": ["uname"], "action": "SCMP_ACT_ERRNO", **entry}]}


def arg(**a):
    return one(args=[{"index": 0, "value": 1, "op": "SCMP_CMP_EQ", **a}])


def entries(*actions, **last):
    """Syscall entries a, b, c... with these actions; `last` extends the last one."""
    out = [{"names": [chr(97 + i)], "action": a} for i, a in enumerate(actions)]
    out[-1].update(last)
    return {**ALLOW, "syscalls": out}


U64 = (1 << 64) - 1
NOT_ERRNO = "only SCMP_ACT_ERRNO and SCMP_ACT_TRACE take an errno, not "
# (profile, the error after "linux.seccomp")
BAD = [
    ([], ": expected an object, got list"),
    ({}, ".defaultAction: required"),
    ({"defaultAction": "SCMP_ACT_NOPE"}, '.defaultAction: unknown action "SCMP_ACT_NOPE"'),
    ({"defaultAction": 1}, ".defaultAction: expected a string, got number"),
    (entries("SCMP_ACT_ALLOW", "SCMP_ACT_LOG", "SCMP_ACT_TRAP", "SCMP_ACT_FOO"),
     '.syscalls[3].action: unknown action "SCMP_ACT_FOO"'),
    (entries("SCMP_ACT_ALLOW", "SCMP_ACT_LOG", "SCMP_ACT_ERRNO",
             args=[{"index": 0, "value": 1, "op": "SCMP_CMP_BAD"}]),
     '.syscalls[2].args[0].op: unknown operator "SCMP_CMP_BAD"'),
    ({**ALLOW, "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_VAX"]},
     '.architectures[1]: unknown architecture "SCMP_ARCH_VAX"'),
    ({**ALLOW, "architectures": "SCMP_ARCH_X86_64"},
     ".architectures: expected a list of strings, got string"),
    ({**ALLOW, "flags": ["SECCOMP_FILTER_FLAG_LOG", "SECCOMP_FILTER_FLAG_BOGUS"]},
     '.flags[1]: unknown flag "SECCOMP_FILTER_FLAG_BOGUS"'),
    ({**ALLOW, "syscalls": {"names": ["uname"]}}, ".syscalls: expected a list of objects, got object"),
    ({**ALLOW, "syscalls": {}}, ".syscalls: expected a list of objects, got object"),
    ({**ALLOW, "syscalls": ["uname"]}, ".syscalls[0]: expected an object, got string"),
    (one(names="uname"), ".syscalls[0].names: expected a list of strings, got string"),
    (one(names=[]), ".syscalls[0].names: must name at least one syscall"),
    (one(names=["uname", 3]), ".syscalls[0].names[1]: expected a syscall name, got number"),
    ({**ALLOW, "syscalls": [{"names": ["uname"]}]}, ".syscalls[0].action: required"),
    (one(errnoRet="1"), ".syscalls[0].errnoRet: expected an unsigned integer, got string"),
    (one(errnoRet=-1), ".syscalls[0].errnoRet: -1 is out of range (0-65535)"),
    (one(action="SCMP_ACT_KILL", errnoRet=1), ".syscalls[0].errnoRet: " + NOT_ERRNO + "SCMP_ACT_KILL"),
    ({**ALLOW, "defaultErrnoRet": 1}, ".defaultErrnoRet: " + NOT_ERRNO + "SCMP_ACT_ALLOW"),
    (one(args={"index": 0}), ".syscalls[0].args: expected a list of objects, got object"),
    (arg(index=6), ".syscalls[0].args[0].index: 6 is out of range (0-5)"),
    (arg(index=True), ".syscalls[0].args[0].index: expected an unsigned integer, got boolean"),
    (arg(value=U64 + 1), f".syscalls[0].args[0].value: {U64 + 1} is out of range (0-{U64})"),
    (arg(value=None), ".syscalls[0].args[0].value: required"),
    (arg(valueTwo=-2), f".syscalls[0].args[0].valueTwo: -2 is out of range (0-{U64})"),
    (arg(op=None), ".syscalls[0].args[0].op: required"),
    ({"defaultAction": "SCMP_ACT_NOTIFY", "listenerPath": "/x"},
     ".defaultAction: SCMP_ACT_NOTIFY cannot be the default action"),
    ({**entries("SCMP_ACT_NOTIFY", names=["read", "write"]), "listenerPath": "/x"},
     ".syscalls[0].names: SCMP_ACT_NOTIFY cannot be used for the write syscall"),
    (entries("SCMP_ACT_NOTIFY"), ".listenerPath: required when SCMP_ACT_NOTIFY is used"),
    ({**ALLOW, "listenerMetadata": "m"}, ".listenerMetadata: set without listenerPath"),
    ({**ALLOW, "listenerPath": 3}, ".listenerPath: expected a string, got number"),
]


@pytest.mark.parametrize("profile,message", BAD, ids=[m[:40] for _, m in BAD])
def test_validation_errors_name_the_field(profile, message):
    with pytest.raises(SeccompError) as e:
        seccomp.validate(profile)
    assert str(e.value).startswith("linux.seccomp" + message)
    assert "\n" not in str(e.value)
    with pytest.raises(SeccompError) as e2:  # Filter() checks the same way
        seccomp.Filter(profile)
    assert str(e2.value) == str(e.value)


def test_conflicting_rules_are_an_error_naming_the_entry():
    cond = [{"index": 0, "value": 1, "op": "SCMP_CMP_EQ"}]
    profile = allow_but({"names": ["uname"], "action": "SCMP_ACT_ERRNO", "args": cond},
                        {"names": ["getcwd"], "action": "SCMP_ACT_LOG"},
                        {"names": ["uname"], "action": "SCMP_ACT_KILL_PROCESS", "args": cond})
    seccomp.validate(profile)  # only libseccomp can tell
    with pytest.raises(SeccompError, match=r'^linux\.seccomp\.syscalls\[2\]: add rule for "uname": '
                                           r"conflicts with an earlier rule"):
        seccomp.Filter(profile)


def test_unsupported_flag_is_an_error():
    unsupported = [f for f in seccomp.features()["knownFlags"]
                   if f not in seccomp.features()["supportedFlags"]]
    if not unsupported:
        pytest.skip("this libseccomp and kernel support every known flag")
    with pytest.raises(SeccompError, match=r"^linux\.seccomp\.flags\[0\]: flag \"SECCOMP_FILTER_"
                                           r"\w+\" is not supported by libseccomp"):
        seccomp.validate({**ALLOW, "flags": [unsupported[0]]})


def test_enabled_like_runc():
    assert not seccomp.enabled(None)
    assert not seccomp.enabled({})
    assert not seccomp.enabled({"defaultAction": "", "syscalls": []})
    assert seccomp.enabled(ALLOW)
    assert seccomp.enabled({"syscalls": [{"names": ["uname"], "action": "SCMP_ACT_ERRNO"}]})


def test_good_profiles_validate():
    seccomp.validate({"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 38, "flags": [],
                      "architectures": ["SCMP_ARCH_X86_64"], "syscalls": None})
    seccomp.validate({"defaultAction": "SCMP_ACT_TRACE", "defaultErrnoRet": 1,
                      "syscalls": [{"names": ["uname"], "action": "SCMP_ACT_ALLOW", "args": None},
                                   {"names": ["no_such_call"], "action": "SCMP_ACT_KILL_PROCESS"},
                                   {"names": ["uname"], "action": "SCMP_ACT_ERRNO", "errnoRet": 0,
                                    "args": [{"index": 5, "value": 0, "valueTwo": 0,
                                              "op": "SCMP_CMP_MASKED_EQ"}]}]})


# -- features, import cost -----------------------------------------------------------------


def test_features_report_what_this_libseccomp_supports():
    feat = seccomp.features()
    assert feat["enabled"] is True
    assert {"SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO", "SCMP_ACT_KILL", "SCMP_ACT_TRAP",
            "SCMP_ACT_TRACE"} <= set(feat["actions"])
    assert ("SCMP_ACT_NOTIFY" in feat["actions"]) == (seccomp.api_level() >= 6)
    assert feat["operators"] == sorted(["SCMP_CMP_NE", "SCMP_CMP_LT", "SCMP_CMP_LE", "SCMP_CMP_EQ",
                                        "SCMP_CMP_GE", "SCMP_CMP_GT", "SCMP_CMP_MASKED_EQ"])
    if platform.machine() == "x86_64":
        assert {"SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"} <= set(feat["archs"])
    assert set(feat["supportedFlags"]) <= set(feat["knownFlags"])
    if seccomp.version() < (2, 6, 0):  # SCMP_FLTATR_CTL_WAITKILL came with 2.6
        assert "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV" not in feat["supportedFlags"]
    for flag in feat["supportedFlags"]:
        seccomp.validate({**ALLOW, "flags": [flag]})


def test_import_is_cheap():
    # Importing the module loads nothing beyond its own error class: no ctypes, no
    # libseccomp, no json/re/enum/socket (start-up path of keel-runtime).
    code = ("import sys; sys.path.insert(0, %r); import keel.kernel.errors; "
            "before = set(sys.modules); import keel.kernel.seccomp as s; "
            "print(' '.join(sorted(set(sys.modules) - before)), s._state)" % SRC)
    out = subprocess.run([sys.executable, "-I", "-S", "-c", code], check=True,
                         capture_output=True, text=True).stdout.split()
    assert out == ["keel.kernel.seccomp", "None"]


# -- SCMP_ACT_NOTIFY -------------------------------------------------------------------------

SECCOMP_IOCTL_NOTIF_RECV = 0xC0502100  # _IOWR('!', 0, struct seccomp_notif)      (80 bytes)
SECCOMP_IOCTL_NOTIF_SEND = 0xC0182101  # _IOWR('!', 1, struct seccomp_notif_resp) (24 bytes)


@pytest.mark.skipif(seccomp.api_level() < 6, reason="libseccomp API level < 6: no notify")
def test_notify_fd_reaches_the_listener_and_works(tmp_path):
    import fcntl

    path = str(tmp_path / "agent.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    listener.settimeout(10)
    profile = allow_but({"names": ["uname"], "action": "SCMP_ACT_NOTIFY"},
                        listenerPath=path, listenerMetadata="the-meta")

    def child():
        f = seccomp.Filter(profile)
        fd = f.load()
        assert isinstance(fd, int) and fd >= 0
        state = {"ociVersion": "1.0.2", "id": "c1", "status": "creating", "pid": os.getpid(),
                 "bundle": "/b", "annotations": {"k": "v"}}
        seccomp.send_notify_fd(path, fd, state, metadata="the-meta")
        os.close(fd)
        return os_errno(os.uname)  # blocks until the agent answers

    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 0
        try:
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
            listener.close()
            os.close(r)
            data = json.dumps({"ok": child()})
        except BaseException as e:  # noqa: BLE001
            data, code = json.dumps({"error": f"{type(e).__name__}: {e}"}), 99
        os.write(w, data.encode())
        os._exit(code)
    os.close(w)
    try:
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(10)
            msg, fds, _flags, _addr = socket.recv_fds(conn, 65536, 4)
            while chunk := conn.recv(65536):
                msg += chunk
        assert len(fds) == 1
        payload = json.loads(msg)
        assert payload["fds"] == ["seccompFd"]
        assert payload["pid"] == pid and payload["metadata"] == "the-meta"
        assert payload["ociVersion"] == "1.0.2"
        assert payload["state"]["id"] == "c1" and payload["state"]["pid"] == pid
        nfd = fds[0]
        try:
            assert os.readlink(f"/proc/self/fd/{nfd}") == "anon_inode:seccomp notify"
            # The child's uname(2) is now waiting on us: receive it, answer EXDEV.
            assert select.select([nfd], [], [], 10)[0], "no notification"
            req = bytearray(80)
            fcntl.ioctl(nfd, SECCOMP_IOCTL_NOTIF_RECV, req, True)
            nid, npid, _nflags, nr = struct.unpack_from("=QIIi", req)
            assert npid == pid and nr == NR["uname"]
            resp = bytearray(struct.pack("=QqiI", nid, 0, -errno.EXDEV, 0))
            fcntl.ioctl(nfd, SECCOMP_IOCTL_NOTIF_SEND, resp, True)
        finally:
            os.close(nfd)
        select.select([r], [], [], 10)
        out = json.loads(os.read(r, 65536))
    finally:
        listener.close()
        os.close(r)
        _, status = os.waitpid(pid, 0)
    assert out == {"ok": errno.EXDEV} and exited(status)


def test_send_notify_fd_failure_names_the_listener(tmp_path):
    path = str(tmp_path / "nobody.sock")
    with pytest.raises(SeccompError, match=r'^linux\.seccomp\.listenerPath: send seccomp fd to '
                                           r'".*nobody\.sock": no such file or directory'):
        seccomp.send_notify_fd(path, 0, {"pid": 1})


def test_no_notify_rule_means_no_fd():
    status, res = load_and(allow_but({"names": ["uname"], "action": "SCMP_ACT_ERRNO"}),
                           lambda: None)
    assert exited(status)
    f = seccomp.Filter(ALLOW)
    try:
        status, res = run_child(f.load)
    finally:
        f.release()
    assert exited(status) and res is None


# -- the default profile podman uses -------------------------------------------------------

GOARCH = {"x86_64": "amd64", "aarch64": "arm64"}
NATIVE_ARCH = {"x86_64": "SCMP_ARCH_X86_64", "aarch64": "SCMP_ARCH_AARCH64"}


def podman_default_profile(caps=PODMAN_CAPS):
    """The OCI linux.seccomp podman would put in config.json for these capabilities.

    containers/common's seccomp.json is a template: entries are kept or dropped by
    their includes/excludes (arches, caps, minKernel), and archMap gives the
    architectures for the native one.
    """
    machine = platform.machine()
    tmpl = json.loads(PODMAN_PROFILE.read_text())
    goarch, native = GOARCH[machine], NATIVE_ARCH[machine]
    kernel = tuple(int(x) for x in platform.release().split("-")[0].split(".")[:2])
    arches = [native]
    for m in tmpl.get("archMap") or ():
        if m["architecture"] == native:
            arches += m["subArchitectures"]

    def keep(entry):
        inc, exc = entry.get("includes") or {}, entry.get("excludes") or {}
        if inc.get("arches") and goarch not in inc["arches"]:
            return False
        if exc.get("arches") and goarch in exc["arches"]:
            return False
        if inc.get("caps") and not set(inc["caps"]) <= caps:
            return False
        if exc.get("caps") and set(exc["caps"]) & caps:
            return False
        if inc.get("minKernel"):
            want = tuple(int(x) for x in inc["minKernel"].split(".")[:2])
            if kernel < want:
                return False
        return True

    syscalls = []
    for e in tmpl["syscalls"]:
        if keep(e):
            s = {"names": e["names"], "action": e["action"], "args": e.get("args") or []}
            if e.get("errnoRet") is not None:
                s["errnoRet"] = e["errnoRet"]
            syscalls.append(s)
    return {"defaultAction": tmpl["defaultAction"], "defaultErrnoRet": tmpl.get("defaultErrnoRet"),
            "architectures": arches, "syscalls": syscalls}


def podman_checks():
    """What a container under podman's default profile sees (run after loading it)."""
    pid = os.fork()
    if pid == 0:
        try:
            os.execv("/bin/true", ["true"])
        finally:
            os._exit(127)
    _, st = os.waitpid(pid, 0)
    s = sys_call("socket", socket.AF_UNIX, socket.SOCK_STREAM, 0)
    if s >= 0:
        os.close(s)
    return {
        "true": os.waitstatus_to_exitcode(st),
        "uname": os.uname().sysname,
        "unix_socket": s >= 0,
        # entries dropped for missing CAP_SYS_ADMIN and the explicit EPERM list
        "bpf": sys_call("bpf", 0, 0, 0),
        "vmsplice": sys_call("vmsplice", 0, 0, 0, 0),
        # not in the profile at all: defaultErrnoRet (ENOSYS)
        "add_key": sys_call("add_key", 0, 0, 0, 0, 0),
        "personality_other": sys_call("personality", 0x0040000),
        # allowed by argument conditions
        "personality_query": sys_call("personality", 0xFFFFFFFF),
        # socket(AF_NETLINK, SOCK_RAW, NETLINK_AUDIT) refused without CAP_AUDIT_WRITE
        "audit_socket": sys_call("socket", 16, 3, 9),
        # allowed: the kernel, not seccomp, answers (here: no such key / a keyring id)
        "keyctl": sys_call("keyctl", 0, 0xFFFFFFFD, 0),
    }


def assert_podman_checks(res):
    assert res["true"] == 0 and res["uname"] == "Linux" and res["unix_socket"]
    assert res["bpf"] == -errno.EPERM and res["vmsplice"] == -errno.EPERM
    assert res["add_key"] == -errno.ENOSYS and res["personality_other"] == -errno.ENOSYS
    assert res["personality_query"] >= 0
    assert res["audit_socket"] == -errno.EINVAL
    assert res["keyctl"] not in (-errno.EPERM, -errno.ENOSYS)


needs_podman = pytest.mark.skipif(not PODMAN_PROFILE.exists() or platform.machine() not in GOARCH,
                                  reason="no podman default profile for this machine")


@needs_podman
def test_podman_default_profile():
    profile = podman_default_profile()
    seccomp.validate(profile)

    def child():
        t0 = time.perf_counter()
        f = seccomp.Filter(profile)
        t1 = time.perf_counter()
        f.load()
        t2 = time.perf_counter()
        return {**podman_checks(), "build_ms": (t1 - t0) * 1000, "load_ms": (t2 - t1) * 1000}

    status, res = run_child(child)
    assert exited(status), status
    print(f"podman default profile: build {res['build_ms']:.2f} ms, load {res['load_ms']:.2f} ms")
    assert_podman_checks(res)


@needs_podman
def test_podman_default_profile_as_a_cached_program():
    f = seccomp.Filter(podman_default_profile())
    try:
        program = f.export()
    finally:
        f.release()
    assert program.flags & 4 == (4 if "SECCOMP_FILTER_FLAG_SPEC_ALLOW" in
                                 seccomp.features()["supportedFlags"] else 0)
    blob = program.to_bytes()

    def child():
        t0 = time.perf_counter()
        fd = seccomp.Program.from_bytes(blob).load()
        t1 = time.perf_counter()
        return {**podman_checks(), "fd": fd, "load_ms": (t1 - t0) * 1000}

    status, res = run_child(child)
    assert exited(status), status
    print(f"podman default profile, cached program: load {res['load_ms']:.2f} ms")
    assert_podman_checks(res)
    assert res["fd"] is None


def test_program_rejects_garbage():
    with pytest.raises(SeccompError, match="not a cached keel seccomp program"):
        seccomp.Program.from_bytes(b"nonsense")
    with pytest.raises(SeccompError, match="not a whole number of instructions"):
        seccomp.Program(b"\0" * 7, 0)


@pytest.mark.skipif(seccomp.api_level() < 6, reason="libseccomp API level < 6: no notify")
def test_program_with_notify_returns_the_listener_fd():
    f = seccomp.Filter(allow_but({"names": ["mkdirat"], "action": "SCMP_ACT_NOTIFY"},
                                 listenerPath="/unused", flags=["SECCOMP_FILTER_FLAG_TSYNC"]))
    try:
        program = seccomp.Program.from_bytes(f.export().to_bytes())
    finally:
        f.release()
    assert program.notify and program.flags & 1 and program.flags & 16  # TSYNC + TSYNC_ESRCH

    def child():
        fd = program.load()
        return [os.readlink(f"/proc/self/fd/{fd}"), os.get_inheritable(fd)]

    status, res = run_child(child)
    assert exited(status) and res == ["anon_inode:seccomp notify", False]


@needs_podman
def test_podman_profile_with_cap_sys_admin_allows_bpf_entry():
    profile = podman_default_profile(PODMAN_CAPS | {"CAP_SYS_ADMIN", "CAP_AUDIT_WRITE"})
    status, res = load_and(profile, lambda: [sys_call("bpf", 0xFFFF, 0, 0),
                                             sys_call("socket", 16, 3, 9) != -errno.EINVAL])
    # bpf(2) itself now answers (EINVAL for a bogus command), not seccomp
    assert exited(status) and res[0] != -errno.EPERM and res[1]
