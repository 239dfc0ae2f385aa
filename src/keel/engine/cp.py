"""`keel cp`: copy files between a container and the host, a tar stream or another container
(as podman allows), symlink-safe.

Every path inside a container is resolved by the kernel with openat2(RESOLVE_IN_ROOT |
RESOLVE_NO_MAGICLINKS) against a directory fd of the container's root, so a symlink planted in
the container (absolute, "../..", or pointing at /etc) resolves as the container itself would
see it: inside its root, never to the host (Docker CVE-2018-15664 is the class this closes;
there the daemon resolved the path in user space, then used it). Below that point nothing is
looked up by path any more: a tree is walked one component at a time with O_NOFOLLOW|O_PATH
opens relative to its parent's fd, and written with *at calls relative to the receiving
directory's fd, itself the root of every name written below it (RESOLVE_IN_ROOT again), so
copied content cannot redirect a later write either.

The container's root: for a running (or paused) container, /proc/<pid>/root of its init,
opened while a pidfd proves the init is the one we looked up; this is the container's own view,
mounts inside it included (kernel filesystems such as /proc and /sys are not walked into). For a
container that is not running, its overlay snapshot, mounted for the copy and unmounted
afterwards, with the container's lock held throughout so that a concurrent start cannot race it;
paths below a directory bind mount of its config (a volume) resolve in the mount's source.

Semantics are docker's: `SRC/.` copies the content of a directory; a destination directory
receives SRC under its own name; a destination that does not exist is created (its parent must
exist); a directory never replaces a file; symlinks are copied as symlinks (the source's last
component is followed only with follow=True, `-L`). Modes (setuid too) and times are kept.
Owners: files written into a container belong to its user (podman's --archive, the default),
or keep the source's owners with archive=False; files written to the host belong to the caller.
"""

import contextlib
import errno
import os
import posixpath
import select
import stat
import tarfile

from keel.engine.errors import EngineError, InvalidState
from keel.kernel import libc

_RESOLVE = libc.RESOLVE_IN_ROOT | libc.RESOLVE_NO_MAGICLINKS
# Kernel pseudo-filesystems (proc, sysfs, cgroup v1/v2, devpts, mqueue, debugfs, tracefs,
# securityfs, bpf, configfs) mounted inside a tree are not walked into: copying a running
# container's "/" takes its files, not the kernel's endless views of itself.
_PSEUDO_FS = {0x9fa0, 0x62656572, 0x27e0eb, 0x63677270, 0x1cd1, 0x19800202, 0x64626720,
              0x74726163, 0x73636673, 0xcafe4a11, 0x62656570}
_LIVE = ("running", "paused", "unknown", "initialized")
_CHUNK = 1 << 20


def split_spec(arg: str) -> tuple[str | None, str]:
    """`CONTAINER:PATH` -> (container, path); a host path (or "-") -> (None, path). A host
    path holding ':' can be written ./a:b, as with docker."""
    if arg == "-" or arg.startswith(("/", ".")):
        return None, arg
    name, sep, path = arg.partition(":")
    if not sep:
        return None, arg
    if not name:
        raise EngineError(f"{arg!r}: empty container name before ':'")
    return name, path


def _why(e: OSError) -> str:
    return (e.strerror or str(e)).lower()


def _inside(path: str, what: str) -> str:
    """The container path made absolute and normalised; '..' above '/' is refused."""
    if not path:
        raise EngineError(f"{what}: empty path in the container")
    if "\0" in path:
        raise EngineError(f"{what}: path contains a NUL byte")
    depth = 0
    for comp in path.split("/"):
        if comp == "..":
            depth -= 1
            if depth < 0:
                raise EngineError(f"{what}: path {path!r} leads outside the container's root")
        elif comp not in ("", "."):
            depth += 1
    return posixpath.normpath("/" + path.lstrip("/"))


# -- the container's root ------------------------------------------------------------------------

