"""Seccomp filters from an OCI `linux.seccomp` profile, built and loaded by libseccomp.

libseccomp (`libseccomp.so.2`) is called through ctypes; keel never writes BPF by hand.
This module is on keel-runtime's start-up path: importing it loads nothing (not even
ctypes); the library is opened at the first call that needs it.

    enabled(profile)               False for no profile / an empty one (runc: no seccomp)
    validate(profile)              the whole profile checked, nothing loaded (`create` time)
    f = Filter(profile, log=...)   the libseccomp filter built (no kernel change yet)
    fd = f.load()                  seccomp_load in the container init, right before exec;
                                   the notify fd when SCMP_ACT_NOTIFY is used, else None
    send_notify_fd(path, fd, state, metadata)   the fd to the seccomp agent (listenerPath)
    features()                     the `linux.seccomp` part of `keel-runtime features`
    p = f.export(); p.to_bytes()   the libseccomp-generated BPF, to cache between runs
    Program.from_bytes(b).load()   load a cached program with seccomp(2), no libseccomp:
                                   ~1.5 ms instead of ~15 ms for Docker's default profile

Behaviour follows runc's libcontainer/seccomp, where the runtime-spec leaves room:
- unknown syscall names are skipped (reported to `log`), a rule whose action equals
  the default action is skipped, conditions on the same argument become separate
  rules (so they OR), SCMP_ACT_KILL means SCMP_ACT_KILL_THREAD;
- errnoRet / defaultErrnoRet default to EPERM for SCMP_ACT_ERRNO and SCMP_ACT_TRACE, and
  are refused with any other action (the spec's MUST);
- SCMP_ACT_NOTIFY needs libseccomp API level 6, a listenerPath, is refused as the
  default action and for `write`;
- `flags` absent (not `[]`) means SECCOMP_FILTER_FLAG_SPEC_ALLOW when it is supported;
- libseccomp never sets no_new_privs itself (SCMP_FLTATR_CTL_NNP = 0): the runtime does
  that only when process.noNewPrivileges asks, so loading needs CAP_SYS_ADMIN otherwise;
- more than 32 syscall entries get libseccomp's binary-tree optimisation.
Unlike runc, no -ENOSYS stub is prepended for syscalls newer than the profile (that
needs hand-made BPF): those get the default action.
"""

from keel.kernel.errors import SeccompError

_WHERE = "linux.seccomp"

# action name -> (value, takes an errno, lowest libseccomp API level)
# API levels (seccomp_api_get(3)): 3 adds SCMP_ACT_LOG and SCMP_ACT_KILL_PROCESS, 5 adds
# SCMP_ACT_NOTIFY, 6 lets it work with TSYNC; like runc, keel wants 6 for NOTIFY.
_ACT_ERRNO = 0x00050000
_ACT_TRACE = 0x7FF00000
_ACT_NOTIFY = 0x7FC00000
_ACTIONS = {
    "SCMP_ACT_KILL": (0x00000000, False, 0),
    "SCMP_ACT_KILL_THREAD": (0x00000000, False, 0),
    "SCMP_ACT_KILL_PROCESS": (0x80000000, False, 3),
    "SCMP_ACT_TRAP": (0x00030000, False, 0),
    "SCMP_ACT_ERRNO": (_ACT_ERRNO, True, 0),
    "SCMP_ACT_TRACE": (_ACT_TRACE, True, 0),
    "SCMP_ACT_ALLOW": (0x7FFF0000, False, 0),
    "SCMP_ACT_LOG": (0x7FFC0000, False, 3),
    "SCMP_ACT_NOTIFY": (_ACT_NOTIFY, False, 6),
}

# enum scmp_compare
_OPERATORS = {
    "SCMP_CMP_NE": 1,
    "SCMP_CMP_LT": 2,
    "SCMP_CMP_LE": 3,
    "SCMP_CMP_EQ": 4,
    "SCMP_CMP_GE": 5,
    "SCMP_CMP_GT": 6,
    "SCMP_CMP_MASKED_EQ": 7,
}

