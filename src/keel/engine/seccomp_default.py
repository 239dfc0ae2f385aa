"""keel's default seccomp profile: the system calls Docker's default profile keeps from a
container, written as keel's own data from Docker's documented list of blocked calls.

Docker's profile is an allow-list; keel states the same policy the other way round, as
the calls to refuse (EPERM), which is shorter and reads as the reasons below. The profile
is in Docker's profile format (entries may carry `includes`/`excludes` of capabilities),
so that the same code turns it, or any profile a user passes with `--security-opt
seccomp=FILE`, into the OCI `linux.seccomp` of one container (specgen.seccomp_for):

- calls refused to every container: the kernel keyring (not namespaced), kernel modules
  and kexec, obsolete or 16-bit-era calls, io_uring (a large attack surface Docker also
  dropped), userfaultfd;
- calls refused unless the container holds the capability that makes them meaningful
  (as Docker does): e.g. mount/unshare/setns with CAP_SYS_ADMIN, ptrace with
  CAP_SYS_PTRACE, settimeofday with CAP_SYS_TIME;
- clone() with a namespace flag is refused without CAP_SYS_ADMIN, and clone3() answers
  ENOSYS so that a C library falls back to clone(), whose flags a filter can read.

Not carried over: Docker's restriction of personality() to a few values (an allow-list
condition that a refuse-list cannot express), and restart_syscall, which Docker's table
lists but its profile allows (refusing it breaks every interrupted sleep).
"""

EPERM = 1
ENOSYS = 38

# Refused to every container.
ALWAYS = (
    "add_key", "keyctl", "request_key",                          # keyring: not namespaced
    "create_module", "get_kernel_syms", "query_module",          # kernel modules (old API)
    "kexec_load", "kexec_file_load",                             # loading another kernel
    "nfsservctl",                                                # the kernel nfs daemon
    "modify_ldt", "vm86", "vm86old", "uselib",                   # 16-bit / obsolete
    "sysfs", "_sysctl", "ustat",                                 # obsolete
    "userfaultfd",                                               # race amplifier for exploits
    "io_uring_setup", "io_uring_enter", "io_uring_register",     # bypasses syscall filtering
)

# Refused unless the container holds the capability (the key).
UNLESS_CAP = {
    "CAP_SYS_ADMIN": (
        "mount", "umount", "umount2", "pivot_root", "unshare", "setns",
        "fsopen", "fsconfig", "fsmount", "fspick", "move_mount", "open_tree", "mount_setattr",
        "name_to_handle_at", "quotactl", "quotactl_fd", "lookup_dcookie", "fanotify_init",
        "sethostname", "setdomainname", "swapon", "swapoff",
    ),
    "CAP_SYS_BOOT": ("reboot",),
    "CAP_SYS_MODULE": ("init_module", "finit_module", "delete_module"),
    "CAP_SYS_PACCT": ("acct",),
    "CAP_SYS_PTRACE": ("ptrace", "process_vm_readv", "process_vm_writev", "kcmp",
                       "pidfd_getfd", "process_madvise"),
    "CAP_SYS_RAWIO": ("iopl", "ioperm"),
    "CAP_SYS_TIME": ("settimeofday", "stime", "clock_settime", "clock_adjtime", "adjtimex"),
    "CAP_SYS_TTY_CONFIG": ("vhangup",),
    "CAP_SYS_NICE": ("get_mempolicy", "set_mempolicy", "mbind", "move_pages"),
    "CAP_DAC_READ_SEARCH": ("open_by_handle_at",),
}

# Refused unless the container holds any one of these capabilities.
UNLESS_ANY_CAP = {
    "bpf": ("CAP_SYS_ADMIN", "CAP_BPF"),
    "perf_event_open": ("CAP_SYS_ADMIN", "CAP_PERFMON"),
    "syslog": ("CAP_SYS_ADMIN", "CAP_SYSLOG"),
}

# clone() flags that make new namespaces (CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER,
# NEWPID, NEWNET): one refusing rule per bit, since rules on one call OR together.
CLONE_NAMESPACE_FLAGS = (0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000,
                         0x20000000, 0x40000000)

# The native architecture and the ones its kernel also runs (x86-64 runs i386 and x32).
ARCH_MAP = [
    {"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]},
    {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": ["SCMP_ARCH_ARM"]},
    {"architecture": "SCMP_ARCH_PPC64LE", "subArchitectures": ["SCMP_ARCH_PPC64", "SCMP_ARCH_PPC"]},
    {"architecture": "SCMP_ARCH_S390X", "subArchitectures": ["SCMP_ARCH_S390"]},
    {"architecture": "SCMP_ARCH_RISCV64", "subArchitectures": []},
]


def profile() -> dict:
    """The default profile in Docker's format (capability includes/excludes unresolved)."""
    def deny(names, errno=EPERM, **extra):
        return {"names": sorted(names), "action": "SCMP_ACT_ERRNO", "errnoRet": errno, **extra}

    syscalls = [deny(ALWAYS)]
    for cap, names in UNLESS_CAP.items():
        syscalls.append(deny(names, excludes={"caps": [cap]}))
    for name, caps in UNLESS_ANY_CAP.items():
        syscalls.append(deny([name], excludes={"caps": list(caps)}))
    for flag in CLONE_NAMESPACE_FLAGS:
        syscalls.append(deny(["clone"], excludes={"caps": ["CAP_SYS_ADMIN"]},
                             args=[{"index": 0, "value": flag, "valueTwo": flag,
                                    "op": "SCMP_CMP_MASKED_EQ"}]))
    syscalls.append(deny(["clone3"], ENOSYS, excludes={"caps": ["CAP_SYS_ADMIN"]}))
    return {"defaultAction": "SCMP_ACT_ALLOW", "archMap": ARCH_MAP, "syscalls": syscalls}
