"""The container's root filesystem: mounts, devices, pivot_root, masked and read-only paths.

Runs in the container init, in its new mount namespace. Every path inside the
rootfs is resolved with openat2(RESOLVE_IN_ROOT): a symlink planted in the image
resolves inside the rootfs, never out of it (CVE-2021-30465), and the kernel does
the mount on the opened file through /proc/self/fd, so no path is looked up twice.
"""

import errno
import os
import stat

from keel.kernel import libc
from keel.kernel.errors import KernelError
from keel.runtime.errors import RuntimeError_

_FLAGS = {
    "ro": (True, libc.MS_RDONLY), "rw": (False, libc.MS_RDONLY),
    "nosuid": (True, libc.MS_NOSUID), "suid": (False, libc.MS_NOSUID),
    "nodev": (True, libc.MS_NODEV), "dev": (False, libc.MS_NODEV),
    "noexec": (True, libc.MS_NOEXEC), "exec": (False, libc.MS_NOEXEC),
    "sync": (True, libc.MS_SYNCHRONOUS), "async": (False, libc.MS_SYNCHRONOUS),
    "dirsync": (True, libc.MS_DIRSYNC),
    "remount": (True, libc.MS_REMOUNT),
    "mand": (True, libc.MS_MANDLOCK), "nomand": (False, libc.MS_MANDLOCK),
    "atime": (False, libc.MS_NOATIME), "noatime": (True, libc.MS_NOATIME),
    "diratime": (False, libc.MS_NODIRATIME), "nodiratime": (True, libc.MS_NODIRATIME),
    "relatime": (True, libc.MS_RELATIME), "norelatime": (False, libc.MS_RELATIME),
    "strictatime": (True, libc.MS_STRICTATIME), "nostrictatime": (False, libc.MS_STRICTATIME),
    "lazytime": (True, libc.MS_LAZYTIME), "nolazytime": (False, libc.MS_LAZYTIME),
    "nosymfollow": (True, libc.MS_NOSYMFOLLOW), "symfollow": (False, libc.MS_NOSYMFOLLOW),
    "bind": (True, libc.MS_BIND), "rbind": (True, libc.MS_BIND | libc.MS_REC),
}
PROPAGATION = {
    "private": libc.MS_PRIVATE, "rprivate": libc.MS_PRIVATE | libc.MS_REC,
    "shared": libc.MS_SHARED, "rshared": libc.MS_SHARED | libc.MS_REC,
    "slave": libc.MS_SLAVE, "rslave": libc.MS_SLAVE | libc.MS_REC,
    "unbindable": libc.MS_UNBINDABLE, "runbindable": libc.MS_UNBINDABLE | libc.MS_REC,
}
# Flags a user namespace cannot clear on a bind remount ("locked"): keep them.
_STATVFS_LOCKED = ((os.ST_NOSUID, libc.MS_NOSUID), (os.ST_NODEV, libc.MS_NODEV),
                   (os.ST_NOEXEC, libc.MS_NOEXEC), (getattr(os, "ST_NOATIME", 1024), libc.MS_NOATIME),
                   (getattr(os, "ST_NODIRATIME", 2048), libc.MS_NODIRATIME),
                   (getattr(os, "ST_RELATIME", 4096), libc.MS_RELATIME))