# The runtime-spec's SCMP_ARCH_* names; libseccomp knows each by its lowercased suffix.
_ARCHES = (
    "SCMP_ARCH_X86", "SCMP_ARCH_X86_64", "SCMP_ARCH_X32", "SCMP_ARCH_ARM", "SCMP_ARCH_AARCH64",
    "SCMP_ARCH_MIPS", "SCMP_ARCH_MIPS64", "SCMP_ARCH_MIPS64N32", "SCMP_ARCH_MIPSEL",
    "SCMP_ARCH_MIPSEL64", "SCMP_ARCH_MIPSEL64N32", "SCMP_ARCH_PPC", "SCMP_ARCH_PPC64",
    "SCMP_ARCH_PPC64LE", "SCMP_ARCH_S390", "SCMP_ARCH_S390X", "SCMP_ARCH_PARISC",
    "SCMP_ARCH_PARISC64", "SCMP_ARCH_RISCV64", "SCMP_ARCH_LOONGARCH64", "SCMP_ARCH_M68K",
    "SCMP_ARCH_SH", "SCMP_ARCH_SHEB",
)

# enum scmp_filter_attr
_ATTR_NNP = 3
_ATTR_TSYNC = 4
_ATTR_LOG = 6
_ATTR_SSB = 7
_ATTR_OPTIMIZE = 8
_ATTR_SYSRAWRC = 9
_ATTR_WAITKILL = 10  # libseccomp >= 2.6

# spec flag -> filter attribute that makes libseccomp pass it to seccomp(2)
_FLAGS = {
    "SECCOMP_FILTER_FLAG_TSYNC": _ATTR_TSYNC,
    "SECCOMP_FILTER_FLAG_LOG": _ATTR_LOG,
    "SECCOMP_FILTER_FLAG_SPEC_ALLOW": _ATTR_SSB,
    "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV": _ATTR_WAITKILL,
}
# seccomp(2) SECCOMP_SET_MODE_FILTER flags, for Program.load
_SECCOMP_SET_MODE_FILTER = 1
_FLAG_TSYNC = 1
_FLAG_NEW_LISTENER = 8
_FLAG_TSYNC_ESRCH = 16
_KERNEL_FLAGS = {
    "SECCOMP_FILTER_FLAG_TSYNC": _FLAG_TSYNC,
    "SECCOMP_FILTER_FLAG_LOG": 2,
    "SECCOMP_FILTER_FLAG_SPEC_ALLOW": 4,
    "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV": 32,
}
# __NR_seccomp by uname machine, so that Program.load needs no libseccomp
_NR_SECCOMP = {"x86_64": 317, "aarch64": 277, "riscv64": 277, "ppc64le": 358, "ppc64": 358,
               "s390x": 348, "i686": 354, "i386": 354, "armv7l": 383, "armv8l": 383}

_EPERM = 1
_MAX_ERRNO = 0xFFFF  # SECCOMP_RET_DATA; the kernel clamps to 4095
_MAX_ARGS = 6
_U64 = (1 << 64) - 1
_NR_SCMP_ERROR = -1
_OPTIMIZE_ABOVE = 32  # libseccomp <= 2.5.4 misbehaves with the binary tree and no rules

_state = None  # the loaded library, see _lib()


