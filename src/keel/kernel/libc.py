"""The Linux calls Python's os module lacks (3.11), through ctypes, raising KernelError.

Each wrapper names the call and its arguments in the error, crun-style:
`mount proc on /proc: operation not permitted`.
"""

import ctypes
import errno
import os

from keel.kernel.errors import KernelError

_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long

# x86_64 syscall numbers (the only architecture keel supports today).
SYS_PIVOT_ROOT = 155
SYS_CAPGET = 125
SYS_CAPSET = 126
SYS_SETNS = 308
SYS_UNSHARE = 272
SYS_IOPRIO_SET = 251
SYS_CLOSE_RANGE = 436
SYS_OPENAT2 = 437
SYS_PERSONALITY = 135
SYS_KEYCTL = 250
SYS_RT_SIGACTION = 13
KEYCTL_JOIN_SESSION_KEYRING = 1
KEYCTL_SETPERM = 5

# mount(2) flags
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_SYNCHRONOUS = 0x10
MS_REMOUNT = 0x20
MS_MANDLOCK = 0x40
MS_DIRSYNC = 0x80
MS_NOSYMFOLLOW = 0x100
MS_NOATIME = 0x400
MS_NODIRATIME = 0x800
MS_BIND = 0x1000
MS_MOVE = 0x2000
MS_REC = 0x4000
MS_SILENT = 0x8000
MS_UNBINDABLE = 0x20000
MS_PRIVATE = 0x40000
MS_SLAVE = 0x80000
MS_SHARED = 0x100000
MS_RELATIME = 0x200000
MS_STRICTATIME = 0x1000000
MS_LAZYTIME = 0x2000000
MNT_DETACH = 0x2

# prctl(2)
PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_KEEPCAPS = 8
PR_SET_NAME = 15
PR_CAPBSET_DROP = 24
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_RAISE = 2
PR_CAP_AMBIENT_CLEAR_ALL = 4

# openat2(2) resolve flags
RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE_IN_ROOT = 0x10

CLOSE_RANGE_CLOEXEC = 1 << 2


def _fail(what):
    err = ctypes.get_errno()
    raise KernelError(f"{what}: {os.strerror(err).lower()}", err)


def _b(s):
    return None if s is None else os.fsencode(s)


def mount(source, target, fstype, flags=0, data=None):
    if _libc.mount(_b(source), _b(target), _b(fstype), ctypes.c_ulong(flags), _b(data)) != 0:
        what = f"mount {source or fstype or ''} on {target}".replace("  ", " ")
        if fstype and source != fstype:
            what += f" (type {fstype})"
        _fail(what)


def umount(target, flags=0):
    if _libc.umount2(_b(target), flags) != 0:
        _fail(f"umount {target}")


def pivot_root(new_root, put_old):
    if _syscall(SYS_PIVOT_ROOT, _b(new_root), _b(put_old)) != 0:
        _fail(f"pivot_root {new_root}")


def unshare(flags):
    if _syscall(SYS_UNSHARE, ctypes.c_int(flags)) != 0:
        _fail(f"unshare {flags:#x}")


def setns(fd, nstype=0, what="namespace"):
    if _syscall(SYS_SETNS, fd, nstype) != 0:
        _fail(f"setns {what}")


def prctl(option, arg2=0, arg3=0, arg4=0, arg5=0):
    res = _libc.prctl(option, ctypes.c_ulong(arg2), ctypes.c_ulong(arg3), ctypes.c_ulong(arg4),
                      ctypes.c_ulong(arg5))
    if res < 0:
        _fail(f"prctl {option}")
    return res


def setdomainname(name):
    data = name.encode()
    if _libc.setdomainname(data, len(data)) != 0:
        _fail(f"setdomainname {name!r}")


