"""cgroup management for keel-runtime: v1, v2 and hybrid hosts (runc's cgroupfs driver).

The layout is read from /proc/self/mountinfo at run time: every `cgroup` mount is a v1
hierarchy (its super options name its controllers: "cpu", "cpu,cpuacct", "name=systemd"...),
the first `cgroup2` mount is the unified hierarchy. Mode "v1" has only v1 controllers,
"hybrid" has v1 controllers plus a cgroup2 mount, "v2" has only cgroup2.

Each resource group goes to the v1 hierarchy of its controller when one is mounted, else to
the unified hierarchy when that lists the controller in cgroup.controllers (so on a hybrid host
whose cgroup2 mount holds e.g. hugetlb, hugepage limits go to hugetlb.<size>.max there).

On keel-runtime's start-up path: imports only os, errno and time (all cheap).
"""

import errno
import os
import time

from keel.kernel.errors import CgroupError

__all__ = ["Layout", "Cgroup", "detect", "own_cgroups", "shares_to_weight", "blkio_to_io_weight",
           "swap_to_v2", "CgroupError"]

_SIGKILL = 9  # not `import signal`: signal.py imports enum
_MAX_U64 = (1 << 64) - 1

# super options of a v1 cgroup mount that are not controller names
_V1_NON_CONTROLLERS = frozenset((
    "rw", "ro", "none", "all", "noprefix", "clone_children", "cpuset_v2_mode", "xattr",
    "favordynmods", "nofavordynmods",
))


# --------------------------------------------------------------------------------------------
# small file helpers: every error names the file (and the value written)

def _reason(e):
    return os.strerror(e.errno).lower() if e.errno else str(e).lower()


def _write(path, value, field=None):
    """Plain open(O_WRONLY)+write of one value; CgroupError names the file, value and field."""
    data = value if isinstance(value, bytes) else str(value).encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
    except OSError as e:
        where = " (linux.resources.%s)" % field if field else ""
        raise CgroupError('write %s: "%s": %s%s' % (path, value, _reason(e), where),
                          e.errno) from None


def _read(path):
    try:
        with open(path, "rb") as f:
            return f.read().decode()
    except OSError as e:
        raise CgroupError("read %s: %s" % (path, _reason(e)), e.errno) from None


def _read_opt(path):
    """Contents of path, or None if it does not exist."""
    try:
        with open(path, "rb") as f:
            return f.read().decode()
    except FileNotFoundError:
        return None
    except OSError as e:
        if e.errno == errno.ENODEV:
            return None
        raise CgroupError("read %s: %s" % (path, _reason(e)), e.errno) from None


def _read_int(path):
    s = _read(path).strip()
    if s == "max":
        return _MAX_U64
    try:
        return int(s)
    except ValueError:
        raise CgroupError("read %s: %r is not a number" % (path, s)) from None


def _int_or(s, default=0):
    try:
        return int(s)
    except (TypeError, ValueError):
        return default


def _kv(text):
    """'key value' lines -> {key: int}."""
    out = {}
    for line in (text or "").splitlines():
        k, _, v = line.partition(" ")
        if k and v:
            try:
                out[k] = int(v.strip())
            except ValueError:
                pass
    return out


def _unescape(s):
    """mountinfo escapes space, tab, newline and backslash as \\ooo (octal)."""
    if "\\" not in s:
        return s
    out = []
    i = 0
    while i < len(s):
        code = s[i + 1:i + 4]
        if s[i] == "\\" and len(code) == 3 and all(ch in "01234567" for ch in code):
            out.append(chr(int(code, 8)))
            i += 4
        else:
            out.append(s[i])
            i += 1
    return "".join(out)


def _clean(path):
    """Like runc's CleanPath: resolve '.', '..' and '//' lexically; a relative path can
    never climb above its base ('../../x' -> 'x'). Keeps a leading '/'."""
    if not path:
        return ""
    parts = []
    for comp in path.split("/"):
        if comp in ("", "."):
            continue
        if comp == "..":
            if parts:
                parts.pop()
            continue
        parts.append(comp)
    s = "/".join(parts)
    return "/" + s if path.startswith("/") else s


def _join(base, *parts):
    out = base.rstrip("/") or "/"
    for p in parts:
        p = p.strip("/")
        if p:
            out = (out if out != "/" else "") + "/" + p
    return out


# --------------------------------------------------------------------------------------------
# layout

class Layout:
    """Which cgroup hierarchies exist.

    v1: controller -> mountpoint ("cpu" and "cpuacct" map to the same mountpoint when they are
        mounted together as "cpu,cpuacct"; named hierarchies appear as "name=systemd").
    v1_roots: controller -> the mount's root inside its hierarchy (not "/" when a sub-tree is
        bind-mounted, e.g. inside a container); used to map /proc/self/cgroup paths.
    unified: the cgroup2 mountpoint, or None.
    mode: "v1" | "hybrid" | "v2".
    """

    __slots__ = ("v1", "v1_roots", "unified", "unified_root", "mode", "_v2_controllers")

    def __init__(self, v1=None, unified=None, mode=None, v1_roots=None, unified_root="/"):
        self.v1 = dict(v1 or {})
        self.v1_roots = dict(v1_roots or {})
        self.unified = unified or None
        self.unified_root = unified_root or "/"
        self._v2_controllers = None
        real_v1 = any(not k.startswith("name=") for k in self.v1)
        if mode is None:
            if real_v1:
                mode = "hybrid" if self.unified else "v1"
            elif self.unified:
                mode = "v2"
            else:
                raise CgroupError("no cgroup hierarchy is mounted "
                                  "(no cgroup or cgroup2 entry in /proc/self/mountinfo)")
        if mode not in ("v1", "hybrid", "v2"):
            raise CgroupError('cgroup layout mode "%s" is not one of v1, hybrid, v2' % mode)
        if mode == "v2" and not self.unified:
            raise CgroupError("cgroup layout mode v2 needs a cgroup2 mountpoint")
        self.mode = mode

    @property
    def v2_controllers(self):
        """Controllers the unified hierarchy offers (its root's cgroup.controllers)."""
        if self._v2_controllers is None:
            text = _read_opt(_join(self.unified, "cgroup.controllers")) if self.unified else None
            self._v2_controllers = frozenset((text or "").split())
        return self._v2_controllers

    def to_dict(self):
        return {"mode": self.mode, "v1": dict(self.v1), "unified": self.unified}

    @classmethod
    def from_dict(cls, d):
        if not isinstance(d, dict):
            raise CgroupError("cgroup state: layout %r is not an object" % (d,))
        return cls(d.get("v1") or {}, d.get("unified"), d.get("mode"))

    def __repr__(self):
        return "Layout(mode=%r, v1=%r, unified=%r)" % (self.mode, self.v1, self.unified)