class _Lib:
    """libseccomp.so.2 with typed entry points, its version and API level."""

    def __init__(self):
        import ctypes

        try:
            so = ctypes.CDLL("libseccomp.so.2")
        except OSError as e:
            raise SeccompError(f"seccomp: cannot load libseccomp.so.2: {e}") from None
        self.ctypes = ctypes
        vp, u32, i = ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int

        class ArgCmp(ctypes.Structure):  # struct scmp_arg_cmp
            _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int),
                        ("datum_a", ctypes.c_uint64), ("datum_b", ctypes.c_uint64)]

        class Version(ctypes.Structure):  # struct scmp_version
            _fields_ = [("major", ctypes.c_uint), ("minor", ctypes.c_uint),
                        ("micro", ctypes.c_uint)]

        self.ArgCmp = ArgCmp

        def fn(name, restype, *argtypes):
            f = getattr(so, name)
            f.restype = restype
            f.argtypes = argtypes
            return f

        self.init = fn("seccomp_init", vp, u32)
        self.release = fn("seccomp_release", None, vp)
        self.load = fn("seccomp_load", i, vp)
        self.attr_set = fn("seccomp_attr_set", i, vp, i, u32)
        self.arch_resolve_name = fn("seccomp_arch_resolve_name", u32, ctypes.c_char_p)
        self.arch_add = fn("seccomp_arch_add", i, vp, u32)
        self.syscall_resolve_name = fn("seccomp_syscall_resolve_name", i, ctypes.c_char_p)
        self.rule_add_array = fn("seccomp_rule_add_array", i, vp, u32, i, ctypes.c_uint,
                                 ctypes.POINTER(ArgCmp))
        self.export_bpf = fn("seccomp_export_bpf", i, vp, i)
        try:
            self.notify_fd = fn("seccomp_notify_fd", i, vp)
        except AttributeError:  # libseccomp < 2.5
            self.notify_fd = None
        try:
            v = fn("seccomp_version", ctypes.POINTER(Version))().contents
            self.version = (v.major, v.minor, v.micro)
        except AttributeError:  # libseccomp < 2.3.3
            self.version = (2, 0, 0)
        try:
            self.api = fn("seccomp_api_get", ctypes.c_uint)()
        except AttributeError:  # libseccomp < 2.4: as runc, API level 0
            self.api = 0
        self._flags = None
        self._arches = {}

    @property
    def version_string(self):
        return "%d.%d.%d" % self.version

    def arch_token(self, name):
        """The libseccomp token of an SCMP_ARCH_* name, 0 if this libseccomp lacks it."""
        token = self._arches.get(name)
        if token is None:
            token = self.arch_resolve_name(name[len("SCMP_ARCH_"):].lower().encode())
            self._arches[name] = token
        return token

    def supported_flags(self):
        """The spec flags this libseccomp and kernel accept (probed on a scratch filter)."""
        if self._flags is None:
            ok = set()
            ctx = self.init(0x7FFF0000)
            if ctx:
                try:
                    for flag, attr in _FLAGS.items():
                        if self.attr_set(ctx, attr, 1) == 0:
                            ok.add(flag)
                finally:
                    self.release(ctx)
            self._flags = ok
        return self._flags


def _lib():
    global _state
    if _state is None:
        _state = _Lib()
    return _state


def _strerror(rc):
    import os

    return os.strerror(abs(rc)).lower()


# -- validation ---------------------------------------------------------------------------


def _kind(value):
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, (list, tuple)):
        return "list"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _fail(field, message):
    raise SeccompError(f"{_WHERE}{field}: {message}")


def _uint(value, field, top):
    if not isinstance(value, int) or isinstance(value, bool):
        _fail(field, f"expected an unsigned integer, got {_kind(value)}")
    if value < 0 or value > top:
        _fail(field, f"{value} is out of range (0-{top})")
    return value


def _list(value, field, what):
    if value is None:
        return ()
    if not isinstance(value, (list, tuple)):
        _fail(field, f"expected a list of {what}, got {_kind(value)}")
    return value


def _action(name, errno_ret, field, errno_field, lib):
    if not isinstance(name, str):
        _fail(field, f"expected a string, got {_kind(name)}")
    spec = _ACTIONS.get(name)
    if spec is None:
        _fail(field, f'unknown action "{name}"')
    value, takes_errno, api = spec
    if lib.api < api:
        if name == "SCMP_ACT_NOTIFY":
            _fail(field, f"{name} needs libseccomp API level {api} (libseccomp >= 2.5.0, "
                         f"Linux >= 5.7), this is libseccomp {lib.version_string} at "
                         f"level {lib.api}")
        _fail(field, f"{name} needs libseccomp API level {api}, this is libseccomp "
                     f"{lib.version_string} at level {lib.api}")
    if errno_ret is not None:
        _uint(errno_ret, errno_field, _MAX_ERRNO)
        if not takes_errno:
            _fail(errno_field, f"only SCMP_ACT_ERRNO and SCMP_ACT_TRACE take an errno, "
                               f"not {name}")
    if takes_errno:
        value |= (_EPERM if errno_ret is None else errno_ret) & 0xFFFF
    return value


