"""The last steps before the user process runs, shared by the container init and `exec`:
rlimits, user and groups, capabilities, no_new_privs, seccomp, cwd, and execve."""

import os

import _signal

from keel.kernel import caps as capsmod
from keel.kernel import libc
from keel.kernel.errors import KernelError
from keel.runtime.errors import RuntimeError_

RLIMITS = {
    "RLIMIT_CPU": 0, "RLIMIT_FSIZE": 1, "RLIMIT_DATA": 2, "RLIMIT_STACK": 3, "RLIMIT_CORE": 4,
    "RLIMIT_RSS": 5, "RLIMIT_NPROC": 6, "RLIMIT_NOFILE": 7, "RLIMIT_MEMLOCK": 8, "RLIMIT_AS": 9,
    "RLIMIT_LOCKS": 10, "RLIMIT_SIGPENDING": 11, "RLIMIT_MSGQUEUE": 12, "RLIMIT_NICE": 13,
    "RLIMIT_RTPRIO": 14, "RLIMIT_RTTIME": 15,
}
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
IOPRIO_CLASSES = {"IOPRIO_CLASS_RT": 1, "IOPRIO_CLASS_BE": 2, "IOPRIO_CLASS_IDLE": 3}
SCHED_POLICIES = {"SCHED_OTHER": 0, "SCHED_FIFO": 1, "SCHED_RR": 2, "SCHED_BATCH": 3,
                  "SCHED_IDLE": 5, "SCHED_DEADLINE": 6}


def check_rlimits(rlimits, where="process.rlimits"):
    for i, r in enumerate(rlimits or ()):
        if r["type"] not in RLIMITS:
            raise RuntimeError_(f"{where}[{i}].type: unknown rlimit {r['type']!r}")


def set_rlimits(rlimits, where="process.rlimits"):
    import resource

    for i, r in enumerate(rlimits or ()):
        soft, hard = (resource.RLIM_INFINITY if v >= 2**63 else v for v in (r["soft"], r["hard"]))
        try:
            resource.setrlimit(RLIMITS[r["type"]], (soft, hard))
        except (ValueError, OSError) as e:
            cur = resource.getrlimit(RLIMITS[r["type"]])[1]
            cur = "unlimited" if cur == resource.RLIM_INFINITY else cur
            why = getattr(e, "strerror", None) or str(e)
            raise RuntimeError_(f"{where}[{i}]: cannot set {r['type']} to {r['soft']}:{r['hard']}: "
                                f"{why.lower()} (the hard limit here is {cur}; raising it needs "
                                f"CAP_SYS_RESOURCE)") from None


def set_oom_score_adj(value, pid="self"):
    try:
        with open(f"/proc/{pid}/oom_score_adj", "w") as f:
            f.write(str(value))
    except OSError as e:
        hint = " (lowering it needs CAP_SYS_RESOURCE)" if value < 0 else ""
        raise RuntimeError_(f"process.oomScoreAdj: cannot set {value}: {e.strerror.lower()}{hint}") from None


def set_io_priority(prio):
    cls = IOPRIO_CLASSES.get(prio["class"])
    if cls is None:
        raise RuntimeError_(f"process.ioPriority.class: unknown class {prio['class']!r}")
    level = prio.get("priority") or 0
    if not 0 <= level <= 7:
        raise RuntimeError_(f"process.ioPriority.priority: {level} is not in 0..7")
    try:
        libc.ioprio_set((cls << 13) | level)
    except KernelError as e:
        raise RuntimeError_(f"process.ioPriority: {e}") from None


def set_scheduler(sched):
    policy = SCHED_POLICIES.get(sched["policy"])
    if policy is None or policy == 6:
        raise RuntimeError_(f"process.scheduler.policy: {sched['policy']!r} is not supported")
    if sched.get("flags") or sched.get("runtime") or sched.get("deadline") or sched.get("period"):
        raise RuntimeError_("process.scheduler: flags, runtime, deadline and period are not supported")
    try:
        os.sched_setscheduler(0, policy, os.sched_param(sched.get("priority") or 0))
        if sched.get("nice"):
            os.setpriority(os.PRIO_PROCESS, 0, sched["nice"])
    except OSError as e:
        raise RuntimeError_(f"process.scheduler: {e.strerror.lower()}") from None


def apparmor_enabled():
    try:
        with open("/sys/module/apparmor/parameters/enabled") as f:
            return f.read().strip() == "Y"
    except OSError:
        return False


def set_apparmor(profile):
    if not apparmor_enabled():
        raise RuntimeError_(f"process.apparmorProfile: {profile!r} is set but AppArmor is not enabled on this host")
    for path in ("/proc/self/attr/apparmor/exec", "/proc/self/attr/exec"):
        try:
            with open(path, "w") as f:
                f.write(f"exec {profile}")
            return
        except FileNotFoundError:
            continue
        except OSError as e:
            raise RuntimeError_(f"process.apparmorProfile: {profile!r}: {e.strerror.lower()}") from None


def env_dict(env):
    out = {}
    for e in env or ():
        k, _, v = e.partition("=")
        out[k] = v
    return out