def join_session_keyring(name):
    """A new session keyring for the container, so it cannot see the caller's keys."""
    serial = _syscall(SYS_KEYCTL, KEYCTL_JOIN_SESSION_KEYRING, _b(name))
    if serial < 0:
        _fail(f"keyctl join session keyring {name}")
    # possessor: all; user: view, read, write, search, link (runc's 0x3f1f0000 mask)
    if _syscall(SYS_KEYCTL, KEYCTL_SETPERM, ctypes.c_long(serial), ctypes.c_ulong(0x3F1F0000)) < 0:
        _fail(f"keyctl setperm {name}")
    return serial


class _KSigaction(ctypes.Structure):
    _fields_ = [("handler", ctypes.c_ulong), ("flags", ctypes.c_ulong), ("restorer", ctypes.c_ulong),
                ("mask", ctypes.c_ulong)]


def signal_default(sig):
    """rt_sigaction(sig, SIG_DFL) straight to the kernel: glibc refuses 32 and 33 (its own),
    yet an ignored 32 inherited from a caller would otherwise reach the container."""
    act = _KSigaction(0, 0, 0, 0)
    if _syscall(SYS_RT_SIGACTION, sig, ctypes.byref(act), None, 8) != 0:
        _fail(f"rt_sigaction {sig}")


def personality(persona):
    if _syscall(SYS_PERSONALITY, ctypes.c_ulong(persona)) == -1:
        _fail(f"personality {persona:#x}")


def ioprio_set(ioprio):
    # IOPRIO_WHO_PROCESS, current process
    if _syscall(SYS_IOPRIO_SET, 1, 0, ioprio) != 0:
        _fail(f"ioprio_set {ioprio:#x}")


def close_range_cloexec(first):
    """Mark every fd >= first close-on-exec (CVE-2024-21626: nothing leaks into a container)."""
    if _syscall(SYS_CLOSE_RANGE, first, ctypes.c_uint(0xFFFFFFFF), CLOSE_RANGE_CLOEXEC) == 0:
        return
    for fd in _open_fds():
        if fd >= first:
            try:
                os.set_inheritable(fd, False)
            except OSError:
                pass


def _open_fds():
    return [int(n) for n in os.listdir("/proc/self/fd")]


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


def openat2(dirfd, path, flags, resolve, mode=0):
    """openat2(2); raises OSError (with errno) so callers can react to ENOENT etc. EAGAIN
    (a rename or mount anywhere raced a '..' under RESOLVE_IN_ROOT/BENEATH) is retried."""
    how = _OpenHow(flags | os.O_CLOEXEC, mode, resolve)
    for _ in range(256):
        fd = _syscall(SYS_OPENAT2, dirfd, _b(path), ctypes.byref(how), ctypes.sizeof(how))
        if fd >= 0:
            return fd
        err = ctypes.get_errno()
        if err != errno.EAGAIN:
            break
    raise OSError(err, os.strerror(err), path)


def fstatfs_type(fd):
    """f_type of fstatfs(2) (PROC_SUPER_MAGIC, SYSFS_MAGIC, ...) of the filesystem of `fd`."""
    buf = ctypes.create_string_buffer(256)  # struct statfs is 120 bytes on x86_64; f_type first
    if _libc.fstatfs(fd, buf) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return ctypes.c_long.from_buffer(buf).value


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


_CAP_V3 = 0x20080522


def capset(effective, permitted, inheritable):
    hdr = _CapHeader(_CAP_V3, 0)
    data = (_CapData * 2)()
    for i in range(2):
        shift = 32 * i
        data[i].effective = (effective >> shift) & 0xFFFFFFFF
        data[i].permitted = (permitted >> shift) & 0xFFFFFFFF
        data[i].inheritable = (inheritable >> shift) & 0xFFFFFFFF
    if _syscall(SYS_CAPSET, ctypes.byref(hdr), data) != 0:
        _fail("capset")


def capget():
    hdr = _CapHeader(_CAP_V3, 0)
    data = (_CapData * 2)()
    if _syscall(SYS_CAPGET, ctypes.byref(hdr), data) != 0:
        _fail("capget")
    eff = data[0].effective | (data[1].effective << 32)
    prm = data[0].permitted | (data[1].permitted << 32)
    inh = data[0].inheritable | (data[1].inheritable << 32)
    return eff, prm, inh