def _parse(profile):
    """Checks the whole profile; returns what Filter needs, every field already vetted.

    (default, arches, attrs, rules, notify, syscall_count) where arches is a list of
    tokens, attrs a list of (attribute, flag name), rules a list of
    (entry index, names, action, [conditions]) and a condition a tuple
    (index, op, value, valueTwo).
    """
    if not isinstance(profile, dict):
        _fail("", f"expected an object, got {_kind(profile)}")
    lib = _lib()

    default_name = profile.get("defaultAction")
    if default_name is None:
        _fail(".defaultAction", "required")
    default = _action(default_name, profile.get("defaultErrnoRet"), ".defaultAction",
                      ".defaultErrnoRet", lib)
    if default_name == "SCMP_ACT_NOTIFY":
        _fail(".defaultAction", "SCMP_ACT_NOTIFY cannot be the default action")

    arches = []
    for i, name in enumerate(_list(profile.get("architectures"), ".architectures",
                                   "strings")):
        field = f".architectures[{i}]"
        if not isinstance(name, str):
            _fail(field, f"expected a string, got {_kind(name)}")
        if name not in _ARCHES:
            _fail(field, f'unknown architecture "{name}"')
        token = lib.arch_token(name)
        if not token:
            _fail(field, f'architecture "{name}" is not supported by libseccomp '
                         f"{lib.version_string}")
        if token not in arches:
            arches.append(token)

    flags = profile.get("flags")
    attrs = []
    if flags is None:
        if "SECCOMP_FILTER_FLAG_SPEC_ALLOW" in lib.supported_flags():
            attrs.append((_ATTR_SSB, "SECCOMP_FILTER_FLAG_SPEC_ALLOW"))
    else:
        for i, flag in enumerate(_list(flags, ".flags", "strings")):
            field = f".flags[{i}]"
            if not isinstance(flag, str):
                _fail(field, f"expected a string, got {_kind(flag)}")
            if flag not in _FLAGS:
                _fail(field, f'unknown flag "{flag}"')
            if flag not in lib.supported_flags():
                _fail(field, f'flag "{flag}" is not supported by libseccomp '
                             f"{lib.version_string} (API level {lib.api}) on this kernel")
            attrs.append((_FLAGS[flag], flag))

    listener = profile.get("listenerPath")
    if listener is not None and not isinstance(listener, str):
        _fail(".listenerPath", f"expected a string, got {_kind(listener)}")
    metadata = profile.get("listenerMetadata")
    if metadata is not None:
        if not isinstance(metadata, str):
            _fail(".listenerMetadata", f"expected a string, got {_kind(metadata)}")
        if metadata and not listener:
            _fail(".listenerMetadata", "set without listenerPath")

    rules = []
    notify = False
    syscalls = _list(profile.get("syscalls"), ".syscalls", "objects")
    for i, entry in enumerate(syscalls):
        where = f".syscalls[{i}]"
        if not isinstance(entry, dict):
            _fail(where, f"expected an object, got {_kind(entry)}")
        names = entry.get("names")
        if names is None:
            _fail(where + ".names", "required")
        _list(names, where + ".names", "strings")
        if not names:
            _fail(where + ".names", "must name at least one syscall")
        for j, name in enumerate(names):
            if not isinstance(name, str) or not name:
                _fail(f"{where}.names[{j}]", f"expected a syscall name, got "
                                             f"{_kind(name) if name != '' else 'empty string'}")
        action_name = entry.get("action")
        if action_name is None:
            _fail(where + ".action", "required")
        action = _action(action_name, entry.get("errnoRet"), where + ".action",
                         where + ".errnoRet", lib)
        if action_name == "SCMP_ACT_NOTIFY":
            notify = True
            if "write" in names:
                _fail(where + ".names", "SCMP_ACT_NOTIFY cannot be used for the write "
                                        "syscall (the runtime needs it to hand the fd over)")
        conditions = []
        for j, arg in enumerate(_list(entry.get("args"), where + ".args", "objects")):
            field = f"{where}.args[{j}]"
            if not isinstance(arg, dict):
                _fail(field, f"expected an object, got {_kind(arg)}")
            if arg.get("index") is None:
                _fail(field + ".index", "required")
            index = _uint(arg["index"], field + ".index", _MAX_ARGS - 1)
            if arg.get("value") is None:
                _fail(field + ".value", "required")
            value = _uint(arg["value"], field + ".value", _U64)
            two = arg.get("valueTwo")
            two = 0 if two is None else _uint(two, field + ".valueTwo", _U64)
            op = arg.get("op")
            if op is None:
                _fail(field + ".op", "required")
            if not isinstance(op, str):
                _fail(field + ".op", f"expected a string, got {_kind(op)}")
            code = _OPERATORS.get(op)
            if code is None:
                _fail(field + ".op", f'unknown operator "{op}"')
            conditions.append((index, code, value, two))
        rules.append((i, names, action, conditions))

    if notify:
        if not listener:
            _fail(".listenerPath", "required when SCMP_ACT_NOTIFY is used")
        if lib.notify_fd is None:  # API level 6 implies it, kept for odd builds
            _fail(".syscalls", f"SCMP_ACT_NOTIFY is not supported by libseccomp "
                               f"{lib.version_string}")
    return default, arches, attrs, rules, notify, len(syscalls)


