"""Apply one image layer (tar, tar+gzip or tar+zstd) to a directory, safely and as a stream.

`apply_layer` reads the layer once, front to back: compression is recognised by its magic
bytes, the uncompressed stream is hashed on the way through (the layer's diff id) and each tar
entry is written as it arrives, so a layer is never held in memory.

Hostile layers (containerd CVE-2021-32760, Docker CVE-2018-15664 are the classes) never write
outside the destination:
- names are cleaned: a leading "/" is dropped (as tar does), a ".." component is refused;
- an entry's parent directory is opened with openat2(RESOLVE_IN_ROOT), so a symlink planted by
  an earlier entry, or by an earlier layer already in the destination, resolves inside the
  destination as if it were "/", never out of it;
- the last component is made with *at calls relative to that directory fd, never following a
  symlink: what is in the way is unlinked first, files are created O_EXCL|O_NOFOLLOW, and
  ownership, modes (setuid included), xattrs and times go to the fd just made, or to the name
  with AT_SYMLINK_NOFOLLOW; device nodes and fifos are created, never opened;
- hardlink targets are resolved the same way and linked with linkat(flags=0), which links a
  symlink itself rather than what it points to.

Whiteouts become what overlayfs understands: `.wh.NAME` a character device 0:0 at NAME (what
the destination already held there is removed), `.wh..wh..opq` the xattr
trusted.overlay.opaque="y" on its directory (and what the destination held there from before
this layer is removed). Other `.wh..wh.` entries (AUFS metadata such as .wh..wh.plnk) are
skipped. Directory mtimes are set last, after their children are written.

Rootless (an unpacking user without CAP_CHOWN/CAP_MKNOD: the default when euid is not 0), the
rules containers/storage follows in a user namespace: nothing is chowned (everything belongs to
the unpacking user, who stands for the image's root); an entry owned by anyone but 0:0, or with
setuid/setgid/sticky bits, has its owner and mode recorded as "uid:gid:0mode" in the xattr
user.containers.override_stat (as containers/storage and fuse-overlayfs spell it; regular
files and directories only: Linux allows user.* xattrs on nothing else, so a symlink's or
fifo's owner is not kept); character and block devices are skipped (fifos
and 0:0 whiteout devices are made: Linux allows both unprivileged); opaque directories get
user.overlay.opaque (overlayfs' `userxattr` mount option reads user.overlay.*); trusted.* and
security.* xattrs are skipped; directory modes are applied at the end, so a read-only directory
of the layer does not stop its own entries from being written.
"""

import base64
import contextlib
import errno
import hashlib
import os
import shutil
import stat
import tarfile
import urllib.parse
from decimal import Decimal

from keel.image.errors import UnpackError
from keel.kernel import libc

WHITEOUT_PREFIX = ".wh."
WHITEOUT_META_PREFIX = ".wh..wh."
WHITEOUT_OPAQUE = ".wh..wh..opq"
OPAQUE_XATTR = "trusted.overlay.opaque"
OPAQUE_XATTR_ROOTLESS = "user.overlay.opaque"
OVERRIDE_STAT_XATTR = "user.containers.override_stat"

_RESOLVE = libc.RESOLVE_IN_ROOT | libc.RESOLVE_NO_MAGICLINKS
_CHUNK = 1 << 20
_MAGIC = ((b"\x1f\x8b", "gzip"), (b"\x28\xb5\x2f\xfd", "zstd"),
          (b"\xfd7zXZ\x00", "xz"), (b"BZh", "bzip2"))
_NOT_SUPPORTED = (errno.ENOTSUP, errno.EOPNOTSUPP)


