"""`kill`: signal a container's init, or every process in its cgroup with --all."""

import os

from keel.runtime.errors import RuntimeError_

_SIGNALS = {
    "HUP": 1, "INT": 2, "QUIT": 3, "ILL": 4, "TRAP": 5, "ABRT": 6, "IOT": 6, "BUS": 7, "FPE": 8,
    "KILL": 9, "USR1": 10, "SEGV": 11, "USR2": 12, "PIPE": 13, "ALRM": 14, "TERM": 15,
    "STKFLT": 16, "CHLD": 17, "CONT": 18, "STOP": 19, "TSTP": 20, "TTIN": 21, "TTOU": 22,
    "URG": 23, "XCPU": 24, "XFSZ": 25, "VTALRM": 26, "PROF": 27, "WINCH": 28, "IO": 29,
    "POLL": 29, "PWR": 30, "SYS": 31,
}


def parse_signal(s):
    if s.isdigit():
        n = int(s)
        if 1 <= n <= 64:
            return n
    else:
        name = s.upper()
        if name.startswith("SIG"):
            name = name[3:]
        if name in _SIGNALS:
            return _SIGNALS[name]
        if name.startswith("RTMIN") or name.startswith("RTMAX"):
            base = 34 if name.startswith("RTMIN") else 64
            off = name[5:]
            try:
                n = base + int(off) if off else base
                if 34 <= n <= 64:
                    return n
            except ValueError:
                pass
    raise RuntimeError_(f"invalid signal {s!r}")


def kill(c, sig, all_processes=False):
    status = c.status()
    if status == "stopped":
        raise RuntimeError_(f"cannot kill container {c.id!r}: it is not running")
    if all_processes and c.data.get("cgroup"):
        from keel.kernel.cgroups import Cgroup

        Cgroup.from_dict(c.data["cgroup"]).kill_all(sig)
        return
    _signal_init(c, sig)


def _signal_init(c, sig):
    import signal as _sig

    try:
        pidfd = os.pidfd_open(c.pid)
    except ProcessLookupError:
        raise RuntimeError_(f"cannot kill container {c.id!r}: it is not running") from None
    try:
        # Re-check identity after pinning the pid: a recycled pid must never be signalled.
        if not c.alive():
            raise RuntimeError_(f"cannot kill container {c.id!r}: it is not running")
        _sig.pidfd_send_signal(pidfd, sig)
    except ProcessLookupError:
        raise RuntimeError_(f"cannot kill container {c.id!r}: it is not running") from None
    finally:
        os.close(pidfd)