def lookpath(arg0, env):
    """Find the executable as execvp would in the container, so `create` fails early like runc."""
    if "/" in arg0:
        candidates = [arg0]
    else:
        candidates = [os.path.join(d or ".", arg0) for d in env.get("PATH", DEFAULT_PATH).split(":")]
    for c in candidates:
        try:
            st = os.stat(c)
        except OSError:
            continue
        if (st.st_mode & 0o170000) == 0o100000 and os.access(c, os.X_OK):
            return c
    if "/" in arg0:
        # as execve(2) says it (runc's words): a path that is there but cannot be run is
        # "permission denied" (engines map it to 126), a missing one "no such file" (127)
        why = "permission denied" if os.path.lexists(arg0) else "no such file or directory"
        raise RuntimeError_(f"exec: {arg0!r}: {why}")
    raise RuntimeError_(f"exec: {arg0!r}: executable file not found in $PATH")


def home_of(uid):
    try:
        with open("/etc/passwd") as f:
            for line in f:
                fields = line.rstrip("\n").split(":")
                if len(fields) >= 6 and fields[2] == str(uid):
                    return fields[5] or "/"
    except OSError:
        pass
    return "/"


def reset_signals():
    """Python ignores SIGPIPE and SIGXFSZ and handles SIGINT; the user process must not inherit that."""
    for sig in range(1, _signal.NSIG):
        if sig in (9, 19):
            continue
        try:
            if _signal.getsignal(sig) is not _signal.SIG_DFL:
                _signal.signal(sig, _signal.SIG_DFL)
        except (OSError, ValueError, RuntimeError):
            # Python will not touch glibc's own signals (32, 33): ask the kernel directly.
            try:
                libc.signal_default(sig)
            except KernelError:
                pass
    _signal.pthread_sigmask(_signal.SIG_SETMASK, [])


def switch_user(user, setgroups_allowed=True):
    uid, gid = user.get("uid", 0), user.get("gid", 0)
    try:
        if setgroups_allowed:
            os.setgroups(list(user.get("additionalGids") or ()))
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
    except OSError as e:
        raise RuntimeError_(f"process.user: cannot switch to {uid}:{gid}: {e.strerror.lower()}") from None


def setgroups_allowed():
    try:
        with open("/proc/self/setgroups") as f:
            return f.read().strip() != "deny"
    except OSError:
        return True


def finalize(process, preserve_fds=0, seccomp_filter=None, on_notify=None, log=None):
    """Drop to the configured identity and privileges; returns (path, args, env) to execve.

    seccomp: without no_new_privs the filter must be loaded while CAP_SYS_ADMIN is still
    held, so it is loaded here; with no_new_privs it is loaded by exec_process, last.
    """
    libc.close_range_cloexec(3 + preserve_fds)
    user = process.get("user") or {}
    nnp = bool(process.get("noNewPrivileges"))
    sets = capsmod.CapSets(process.get("capabilities"))
    if log and sets.unknown:
        log(f"ignoring unknown or unavailable capabilities: {sorted(sets.unknown)}")
    check_grantable(sets)
    if process.get("apparmorProfile"):
        set_apparmor(process["apparmorProfile"])
    if seccomp_filter is not None and not nnp:
        notify_fd = seccomp_filter.load()
        if notify_fd is not None and on_notify is not None:
            on_notify(notify_fd)
    try:
        capsmod.drop_bounding(sets)
        libc.prctl(libc.PR_SET_KEEPCAPS, 1)
        switch_user(user, setgroups_allowed())
        cwd = process["cwd"]
        try:
            os.chdir(cwd)
        except OSError as e:
            raise RuntimeError_(f"process.cwd: cannot chdir to {cwd}: {e.strerror.lower()}") from None
        # A cwd outside the root (e.g. through a leaked fd) makes getcwd fail: CVE-2024-21626.
        try:
            here = os.getcwd()
        except OSError:
            here = ""
        if not here.startswith("/"):
            raise RuntimeError_(f"process.cwd: {cwd} is outside the container's root")
        libc.prctl(libc.PR_SET_KEEPCAPS, 0)
        capsmod.apply(sets)
        if nnp:
            libc.prctl(libc.PR_SET_NO_NEW_PRIVS, 1)
    except KernelError as e:
        raise RuntimeError_(f"process: {e}") from None
    if "umask" in user and user["umask"] is not None:
        os.umask(user["umask"])
    env = env_dict(process.get("env"))
    if "HOME" not in env:
        env["HOME"] = home_of(user.get("uid", 0))
    args = process.get("args") or [process["commandLine"]]
    path = lookpath(args[0], env)
    return path, args, env, (seccomp_filter if nnp else None)


def check_grantable(sets):
    """A capability outside our own bounding set cannot be given (capset would fail with a bare
    EPERM): name it. Asking to keep it in the bounding set only is harmless."""
    wanted = sets.permitted | sets.effective | sets.inheritable
    missing = [n for n in range(sets.last + 1) if wanted & (1 << n) and not _in_bounding(n)]
    if missing:
        names = ", ".join(capsmod.CAPS[n] if n < len(capsmod.CAPS) else str(n) for n in missing)
        raise RuntimeError_(f"process.capabilities: cannot grant {names}: not in keel-runtime's own "
                            "bounding set on this host")


def _in_bounding(n):
    try:
        return libc.prctl(23, n) == 1  # PR_CAPBSET_READ
    except KernelError:
        return False


def exec_process(path, args, env):
    reset_signals()
    os.execve(path, args, env)