def apply_layer(fileobj_or_path, dest_dir: str, media_type: str | None = None, *,
                parents: list[str] | tuple = (), rootless: bool | None = None) -> str:
    """Unpack one layer into `dest_dir` (which must exist; it may already hold earlier layers)
    and return its diff id, "sha256:<hex of the uncompressed tar>".

    `parents` are the directories of the layers below (top first), consulted only for the
    ownership, mode and times of directories the layer uses without listing them, so that an
    implicit parent does not mask the lower one's attributes in an overlay. `rootless`: the
    module doc's rules (default: when euid is not 0).
    UnpackError naming the entry (or the layer) for anything invalid."""
    own = isinstance(fileobj_or_path, (str, bytes, os.PathLike))
    if own:
        try:
            raw = open(fileobj_or_path, "rb", buffering=0)
        except OSError as e:
            raise UnpackError(f"layer {os.fsdecode(fileobj_or_path)}: {_why(e)}") from None
    else:
        raw = fileobj_or_path
    try:
        stream = _open_stream(raw, media_type)
        applier = _Applier(dest_dir, parents, os.geteuid() != 0 if rootless is None else rootless)
        try:
            applier.run(stream)
        finally:
            applier.close()
        stream.drain()
        return "sha256:" + stream.hexdigest()
    finally:
        if own:
            raw.close()


def compression_of(head: bytes) -> str:
    """"gzip", "zstd", "xz", "bzip2" or "none" from the first bytes of a layer."""
    for magic, name in _MAGIC:
        if head.startswith(magic):
            return name
    return "none"


# ---------------------------------------------------------------------------------------------
# the stream: decompression by magic, the diff id on the way through


class _Prefixed:
    """A binary reader that first returns `head` (bytes already peeked), then the rest."""

    def __init__(self, head, raw):
        self.head = head
        self.raw = raw

    def read(self, n=-1):
        if self.head:
            if n is None or n < 0:
                data, self.head = self.head + self.raw.read(), b""
                return data
            data, self.head = self.head[:n], self.head[n:]
            if len(data) < n:
                data += self.raw.read(n - len(data)) or b""
            return data
        return self.raw.read(n)

    def readable(self):
        return True

    def close(self):
        pass


def _read_head(raw, n):
    head = b""
    while len(head) < n:
        chunk = raw.read(n - len(head))
        if not chunk:
            break
        head += chunk
    return head


class _Stream:
    """The uncompressed tar stream, hashed as it is read; decoder errors become UnpackError."""

    def __init__(self, reader, kind):
        self.reader = reader
        self.kind = kind
        self.hash = hashlib.sha256()

    def read(self, n=-1):
        try:
            data = self.reader.read(n) if self.reader is not None else b""
        except UnpackError:
            raise
        except Exception as e:  # zlib.error, BadGzipFile, EOFError, ZstdError, LZMAError, OSError
            what = f"{self.kind} stream" if self.kind != "none" else "stream"
            raise UnpackError(f"layer: reading the {what}: {_why(e)}") from None
        self.hash.update(data)
        return data

    def drain(self):
        """Read (and hash) what follows the end-of-archive marker: the diff id covers it all."""
        while self.read(_CHUNK):
            pass

    def hexdigest(self):
        return self.hash.hexdigest()


class _Forward:
    """The stream as a forward-only seekable file for tarfile's "r:" mode, whose header reads
    are cheap (tarfile's own "r|" stream re-slices its whole buffer on every small read)."""

    def __init__(self, stream):
        self.stream = stream
        self.buf = b""
        self.off = 0
        self.pos = 0
        self.block = (-1, b"")  # the last 512-byte read (tarfile reads headers so)

    def read(self, n=-1):
        if n == tarfile.BLOCKSIZE:
            at = self.pos
            data = self._read(n)
            self.block = (at, data)
            return data
        return self._read(n)

    def _read(self, n):
        if n is None or n < 0:
            n = 1 << 62
        out = []
        while n > 0:
            if self.off >= len(self.buf):
                self.buf = self.stream.read(_CHUNK)
                self.off = 0
                if not self.buf:
                    break
            take = self.buf[self.off:self.off + n] if (self.off or n < len(self.buf)) else self.buf
            self.off += len(take)
            n -= len(take)
            out.append(take)
        data = out[0] if len(out) == 1 else b"".join(out)
        self.pos += len(data)
        return data

    def readinto(self, b):
        data = self.read(len(b))
        b[:len(data)] = data
        return len(data)

    def tell(self):
        return self.pos

    def seekable(self):
        return True

    def readable(self):
        return True

    def seek(self, pos, whence=0):
        if whence == 1:
            pos += self.pos
        elif whence != 0:
            raise OSError(errno.ESPIPE, "only forward seeks in a layer stream")
        if pos < self.pos:
            raise OSError(errno.ESPIPE, "only forward seeks in a layer stream")
        while self.pos < pos:
            if not self.read(min(pos - self.pos, _CHUNK)):
                break
        return self.pos