DEFAULT_DEVICES = (
    # path, type, major, minor
    ("/dev/null", "c", 1, 3), ("/dev/zero", "c", 1, 5), ("/dev/full", "c", 1, 7),
    ("/dev/random", "c", 1, 8), ("/dev/urandom", "c", 1, 9), ("/dev/tty", "c", 5, 0),
)
DEFAULT_LINKS = (
    ("/proc/self/fd", "/dev/fd"), ("/proc/self/fd/0", "/dev/stdin"),
    ("/proc/self/fd/1", "/dev/stdout"), ("/proc/self/fd/2", "/dev/stderr"),
    ("pts/ptmx", "/dev/ptmx"),  # as runc, always: the container's own devpts instance
)
# The cgroup rules that go with the default devices (runc's allowed list).
DEFAULT_DEVICE_RULES = [
    {"allow": True, "type": "c", "major": None, "minor": None, "access": "m"},
    {"allow": True, "type": "b", "major": None, "minor": None, "access": "m"},
    {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rwm"},
    {"allow": True, "type": "c", "major": 1, "minor": 8, "access": "rwm"},
    {"allow": True, "type": "c", "major": 1, "minor": 7, "access": "rwm"},
    {"allow": True, "type": "c", "major": 5, "minor": 0, "access": "rwm"},
    {"allow": True, "type": "c", "major": 1, "minor": 5, "access": "rwm"},
    {"allow": True, "type": "c", "major": 1, "minor": 9, "access": "rwm"},
    {"allow": True, "type": "c", "major": 5, "minor": 1, "access": "rwm"},
    {"allow": True, "type": "c", "major": 136, "minor": None, "access": "rwm"},
    {"allow": True, "type": "c", "major": 5, "minor": 2, "access": "rwm"},
    {"allow": True, "type": "c", "major": 10, "minor": 200, "access": "rwm"},
]

_RESOLVE = libc.RESOLVE_IN_ROOT | libc.RESOLVE_NO_MAGICLINKS


def parse_options(options):
    """Split mount options into (flags, propagation flags, data string, extras)."""
    flags = 0
    prop = []
    data = []
    extras = set()
    for opt in options or ():
        if opt in _FLAGS:
            clear, bit = _FLAGS[opt]
            flags = flags | bit if clear else flags & ~bit
        elif opt in PROPAGATION:
            prop.append(PROPAGATION[opt])
        elif opt in ("tmpcopyup", "rro", "rrw", "idmap", "ridmap"):
            extras.add(opt)
        else:
            data.append(opt)
    return flags, prop, ",".join(data), extras


def _fdpath(fd):
    return f"/proc/self/fd/{fd}"


class Rootfs:
    """Operations on one rootfs directory, all paths resolved inside it."""

    def __init__(self, path):
        self.path = path
        self.fd = os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)

    def close(self):
        os.close(self.fd)

    def open(self, path, flags=os.O_PATH, nofollow=False):
        rel = path.lstrip("/") or "."
        return libc.openat2(self.fd, rel, flags | (os.O_NOFOLLOW if nofollow else 0), _RESOLVE)

    def exists(self, path):
        try:
            os.close(self.open(path))
            return True
        except OSError:
            return False

    def mkdir_all(self, path, mode=0o755):
        """Create `path` and its parents inside the rootfs; returns an O_PATH fd to it."""
        return self._walk(path, mode, None)

    def mkfile(self, path, mode=0o644):
        """Create an empty file at `path` (parents too) unless something is there; returns O_PATH fd."""
        return self._walk(path, 0o755, mode)

    def _walk(self, path, dir_mode, file_mode):
        """Walk `path` one component at a time as if the rootfs were "/": a symlink (even one
        whose target does not exist yet) is followed inside the rootfs, never out of it (runc's
        MkdirAllInRoot), and what is missing is created there; a directory, or with file_mode
        an empty file for the last component. Each step opens one name beneath the directory
        already held, refusing symlinks, so a link swapped in meanwhile is seen, not followed."""
        todo = [p for p in path.split("/") if p and p != "."]
        done = []
        fd = os.dup(self.fd)
        links = 0
        try:
            while todo:
                part = todo.pop(0)
                if part == "..":
                    done = done[:-1]
                    os.close(fd)
                    fd = os.dup(self.fd)
                    todo = done + todo
                    done = []
                    continue
                last = not todo
                where = "/" + "/".join(done + [part])
                try:
                    st = os.stat(part, dir_fd=fd, follow_symlinks=False)
                except FileNotFoundError:
                    try:
                        if last and file_mode is not None:
                            os.close(os.open(part, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW |
                                             os.O_CLOEXEC, file_mode, dir_fd=fd))
                        else:
                            os.mkdir(part, dir_mode, dir_fd=fd)
                    except FileExistsError:
                        pass  # made meanwhile: look again
                    except OSError as e:
                        what = "create" if last and file_mode is not None else "mkdir"
                        raise RuntimeError_(f"mount destination {path}: {what} {where} in the rootfs: "
                                            f"{e.strerror.lower()}") from None
                    todo.insert(0, part)
                    continue
                if stat.S_ISLNK(st.st_mode):
                    links += 1
                    if links > 40:
                        raise RuntimeError_(f"mount destination {path}: too many levels of symbolic links")
                    target = os.readlink(part, dir_fd=fd)
                    if target.startswith("/"):
                        os.close(fd)
                        fd = os.dup(self.fd)
                        done = []
                    todo = [p for p in target.split("/") if p and p != "."] + todo
                    continue
                if (not last or file_mode is None) and not stat.S_ISDIR(st.st_mode):
                    raise RuntimeError_(f"mount destination {path}: {where} is not a directory")
                try:
                    nfd = libc.openat2(fd, part, os.O_PATH | os.O_NOFOLLOW,
                                       libc.RESOLVE_BENEATH | libc.RESOLVE_NO_SYMLINKS | libc.RESOLVE_NO_MAGICLINKS)
                except OSError as e:
                    if e.errno in (errno.ELOOP, errno.ENOENT):
                        todo.insert(0, part)  # swapped meanwhile: look again
                        links += 1
                        if links > 40:
                            raise RuntimeError_(f"mount destination {path}: {where} keeps changing") from None
                        continue
                    raise RuntimeError_(f"mount destination {path}: open {where}: {e.strerror.lower()}") from None
                os.close(fd)
                fd = nfd
                done.append(part)
            return fd
        except BaseException:
            os.close(fd)
            raise