def enabled(profile):
    """False when the profile asks for no filter at all: absent, or (as runc reads it)
    neither a defaultAction nor any syscalls. Needs no libseccomp."""
    if profile is None:
        return False
    if isinstance(profile, dict) and not profile.get("defaultAction") \
            and not profile.get("syscalls"):
        return False
    return True


def validate(profile):
    """Checks a parsed `linux.seccomp` object completely, without building a filter.

    Raises SeccompError naming the field. Syscall names this libseccomp does not know
    are not errors (runc skips them too); Filter() reports them to its `log`.
    """
    _parse(profile)


def resolve_syscall(name):
    """The native syscall number of `name` (libseccomp's table), None if unknown."""
    nr = _lib().syscall_resolve_name(name.encode())
    return None if nr == _NR_SCMP_ERROR else nr


# -- the filter ---------------------------------------------------------------------------


class Filter:
    """A libseccomp filter built from a profile; load() installs it in this process.

    Build it wherever convenient (before fork is fine: the context is plain memory),
    load it in the container init right before exec, release it when done (release
    does not undo a load). Usable as a context manager.
    """

    _ctx = None

    def __init__(self, profile, log=None):
        default, arches, attrs, rules, notify, count = _parse(profile)
        lib = _lib()
        self._lib = lib
        self.notify = notify
        self.skipped = []  # syscall names this libseccomp does not know
        self.kernel_flags = 0  # the seccomp(2) flags load() passes (see Program)
        self._ctx = lib.init(default)
        if not self._ctx:
            raise SeccompError(f"{_WHERE}.defaultAction: libseccomp refused "
                               f"{profile.get('defaultAction')}")
        try:
            self._build(default, arches, attrs, rules, count, log)
        except BaseException:
            self.release()
            raise

    def _attr(self, attr, value, what):
        rc = self._lib.attr_set(self._ctx, attr, value)
        if rc < 0:
            raise SeccompError(f"{_WHERE}: set {what}: {_strerror(rc)}", -rc)

    def _build(self, default, arches, attrs, rules, count, log):
        lib = self._lib
        ctypes = lib.ctypes
        # libseccomp must not set no_new_privs on load: the runtime decides.
        self._attr(_ATTR_NNP, 0, "no_new_privs off")
        # seccomp_load's kernel errno instead of -ECANCELED (API >= 5 / libseccomp 2.5).
        lib.attr_set(self._ctx, _ATTR_SYSRAWRC, 1)
        for token in arches:
            rc = lib.arch_add(self._ctx, token)
            if rc < 0 and rc != -17:  # -EEXIST: the native one is always there
                raise SeccompError(f"{_WHERE}.architectures: add architecture {token:#x}: "
                                   f"{_strerror(rc)}", -rc)
        for attr, flag in attrs:
            self._attr(attr, 1, flag)
            self.kernel_flags |= _KERNEL_FLAGS[flag]
        if self.notify:
            self.kernel_flags |= _FLAG_NEW_LISTENER
            if self.kernel_flags & _FLAG_TSYNC:
                self.kernel_flags |= _FLAG_TSYNC_ESRCH
        if count > _OPTIMIZE_ABOVE:
            lib.attr_set(self._ctx, _ATTR_OPTIMIZE, 2)  # older libseccomp: not fatal

        ArgCmp = lib.ArgCmp
        resolve = lib.syscall_resolve_name
        add = lib.rule_add_array
        ctx = self._ctx
        cache = {}
        for i, names, action, conditions in rules:
            if action == default:
                continue  # libseccomp refuses rules with the default action
            if conditions:
                indexes = [c[0] for c in conditions]
                if len(set(indexes)) == len(indexes):
                    groups = [conditions]
                else:  # as runc: conditions on one argument become separate rules
                    groups = [[c] for c in conditions]
                arrays = [((ArgCmp * len(g))(*g), len(g)) for g in groups]
            else:
                arrays = [(None, 0)]
            for name in names:
                nr = cache.get(name)
                if nr is None:
                    nr = cache[name] = resolve(name.encode())
                if nr == _NR_SCMP_ERROR:
                    if name not in self.skipped:
                        self.skipped.append(name)
                        if log is not None:
                            log(f'seccomp: unknown syscall "{name}" skipped '
                                f"({_WHERE}.syscalls[{i}])")
                    continue
                for array, n in arrays:
                    rc = add(ctx, action, nr, n, array)
                    if rc < 0:
                        why = _strerror(rc)
                        if rc == -17:  # EEXIST
                            why = "conflicts with an earlier rule with another action"
                        raise SeccompError(f"{_WHERE}.syscalls[{i}]: add rule for "
                                           f'"{name}": {why}', -rc)

    def load(self):
        """seccomp_load: the filter applies to this process from now on (and survives exec).

        Returns the notify fd (O_CLOEXEC, owned by the caller) when the profile uses
        SCMP_ACT_NOTIFY, else None.
        """
        if not self._ctx:
            raise SeccompError("seccomp: filter already released")
        rc = self._lib.load(self._ctx)
        if rc < 0:
            hint = ""
            if rc == -13:  # EACCES: neither no_new_privs nor CAP_SYS_ADMIN
                hint = " (needs no_new_privs or CAP_SYS_ADMIN)"
            raise SeccompError(f"seccomp: load filter: {_strerror(rc)}{hint}", -rc)
        if not self.notify:
            return None
        fd = self._lib.notify_fd(self._ctx)
        if fd < 0:
            raise SeccompError(f"seccomp: get notify fd: {_strerror(fd)}", -fd)
        return fd

    def export(self):
        """The BPF program libseccomp generates for this filter, as a Program.

        Generating BPF is most of the cost of load() for big multi-architecture profiles
        (Docker's default: ~8 ms of ~10 ms). A runtime can cache the Program (see
        Program.to_bytes) keyed by the profile and by version(), api_level() and the
        machine, and later load it with Program.load() without libseccomp at all.
        """
        import os

        if not self._ctx:
            raise SeccompError("seccomp: filter already released")
        fd = os.memfd_create("keel-seccomp-bpf", os.MFD_CLOEXEC)
        try:
            rc = self._lib.export_bpf(self._ctx, fd)
            if rc < 0:
                raise SeccompError(f"seccomp: export filter: {_strerror(rc)}", -rc)
            size = os.lseek(fd, 0, os.SEEK_END)
            bpf = os.pread(fd, size, 0)
        finally:
            os.close(fd)
        return Program(bpf, self.kernel_flags)

    def release(self):
        if self._ctx:
            self._lib.release(self._ctx)
            self._ctx = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()

    def __del__(self):
        try:
            self.release()
        except Exception:
            pass