def _open_stream(raw, media_type):
    if media_type and "+encrypted" in media_type:
        raise UnpackError(f"layer: encrypted layers are not supported ({media_type})")
    head = _read_head(raw, 6)
    kind = compression_of(head)
    src = _Prefixed(head, raw)
    if not head:
        return _Stream(None, kind)
    if kind == "gzip":
        import gzip

        reader = gzip.GzipFile(fileobj=src, mode="rb")
    elif kind == "zstd":
        try:
            import zstandard
        except ImportError:
            raise UnpackError("layer: zstd compressed, and the python package zstandard "
                              "is not installed") from None
        reader = zstandard.ZstdDecompressor().stream_reader(
            src, read_size=_CHUNK, read_across_frames=True, closefd=False)
    elif kind == "xz":
        import lzma

        reader = lzma.LZMAFile(src)
    elif kind == "bzip2":
        import bz2

        reader = bz2.BZ2File(src)
    else:
        reader = src
    return _Stream(reader, kind)


# ---------------------------------------------------------------------------------------------
# names


def clean_name(name: str, entry: str | None = None) -> list[str]:
    """The components of a tar member name inside the layer root: "", "." and a leading "/"
    are dropped; ".." is refused (UnpackError naming the entry)."""
    parts = []
    for p in name.split("/"):
        if p in ("", "."):
            continue
        if p == "..":
            raise UnpackError(f"entry {entry if entry is not None else name}: "
                              f"'..' in path {name!r}")
        parts.append(p)
    return parts


def _why(e):
    if isinstance(e, OSError) and e.strerror:
        return e.strerror.lower()
    return str(e).lower() or type(e).__name__


def _ns(member, key):
    """Nanoseconds of the PAX time `key` (exact decimal), else of the header's mtime."""
    value = member.pax_headers.get(key)
    if value is not None:
        try:
            return int(Decimal(value) * 1_000_000_000)
        except ArithmeticError:
            pass
    return int(member.mtime) * 1_000_000_000


def _times(member):
    mtime = _ns(member, "mtime")
    atime = _ns(member, "atime") if "atime" in member.pax_headers else mtime
    return atime, mtime


def _xattrs(member):
    """(name, value) of the xattrs a PAX header carries (SCHILY.xattr.* as GNU tar and Go
    write them, LIBARCHIVE.xattr.* as bsdtar does); trusted.overlay.* is dropped: only the
    whiteout conversion may speak to overlayfs."""
    out = []
    for key, value in member.pax_headers.items():
        if key.startswith("SCHILY.xattr."):
            name = key[len("SCHILY.xattr."):]
            data = value.encode("utf-8", "surrogateescape")
        elif key.startswith("LIBARCHIVE.xattr."):
            name = urllib.parse.unquote(key[len("LIBARCHIVE.xattr."):])
            try:
                data = base64.b64decode(value + "=" * (-len(value) % 4))
            except ValueError:
                raise UnpackError(f"entry {member.name}: xattr {name}: bad base64 value") from None
        else:
            continue
        if not name or name.startswith("trusted.overlay."):
            continue
        out.append((name, data))
    return out


def _override_stat(fd, mode):
    """(uid, gid, mode) recorded in user.containers.override_stat of an O_PATH fd, else
    (0, 0, mode): a rootless layer's idea of who owns what it holds."""
    try:
        value = os.getxattr(f"/proc/self/fd/{fd}", OVERRIDE_STAT_XATTR).decode()
        uid, gid, m = value.split(":")
        return int(uid), int(gid), int(m, 8)
    except (OSError, ValueError, UnicodeDecodeError):
        return 0, 0, mode


# ---------------------------------------------------------------------------------------------
# the applier