def _locked_flags(path):
    try:
        f = os.statvfs(path).f_flag
    except OSError:
        return 0
    return sum(bit for st, bit in _STATVFS_LOCKED if f & st)


def remount(path, flags):
    """Bind-remount `path` with `flags`, keeping the flags the kernel locked on it."""
    libc.mount(None, path, None, libc.MS_REMOUNT | libc.MS_BIND | flags | _locked_flags(path))


def mount_entry(root, m, bundle, ctx):
    """Mount one config.json `mounts` entry into the rootfs."""
    dest = m["destination"]
    mtype = m.get("type") or ""
    source = m.get("source") or ""
    flags, prop, data, extras = parse_options(m.get("options"))
    if extras & {"idmap", "ridmap"}:
        raise RuntimeError_(f"mount {dest}: idmapped mounts are not supported")
    is_bind = mtype == "bind" or flags & libc.MS_BIND
    if is_bind:
        flags |= libc.MS_BIND
        if not os.path.isabs(source):
            source = os.path.join(bundle, source)
        if not os.path.exists(source):
            raise RuntimeError_(f"mount {dest}: bind source {source} does not exist")
        fd = root.mkdir_all(dest) if os.path.isdir(source) else root.mkfile(dest)
        try:
            libc.mount(source, _fdpath(fd), None, flags & (libc.MS_BIND | libc.MS_REC))
        finally:
            os.close(fd)
        extra = flags & ~(libc.MS_BIND | libc.MS_REC | libc.MS_REMOUNT)
        if extra or "rro" in extras:
            with_fd(root, dest, lambda p: remount(p, extra))
    elif mtype == "cgroup":
        mount_cgroup(root, dest, flags, ctx)
    else:
        if mtype in ("proc", "sysfs"):
            _check_special_dest(root, dest, mtype)
        fd = root.mkdir_all(dest)
        try:
            if mtype == "tmpfs" and "tmpcopyup" in extras:
                _mount_tmpfs_copyup(fd, source or "tmpfs", flags, data)
            else:
                try:
                    libc.mount(source or mtype, _fdpath(fd), mtype, flags, data or None)
                except KernelError as e:
                    raise RuntimeError_(f"mount {source or mtype} on {dest} (type {mtype}): "
                                        f"{str(e).rsplit(': ', 1)[-1]}") from None
        finally:
            os.close(fd)
    for p in prop:
        with_fd(root, dest, lambda path: libc.mount(None, path, None, p))


def with_fd(root, dest, fn):
    """Call fn with a /proc/self/fd path to `dest` as it resolves now (the mount on top)."""
    fd = root.open(dest)
    try:
        fn(_fdpath(fd))
    finally:
        os.close(fd)


def _check_special_dest(root, dest, mtype):
    try:
        fd = root.open(dest, nofollow=True)
    except FileNotFoundError:
        return
    try:
        st = os.fstat(fd)
    finally:
        os.close(fd)
    if stat.S_ISLNK(st.st_mode):
        raise RuntimeError_(f"mount {mtype} on {dest}: destination is a symlink in the rootfs, refusing to follow it")
    if not stat.S_ISDIR(st.st_mode):
        raise RuntimeError_(f"mount {mtype} on {dest}: destination is not a directory")