class Root:
    """A container's files for the duration of a copy: `at(path)` says where a container path
    resolves. A running container's paths all resolve in its init's root, its mounts included;
    a stopped one's in its overlay, except below the destination of a directory bind mount of
    its config (a volume, `-v /host/dir:/data`), which resolves in the mount's source, as the
    running container would see it."""

    def __init__(self, c: dict, fd: int, binds: list | None = None):
        self.c, self.fd = c, fd
        self._binds = sorted(binds or [], key=lambda b: -len(b[0]))   # longest destination first
        self._fds = []

    def at(self, path: str) -> tuple[int, str, str | None]:
        """(root fd, path inside it, the mount's name when `path` is a bind mount's top)."""
        bare = path.rstrip("/")
        bare = bare[:-2] if bare.endswith("/.") else bare
        for dest, source in self._binds:
            if bare == dest or path.startswith(dest + "/"):
                fd = os.open(source, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
                self._fds.append(fd)
                rest = "/" + path[len(dest):].lstrip("/")
                return fd, rest, (posixpath.basename(dest) if bare == dest else None)
        return self.fd, path, None

    def close(self):
        for fd in self._fds:
            os.close(fd)
        os.close(self.fd)


def _binds(c: dict) -> list[tuple[str, str]]:
    """(destination, source) of the container's bind mounts whose source is a directory."""
    out = []
    for m in (c.get("config") or {}).get("mounts") or []:
        opts = m.get("options") or []
        if m.get("type") != "bind" and "bind" not in opts and "rbind" not in opts:
            continue
        dest = posixpath.normpath("/" + str(m.get("destination", "")).lstrip("/"))
        source = str(m.get("source", ""))
        if dest != "/" and os.path.isabs(source) and os.path.isdir(source):
            out.append((dest, source))
    return out


@contextlib.contextmanager
def container_root(engine, ref: str):
    """The container's Root for the duration of a copy (see the module doc)."""
    c = engine.get(ref)
    if c["state"] in _LIVE and c.get("pid"):
        fd = _live_root(c)
        if fd is not None:
            root = Root(c, fd)
            try:
                yield root
            finally:
                root.close()
            return
    with engine._lock(c["id"]):
        c = engine.get(c["id"])
        if c["state"] in _LIVE and c.get("pid"):
            raise InvalidState(f"container {c['name']} changed state during cp: try again")
        if c["state"] not in ("created", "exited"):
            raise InvalidState(f"container {c['name']} is {c['state']}: cannot copy")
        # not running: mounted for the copy only (also if a killed keel left it mounted)
        rootfs = engine._mount_rootfs(c["id"])
        try:
            root = Root(c, os.open(rootfs, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC), _binds(c))
            try:
                yield root
            finally:
                root.close()
        finally:
            engine._unmount_rootfs(c["id"])


def _live_root(c: dict) -> int | None:
    """An fd of /proc/<pid>/root of the container's init, or None if it has exited."""
    try:
        pidfd = os.pidfd_open(c["pid"])
    except ProcessLookupError:
        return None
    try:
        try:
            fd = os.open(f"/proc/{c['pid']}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            return None
        # the init still lives after the open: the fd is its root, not a recycled pid's
        if select.select([pidfd], [], [], 0)[0]:
            os.close(fd)
            return None
        return fd
    finally:
        os.close(pidfd)


def _open_in(root: int, path: str, flags: int, what: str) -> int:
    try:
        return libc.openat2(root, path.lstrip("/") or ".", flags | os.O_CLOEXEC, _RESOLVE)
    except OSError as e:
        if e.errno == errno.ENOENT:
            raise EngineError(f"{what}: no such file or directory") from None
        if e.errno == errno.ENOTDIR:
            raise EngineError(f"{what}: not a directory") from None
        raise EngineError(f"{what}: {_why(e)}") from None


def read_file(engine, c: dict, path: str, limit: int = 1 << 20) -> bytes:
    """The first `limit` bytes of a regular file in the container (symlinks resolved in it)."""
    with container_root(engine, c["id"]) as root:
        fd = _open_in(*root.at(_inside(path, path))[:2], os.O_RDONLY | os.O_NONBLOCK, path)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise EngineError(f"{path}: not a regular file")
            return os.read(fd, limit)
        finally:
            os.close(fd)


# -- sources: (TarInfo, file or None) for each entry, parents first ------------------------------

class _Source:
    """A file or tree to copy, opened (O_PATH) but not yet read."""

    def __init__(self, fd: int, st: os.stat_result, name: str, link: str | None, contents: bool):
        self.fd, self.st, self.name, self.link, self.contents = fd, st, name, link, contents

    @property
    def is_dir(self):
        return stat.S_ISDIR(self.st.st_mode)

    def close(self):
        os.close(self.fd)

    def entries(self, uid=None, gid=None):
        links = {}
        if self.contents:
            yield from _children(self.fd, "", links, uid, gid)
        else:
            yield from _walk(self.fd, self.st, self.name, self.link, links, uid, gid)


def open_source(root: int, path: str, follow: bool, what: str, top: str | None = None) -> _Source:
    """The source at `path` resolved inside `root` (the last component followed only with
    `follow`); a path ending in "/." means the content of the directory. `top` names the
    source when `path` is `root` itself (a bind mount copied whole)."""
    contents = path.endswith("/.") or path == "."
    explicit = contents
    must_dir = path.endswith("/")
    trimmed = path.rstrip("/")
    if trimmed.endswith("/.") or trimmed == ".":
        trimmed = trimmed[:-1].rstrip("/")
    trimmed = trimmed or "/"
    if trimmed == "/" and not (top and not explicit):
        contents = True  # the whole root: its content, as "/." would
    flags = os.O_PATH | (0 if follow or must_dir or contents else os.O_NOFOLLOW)
    fd = _open_in(root, trimmed, flags, what)
    st = os.fstat(fd)
    link = None
    if stat.S_ISLNK(st.st_mode):
        link = os.readlink("", dir_fd=fd)
    if (contents or must_dir) and not stat.S_ISDIR(st.st_mode):
        os.close(fd)
        raise EngineError(f"{what}: not a directory")
    name = posixpath.basename(trimmed) or top or "."
    return _Source(fd, st, name, link, contents)


def _info(st, name, link, links, uid, gid):
    ti = tarfile.TarInfo(name)
    ti.mode = stat.S_IMODE(st.st_mode)
    ti.uid = st.st_uid if uid is None else uid
    ti.gid = st.st_gid if gid is None else gid
    ti.mtime = st.st_mtime
    m = st.st_mode
    if stat.S_ISREG(m):
        key = (st.st_dev, st.st_ino)
        if st.st_nlink > 1 and key in links:
            ti.type, ti.linkname = tarfile.LNKTYPE, links[key]
            return ti, False
        links[key] = name
        ti.type, ti.size = tarfile.REGTYPE, st.st_size
        return ti, True
    if stat.S_ISDIR(m):
        ti.type = tarfile.DIRTYPE
    elif stat.S_ISLNK(m):
        ti.type, ti.linkname = tarfile.SYMTYPE, link
    elif stat.S_ISCHR(m) or stat.S_ISBLK(m):
        ti.type = tarfile.CHRTYPE if stat.S_ISCHR(m) else tarfile.BLKTYPE
        ti.devmajor, ti.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
    elif stat.S_ISFIFO(m):
        ti.type = tarfile.FIFOTYPE
    else:
        return None, False  # a socket: nothing to copy
    return ti, False


def _walk(fd, st, name, link, links, uid, gid):
    ti, has_data = _info(st, name, link, links, uid, gid)
    if ti is None:
        return
    if has_data:
        # reopen the very inode we resolved; no path lookup happens here
        f = open(os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY), "rb")
        with f:
            yield ti, f
        return
    yield ti, None
    if ti.type == tarfile.DIRTYPE:
        yield from _children(fd, name, links, uid, gid)


def _children(dfd, prefix, links, uid, gid):
    rfd = os.open(f"/proc/self/fd/{dfd}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    dev = os.fstat(rfd).st_dev
    try:
        names = sorted(os.listdir(rfd))
        for n in names:
            try:
                cfd = os.open(n, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=rfd)
            except FileNotFoundError:
                continue  # removed meanwhile (a running container)
            try:
                cst = os.fstat(cfd)
                if stat.S_ISDIR(cst.st_mode) and cst.st_dev != dev and \
                        libc.fstatfs_type(cfd) in _PSEUDO_FS:
                    continue
                link = os.readlink(n, dir_fd=rfd) if stat.S_ISLNK(cst.st_mode) else None
                yield from _walk(cfd, cst, f"{prefix}/{n}" if prefix else n, link, links, uid, gid)
            finally:
                os.close(cfd)
    finally:
        os.close(rfd)


def tar_entries(stream):
    """Entries of a tar stream (stdin of `keel cp - CONTAINER:DIR`), any compression."""
    try:
        tf = tarfile.open(fileobj=stream, mode="r|*")
    except (tarfile.TarError, EOFError) as e:
        raise EngineError(f"tar stream: {e}") from None
    try:
        for m in tf:
            yield m, (tf.extractfile(m) if m.isreg() else None)
    except (tarfile.TarError, EOFError) as e:
        raise EngineError(f"tar stream: {e}") from None


def write_tar(entries, stream) -> None:
    with tarfile.open(fileobj=stream, mode="w|", format=tarfile.PAX_FORMAT) as tf:
        for ti, f in entries:
            tf.addfile(ti, f)


# -- the writer -----------------------------------------------------------------------------------

class Extractor:
    """Write entries below the directory `dest_fd` (every name resolved with that directory as
    its root); `rename` replaces the first component of each name (docker's copy to a new
    name); `owner` (uid, gid) overrides the entries' owners."""

    def __init__(self, dest_fd: int, rename: str | None = None, owner: tuple | None = None):
        self.dest, self.rename, self.owner = dest_fd, rename, owner
        self.dirs = []

    def run(self, entries) -> int:
        n = 0
        for ti, f in entries:
            self.entry(ti, f)
            n += 1
        for fd_parts, mtime in reversed(self.dirs):
            with contextlib.suppress(OSError):
                pfd = self._open_dir(fd_parts[:-1])
                try:
                    os.utime(fd_parts[-1], (mtime, mtime), dir_fd=pfd, follow_symlinks=False)
                finally:
                    os.close(pfd)
        return n

    def _parts(self, name: str) -> list[str]:
        parts = []
        for p in name.split("/"):
            if p in ("", "."):
                continue
            if p == "..":
                raise EngineError(f"entry {name!r}: '..' in a name")
            parts.append(p)
        if self.rename is not None:
            parts = [self.rename] + parts[1:] if parts else [self.rename]
        return parts

    def _open_dir(self, parts):
        return libc.openat2(self.dest, "/".join(parts) or ".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC,
                            _RESOLVE)

    def _parent(self, parts, name):
        try:
            return self._open_dir(parts)
        except OSError as e:
            if e.errno != errno.ENOENT:
                raise EngineError(f"{name}: parent directory: {_why(e)}") from None
        for i in range(1, len(parts) + 1):  # tar streams may leave parents implicit
            try:
                os.close(self._open_dir(parts[:i]))
            except FileNotFoundError:
                pfd = self._open_dir(parts[:i - 1])
                try:
                    os.mkdir(parts[i - 1], 0o755, dir_fd=pfd)
                    if self.owner:
                        os.chown(parts[i - 1], *self.owner, dir_fd=pfd, follow_symlinks=False)
                finally:
                    os.close(pfd)
        return self._open_dir(parts)

    def _uidgid(self, ti):
        return self.owner if self.owner else (ti.uid, ti.gid)

    def entry(self, ti: tarfile.TarInfo, f) -> None:
        parts = self._parts(ti.name)
        if not parts:
            return  # the top directory itself: it exists
        try:
            pfd = self._parent(parts[:-1], ti.name)
        except OSError as e:
            raise EngineError(f"{ti.name}: {_why(e)}") from None
        base = parts[-1]
        try:
            self._make(pfd, base, parts, ti, f)
        except OSError as e:
            raise EngineError(f"{'/'.join(parts)}: {_why(e)}") from None
        finally:
            os.close(pfd)

    def _clear(self, pfd, base, keep_dir, ti):
        try:
            st = os.stat(base, dir_fd=pfd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        if stat.S_ISDIR(st.st_mode):
            if keep_dir:
                return True
            raise EngineError(f"{ti.name}: cannot overwrite directory with non-directory")
        if ti.isdir():
            raise EngineError(f"{ti.name}: cannot overwrite non-directory with directory")
        os.unlink(base, dir_fd=pfd)
        return False

    def _make(self, pfd, base, parts, ti, f):
        uid, gid = self._uidgid(ti)
        mode = ti.mode & 0o7777
        if ti.isdir():
            if not self._clear(pfd, base, True, ti):
                os.mkdir(base, 0o700, dir_fd=pfd)
            fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd)
            try:
                os.fchown(fd, uid, gid)
                os.fchmod(fd, mode)
            finally:
                os.close(fd)
            self.dirs.append((parts, ti.mtime))
            return
        self._clear(pfd, base, False, ti)
        if ti.isreg():
            fd = os.open(base, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                         0o600, dir_fd=pfd)
            try:
                while f is not None:
                    chunk = f.read(_CHUNK)
                    if not chunk:
                        break
                    view = memoryview(chunk)
                    while view:
                        view = view[os.write(fd, view):]
                os.fchown(fd, uid, gid)
                os.fchmod(fd, mode)  # after chown, which clears setuid bits
                os.utime(fd, (ti.mtime, ti.mtime))
            finally:
                os.close(fd)
            return
        if ti.issym():
            os.symlink(ti.linkname, base, dir_fd=pfd)
        elif ti.islnk():
            target = self._parts(ti.linkname)
            tfd = self._open_dir(target[:-1])
            try:
                # flags 0: a symlink is linked itself, never followed
                os.link(target[-1], base, src_dir_fd=tfd, dst_dir_fd=pfd, follow_symlinks=False)
            finally:
                os.close(tfd)
            return
        elif ti.ischr() or ti.isblk() or ti.isfifo():
            kind = stat.S_IFCHR if ti.ischr() else stat.S_IFBLK if ti.isblk() else stat.S_IFIFO
            os.mknod(base, kind | 0o600, os.makedev(ti.devmajor, ti.devminor) if not ti.isfifo() else 0,
                     dir_fd=pfd)
        else:
            return  # other tar types (sparse, long-name meta) carry nothing to write
        os.chown(base, uid, gid, dir_fd=pfd, follow_symlinks=False)
        if not ti.issym():
            os.chmod(base, mode, dir_fd=pfd, follow_symlinks=False)
        os.utime(base, (ti.mtime, ti.mtime), dir_fd=pfd, follow_symlinks=False)


# -- destinations ---------------------------------------------------------------------------------

def _resolve_dest(root: int, path: str, what: str):
    """(fd of the directory that receives the copy, name in it, st of what is there or None),
    following symlinks of the last component inside `root` as the container would."""
    for _ in range(40):
        parent, base = posixpath.split(path.rstrip("/") or "/")
        if not base:
            fd = _open_in(root, "/", os.O_PATH | os.O_DIRECTORY, what)
            return fd, None, os.fstat(fd)
        pfd = _open_in(root, parent, os.O_PATH | os.O_DIRECTORY, f"{what}: parent directory {parent}")
        try:
            st = os.stat(base, dir_fd=pfd, follow_symlinks=False)
        except FileNotFoundError:
            return pfd, base, None
        except OSError as e:
            os.close(pfd)
            raise EngineError(f"{what}: {_why(e)}") from None
        if not stat.S_ISLNK(st.st_mode):
            return pfd, base, st
        target = os.readlink(base, dir_fd=pfd)
        os.close(pfd)
        path = posixpath.normpath(target if target.startswith("/") else posixpath.join(parent, target))
        path = "/" + path.lstrip("/")
    raise EngineError(f"{what}: too many levels of symbolic links")


def copy(src: _Source, entries, dest_root: int, dest_path: str, what: str,
         owner: tuple | None = None) -> int:
    """Copy `entries` (of `src`, or of a tar stream when src is None) to `dest_path`
    resolved inside `dest_root`; returns the number of entries written."""
    pfd, base, st = _resolve_dest(dest_root, dest_path, what)
    try:
        dest_is_dir = st is not None and stat.S_ISDIR(st.st_mode)
        trailing = dest_path.endswith("/") or dest_path.endswith("/.")
        if src is None or (src.contents and dest_is_dir):
            if not dest_is_dir:
                raise EngineError(f"{what}: {'must be a directory' if st else 'no such directory'}")
            into, rename = _sub(pfd, base), None
        elif dest_is_dir:
            into, rename = _sub(pfd, base), None   # DEST/basename(SRC)
        elif st is not None:
            if src.is_dir:
                raise EngineError(f"{what}: cannot copy a directory onto a file")
            into, rename = os.dup(pfd), base      # replace the file
        else:
            if trailing and not src.is_dir:
                raise EngineError(f"{what}: no such directory")
            if src.contents:
                os.mkdir(base, 0o755, dir_fd=pfd)
                if owner:
                    os.chown(base, *owner, dir_fd=pfd, follow_symlinks=False)
                into, rename = _sub(pfd, base), None
            else:
                into, rename = os.dup(pfd), base
    finally:
        os.close(pfd)
    try:
        return Extractor(into, rename, owner).run(entries)
    finally:
        os.close(into)


def _sub(pfd, base):
    if base is None:
        return os.dup(pfd)
    return libc.openat2(pfd, base, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC,
                        libc.RESOLVE_BENEATH | libc.RESOLVE_NO_SYMLINKS)


# -- the operations ----------------------------------------------------------------------------------

def _user_owner(c: dict) -> tuple[int, int]:
    user = ((c.get("config") or {}).get("process") or {}).get("user") or {}
    return int(user.get("uid", 0)), int(user.get("gid", 0))


def copy_from_container(engine, ref: str, path: str, dest: str, *, follow: bool = False,
                        out=None) -> None:
    """CONTAINER:PATH to the host path `dest`, or as a tar stream to `out` when dest is "-"."""
    what = f"{ref}:{path}"
    inside = _source_path(path, what)
    with container_root(engine, ref) as root:
        fd, at, top = root.at(inside)
        src = open_source(fd, at, follow, what, top)
        try:
            if dest == "-":
                write_tar(src.entries(), out)
                return
            host_root = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                copy(src, src.entries(os.geteuid(), os.getegid()), host_root,
                     os.path.abspath(dest) + ("/" if dest.endswith("/") else ""), dest)
            finally:
                os.close(host_root)
        finally:
            src.close()


def _source_path(path: str, what: str) -> str:
    """A container source path made absolute, keeping a trailing "/" or "/." (they mean
    something to open_source)."""
    inside = _inside(path, what) + ("/" if path.endswith("/") and path.rstrip("/") else "")
    if path.endswith("/.") or path == ".":
        inside = inside.rstrip("/") + "/."
    return inside


def copy_between(engine, src_ref: str, src_path: str, dst_ref: str, dst_path: str, *,
                 follow: bool = False, archive: bool = True) -> None:
    """CONTAINER:PATH to CONTAINER:PATH (podman's container-to-container copy), each path
    resolved inside its own container's root."""
    src_what, dst_what = f"{src_ref}:{src_path}", f"{dst_ref}:{dst_path}"
    src_inside = _source_path(src_path, src_what)
    dst_inside = _inside(dst_path, dst_what) + ("/" if dst_path.endswith("/") else "")
    a, b = engine.get(src_ref), engine.get(dst_ref)
    with contextlib.ExitStack() as stack:
        if a["id"] == b["id"]:
            src_root = dst_root = stack.enter_context(container_root(engine, a["id"]))
        else:
            # two stopped containers are locked in id order, so two opposite copies cannot deadlock
            roots = {cid: stack.enter_context(container_root(engine, cid))
                     for cid in sorted((a["id"], b["id"]))}
            src_root, dst_root = roots[a["id"]], roots[b["id"]]
        fd, at, top = src_root.at(src_inside)
        src = open_source(fd, at, follow, src_what, top)
        try:
            copy(src, src.entries(), *dst_root.at(dst_inside)[:2], dst_what,
                 _user_owner(b) if archive else None)
        finally:
            src.close()


def copy_to_container(engine, src_path: str, ref: str, path: str, *, follow: bool = False,
                      archive: bool = True, stdin=None) -> None:
    """The host path `src_path` (or a tar stream from `stdin` when it is "-") to CONTAINER:PATH."""
    what = f"{ref}:{path}"
    inside = _inside(path, what) + ("/" if path.endswith("/") else "")
    src = None
    if src_path != "-":
        host_root = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            src = open_source(host_root, os.path.abspath(src_path) + ("/." if src_path.endswith("/.") else ""),
                              follow, src_path)
        finally:
            os.close(host_root)
    try:
        with container_root(engine, ref) as root:
            owner = _user_owner(root.c) if archive else None
            entries = tar_entries(stdin) if src is None else src.entries()
            copy(src, entries, *root.at(inside)[:2], what, owner)
    finally:
        if src is not None:
            src.close()
