"""Run keel-runtime from a sealed copy of its interpreter when a container could reach it.

CVE-2019-5736: a process in the container that can open /proc/<pid>/exe of a runtime process
(the init before it execs, an exec's helper after it joined the pid namespace) can reopen the
host's interpreter for writing once that process is gone, and so replace the host binary.
Runtime processes are non-dumpable (init.py, exec.py), which keeps that link closed to every
process without CAP_SYS_PTRACE in the host user namespace. A container granted that
capability with no user namespace of its own gets past it, so in that case keel-runtime
re-executes itself from a memfd copy of the interpreter sealed against writes (runc did the
same): /proc/<pid>/exe then names the memfd, and writes to it fail with EPERM.

Only the interpreter binary is copied; Python's standard library and keel's modules are read
from the host as always (the link that the attack uses is exe, not the files a process read).
"""

import os
import sys

ENV_MARK = "_KEEL_RUNTIME_SEALED"
CAP = "CAP_SYS_PTRACE"
SETS = ("bounding", "effective", "inheritable", "permitted", "ambient")


def grants_ptrace(*processes) -> bool:
    """Does any of these OCI process objects hold CAP_SYS_PTRACE in any capability set?"""
    for proc in processes:
        caps = (proc or {}).get("capabilities") or {}
        if any(CAP in (caps.get(s) or ()) for s in SETS):
            return True
    return False


def is_sealed() -> bool:
    return os.environ.get(ENV_MARK) == "1"


def ensure(*processes, in_userns: bool) -> None:
    """Re-exec from a sealed interpreter when the container is granted CAP_SYS_PTRACE in the
    host user namespace; returns only when no re-exec is needed (or it already happened).
    Call it before anything of the container exists: the command starts over."""
    if in_userns or is_sealed() or not grants_ptrace(*processes):
        return
    fd = sealed_copy(os.path.realpath(sys.executable))
    env = dict(os.environ)
    env[ENV_MARK] = "1"
    # orig_argv keeps the interpreter's own flags (-I -S of the launcher) and argv[0] keeps the
    # path Python derives its prefix from, so the copy starts exactly as this process did.
    argv = list(getattr(sys, "orig_argv", None) or [sys.executable, *sys.argv])
    os.execve(fd, argv, env)


def sealed_copy(path: str) -> int:
    """A memfd holding the file at `path`, sealed against any change; its fd (not inherited
    by the process it execs: fexecve of a CLOEXEC memfd works, see execveat(2))."""
    import fcntl

    fd = os.memfd_create("keel-runtime", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        src = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            size = os.fstat(src).st_size
            sent = 0
            while sent < size:
                n = os.sendfile(fd, src, sent, size - sent)
                if n == 0:
                    break
                sent += n
        finally:
            os.close(src)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS,
                    fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE)
        return fd
    except BaseException:
        os.close(fd)
        raise