class Program:
    """A BPF program generated by libseccomp (Filter.export) and the seccomp(2) flags to load it.

    load() is seccomp(SECCOMP_SET_MODE_FILTER, flags, prog) through ctypes, exactly what
    libseccomp's seccomp_load does with no_new_privs left alone: it needs no libseccomp,
    so a runtime that cached the program skips BPF generation on the start-up path.
    """

    _MAGIC = b"KSCB"
    _HEADER = 12  # magic, flags (u32 LE), format version 1 (u32 LE)

    def __init__(self, bpf, flags):
        if len(bpf) % 8 or not bpf:
            raise SeccompError(f"seccomp: BPF program of {len(bpf)} bytes is not a whole "
                               "number of instructions")
        self.bpf = bytes(bpf)
        self.flags = flags

    @property
    def notify(self):
        return bool(self.flags & _FLAG_NEW_LISTENER)

    def to_bytes(self):
        return (self._MAGIC + self.flags.to_bytes(4, "little") + (1).to_bytes(4, "little")
                + self.bpf)

    @classmethod
    def from_bytes(cls, data):
        if data[:4] != cls._MAGIC or data[8:12] != (1).to_bytes(4, "little"):
            raise SeccompError("seccomp: not a cached keel seccomp program")
        return cls(data[cls._HEADER:], int.from_bytes(data[4:8], "little"))

    def load(self):
        """Installs the program in this process; the notify fd if it has one, else None."""
        import ctypes
        import os

        nr = _NR_SECCOMP.get(os.uname().machine)
        if nr is None:
            nr = resolve_syscall("seccomp")
        buf = ctypes.create_string_buffer(self.bpf, len(self.bpf))

        class SockFprog(ctypes.Structure):
            _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

        prog = SockFprog(len(self.bpf) // 8, ctypes.addressof(buf))
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall.restype = ctypes.c_long
        rc = libc.syscall(ctypes.c_long(nr), ctypes.c_long(_SECCOMP_SET_MODE_FILTER),
                          ctypes.c_ulong(self.flags), ctypes.byref(prog))
        if rc < 0:
            err = ctypes.get_errno()
            hint = " (needs no_new_privs or CAP_SYS_ADMIN)" if err == 13 else ""
            raise SeccompError(f"seccomp: load filter: {_strerror(err)}{hint}", err)
        if self.flags & _FLAG_NEW_LISTENER:
            return rc
        if rc > 0:  # TSYNC without ESRCH: the thread that could not be synchronised
            raise SeccompError(f"seccomp: load filter: thread {rc} cannot be synchronised")
        return None


# -- the notify fd to the agent -----------------------------------------------------------


def send_notify_fd(listener_path, fd, state, metadata="", pid=None):
    """Sends the seccomp notify fd to the agent listening at `listener_path`.

    One connection, one "container process state" message (runtime-spec config-linux.md):
    JSON {ociVersion, fds: ["seccompFd"], pid, metadata, state}, the fd attached with
    SCM_RIGHTS to the first sendmsg, then the connection is closed. `pid` defaults to
    state["pid"].
    """
    import json
    import socket

    if pid is None:
        pid = state.get("pid")
    message = {
        "ociVersion": state.get("ociVersion") or "1.1.0",
        "fds": ["seccompFd"],
        "pid": pid,
        "metadata": metadata or "",
        "state": state,
    }
    data = json.dumps(message).encode()
    where = f'{_WHERE}.listenerPath: send seccomp fd to "{listener_path}"'
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(listener_path)
            sent = socket.send_fds(sock, [data], [fd])
            if sent < len(data):
                sock.sendall(data[sent:])
    except OSError as e:
        message = (e.strerror or str(e)).lower()
        raise SeccompError(f"{where}: {message}", e.errno) from None


# -- features ------------------------------------------------------------------------------


def version():
    """(major, minor, micro) of the libseccomp in use."""
    return _lib().version


def api_level():
    """libseccomp's API level (seccomp_api_get): what this library and kernel support."""
    return _lib().api


def features():
    """The `linux.seccomp` object of `keel-runtime features`, as runc reports it.

    Lists only what this libseccomp and kernel support; {"enabled": False} when there is
    no usable libseccomp.
    """
    try:
        lib = _lib()
    except SeccompError:
        return {"enabled": False}
    actions = sorted(n for n, (_v, _e, api) in _ACTIONS.items()
                     if lib.api >= api and (n != "SCMP_ACT_NOTIFY" or lib.notify_fd))
    supported = lib.supported_flags()
    return {
        "enabled": True,
        "actions": actions,
        "operators": sorted(_OPERATORS),
        "archs": sorted(a for a in _ARCHES if lib.arch_token(a)),
        "knownFlags": list(_FLAGS),
        "supportedFlags": [f for f in _FLAGS if f in supported],
    }