class _Applier:
    def __init__(self, dest, parents, rootless=False):
        self.dest = os.fspath(dest)
        self.rootless = rootless
        self.dir_modes = []  # rootless: (parts, mode) of directories, applied at the end
        try:
            self.root = os.open(self.dest, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as e:
            raise UnpackError(f"layer destination {self.dest}: {_why(e)}") from None
        self.lowers = []
        try:
            for p in parents:
                self.lowers.append(os.open(p, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC))
        except OSError as e:
            self.close()
            raise UnpackError(f"parent layer {p}: {_why(e)}") from None
        with os.scandir(self.root) as it:
            nonempty = any(True for _ in it)
        # Paths this layer made; only needed when the destination held something before, so
        # that whiteouts and opaque markers remove the older content and not this layer's.
        self.created = set() if nonempty else None
        self.dirs = []  # (parts, atime_ns, mtime_ns): directory times, set at the end
        self.saw_root = False
        self.op = ""

    def close(self):
        if self.root >= 0:
            os.close(self.root)
            self.root = -1
        for fd in self.lowers:
            os.close(fd)
        self.lowers = []

    # -- driver -----------------------------------------------------------------------------

    def run(self, stream):
        if stream.reader is None:
            return  # an empty stream: an empty layer
        last = current = None
        src = _Forward(stream)
        try:
            tf = tarfile.open(fileobj=src, mode="r:", encoding="utf-8", errors="surrogateescape")
            while True:
                member = tf.next()
                if member is None:
                    break
                tf.members.clear()  # do not keep every header in memory
                current = member.name
                self.entry(tf, member)
                last, current = current, None
            # tarfile ends quietly at a bad header after the first: only zeros may end a layer
            at, block = src.block
            if at == tf.offset and block.strip(b"\0"):
                raise tarfile.ReadError("invalid header")
        except (tarfile.TarError, EOFError) as e:
            if current is not None:
                raise UnpackError(f"entry {current}: invalid tar data: {_why(e)}") from None
            where = f"after entry {last}" if last is not None else "at its start"
            raise UnpackError(f"layer: invalid tar stream {where}: {_why(e)}") from None
        self.finish()

    def entry(self, tf, m):
        name = m.name
        parts = clean_name(name)
        if any(p.startswith(WHITEOUT_META_PREFIX) for p in parts[:-1]):
            return  # inside an AUFS metadata directory (.wh..wh.plnk/...)
        try:
            if not parts:
                self._root_entry(m)
            elif parts[-1].startswith(WHITEOUT_PREFIX):
                base = parts[-1]
                if base == WHITEOUT_OPAQUE:
                    self._opaque(parts[:-1], m)
                elif not base.startswith(WHITEOUT_META_PREFIX):
                    self._whiteout(parts[:-1], base[len(WHITEOUT_PREFIX):], m)
            else:
                self._member(tf, parts, m)
        except OSError as e:
            raise UnpackError(f"entry {name}: {self.op}: {_why(e)}") from None

    def _member(self, tf, parts, m):
        if m.isreg():
            make = self._file
        elif m.isdir():
            make = self._dir
        elif m.issym():
            make = self._symlink
        elif m.islnk():
            make = self._hardlink
        elif m.ischr() or m.isblk() or m.isfifo():
            make = self._node
        else:
            raise UnpackError(f"entry {m.name}: unsupported tar entry type {m.type.decode('latin-1')!r}")
        pfd = self._parent(parts[:-1], m.name)
        try:
            make(tf, pfd, parts, m)
        finally:
            os.close(pfd)
        if self.created is not None:
            self.created.add("/".join(parts))

    def finish(self):
        """Directory times last: writing children changed them (rootless: modes too)."""
        modes = {}
        for parts, mode in self.dir_modes:                  # a directory listed twice: the last
            modes[tuple(parts)] = mode
        for parts, mode in sorted(modes.items(), key=lambda pm: -len(pm[0])):  # deepest first
            self.op = "chmod"
            try:
                fd = libc.openat2(self.root, "/".join(parts) or ".",
                                  os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, _RESOLVE)
            except OSError:
                continue  # replaced by a later entry
            try:
                os.fchmod(fd, mode)
            except OSError as e:
                raise UnpackError(f"entry {'/'.join(parts) or '.'}: chmod: {_why(e)}") from None
            finally:
                os.close(fd)
        for parts, atime, mtime in self.dirs:
            self.op = "set times"
            try:
                if not parts:
                    os.utime(self.root, ns=(atime, mtime))
                    continue
                pfd = self._open_dir(parts[:-1])
            except OSError:
                continue  # replaced by a later entry
            try:
                st = os.stat(parts[-1], dir_fd=pfd, follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    os.utime(parts[-1], ns=(atime, mtime), dir_fd=pfd, follow_symlinks=False)
            except FileNotFoundError:
                pass
            except OSError as e:
                raise UnpackError(f"entry {'/'.join(parts)}: set times: {_why(e)}") from None
            finally:
                os.close(pfd)
        if not self.saw_root and self.lowers and self.created is None:
            # No "./" entry: the root keeps the attributes of the layer below.
            st = os.fstat(self.lowers[0])
            if self.rootless:
                self._copy_override(self.lowers[0], self.root)
            else:
                os.chown(self.root, st.st_uid, st.st_gid)
            os.chmod(self.root, stat.S_IMODE(st.st_mode))
            os.utime(self.root, ns=(st.st_atime_ns, st.st_mtime_ns))

    # -- resolution ---------------------------------------------------------------------------

    def _open_dir(self, parts):
        """An O_PATH fd of the directory at `parts`, resolved inside the destination."""
        return libc.openat2(self.root, "/".join(parts) or ".", os.O_PATH | os.O_DIRECTORY, _RESOLVE)

    def _parent(self, parts, name):
        """The directory an entry goes in, created (with its missing parents) if need be."""
        self.op = "open parent"
        try:
            return self._open_dir(parts)
        except OSError as e:
            if e.errno == errno.ENOTDIR:
                raise UnpackError(f"entry {name}: a parent is not a directory") from None
            if e.errno != errno.ENOENT:
                raise
        fd = os.dup(self.root)
        try:
            for i, comp in enumerate(parts):
                sub = parts[:i + 1]
                try:
                    nfd = self._open_dir(sub)
                except OSError as e:
                    if e.errno == errno.ENOTDIR:
                        raise UnpackError(f"entry {name}: parent {'/'.join(sub)} is not a "
                                          f"directory") from None
                    if e.errno != errno.ENOENT:
                        raise
                    self.op = "mkdir " + "/".join(sub)
                    try:
                        os.mkdir(comp, 0o700, dir_fd=fd)
                    except FileExistsError:
                        raise UnpackError(f"entry {name}: parent {'/'.join(sub)} is a dangling "
                                          f"symlink") from None
                    nfd = libc.openat2(fd, comp, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW,
                                       libc.RESOLVE_BENEATH | libc.RESOLVE_NO_SYMLINKS)
                    try:
                        self._implicit_dir(fd, comp, sub)
                    except BaseException:
                        os.close(nfd)
                        raise
                    if self.created is not None:
                        self.created.add("/".join(sub))
                os.close(fd)
                fd = nfd
            return fd
        except BaseException:
            os.close(fd)
            raise

    def _implicit_dir(self, pfd, comp, parts):
        """Attributes for a directory the layer uses but does not list: the lower layer's if it
        has that directory, else root:root 0755."""
        uid = gid = 0
        mode = 0o755
        times = None
        for lower in self.lowers:
            try:
                lfd = libc.openat2(lower, "/".join(parts), os.O_PATH | os.O_NOFOLLOW, _RESOLVE)
            except OSError:
                continue
            try:
                st = os.fstat(lfd)
                if stat.S_ISDIR(st.st_mode):
                    uid, gid, mode = st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)
                    times = (st.st_atime_ns, st.st_mtime_ns)
                    if self.rootless:       # on disk it is ours: the image's owner is recorded
                        uid, gid, mode = _override_stat(lfd, mode)
            finally:
                os.close(lfd)
            break  # the topmost lower that has the name decides (a file or whiteout hides it)
        dfd = os.open(comp, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd)
        try:
            if self.rootless:
                self._own_rootless(dfd, uid, gid, mode, list(parts))
            else:
                os.fchown(dfd, uid, gid)
                os.fchmod(dfd, mode)
        finally:
            os.close(dfd)
        if times is not None:
            self.dirs.append((list(parts), *times))

    def _clear(self, pfd, base, keep_dir):
        """Remove what is at `base` (a directory with its content) unless it is a directory
        and `keep_dir`; True if a directory was kept. Never follows a symlink."""
        self.op = "remove existing"
        try:
            st = os.stat(base, dir_fd=pfd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        if stat.S_ISDIR(st.st_mode):
            if keep_dir:
                return True
            shutil.rmtree(base, dir_fd=pfd)
        else:
            os.unlink(base, dir_fd=pfd)
        return False

    # -- metadata -----------------------------------------------------------------------------

    def _set_xattr(self, target, name, value, m, follow):
        if self.rootless and not name.startswith("user."):
            return  # trusted.* and security.* need privileges a rootless unpack does not have
        try:
            os.setxattr(target, name, value, follow_symlinks=follow)
        except OSError as e:
            if e.errno in _NOT_SUPPORTED:
                return  # the filesystem has no such namespace
            if e.errno == errno.EPERM and name.startswith("user.") and not (m.isreg() or m.isdir()):
                return  # the kernel allows user.* only on files and directories
            raise UnpackError(f"entry {m.name}: set xattr {name}: {_why(e)}") from None

    def _meta_fd(self, fd, m, parts=None):
        """Owner, mode, xattrs of what `fd` (a regular file or directory) refers to, in that
        order: chown clears setuid bits and security.capability. `parts`: a directory's path
        (rootless: its mode waits for finish())."""
        if self.rootless:
            self._own_rootless(fd, m.uid, m.gid, m.mode & 0o7777, parts)
        else:
            self.op = "chown"
            os.fchown(fd, m.uid, m.gid)
            self.op = "chmod"
            os.fchmod(fd, m.mode & 0o7777)
        for name, value in _xattrs(m):
            self._set_xattr(fd, name, value, m, True)

    def _own_rootless(self, fd, uid, gid, mode, dir_parts):
        """Rootless ownership: the owner (and any mode bits the kernel may drop) recorded in
        user.containers.override_stat when they are not plain 0:0; directories get their mode
        at the end (dir_parts not None)."""
        self.op = "set override_stat"
        if (uid, gid) != (0, 0) or mode & 0o7000:
            try:
                os.setxattr(fd, OVERRIDE_STAT_XATTR, f"{uid}:{gid}:0{mode:o}".encode())
            except OSError as e:
                if e.errno not in _NOT_SUPPORTED:
                    raise
        elif dir_parts is not None:             # a directory listed again: its old record goes
            with contextlib.suppress(OSError):
                os.removexattr(fd, OVERRIDE_STAT_XATTR)
        self.op = "chmod"
        if dir_parts is not None:
            os.fchmod(fd, 0o700)
            self.dir_modes.append((dir_parts, mode))
        else:
            os.fchmod(fd, mode)

    def _copy_override(self, src_fd, dst_fd):
        """Rootless: carry a lower's recorded owner over to what stands for it here."""
        try:
            value = os.getxattr(f"/proc/self/fd/{src_fd}", OVERRIDE_STAT_XATTR)
        except OSError:
            return
        os.setxattr(dst_fd, OVERRIDE_STAT_XATTR, value)

    def _meta_at(self, pfd, base, m, chmod=True):
        """The same for a symlink, device or fifo, by name in its directory, not following."""
        if not self.rootless:   # rootless: a symlink's or fifo's owner is not kept (no user.*)
            self.op = "chown"
            os.chown(base, m.uid, m.gid, dir_fd=pfd, follow_symlinks=False)
        if chmod:
            self.op = "chmod"
            os.chmod(base, m.mode & 0o7777, dir_fd=pfd, follow_symlinks=False)
        xattrs = _xattrs(m)
        if xattrs:
            # lsetxattr has no *at form: the magic link names the directory already resolved
            path = f"/proc/self/fd/{pfd}/{base}"
            for name, value in xattrs:
                self._set_xattr(path, name, value, m, False)
        self.op = "set times"
        os.utime(base, ns=_times(m), dir_fd=pfd, follow_symlinks=False)

    # -- entry kinds ----------------------------------------------------------------------------

    def _root_entry(self, m):
        if not m.isdir():
            raise UnpackError(f"entry {m.name}: the layer root must be a directory")
        self.saw_root = True
        self._meta_fd(self.root, m, [])
        self.dirs.append(([], *_times(m)))

    def _file(self, tf, pfd, parts, m):
        base = parts[-1]
        self._clear(pfd, base, False)
        self.op = "create"
        fd = os.open(base, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600, dir_fd=pfd)
        try:
            if m.size:
                src = tf.extractfile(m)
                self.op = "write"
                while True:
                    chunk = src.read(_CHUNK)
                    if not chunk:
                        break
                    view = memoryview(chunk)
                    while view:
                        view = view[os.write(fd, view):]
            self._meta_fd(fd, m)
            self.op = "set times"
            os.utime(fd, ns=_times(m))
        finally:
            os.close(fd)

    def _dir(self, tf, pfd, parts, m):
        base = parts[-1]
        if not self._clear(pfd, base, True):
            self.op = "mkdir"
            os.mkdir(base, 0o700, dir_fd=pfd)
        self.op = "open"
        fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd)
        try:
            self._meta_fd(fd, m, list(parts))
        finally:
            os.close(fd)
        self.dirs.append((parts, *_times(m)))

    def _symlink(self, tf, pfd, parts, m):
        base = parts[-1]
        self._clear(pfd, base, False)
        self.op = "symlink"
        os.symlink(m.linkname, base, dir_fd=pfd)
        self._meta_at(pfd, base, m, chmod=False)  # a symlink's mode means nothing on Linux

    def _node(self, tf, pfd, parts, m):
        base = parts[-1]
        self._clear(pfd, base, False)
        if self.rootless and (m.ischr() or m.isblk()):
            return  # no CAP_MKNOD: devices are skipped (containers/storage's rule in a userns)
        if m.ischr():
            kind, dev = stat.S_IFCHR, os.makedev(m.devmajor, m.devminor)
        elif m.isblk():
            kind, dev = stat.S_IFBLK, os.makedev(m.devmajor, m.devminor)
        else:
            kind, dev = stat.S_IFIFO, 0
        self.op = "mknod"
        os.mknod(base, kind | 0o600, dev, dir_fd=pfd)
        self._meta_at(pfd, base, m)

    def _hardlink(self, tf, pfd, parts, m):
        base = parts[-1]
        target = clean_name(m.linkname, m.name)
        if not target:
            raise UnpackError(f"entry {m.name}: hardlink to the layer root")
        if target == parts:
            raise UnpackError(f"entry {m.name}: hardlink to itself")
        missing = f"entry {m.name}: hardlink target {m.linkname} does not exist"
        self.op = "resolve hardlink target"
        try:
            tfd = self._open_dir(target[:-1])
        except OSError:
            tfd = None
        try:
            tst = None
            if tfd is not None:
                try:
                    tst = os.stat(target[-1], dir_fd=tfd, follow_symlinks=False)
                except FileNotFoundError:
                    pass
            if tst is None:
                # Only in a layer below: copy it up into this one first, as overlayfs does
                # when a lower file is linked.
                if tfd is not None:
                    os.close(tfd)
                    tfd = None
                tfd = self._copy_up(target, m, missing)
                tst = os.stat(target[-1], dir_fd=tfd, follow_symlinks=False)
            if stat.S_ISDIR(tst.st_mode):
                raise UnpackError(f"entry {m.name}: hardlink target {m.linkname} is a directory")
            try:
                st = os.stat(base, dir_fd=pfd, follow_symlinks=False)
                if (st.st_dev, st.st_ino) == (tst.st_dev, tst.st_ino):
                    return  # already that file
            except FileNotFoundError:
                pass
            self._clear(pfd, base, False)
            self.op = "link"
            # flags 0: a symlink target is linked itself, never followed
            os.link(target[-1], base, src_dir_fd=tfd, dst_dir_fd=pfd, follow_symlinks=False)
        finally:
            if tfd is not None:
                os.close(tfd)

    def _copy_up(self, target, m, missing):
        """Copy `target` (a non-directory) from the topmost lower layer that has it into the
        destination; returns an O_PATH fd of its directory here. UnpackError `missing` if no
        lower has it (or the topmost one whites it out)."""
        found = None
        for lower in self.lowers:
            try:
                lpfd = libc.openat2(lower, "/".join(target[:-1]) or ".", os.O_PATH | os.O_DIRECTORY, _RESOLVE)
            except OSError:
                continue
            try:
                lst = os.stat(target[-1], dir_fd=lpfd, follow_symlinks=False)
            except FileNotFoundError:
                os.close(lpfd)
                continue
            if stat.S_ISDIR(lst.st_mode) or (stat.S_ISCHR(lst.st_mode) and lst.st_rdev == 0):
                os.close(lpfd)
                break  # a directory, or whited out: no file to link
            found = (lpfd, lst)
            break
        if found is None:
            raise UnpackError(missing)
        lpfd, lst = found
        name = target[-1]
        try:
            tfd = self._parent(target[:-1], m.name)
            try:
                self.op = "copy up hardlink target"
                if stat.S_ISREG(lst.st_mode):
                    src = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=lpfd)
                    dst = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                                  0o600, dir_fd=tfd)
                    try:
                        while True:
                            chunk = os.read(src, _CHUNK)
                            if not chunk:
                                break
                            view = memoryview(chunk)
                            while view:
                                view = view[os.write(dst, view):]
                    finally:
                        os.close(src)
                        os.close(dst)
                elif stat.S_ISLNK(lst.st_mode):
                    os.symlink(os.readlink(name, dir_fd=lpfd), name, dir_fd=tfd)
                else:
                    os.mknod(name, stat.S_IFMT(lst.st_mode) | 0o600, lst.st_rdev, dir_fd=tfd)
                if not self.rootless:       # rootless: the recorded owner is copied as an xattr
                    os.chown(name, lst.st_uid, lst.st_gid, dir_fd=tfd, follow_symlinks=False)
                if not stat.S_ISLNK(lst.st_mode):
                    os.chmod(name, stat.S_IMODE(lst.st_mode), dir_fd=tfd, follow_symlinks=False)
                lpath, tpath = f"/proc/self/fd/{lpfd}/{name}", f"/proc/self/fd/{tfd}/{name}"
                for key in os.listxattr(lpath, follow_symlinks=False):
                    if not key.startswith("trusted.overlay.") and (
                            not self.rootless or key.startswith("user.") and not key.startswith("user.overlay.")):
                        os.setxattr(tpath, key, os.getxattr(lpath, key, follow_symlinks=False),
                                    follow_symlinks=False)
                os.utime(name, ns=(lst.st_atime_ns, lst.st_mtime_ns), dir_fd=tfd, follow_symlinks=False)
            except BaseException:
                os.close(tfd)
                raise
        finally:
            os.close(lpfd)
        if self.created is not None:
            self.created.add("/".join(target))
        return tfd

    def _whiteout(self, dirparts, name, m):
        if name in ("", ".", ".."):
            raise UnpackError(f"entry {m.name}: invalid whiteout name {name!r}")
        pfd = self._parent(dirparts, m.name)
        try:
            self._clear(pfd, name, False)
            self.op = "mknod whiteout"
            os.mknod(name, stat.S_IFCHR, os.makedev(0, 0), dir_fd=pfd)
            if not self.rootless:
                self.op = "chown"
                os.chown(name, m.uid, m.gid, dir_fd=pfd, follow_symlinks=False)
        finally:
            os.close(pfd)
        if self.created is not None:
            self.created.add("/".join(dirparts + [name]))

    def _opaque(self, dirparts, m):
        dfd = self._parent(dirparts, m.name)
        try:
            self.op = "set opaque xattr"
            lfd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=dfd)
            try:
                os.setxattr(lfd, OPAQUE_XATTR_ROOTLESS if self.rootless else OPAQUE_XATTR, b"y")
                if self.created is None:
                    return
                # What the destination held here before this layer is hidden: remove it.
                self.op = "remove lower content"
                names = os.listdir(lfd)
            finally:
                os.close(lfd)
            prefix = "/".join(dirparts)
            for child in names:
                rel = f"{prefix}/{child}" if prefix else child
                if rel not in self.created:
                    self._clear(dfd, child, False)
        finally:
            os.close(dfd)