def detect(mountinfo="/proc/self/mountinfo"):
    """Read the cgroup layout from mountinfo (mounts of fstype cgroup / cgroup2)."""
    try:
        with open(mountinfo, "rb") as f:
            data = f.read().decode()
    except OSError as e:
        raise CgroupError("read %s: %s" % (mountinfo, _reason(e)), e.errno) from None
    v1 = {}
    roots = {}
    unified = None
    unified_root = "/"
    for line in data.splitlines():
        if " - cgroup" not in line:
            continue
        head, _, tail = line.partition(" - ")
        t = tail.split(" ")
        h = head.split(" ")
        if len(t) < 3 or len(h) < 5:
            continue
        fstype = t[0]
        if fstype == "cgroup2":
            if unified is None:
                unified, unified_root = _unescape(h[4]), _unescape(h[3])
            continue
        if fstype != "cgroup":
            continue
        mnt, root = _unescape(h[4]), _unescape(h[3])
        for opt in t[2].split(","):
            if opt in _V1_NON_CONTROLLERS or ("=" in opt and not opt.startswith("name=")):
                continue
            if opt not in v1:
                v1[opt] = mnt
                roots[opt] = root
    return Layout(v1, unified, v1_roots=roots, unified_root=unified_root)


def own_cgroups(path="/proc/self/cgroup"):
    """The calling process's cgroups: controller -> path ("" is the unified hierarchy)."""
    out = {}
    for line in _read(path).splitlines():
        hid, _, rest = line.partition(":")
        ctrls, _, p = rest.partition(":")
        if hid == "0" and ctrls == "":
            out[""] = p
            continue
        for c in ctrls.split(","):
            if c:
                out[c] = p
    return out


def _looks_systemd(path):
    return path.count(":") == 2 and "/" not in path


def _within_mount(own, root, key, mnt):
    """Map a /proc/self/cgroup path to a path below the mountpoint whose mount root is `root`."""
    if root in ("", "/"):
        return own
    if own == root:
        return "/"
    if own.startswith(root.rstrip("/") + "/"):
        return own[len(root.rstrip("/")):]
    raise CgroupError("own %s cgroup %s (from /proc/self/cgroup) is not below the root %s "
                      "of the mount at %s" % (key, own, root, mnt))


def _resolve(layout, path, proc_cgroup="/proc/self/cgroup"):
    """key -> absolute directory, for every hierarchy a container joins."""
    keys = [k for k in layout.v1 if not k.startswith("name=")]
    dirs = {}
    if path.startswith("/"):
        for k in keys:
            dirs[k] = _join(layout.v1[k], path)
        if layout.unified:
            dirs["unified"] = _join(layout.unified, path)
        return dirs
    own = own_cgroups(proc_cgroup)
    for k in keys:
        if k not in own:
            raise CgroupError("controller %s is mounted at %s but missing from %s"
                              % (k, layout.v1[k], proc_cgroup))
        mnt = layout.v1[k]
        dirs[k] = _join(mnt, _within_mount(own[k], layout.v1_roots.get(k, "/"), k, mnt), path)
    if layout.unified:
        if "" not in own:
            raise CgroupError("no unified (0::) entry in %s" % proc_cgroup)
        base = _within_mount(own[""], layout.unified_root, "unified", layout.unified)
        if layout.mode == "v2":
            # like runc's fs2: the caller's own cgroup most likely has processes in it, so no
            # controller could be enabled below it; use its parent.
            base = base.rstrip("/").rpartition("/")[0] or "/"
        dirs["unified"] = _join(layout.unified, base, path)
    return dirs


# --------------------------------------------------------------------------------------------
# value validation for linux.resources