def _mount_tmpfs_copyup(fd, source, flags, data):
    """tmpfs over a directory, keeping what the image had there (runc's tmpcopyup)."""
    import shutil
    import tempfile

    with tempfile.TemporaryDirectory(prefix="keel-copyup-") as tmp:
        libc.mount(source, tmp, "tmpfs", flags, data or None)
        try:
            src = _fdpath(fd)
            for name in os.listdir(src):
                s = os.path.join(src, name)
                if os.path.isdir(s) and not os.path.islink(s):
                    shutil.copytree(s, os.path.join(tmp, name), symlinks=True)
                else:
                    shutil.copy2(s, os.path.join(tmp, name), follow_symlinks=False)
            libc.mount(tmp, _fdpath(fd), None, libc.MS_MOVE)
        except BaseException:
            libc.umount(tmp, libc.MNT_DETACH)
            raise


def mount_cgroup(root, dest, flags, ctx):
    """The container's cgroups at `dest`: cgroup2 (v2), or a tmpfs of v1 controllers (v1/hybrid)."""
    cgroup = ctx.get("cgroup")
    new_ns = ctx.get("cgroupns")
    paths = cgroup.paths() if cgroup is not None else {}
    base = flags & (libc.MS_NOSUID | libc.MS_NODEV | libc.MS_NOEXEC | libc.MS_RELATIME)
    ro = flags & libc.MS_RDONLY

    def one(host_dir, target, fstype, options):
        fd = root.mkdir_all(target)
        try:
            if new_ns and fstype:
                libc.mount(fstype, _fdpath(fd), fstype, base | ro, options)
            else:
                libc.mount(host_dir, _fdpath(fd), None, libc.MS_BIND | libc.MS_REC)
                with_fd(root, target, lambda p: remount(p, base | ro))
        finally:
            os.close(fd)

    layout = cgroup.layout if cgroup is not None else None
    if layout is not None and layout.mode == "v2":
        one(paths["unified"], dest, "cgroup2", None)
        return
    fd = root.mkdir_all(dest)
    try:
        libc.mount("tmpfs", _fdpath(fd), "tmpfs", base, "mode=755")
    finally:
        os.close(fd)
    for key, host_dir in sorted(paths.items()):
        if key == "unified":
            name = os.path.basename(layout.unified)
            one(host_dir, f"{dest}/{name}", "cgroup2", None)
            continue
        name = os.path.basename(layout.v1.get(key, host_dir))
        one(host_dir, f"{dest}/{name}", "cgroup", key if "=" not in key else "none," + key)
        if "," in name:
            for part in name.split(","):
                pfd = root.open(dest)
                try:
                    os.symlink(name, part, dir_fd=pfd)
                except FileExistsError:
                    pass
                finally:
                    os.close(pfd)
    if ro:
        with_fd(root, dest, lambda p: remount(p, base | ro))


def dev_is_bind_mounted(config):
    return any(m["destination"].rstrip("/") == "/dev" and
               (m.get("type") == "bind" or "bind" in (m.get("options") or ()) or "rbind" in (m.get("options") or ()))
               for m in config.get("mounts") or ())


def create_devices(root, config, in_userns):
    """The default devices and linux.devices, by mknod, or by bind from the host in a user ns."""
    devices = [{"path": p, "type": t, "major": ma, "minor": mi, "fileMode": 0o666, "uid": 0, "gid": 0}
               for p, t, ma, mi in DEFAULT_DEVICES]
    listed = {d["path"] for d in config["linux"].get("devices") or ()}
    devices = [d for d in devices if d["path"] not in listed] + list(config["linux"].get("devices") or ())
    old = os.umask(0)
    try:
        for d in devices:
            _create_device(root, d, in_userns)
    finally:
        os.umask(old)
    pfd = root.mkdir_all("/dev")
    try:
        for target, name in DEFAULT_LINKS:
            try:
                os.symlink(target, os.path.basename(name), dir_fd=pfd)
            except FileExistsError:
                pass
        if os.path.exists("/proc/kcore"):
            try:
                os.symlink("/proc/kcore", "core", dir_fd=pfd)
            except FileExistsError:
                pass
    finally:
        os.close(pfd)


