"""Linux capabilities: names, and applying the five OCI sets to the current process."""

CAPS = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID",
    "CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK",
    "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE", "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE", "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG",
    "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
)
CAP_NUMBERS = {name: i for i, name in enumerate(CAPS)}
SETS = ("bounding", "effective", "inheritable", "permitted", "ambient")


def last_cap():
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except OSError:
        return len(CAPS) - 1


def to_mask(names, last, unknown):
    """Bit mask of capability names; names this kernel lacks go to `unknown` (runc ignores them)."""
    mask = 0
    for name in names or ():
        n = CAP_NUMBERS.get(name.upper() if name.upper().startswith("CAP_") else "CAP_" + name.upper())
        if n is None or n > last:
            unknown.add(name)
            continue
        mask |= 1 << n
    return mask


class CapSets:
    """The five sets as bit masks, ready to apply after the user switch."""

    __slots__ = ("bounding", "effective", "inheritable", "permitted", "ambient", "unknown", "last")

    def __init__(self, config_caps):
        self.last = last_cap()
        self.unknown = set()
        caps = config_caps or {}
        for s in SETS:
            setattr(self, s, to_mask(caps.get(s), self.last, self.unknown))


def drop_bounding(sets):
    """Drop from the bounding set every cap not in `sets.bounding` (needs CAP_SETPCAP)."""
    from keel.kernel import libc

    for n in range(sets.last + 1):
        if not sets.bounding & (1 << n):
            libc.prctl(libc.PR_CAPBSET_DROP, n)


def apply(sets):
    """Set effective/permitted/inheritable, then raise the ambient set."""
    from keel.kernel import libc

    libc.capset(sets.effective, sets.permitted, sets.inheritable)
    libc.prctl(libc.PR_CAP_AMBIENT, libc.PR_CAP_AMBIENT_CLEAR_ALL)
    for n in range(sets.last + 1):
        if sets.ambient & (1 << n):
            # A cap missing from permitted or inheritable cannot be ambient; runc ignores it too.
            try:
                libc.prctl(libc.PR_CAP_AMBIENT, libc.PR_CAP_AMBIENT_RAISE, n)
            except libc.KernelError:
                pass


def names(mask):
    return [CAPS[n] for n in range(len(CAPS)) if mask & (1 << n)]


def current_bounding():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapBnd:"):
                return int(line.split()[1], 16)
    return 0


def proc_caps(pid="self"):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Cap"):
                k, v = line.split(":", 1)
                out[k] = int(v, 16)
    return out