def _num(field, value, minus_one=True, zero_unset=False):
    """An integer from the spec, -1 allowed when minus_one; None if absent (or 0 when
    zero_unset, as runc treats 0 as 'not set' for those fields)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise CgroupError("linux.resources.%s: %r is not an integer" % (field, value))
    if value == -1 and minus_one:
        return -1
    if value < 0:
        hint = " (use -1 for unlimited)" if minus_one else " (must be >= 0)"
        raise CgroupError("linux.resources.%s: %d is not valid%s" % (field, value, hint))
    if value == 0 and zero_unset:
        return None
    return value


def _obj(field, value):
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise CgroupError("linux.resources.%s: %r is not an object" % (field, value))
    return value


def _list(field, value):
    if value is None:
        return []
    if not isinstance(value, list):
        raise CgroupError("linux.resources.%s: %r is not a list" % (field, value))
    return value


def _dev(field, d, extra):
    """(major, minor, value) for a blockIO device entry."""
    if not isinstance(d, dict):
        raise CgroupError("linux.resources.%s: %r is not an object" % (field, d))
    major = _num(field + ".major", d.get("major"), minus_one=False)
    minor = _num(field + ".minor", d.get("minor"), minus_one=False)
    if major is None or minor is None:
        raise CgroupError("linux.resources.%s: major and minor are required" % field)
    return major, minor, _num(field + "." + extra, d.get(extra), minus_one=False)


def shares_to_weight(shares):
    """cpu.shares [2, 262144] -> cpu.weight [1, 10000], as runc converts."""
    shares = min(max(shares, 2), 262144)
    return 1 + ((shares - 2) * 9999) // 262142


def blkio_to_io_weight(weight):
    """blkio.weight [10, 1000] -> io.weight [1, 10000], as runc converts."""
    weight = min(max(weight, 10), 1000)
    return 1 + ((weight - 10) * 9999) // 990


def swap_to_v2(swap, limit, field="memory.swap"):
    """OCI swap is memory+swap; cgroup v2 memory.swap.max is swap alone (runc's conversion).
    Returns None (leave), -1 (max) or a byte count."""
    if limit == -1 and swap is None:
        return -1
    if swap is None or swap == -1:
        return swap
    if limit is None:
        raise CgroupError("linux.resources.%s: %d needs memory.limit to be set too (on cgroup "
                          "v2 swap is stored as swap - limit)" % (field, swap))
    if limit == -1:
        return swap
    return swap - limit


# --------------------------------------------------------------------------------------------

class Cgroup:
    """One container's cgroup, in every mounted hierarchy.

    `path` is a cgroup path: absolute ("/keel/abc": below each hierarchy's mountpoint) or
    relative ("keel/abc": below the calling process's own cgroup in each hierarchy).
    """

    def __init__(self, path, layout=None, *, _dirs=None):
        if not isinstance(path, str):
            raise CgroupError("cgroup path %r is not a string" % (path,))
        cleaned = _clean(path)
        if cleaned in ("", "/"):
            raise CgroupError('cgroup path "%s" is the root or the caller\'s own cgroup; '
                              "a container needs a cgroup of its own" % path)
        self.path = cleaned
        self.layout = layout if layout is not None else detect()
        self.warnings = []
        self._dirs = dict(_dirs) if _dirs is not None else _resolve(self.layout, cleaned)

    @classmethod
    def from_spec(cls, cgroups_path, container_id, layout=None):
        """The cgroup for an OCI `linux.cgroupsPath`, like runc's cgroupfs driver: empty ->
        "<id>" relative to the caller's own cgroups; relative -> below the caller's own cgroup
        (per hierarchy, from /proc/self/cgroup); absolute -> below each hierarchy's root."""
        if cgroups_path is not None and not isinstance(cgroups_path, str):
            raise CgroupError("linux.cgroupsPath: %r is not a string" % (cgroups_path,))
        if not cgroups_path:
            if not container_id or "/" in container_id or container_id in (".", ".."):
                raise CgroupError('container id "%s" cannot name a cgroup' % container_id)
            return cls(container_id, layout)
        if _looks_systemd(cgroups_path):
            raise CgroupError('linux.cgroupsPath "%s" is a systemd "slice:prefix:name" path; '
                              "the systemd cgroup driver is not supported: use a cgroupfs path "
                              'such as "/keel/%s"' % (cgroups_path, container_id))
        if _clean(cgroups_path) in ("", "/"):
            raise CgroupError('linux.cgroupsPath "%s" names the root or the caller\'s own '
                              "cgroup; a container needs a cgroup of its own" % cgroups_path)
        return cls(cgroups_path, layout)

    # ---- persistence
    def to_dict(self):
        return {"path": self.path, "dirs": dict(self._dirs), "layout": self.layout.to_dict()}

    @classmethod
    def from_dict(cls, d):
        if not isinstance(d, dict) or not isinstance(d.get("dirs"), dict) \
                or not isinstance(d.get("path"), str):
            raise CgroupError("cgroup state: %r lacks path/dirs" % (d,))
        return cls(d["path"], Layout.from_dict(d.get("layout")), _dirs=d["dirs"])

    def paths(self):
        """controller (or "unified") -> absolute directory."""
        return dict(self._dirs)

    def __repr__(self):
        return "Cgroup(%r, mode=%r)" % (self.path, self.layout.mode)

    def _unique_dirs(self):
        return list(dict.fromkeys(self._dirs.values()))

    def _v1(self, name):
        """The v1 directory for a controller, or None."""
        if name in self.layout.v1:
            return self._dirs.get(name)
        return None

    def _v2(self, name):
        """The unified directory if the unified hierarchy offers controller `name`."""
        d = self._dirs.get("unified")
        if d and name in self.layout.v2_controllers and name not in self.layout.v1:
            return d
        return None

    def _target(self, field, v1name, v2name):
        """(1, dir) or (2, dir) for a resource group; CgroupError naming the field if neither."""
        d = self._v1(v1name) if v1name else None
        if d:
            return 1, d
        d = self._v2(v2name) if v2name else None
        if d:
            return 2, d
        name = v1name or v2name
        if v2name is None:
            how = "no cgroup v1 hierarchy has it, and cgroup v2 has no equivalent"
        elif self.layout.unified:
            how = "not mounted as cgroup v1, and not in %s" % _join(self.layout.unified,
                                                                  "cgroup.controllers")
        else:
            how = "not mounted as cgroup v1, and there is no cgroup2 mount"
        raise CgroupError("linux.resources.%s: the %s controller is not available (%s)"
                          % (field, name, how))

    # ---- lifecycle
    def create(self):
        """mkdir -p in every hierarchy; v1 cpuset: fill empty cpuset.cpus/mems from the parent;
        unified: enable the controllers it offers in the ancestors' cgroup.subtree_control."""
        for d in self._unique_dirs():
            try:
                os.makedirs(d, 0o755, exist_ok=True)
            except OSError as e:
                raise CgroupError("mkdir %s: %s" % (d, _reason(e)), e.errno) from None
        cs = self._v1("cpuset")
        if cs:
            self._cpuset_fill(self.layout.v1["cpuset"], cs)
        if "unified" in self._dirs:
            self._enable_controllers()

    def _cpuset_fill(self, mnt, leaf):
        rel = leaf[len(mnt.rstrip("/")):].strip("/")
        parent = mnt
        for comp in rel.split("/") if rel else []:
            cur = _join(parent, comp)
            for f in ("cpuset.cpus", "cpuset.mems"):
                if _read(_join(cur, f)).strip() == "":
                    value = _read(_join(parent, f)).strip()
                    _write(_join(cur, f), value)
            parent = cur

    def _enable_controllers(self):
        mnt = self.layout.unified
        want = sorted(c for c in self.layout.v2_controllers if c not in self.layout.v1)
        if not want:
            return
        leaf = self._dirs["unified"]
        rel = leaf[len(mnt.rstrip("/")):].strip("/").split("/")
        cur = mnt
        for comp in [""] + rel[:-1]:
            cur = _join(cur, comp)
            f = _join(cur, "cgroup.subtree_control")
            have = set((_read_opt(f) or "").split())
            missing = [c for c in want if c not in have]
            if not missing:
                continue
            try:
                _write(f, " ".join("+" + c for c in missing))
            except CgroupError:
                # one by one, ignoring failures (e.g. EBUSY: processes in an ancestor);
                # a resource that needs a controller then fails naming the missing file
                for c in missing:
                    try:
                        _write(f, "+" + c)
                    except CgroupError:
                        pass

    def join(self, pid):
        """Write pid into cgroup.procs in every hierarchy."""
        for d in self._unique_dirs():
            f = _join(d, "cgroup.procs")
            for attempt in range(5):
                try:
                    _write(f, str(pid))
                    break
                except CgroupError as e:
                    # EINVAL: the task may still be in TASK_NEW (runc retries the same way)
                    if e.errno != errno.EINVAL or attempt == 4:
                        raise
                    time.sleep(0.01)

    def pids(self):
        """Every pid in the cgroup and its descendants, in any hierarchy, sorted."""
        found = set()
        for d in self._unique_dirs():
            for root, _dirs, _files in os.walk(d):
                text = _read_opt(_join(root, "cgroup.procs"))
                for tok in (text or "").split():
                    found.add(int(tok))
        return sorted(found)

    def _freezer(self):
        d = self._v1("freezer")
        if d:
            return 1, d
        d = self._dirs.get("unified")
        if d and os.path.exists(_join(d, "cgroup.freeze")):
            return 2, d
        return None, None

    def freeze(self, timeout=5.0):
        """Freeze every process; returns once the kernel reports the cgroup frozen."""
        ver, d = self._freezer()
        if ver is None:
            raise CgroupError("freeze %s: no freezer (v1 freezer not mounted, no cgroup.freeze)"
                              % self.path)
        deadline = time.monotonic() + timeout
        if ver == 1:
            f = _join(d, "freezer.state")
            i = 0
            while True:
                if i % 50 == 49:
                    # like runc: an occasional thaw helps while new tasks keep appearing
                    _write(f, "THAWED")
                    time.sleep(0.005)
                _write(f, "FROZEN")
                state = _read(f).strip()
                if state == "FROZEN":
                    return
                if time.monotonic() > deadline:
                    _write(f, "THAWED")
                    raise CgroupError("freeze %s: still %s after %gs" % (f, state, timeout))
                time.sleep(min(0.0005 * (1 << min(i, 5)), 0.02))
                i += 1
        _write(_join(d, "cgroup.freeze"), "1")
        if not self._wait_events(d, "1", deadline):
            _write(_join(d, "cgroup.freeze"), "0")
            raise CgroupError("freeze %s: cgroup.events did not report frozen 1 within %gs"
                              % (d, timeout))

    def thaw(self, timeout=5.0):
        ver, d = self._freezer()
        if ver is None:
            return
        deadline = time.monotonic() + timeout
        if ver == 1:
            f = _join(d, "freezer.state")
            _write(f, "THAWED")
            delay = 0.0005
            while True:
                state = _read(f).strip()
                if state == "THAWED":
                    return
                if time.monotonic() > deadline:
                    raise CgroupError("thaw %s: still %s after %gs (is an ancestor frozen?)"
                                      % (f, state, timeout))
                time.sleep(delay)
                delay = min(delay * 2, 0.02)
        _write(_join(d, "cgroup.freeze"), "0")
        if not self._wait_events(d, "0", deadline):
            raise CgroupError("thaw %s: cgroup.events did not report frozen 0 within %gs"
                              % (d, timeout))

    @staticmethod
    def _wait_events(d, want, deadline):
        f = _join(d, "cgroup.events")
        delay = 0.0005
        while True:
            text = _read_opt(f)
            if text is None:
                return True
            for line in text.splitlines():
                if line.startswith("frozen ") and line[7:].strip() == want:
                    return True
            if time.monotonic() > deadline:
                return False
            time.sleep(delay)
            delay = min(delay * 2, 0.02)

    def state(self):
        """"paused" if the freezer holds the cgroup, else "running"."""
        ver, d = self._freezer()
        if ver == 1:
            return "running" if _read(_join(d, "freezer.state")).strip() == "THAWED" \
                else "paused"
        if ver == 2:
            return "paused" if (_read_opt(_join(d, "cgroup.freeze")) or "").strip() == "1" \
                else "running"
        return "running"

    def kill_all(self, sig):
        """Signal every process. SIGKILL with a cgroup.kill file uses it (atomic, v2 only);
        otherwise the cgroup is frozen first so nothing forks past the signal, then thawed
        (left frozen for other signals if it was paused before)."""
        ud = self._dirs.get("unified")
        if sig == _SIGKILL and ud and os.path.exists(_join(ud, "cgroup.kill")):
            _write(_join(ud, "cgroup.kill"), "1")
            # processes only in v1 hierarchies (a partial join) are still signalled below
            self._signal(self.pids(), sig)
            return
        ver, _ = self._freezer()
        frozen = False
        was_paused = False
        if ver is not None:
            try:
                was_paused = self.state() == "paused"
                self.freeze()
                frozen = True
            except CgroupError:
                pass  # signal anyway, racing with fork
        try:
            self._signal(self.pids(), sig)
        finally:
            if frozen and (sig == _SIGKILL or not was_paused):
                self.thaw()

    @staticmethod
    def _signal(pids, sig):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
            except OSError as e:
                raise CgroupError("kill %d %d: %s" % (pid, sig, _reason(e)), e.errno) from None

    def destroy(self, timeout=1.0):
        """rmdir the leaf (and any sub-cgroups, deepest first) in every hierarchy, retrying
        EBUSY while processes exit; missing directories are fine. Parents are left alone."""
        deadline = time.monotonic() + timeout
        errors = []
        for d in self._unique_dirs():
            try:
                self._rmtree(d, deadline)
            except CgroupError as e:
                errors.append(e)
        if errors:
            more = " (and %d more)" % (len(errors) - 1) if len(errors) > 1 else ""
            raise CgroupError(str(errors[0]) + more, errors[0].errno)

    def _rmtree(self, d, deadline):
        try:
            subs = [e.path for e in os.scandir(d) if e.is_dir(follow_symlinks=False)]
        except FileNotFoundError:
            return
        except OSError as e:
            raise CgroupError("rmdir %s: %s" % (d, _reason(e)), e.errno) from None
        for s in subs:
            self._rmtree(s, deadline)
        delay = 0.001
        while True:
            try:
                os.rmdir(d)
                return
            except FileNotFoundError:
                return
            except OSError as e:
                if e.errno != errno.EBUSY or time.monotonic() > deadline:
                    left = (_read_opt(_join(d, "cgroup.procs")) or "").split()
                    extra = " (pids still in it: %s)" % " ".join(left[:10]) if left else ""
                    raise CgroupError("rmdir %s: %s%s" % (d, _reason(e), extra),
                                      e.errno) from None
                time.sleep(delay)
                delay = min(delay * 2, 0.05)

    # ---- resources
    def apply(self, resources):
        """Apply an OCI `linux.resources` object. Everything is validated before anything is
        written; absent/null fields are left untouched. Returns the warnings of this call
        (also appended to self.warnings)."""
        if not resources:
            return []
        if not isinstance(resources, dict):
            raise CgroupError("linux.resources: %r is not an object" % (resources,))
        ops = []
        warnings = []
        r = resources
        self._plan_memory(_obj("memory", r.get("memory")), ops, warnings)
        self._plan_cpu(_obj("cpu", r.get("cpu")), ops)
        self._plan_pids(_obj("pids", r.get("pids")), ops)
        self._plan_blkio(_obj("blockIO", r.get("blockIO")), ops)
        self._plan_hugetlb(_list("hugepageLimits", r.get("hugepageLimits")), ops)
        self._plan_network(_obj("network", r.get("network")), ops)
        self._plan_devices(_list("devices", r.get("devices")), ops, warnings)
        self._plan_unified(_obj("unified", r.get("unified")), ops)
        for op in ops:
            if callable(op):
                op()
            else:
                _write(*op)
        self.warnings.extend(warnings)
        return warnings

    def _need(self, d, name, field):
        f = _join(d, name)
        if not os.path.exists(f):
            raise CgroupError("linux.resources.%s: %s does not exist (this kernel has no %s)"
                              % (field, f, name))
        return f

    def _plan_memory(self, m, ops, warnings):
        if not m:
            return
        limit = _num("memory.limit", m.get("limit"), zero_unset=True)
        reservation = _num("memory.reservation", m.get("reservation"), zero_unset=True)
        swap = _num("memory.swap", m.get("swap"), zero_unset=True)
        kernel = _num("memory.kernel", m.get("kernel"), zero_unset=True)
        ktcp = _num("memory.kernelTCP", m.get("kernelTCP"), zero_unset=True)
        swappiness = m.get("swappiness")
        if swappiness is not None:
            swappiness = _num("memory.swappiness", swappiness)
            if swappiness == -1:
                swappiness = None  # runc: -1 leaves it alone
            elif swappiness > 100:
                raise CgroupError("linux.resources.memory.swappiness: %d is not valid (0-100)"
                                  % swappiness)
        oom_off = m.get("disableOOMKiller")
        if oom_off is not None and not isinstance(oom_off, bool):
            raise CgroupError("linux.resources.memory.disableOOMKiller: %r is not a boolean"
                              % (oom_off,))
        check = m.get("checkBeforeUpdate") is True
        if all(v is None for v in (limit, reservation, swap, kernel, ktcp, swappiness)) \
                and not oom_off:
            return
        if limit not in (None, -1) and swap not in (None, -1) and swap < limit:
            raise CgroupError("linux.resources.memory.swap: %d is below memory.limit %d "
                              "(swap counts memory+swap, so it must be >= the limit)"
                              % (swap, limit))
        ver, d = self._target("memory", "memory", "memory")
        if ver == 1:
            self._plan_memory_v1(d, limit, reservation, swap, kernel, ktcp, swappiness,
                                 oom_off, ops)
            return
        for field, v in (("memory.kernel", kernel), ("memory.kernelTCP", ktcp),
                         ("memory.swappiness", swappiness)):
            if v is not None:
                raise CgroupError("linux.resources.%s: not supported on cgroup v2 (no such file "
                                  "in %s)" % (field, d))
        if oom_off:
            warnings.append("linux.resources.memory.disableOOMKiller: ignored, cgroup v2 "
                            "cannot disable the OOM killer")
        if check and limit not in (None, -1):
            cur = _read_opt(_join(d, "memory.current"))
            if cur is not None and _int_or(cur.strip()) >= limit:
                raise CgroupError("linux.resources.memory.limit: %d is not above the current "
                                  "usage %s of %s" % (limit, cur.strip(), d))
        v2swap = swap_to_v2(swap, limit)
        if v2swap is not None:
            f = _join(d, "memory.swap.max")
            value = "max" if v2swap == -1 else str(v2swap)
            if os.path.exists(f):
                ops.append((f, value, "memory.swap"))
            elif swap is not None and value != "max" and value != "0":
                self._need(d, "memory.swap.max", "memory.swap")
        if limit is not None:
            ops.append((self._need(d, "memory.max", "memory.limit"),
                        "max" if limit == -1 else str(limit), "memory.limit"))
        if reservation is not None:
            ops.append((self._need(d, "memory.low", "memory.reservation"),
                        "max" if reservation == -1 else str(reservation), "memory.reservation"))

    def _plan_memory_v1(self, d, limit, reservation, swap, kernel, ktcp, swappiness, oom_off,
                        ops):
        memsw = _join(d, "memory.memsw.limit_in_bytes")
        if limit == -1 and swap is None and os.path.exists(memsw):
            swap = -1  # runc: unlimited memory, swap not given -> unlimited swap too
        elif swap is not None:
            self._need(d, "memory.memsw.limit_in_bytes", "memory.swap")
        lim_f = self._need(d, "memory.limit_in_bytes", "memory.limit")

        def set_limit():
            try:
                _write(lim_f, str(limit), "memory.limit")
            except CgroupError as e:
                if e.errno == errno.EINVAL and swap is None and limit != -1:
                    cur = _int_or((_read_opt(memsw) or "").strip(), None)
                    if cur is not None and cur < limit:
                        raise CgroupError(
                            'write %s: "%d": invalid argument: the memory+swap limit %d (%s) '
                            "is below it; set memory.swap too (linux.resources.memory.limit)"
                            % (lim_f, limit, cur, memsw), e.errno) from None
                if e.errno != errno.EBUSY:
                    raise
                usage = (_read_opt(_join(d, "memory.usage_in_bytes")) or "?").strip()
                raise CgroupError('write %s: "%d": device or resource busy (the current usage '
                                  "%s is above the new limit) (linux.resources.memory.limit)"
                                  % (lim_f, limit, usage), e.errno) from None

        set_swap = (memsw, str(swap), "memory.swap")
        if limit is not None and swap is not None:
            cur = _read_int(lim_f)
            # the kernel wants memsw >= limit at every step: order the two writes to keep it
            if swap == -1 or cur < swap:
                ops += [set_swap, set_limit]
            else:
                ops += [set_limit, set_swap]
        elif limit is not None:
            ops.append(set_limit)
        elif swap is not None:
            ops.append(set_swap)
        if reservation is not None:
            ops.append((self._need(d, "memory.soft_limit_in_bytes", "memory.reservation"),
                        str(reservation), "memory.reservation"))
        for field, name, v in (("memory.kernel", "memory.kmem.limit_in_bytes", kernel),
                               ("memory.kernelTCP", "memory.kmem.tcp.limit_in_bytes", ktcp)):
            if v is None:
                continue
            f = self._need(d, name, field)
            ops.append(lambda f=f, v=v, field=field: _write_checked(f, v, field))
        if swappiness is not None:
            ops.append((self._need(d, "memory.swappiness", "memory.swappiness"),
                        str(swappiness), "memory.swappiness"))
        if oom_off:
            ops.append((self._need(d, "memory.oom_control", "memory.disableOOMKiller"), "1",
                        "memory.disableOOMKiller"))

    def _plan_cpu(self, c, ops):
        if not c:
            return
        shares = _num("cpu.shares", c.get("shares"), minus_one=False, zero_unset=True)
        quota = _num("cpu.quota", c.get("quota"), zero_unset=True)
        period = _num("cpu.period", c.get("period"), minus_one=False, zero_unset=True)
        burst = _num("cpu.burst", c.get("burst"), minus_one=False)
        rt_runtime = _num("cpu.realtimeRuntime", c.get("realtimeRuntime"), zero_unset=True)
        rt_period = _num("cpu.realtimePeriod", c.get("realtimePeriod"), minus_one=False,
                         zero_unset=True)
        idle = _num("cpu.idle", c.get("idle"), minus_one=False)
        sets = {}
        for k in ("cpus", "mems"):
            v = c.get(k)
            if v is None or v == "":
                continue
            if not isinstance(v, str) or "\n" in v:
                raise CgroupError("linux.resources.cpu.%s: %r is not a cpu list string" % (k, v))
            sets[k] = v
        if any(v is not None for v in (shares, quota, period, burst, rt_runtime, rt_period,
                                       idle)):
            ver, d = self._target("cpu", "cpu", "cpu")
            if ver == 1:
                self._plan_cpu_v1(d, shares, quota, period, burst, rt_runtime, rt_period, idle,
                                  ops)
            else:
                self._plan_cpu_v2(d, shares, quota, period, burst, rt_runtime, rt_period, idle,
                                  ops)
        if sets:
            _, d = self._target("cpu.cpus" if "cpus" in sets else "cpu.mems", "cpuset",
                                "cpuset")
            for k, v in sets.items():
                ops.append((self._need(d, "cpuset." + k, "cpu." + k), v, "cpu." + k))

    def _plan_cpu_v1(self, d, shares, quota, period, burst, rt_runtime, rt_period, idle, ops):
        if rt_period is not None:
            ops.append((self._need(d, "cpu.rt_period_us", "cpu.realtimePeriod"),
                        str(rt_period), "cpu.realtimePeriod"))
        if rt_runtime is not None:
            ops.append((self._need(d, "cpu.rt_runtime_us", "cpu.realtimeRuntime"),
                        str(rt_runtime), "cpu.realtimeRuntime"))
        if shares is not None:
            f = self._need(d, "cpu.shares", "cpu.shares")

            def set_shares():
                _write(f, str(shares), "cpu.shares")
                got = _read_int(f)
                if got != shares:
                    raise CgroupError("linux.resources.cpu.shares: %d is out of range: the "
                                      "kernel set %s to %d" % (shares, f, got))
            ops.append(set_shares)
        if quota is not None or period is not None:
            qf = self._need(d, "cpu.cfs_quota_us", "cpu.quota")
            pf = self._need(d, "cpu.cfs_period_us", "cpu.period")

            def set_bandwidth():
                retry = False
                if period is not None:
                    try:
                        _write(pf, str(period), "cpu.period")
                    except CgroupError as e:
                        # a smaller period can be refused until the quota shrinks (runc)
                        if e.errno != errno.EINVAL or quota is None:
                            raise
                        retry = True
                if quota is not None:
                    _write(qf, str(quota), "cpu.quota")
                    if retry:
                        _write(pf, str(period), "cpu.period")
            ops.append(set_bandwidth)
        if burst is not None:
            ops.append((self._need(d, "cpu.cfs_burst_us", "cpu.burst"), str(burst),
                        "cpu.burst"))
        if idle is not None:
            ops.append((self._need(d, "cpu.idle", "cpu.idle"), str(idle), "cpu.idle"))

    def _plan_cpu_v2(self, d, shares, quota, period, burst, rt_runtime, rt_period, idle, ops):
        for field, v in (("cpu.realtimeRuntime", rt_runtime), ("cpu.realtimePeriod", rt_period)):
            if v is not None:
                raise CgroupError("linux.resources.%s: not supported on cgroup v2 (no realtime "
                                  "group scheduling files in %s)" % (field, d))
        if shares is not None:
            ops.append((self._need(d, "cpu.weight", "cpu.shares"), str(shares_to_weight(shares)),
                        "cpu.shares"))
        if quota is not None or period is not None:
            f = self._need(d, "cpu.max", "cpu.quota" if quota is not None else "cpu.period")
            if quota is None:
                # keep the current quota when only the period changes
                q = ((_read_opt(f) or "max").split() or ["max"])[0]
            else:
                q = "max" if quota == -1 else str(quota)
            ops.append((f, "%s %d" % (q, period if period is not None else 100000),
                        "cpu.quota" if quota is not None else "cpu.period"))
        if burst is not None:
            ops.append((self._need(d, "cpu.max.burst", "cpu.burst"), str(burst), "cpu.burst"))
        if idle is not None:
            ops.append((self._need(d, "cpu.idle", "cpu.idle"), str(idle), "cpu.idle"))

    def _plan_pids(self, p, ops):
        if not p or p.get("limit") is None:
            return
        limit = _num("pids.limit", p.get("limit"))
        _, d = self._target("pids.limit", "pids", "pids")
        value = "max" if limit in (0, -1) else str(limit)
        ops.append((self._need(d, "pids.max", "pids.limit"), value, "pids.limit"))

    def _plan_blkio(self, b, ops):
        if not b:
            return
        weight = _num("blockIO.weight", b.get("weight"), minus_one=False, zero_unset=True)
        leaf = _num("blockIO.leafWeight", b.get("leafWeight"), minus_one=False, zero_unset=True)
        wdev = []
        for i, e in enumerate(_list("blockIO.weightDevice", b.get("weightDevice"))):
            field = "blockIO.weightDevice[%d]" % i
            major, minor, w = _dev(field, e, "weight")
            lw = _num(field + ".leafWeight", e.get("leafWeight"), minus_one=False)
            wdev.append((field, major, minor, w, lw))
        throttles = []
        for key, v1file, v2key in (
                ("throttleReadBpsDevice", "blkio.throttle.read_bps_device", "rbps"),
                ("throttleWriteBpsDevice", "blkio.throttle.write_bps_device", "wbps"),
                ("throttleReadIOPSDevice", "blkio.throttle.read_iops_device", "riops"),
                ("throttleWriteIOPSDevice", "blkio.throttle.write_iops_device", "wiops")):
            for i, e in enumerate(_list("blockIO." + key, b.get(key))):
                field = "blockIO.%s[%d]" % (key, i)
                major, minor, rate = _dev(field, e, "rate")
                if rate is None:
                    raise CgroupError("linux.resources.%s.rate is required" % field)
                throttles.append((field, major, minor, rate, v1file, v2key))
        if weight is None and leaf is None and not wdev and not throttles:
            return
        ver, d = self._target("blockIO", "blkio", "io")
        if ver == 1:
            if weight is not None or any(w is not None for _, _, _, w, _ in wdev):
                if os.path.exists(_join(d, "blkio.weight")):
                    wf, wdf = "blkio.weight", "blkio.weight_device"
                elif os.path.exists(_join(d, "blkio.bfq.weight")):
                    wf, wdf = "blkio.bfq.weight", "blkio.bfq.weight_device"
                else:
                    field = "blockIO.weight" if weight is not None else wdev[0][0] + ".weight"
                    raise CgroupError("linux.resources.%s: %s does not exist, nor does "
                                      "blkio.bfq.weight (this kernel cannot set block i/o "
                                      "weights)" % (field, _join(d, "blkio.weight")))
                if weight is not None:
                    ops.append((_join(d, wf), str(weight), "blockIO.weight"))
            if leaf is not None:
                ops.append((self._need(d, "blkio.leaf_weight", "blockIO.leafWeight"), str(leaf),
                            "blockIO.leafWeight"))
            for field, major, minor, w, lw in wdev:
                if w is not None:
                    ops.append((self._need(d, wdf, field + ".weight"),
                                "%d:%d %d" % (major, minor, w), field + ".weight"))
                if lw is not None:
                    ops.append((self._need(d, "blkio.leaf_weight_device", field + ".leafWeight"),
                                "%d:%d %d" % (major, minor, lw), field + ".leafWeight"))
            for field, major, minor, rate, v1file, _ in throttles:
                ops.append((self._need(d, v1file, field), "%d:%d %d" % (major, minor, rate),
                            field))
            return
        if leaf is not None or any(lw is not None for *_, lw in wdev):
            raise CgroupError("linux.resources.blockIO.leafWeight: not supported on cgroup v2")
        bfq = os.path.exists(_join(d, "io.bfq.weight"))
        if weight is not None:
            if bfq:
                ops.append((_join(d, "io.bfq.weight"), str(weight), "blockIO.weight"))
            else:
                ops.append((self._need(d, "io.weight", "blockIO.weight"),
                            str(blkio_to_io_weight(weight)), "blockIO.weight"))
        for field, major, minor, w, _ in wdev:
            if w is None:
                continue
            if bfq:
                ops.append((_join(d, "io.bfq.weight"), "%d:%d %d" % (major, minor, w), field))
            else:
                ops.append((self._need(d, "io.weight", field), "%d:%d %d"
                            % (major, minor, blkio_to_io_weight(w)), field))
        for field, major, minor, rate, _, key in throttles:
            # v1 writes 0 to drop a device's limit; v2 spells that "max"
            ops.append((self._need(d, "io.max", field), "%d:%d %s=%s"
                        % (major, minor, key, rate if rate else "max"), field))

    def _plan_hugetlb(self, limits, ops):
        if not limits:
            return
        planned = []
        for i, h in enumerate(limits):
            field = "hugepageLimits[%d]" % i
            if not isinstance(h, dict):
                raise CgroupError("linux.resources.%s: %r is not an object" % (field, h))
            size = h.get("pageSize")
            if not isinstance(size, str) or not size.isalnum():
                raise CgroupError('linux.resources.%s.pageSize: %r is not a page size like "2MB"'
                                  % (field, size))
            limit = _num(field + ".limit", h.get("limit"))
            if limit is None:
                raise CgroupError("linux.resources.%s.limit is required" % field)
            planned.append((field, size, limit))
        ver, d = self._target("hugepageLimits", "hugetlb", "hugetlb")
        for field, size, limit in planned:
            if ver == 1:
                name, rsvd, value = ("hugetlb.%s.limit_in_bytes" % size,
                                     "hugetlb.%s.rsvd.limit_in_bytes" % size, str(limit))
            else:
                name, rsvd, value = ("hugetlb.%s.max" % size, "hugetlb.%s.rsvd.max" % size,
                                     "max" if limit == -1 else str(limit))
            ops.append((self._need(d, name, field + ".limit"), value, field + ".limit"))
            if os.path.exists(_join(d, rsvd)):  # runc sets the reservation limit too
                ops.append((_join(d, rsvd), value, field + ".limit"))

    def _plan_network(self, n, ops):
        if not n:
            return
        classid = _num("network.classID", n.get("classID"), minus_one=False)
        prios = _list("network.priorities", n.get("priorities"))
        if classid is not None:
            _, d = self._target("network.classID", "net_cls", None)
            ops.append((self._need(d, "net_cls.classid", "network.classID"), str(classid),
                        "network.classID"))
        if prios:
            _, d = self._target("network.priorities", "net_prio", None)
            f = self._need(d, "net_prio.ifpriomap", "network.priorities")
            for i, p in enumerate(prios):
                field = "network.priorities[%d]" % i
                name = p.get("name") if isinstance(p, dict) else None
                if not isinstance(name, str) or not name or " " in name or "\n" in name:
                    raise CgroupError("linux.resources.%s.name: %r is not an interface name"
                                      % (field, name))
                prio = _num(field + ".priority", p.get("priority"), minus_one=False)
                ops.append((f, "%s %d" % (name, prio or 0), field))

    def _plan_devices(self, rules, ops, warnings):
        if not rules:
            return
        lines = []
        for i, rule in enumerate(rules):
            field = "devices[%d]" % i
            if not isinstance(rule, dict):
                raise CgroupError("linux.resources.%s: %r is not an object" % (field, rule))
            allow = rule.get("allow")
            if not isinstance(allow, bool):
                raise CgroupError("linux.resources.%s.allow: %r is not a boolean"
                                  % (field, allow))
            typ = rule.get("type") or "a"
            if typ not in ("a", "c", "b"):
                raise CgroupError('linux.resources.%s.type: "%s" is not one of a, c, b'
                                  % (field, typ))
            access = rule.get("access") or "rwm"
            if not isinstance(access, str) or not access or any(ch not in "rwm" for ch in access):
                raise CgroupError('linux.resources.%s.access: "%s" is not a subset of "rwm"'
                                  % (field, access))
            nums = []
            for k in ("major", "minor"):
                v = rule.get(k)
                if v is None or v == -1:
                    nums.append("*")
                else:
                    nums.append(str(_num(field + "." + k, v, minus_one=False)))
            fname = "devices.allow" if allow else "devices.deny"
            if typ == "a":
                if set(access) == set("rwm") and nums == ["*", "*"]:
                    lines.append((fname, "a", field))  # all devices: resets the whole list
                else:
                    # the kernel reads any "a" rule as "everything": spell it out per type
                    for t in ("c", "b"):
                        lines.append((fname, "%s %s:%s %s" % (t, nums[0], nums[1], access),
                                      field))
            else:
                lines.append((fname, "%s %s:%s %s" % (typ, nums[0], nums[1], access), field))
        d = self._v1("devices")
        if d is None:
            warnings.append("linux.resources.devices: %d rules not enforced: the device "
                            "controller here is cgroup v2's eBPF hook, which keel does not "
                            "program" % len(rules))
            return
        for fname, line, field in lines:
            ops.append((self._need(d, fname, field), line, field))

    def _plan_unified(self, u, ops):
        if not u:
            return
        if self.layout.mode != "v2":
            raise CgroupError("linux.resources.unified: cgroup v2 keys cannot be applied on "
                              "this %s host (its resource controllers are cgroup v1)"
                              % self.layout.mode)
        d = self._dirs["unified"]
        for k, v in u.items():
            field = 'unified["%s"]' % k
            if not isinstance(k, str) or "/" in k or k.startswith(".") or "." not in k:
                raise CgroupError("linux.resources.%s: not a cgroup v2 file name" % field)
            if not isinstance(v, str):
                raise CgroupError("linux.resources.%s: %r is not a string" % (field, v))
            f = _join(d, k)
            if not os.path.exists(f):
                ctrl = k.partition(".")[0]
                raise CgroupError('linux.resources.%s: %s does not exist (is the "%s" controller '
                                  "enabled?)" % (field, f, ctrl))
            ops.append((f, v, field))

    # ---- stats
    def stats(self):
        """Usage numbers in the shape of runc's `events --stats` data (cpu, memory, pids,
        blkio, hugetlb); groups whose controller is absent are left out."""
        out = {}
        cpu = self._stats_cpu()
        if cpu:
            out["cpu"] = cpu
        mem = self._stats_memory()
        if mem:
            out["memory"] = mem
        pids = self._stats_pids()
        if pids:
            out["pids"] = pids
        blkio = self._stats_blkio()
        if blkio is not None:
            out["blkio"] = blkio
        huge = self._stats_hugetlb()
        if huge:
            out["hugetlb"] = huge
        return out

    def _stat_dir(self, v1name, probe):
        d = self._v1(v1name)
        if d:
            return 1, d
        d = self._dirs.get("unified")
        if d and os.path.exists(_join(d, probe)):
            return 2, d
        return None, None

    def _stats_cpu(self):
        usage = {}
        thr = {}
        acct = self._v1("cpuacct")
        if acct:
            usage["total"] = _int_or((_read_opt(_join(acct, "cpuacct.usage")) or "").strip())
            for key, name in (("percpu", "cpuacct.usage_percpu"),
                              ("percpu_kernel", "cpuacct.usage_percpu_sys"),
                              ("percpu_user", "cpuacct.usage_percpu_user")):
                text = _read_opt(_join(acct, name))
                if text is not None:
                    usage[key] = [_int_or(x) for x in text.split()]
            st = _kv(_read_opt(_join(acct, "cpuacct.stat")))
            hz = os.sysconf("SC_CLK_TCK") or 100
            usage["kernel"] = st.get("system", 0) * 1000000000 // hz
            usage["user"] = st.get("user", 0) * 1000000000 // hz
        ver, d = self._stat_dir("cpu", "cpu.stat")
        if ver:
            st = _kv(_read_opt(_join(d, "cpu.stat")))
            if ver == 1:
                thr = {"periods": st.get("nr_periods", 0),
                       "throttledPeriods": st.get("nr_throttled", 0),
                       "throttledTime": st.get("throttled_time", 0)}
            else:
                thr = {"periods": st.get("nr_periods", 0),
                       "throttledPeriods": st.get("nr_throttled", 0),
                       "throttledTime": st.get("throttled_usec", 0) * 1000}
                if not acct:
                    usage = {"total": st.get("usage_usec", 0) * 1000,
                             "kernel": st.get("system_usec", 0) * 1000,
                             "user": st.get("user_usec", 0) * 1000}
        if not usage and not thr:
            return None
        return {"usage": usage, "throttling": thr}

    def _stats_memory(self):
        ver, d = self._stat_dir("memory", "memory.current")
        if not ver:
            return None
        raw = _kv(_read_opt(_join(d, "memory.stat")))
        out = {"raw": raw}
        if ver == 1:
            out["cache"] = raw.get("cache", 0)
            for key, prefix in (("usage", "memory"), ("swap", "memory.memsw"),
                                ("kernel", "memory.kmem"), ("kernelTCP", "memory.kmem.tcp")):
                u = _read_opt(_join(d, prefix + ".usage_in_bytes"))
                if u is None:
                    continue
                out[key] = {
                    "usage": _int_or(u.strip()),
                    "max": _int_or((_read_opt(_join(d, prefix + ".max_usage_in_bytes"))
                                    or "").strip()),
                    "limit": _int_or((_read_opt(_join(d, prefix + ".limit_in_bytes"))
                                      or "").strip()),
                    "failcnt": _int_or((_read_opt(_join(d, prefix + ".failcnt")) or "").strip()),
                }
            return out
        out["cache"] = raw.get("file", 0)

        def num(name):
            s = (_read_opt(_join(d, name)) or "").strip()
            return _MAX_U64 if s == "max" else _int_or(s)

        events = _kv(_read_opt(_join(d, "memory.events")))
        out["usage"] = {"usage": num("memory.current"), "limit": num("memory.max"),
                        "max": num("memory.peak"), "failcnt": events.get("max", 0)}
        if os.path.exists(_join(d, "memory.swap.current")):
            # v1 reports memory+swap; keep that meaning (as runc does)
            limit = num("memory.swap.max")
            if limit != _MAX_U64 and out["usage"]["limit"] != _MAX_U64:
                limit += out["usage"]["limit"]
            else:
                limit = _MAX_U64
            out["swap"] = {"usage": num("memory.swap.current") + out["usage"]["usage"],
                           "limit": limit, "max": 0, "failcnt": 0}
        return out

    def _stats_pids(self):
        ver, d = self._stat_dir("pids", "pids.current")
        if not ver:
            return None
        cur = (_read_opt(_join(d, "pids.current")) or "").strip()
        lim = (_read_opt(_join(d, "pids.max")) or "").strip()
        return {"current": _int_or(cur), "limit": 0 if lim == "max" else _int_or(lim)}

    def _stats_blkio(self):
        ver, d = self._stat_dir("blkio", "io.stat")
        if not ver:
            return None
        out = {"ioServiceBytesRecursive": [], "ioServicedRecursive": []}
        if ver == 1:
            for prefix in ("blkio.bfq.", "blkio.", "blkio.throttle."):
                sb = _read_opt(_join(d, prefix + "io_service_bytes_recursive"))
                if sb is None:
                    continue
                out["ioServiceBytesRecursive"] = _blkio_entries(sb)
                out["ioServicedRecursive"] = _blkio_entries(
                    _read_opt(_join(d, prefix + "io_serviced_recursive")) or "")
                if out["ioServiceBytesRecursive"]:
                    break
            return out
        ops = {"rbytes": ("ioServiceBytesRecursive", "Read"),
               "wbytes": ("ioServiceBytesRecursive", "Write"),
               "rios": ("ioServicedRecursive", "Read"), "wios": ("ioServicedRecursive", "Write")}
        for line in (_read_opt(_join(d, "io.stat")) or "").splitlines():
            parts = line.split()
            if not parts or ":" not in parts[0]:
                continue
            major, _, minor = parts[0].partition(":")
            for item in parts[1:]:
                k, _, v = item.partition("=")
                if k in ops:
                    table, op = ops[k]
                    out[table].append({"major": _int_or(major), "minor": _int_or(minor),
                                       "op": op, "value": _int_or(v)})
        return out

    def _stats_hugetlb(self):
        ver, d = self._stat_dir("hugetlb", "cgroup.controllers")
        if not ver:
            return None
        try:
            names = os.listdir(d)
        except OSError:
            return None
        out = {}
        for n in names:
            parts = n.split(".")
            if len(parts) != 3 or parts[0] != "hugetlb":
                continue
            size = parts[1]
            if ver == 1 and parts[2] == "limit_in_bytes":
                p = _join(d, "hugetlb." + size + ".")
                out[size] = {"usage": _int_or((_read_opt(p + "usage_in_bytes") or "").strip()),
                             "max": _int_or((_read_opt(p + "max_usage_in_bytes") or "").strip()),
                             "failcnt": _int_or((_read_opt(p + "failcnt") or "").strip())}
            elif ver == 2 and parts[2] == "current":
                p = _join(d, "hugetlb." + size + ".")
                events = _kv(_read_opt(p + "events"))
                out[size] = {"usage": _int_or((_read_opt(p + "current") or "").strip()),
                             "max": 0, "failcnt": events.get("max", 0)}
        return out


def _write_checked(path, value, field):
    """Write a byte limit and read it back: some kernels accept memory.kmem.limit_in_bytes
    and ignore it (kernel memory limits were removed), which must not pass silently."""
    before = _read_opt(path)
    _write(path, str(value), field)
    if value == -1:
        return
    got = _int_or((_read_opt(path) or "").strip(), None)
    if got is not None and got > value:
        raise CgroupError("linux.resources.%s: the kernel ignored %d written to %s (it still "
                          "reads %s): this kernel cannot limit it"
                          % (field, value, path, (before or "").strip() or got))


def _blkio_entries(text):
    out = []
    for line in text.splitlines():
        f = line.replace(":", " ").split()
        if len(f) < 3 or f[0] == "Total":
            continue
        op = f[2] if len(f) == 4 else ""
        out.append({"major": _int_or(f[0]), "minor": _int_or(f[1]), "op": op,
                    "value": _int_or(f[-1])})
    return out