def _create_device(root, d, in_userns):
    path = d["path"]
    parent, _, name = path.rstrip("/").rpartition("/")
    kind = {"c": stat.S_IFCHR, "u": stat.S_IFCHR, "b": stat.S_IFBLK, "p": stat.S_IFIFO}[d["type"]]
    mode = d.get("fileMode")
    if mode is None:
        mode = 0o666
    dev = os.makedev(d.get("major") or 0, d.get("minor") or 0)
    pfd = root.mkdir_all(parent or "/")
    try:
        try:
            os.unlink(name, dir_fd=pfd)
        except (FileNotFoundError, IsADirectoryError):
            pass
        made = False
        if not in_userns:
            try:
                os.mknod(name, kind | (mode & 0o7777), dev, dir_fd=pfd)
                os.chown(name, d.get("uid") or 0, d.get("gid") or 0, dir_fd=pfd, follow_symlinks=False)
                made = True
            except PermissionError:
                pass
        if not made:
            host = f"/dev/{os.path.relpath(path, '/dev')}" if path.startswith("/dev/") else path
            os.close(os.open(name, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644, dir_fd=pfd))
            fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd)
            try:
                libc.mount(host, _fdpath(fd), None, libc.MS_BIND)
            finally:
                os.close(fd)
    except OSError as e:
        raise RuntimeError_(f"linux.devices: create {path}: {e.strerror.lower()}") from None
    finally:
        os.close(pfd)


def pivot(rootfs_path):
    """Make `rootfs_path` the root with pivot_root(".", ".") and detach the old root."""
    old = os.open("/", os.O_DIRECTORY | os.O_RDONLY | os.O_CLOEXEC)
    new = os.open(rootfs_path, os.O_DIRECTORY | os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fchdir(new)
        libc.pivot_root(".", ".")
        os.fchdir(old)
        # The old root must not propagate its unmount back to the host.
        libc.mount(None, ".", None, libc.MS_SLAVE | libc.MS_REC)
        libc.umount(".", libc.MNT_DETACH)
        os.chdir("/")
    finally:
        os.close(old)
        os.close(new)


def move_root(rootfs_path):
    """--no-pivot: move the rootfs over / and chroot into it."""
    os.chdir(rootfs_path)
    libc.mount(rootfs_path, "/", None, libc.MS_MOVE)
    os.chroot(".")
    os.chdir("/")


def _null_fd():
    """An O_PATH fd on the container's /dev/null, refusing anything but the real device
    (an image may have replaced /dev/null with a symlink: CVE-2025-31133)."""
    try:
        fd = os.open("/dev/null", os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        raise RuntimeError_(f"maskedPaths: open /dev/null: {e.strerror.lower()}") from None
    st = os.fstat(fd)
    if not stat.S_ISCHR(st.st_mode) or st.st_rdev != os.makedev(1, 3):
        os.close(fd)
        raise RuntimeError_("maskedPaths: /dev/null in the container is not the null device (1:3); refusing to use it")
    return fd


def _open_nofollow_in_root(path):
    """O_PATH fd on `path` (after pivot_root), never following a symlink anywhere on the way."""
    return libc.openat2(-100, path, os.O_PATH | os.O_NOFOLLOW, libc.RESOLVE_NO_SYMLINKS | libc.RESOLVE_NO_MAGICLINKS)


def mask_paths(paths):
    null = None
    try:
        for p in paths or ():
            try:
                fd = _open_nofollow_in_root(p)
            except (FileNotFoundError, NotADirectoryError):
                continue
            except OSError as e:
                if e.errno == 40:  # ELOOP: a symlink; masking through it could hit anything
                    raise RuntimeError_(f"maskedPaths: {p} is reached through a symlink; refusing") from None
                raise RuntimeError_(f"maskedPaths: {p}: {e.strerror.lower()}") from None
            try:
                st = os.fstat(fd)
                if stat.S_ISDIR(st.st_mode):
                    libc.mount("tmpfs", _fdpath(fd), "tmpfs", libc.MS_RDONLY, None)
                else:
                    if null is None:
                        null = _null_fd()
                    libc.mount(_fdpath(null), _fdpath(fd), None, libc.MS_BIND)
            finally:
                os.close(fd)
    finally:
        if null is not None:
            os.close(null)


def readonly_paths(paths):
    for p in paths or ():
        try:
            fd = _open_nofollow_in_root(p)
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError as e:
            raise RuntimeError_(f"readonlyPaths: {p}: {e.strerror.lower()}") from None
        try:
            libc.mount(_fdpath(fd), _fdpath(fd), None, libc.MS_BIND | libc.MS_REC)
        finally:
            os.close(fd)
        fd = _open_nofollow_in_root(p)
        try:
            remount(_fdpath(fd), libc.MS_RDONLY)
        finally:
            os.close(fd)
