"""Named and anonymous volumes of the local driver, as podman keeps them.

    <root>/volumes/<name>/_data           the directory containers mount
    <root>/volumes/<name>/volume.json     its record (podman's inspect fields)
    <root>/volumes/.lock                  flock serialising create, copy-up and remove

A volume appears whole or not at all: it is made under a temporary name and renamed into
place, and removed by renaming it away before deleting. On its first use by a container a
volume is filled with what the container's image has at the mount point (docker's and
podman's copy-up), through file descriptors opened inside the rootfs, so a symlink in the
image never leads the copy out of it; devices and fifos are recreated, never opened.

Which containers use a volume is read from the engine's database (each container's
`options.run.mounts`), so `rm` refuses a volume in use by any container, running or not.
"""

import contextlib
import errno
import fcntl
import json
import os
import re
import shutil
import stat
import time

from keel.engine.errors import EngineError

_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*\Z")
DRIVER = "local"
_MAX_LINKS = 256   # hard links remembered during a copy-up (one fd each); later ones are copies


class VolumeNotFound(EngineError):
    """No volume has that name."""


class VolumeInUse(EngineError):
    """A container uses the volume."""


class VolumeExists(EngineError):
    """A volume of that name exists already."""


def check_name(name: str, what: str = "volume name") -> str:
    if not isinstance(name, str) or not _NAME.match(name) or len(name) > 255:
        raise EngineError(f"invalid {what} {name!r}: [a-zA-Z0-9][a-zA-Z0-9_.-]* is allowed")
    return name


def _iso(t: float) -> str:
    import datetime

    return datetime.datetime.fromtimestamp(t).astimezone().isoformat()


class Volumes:
    def __init__(self, root: str):
        self.dir = os.path.join(os.path.abspath(root), "volumes")
        os.makedirs(self.dir, 0o700, exist_ok=True)

    @contextlib.contextmanager
    def lock(self):
        fd = os.open(os.path.join(self.dir, ".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def path(self, name: str) -> str:
        return os.path.join(self.dir, name)

    def data(self, name: str) -> str:
        return os.path.join(self.dir, name, "_data")

    # -- records -----------------------------------------------------------------------------

    def get(self, name: str) -> dict:
        if not isinstance(name, str) or not _NAME.match(name):
            raise VolumeNotFound(f"no such volume {name!r}")
        try:
            with open(os.path.join(self.path(name), "volume.json")) as f:
                rec = json.load(f)
        except FileNotFoundError:
            raise VolumeNotFound(f"no such volume {name!r}") from None
        except (OSError, ValueError) as e:
            raise EngineError(f"volume {name}: unreadable record: {e}") from None
        rec["Mountpoint"] = self.data(name)
        return rec

    def exists(self, name: str) -> bool:
        return os.path.exists(os.path.join(self.path(name), "volume.json"))

    def all(self) -> list[dict]:
        out = []
        for name in sorted(os.listdir(self.dir)):
            if _NAME.match(name):
                with contextlib.suppress(VolumeNotFound):
                    out.append(self.get(name))
        return out

    def _write(self, vdir: str, rec: dict) -> None:
        rec = {k: v for k, v in rec.items() if k != "Mountpoint"}
        tmp = os.path.join(vdir, "volume.json.tmp")
        with open(tmp, "w") as f:
            json.dump(rec, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, os.path.join(vdir, "volume.json"))

    # -- create / remove -------------------------------------------------------------------

    def create(self, name: str | None = None, labels: dict | None = None, driver: str = DRIVER,
               options: dict | None = None, anonymous: bool = False, ignore: bool = False) -> dict:
        """A new empty volume (a random 64-hex name when none is given)."""
        if driver not in (None, "", DRIVER):
            raise EngineError(f"volume driver {driver!r}: only {DRIVER!r} is supported")
        if options:
            raise EngineError(f"volume options {', '.join(sorted(options))}: not supported by "
                              f"the {DRIVER} driver of keel (a plain directory)")
        name = check_name(name) if name else os.urandom(32).hex()
        with self.lock():
            if self.exists(name):
                if ignore:
                    return self.get(name)
                raise VolumeExists(f"volume with name {name} already exists")
            return self._create_locked(name, labels or {}, anonymous)

    def _create_locked(self, name, labels, anonymous):
        tmp = os.path.join(self.dir, f".tmp-{os.urandom(8).hex()}")
        try:
            os.mkdir(tmp, 0o700)
            os.mkdir(os.path.join(tmp, "_data"), 0o755)
            rec = {"Name": name, "Driver": DRIVER, "CreatedAt": _iso(time.time()),
                   "Labels": {str(k): str(v) for k, v in labels.items()}, "Scope": "local",
                   "Options": {}, "Anonymous": bool(anonymous), "NeedsCopyUp": True,
                   "NeedsChown": True}
            self._write(tmp, rec)
            os.rename(tmp, self.path(name))
        except OSError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            if e.errno in (errno.EEXIST, errno.ENOTEMPTY):
                raise VolumeExists(f"volume with name {name} already exists") from None
            raise EngineError(f"volume {name}: {(e.strerror or str(e)).lower()}") from None
        return self.get(name)

    def ensure(self, name: str, anonymous: bool = False) -> tuple[dict, bool]:
        """The volume `name`, made when missing; (record, made-now)."""
        check_name(name)
        with self.lock():
            if self.exists(name):
                return self.get(name), False
            return self._create_locked(name, {}, anonymous), True

    def remove_unlocked(self, name: str) -> None:
        """Delete a volume (the caller holds the lock and checked it is unused)."""
        if not self.exists(name):
            raise VolumeNotFound(f"no such volume {name!r}")
        trash = os.path.join(self.dir, f".trash-{os.urandom(8).hex()}")
        os.rename(self.path(name), trash)
        shutil.rmtree(trash, ignore_errors=True)

    def sweep(self) -> None:
        """Delete what interrupted creates and removes left (.tmp-*, .trash-*)."""
        for n in os.listdir(self.dir):
            if n.startswith((".tmp-", ".trash-")):
                shutil.rmtree(os.path.join(self.dir, n), ignore_errors=True)

    # -- copy-up -------------------------------------------------------------------------------

    def copy_up(self, name: str, rootfs: str, path: str, owner: tuple[int, int] = (0, 0)) -> None:
        """On a volume's first use, fill it with the image's content at `path` (resolved
        inside `rootfs`) and give it that directory's owner and mode; where the image has
        nothing there, give it to `owner`, the container's user (podman's NeedsChown)."""
        with self.lock():
            rec = self.get(name)
            data = self.data(name)
            if not rec.get("NeedsCopyUp"):
                return
            from keel.kernel import libc

            root = os.open(rootfs, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                src = libc.openat2(root, path.lstrip("/"), os.O_RDONLY | os.O_DIRECTORY,
                                   libc.RESOLVE_IN_ROOT | libc.RESOLVE_NO_MAGICLINKS)
            except OSError:
                src = None   # nothing (or no directory) there: nothing to copy
            finally:
                os.close(root)
            if src is None and rec.get("NeedsChown") and owner != (0, 0):
                os.chown(data, *owner, follow_symlinks=False)
            if src is not None:
                if rec.get("CopyUpInProgress"):
                    _empty(data)   # an earlier copy died half-way (kill -9, a full disk)
                dst = os.open(data, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
                try:
                    if not os.listdir(dst):
                        rec["CopyUpInProgress"] = True
                        self._write(self.path(name), rec)
                        links = {}
                        try:
                            _copy_dir(src, dst, links)
                        finally:
                            for fd, _ in links.values():
                                os.close(fd)
                        st = os.fstat(src)
                        os.chown(dst, st.st_uid, st.st_gid)
                        os.chmod(dst, stat.S_IMODE(st.st_mode))
                except OSError as e:
                    raise EngineError(f"volume {name}: copying {path} from the image: "
                                      f"{(e.strerror or str(e)).lower()}") from None
                finally:
                    os.close(dst)
                    os.close(src)
            rec["NeedsCopyUp"] = False
            rec["NeedsChown"] = False
            rec.pop("CopyUpInProgress", None)
            self._write(self.path(name), rec)


def _empty(path: str) -> None:
    for entry in os.scandir(path):
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path)
        else:
            os.unlink(entry.path)


def _copy_dir(src: int, dst: int, links: dict | None = None) -> None:
    """Copy the entries of directory fd `src` into directory fd `dst`: never following a
    symlink, never opening anything but regular files and directories; owners, modes, times,
    xattrs (file capabilities) and hard links kept, as docker's tar-based copy keeps them."""
    links = {} if links is None else links
    for name in os.listdir(src):
        st = os.stat(name, dir_fd=src, follow_symlinks=False)
        mode = st.st_mode
        if stat.S_ISDIR(mode):
            os.mkdir(name, 0o700, dir_fd=dst)
            s = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=src)
            d = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dst)
            try:
                _copy_dir(s, d, links)
                _copy_xattrs(s, d)
            finally:
                os.close(s)
                os.close(d)
        elif stat.S_ISREG(mode) and st.st_nlink > 1 and (st.st_dev, st.st_ino) in links:
            first_dir, first_name = links[(st.st_dev, st.st_ino)]
            os.link(first_name, name, src_dir_fd=first_dir, dst_dir_fd=dst)
            continue
        elif stat.S_ISREG(mode):
            s = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=src)
            d = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                        0o600, dir_fd=dst)
            try:
                while os.sendfile(d, s, None, 1 << 20) > 0:
                    pass
                os.fchown(d, st.st_uid, st.st_gid)
                os.fchmod(d, stat.S_IMODE(mode))
                _copy_xattrs(s, d)   # after chown, which drops security.capability
            finally:
                os.close(s)
                os.close(d)
            if st.st_nlink > 1 and len(links) < _MAX_LINKS:
                # the directory is held by fd, never re-resolved by path: a path could be
                # swapped for a symlink by a container already using the volume
                links[(st.st_dev, st.st_ino)] = (os.dup(dst), name)
        elif stat.S_ISLNK(mode):
            os.symlink(os.readlink(name, dir_fd=src), name, dir_fd=dst)
        elif stat.S_ISFIFO(mode) or stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            os.mknod(name, mode, st.st_rdev, dir_fd=dst)
        else:
            continue  # sockets are not content
        if not stat.S_ISREG(mode):
            os.chown(name, st.st_uid, st.st_gid, dir_fd=dst, follow_symlinks=False)
            if not stat.S_ISLNK(mode):
                os.chmod(name, stat.S_IMODE(mode), dir_fd=dst)
        os.utime(name, ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=dst, follow_symlinks=False)


def _copy_xattrs(src_fd: int, dst_fd: int) -> None:
    try:
        names = os.listxattr(src_fd)
    except OSError:
        return   # a filesystem without xattrs
    for attr in names:
        try:
            os.setxattr(dst_fd, attr, os.getxattr(src_fd, attr))
        except OSError:
            continue   # e.g. a namespace the volume's filesystem refuses


# -- with the engine's containers ----------------------------------------------------------------

def volume_names(c: dict) -> list[tuple[str, bool]]:
    """(name, anonymous) of each volume a container record mounts."""
    run = (c.get("options") or {}).get("run") or {}
    return [(m["name"], bool(m.get("anonymous"))) for m in run.get("mounts", []) if m.get("type") == "volume"]


def users(eng, name: str) -> list[dict]:
    return [c for c in eng.db.all() if any(n == name for n, _ in volume_names(c))]


def used_elsewhere(eng, name: str, cid: str) -> bool:
    """Whether a container other than `cid` uses the volume."""
    return any(c["id"] != cid for c in users(eng, name))


def inspect_entry(eng, rec: dict) -> dict:
    """podman's `volume inspect` shape."""
    out = {"Name": rec["Name"], "Driver": rec["Driver"], "Mountpoint": rec["Mountpoint"],
           "CreatedAt": rec["CreatedAt"], "Labels": rec.get("Labels") or {}, "Scope": "local",
           "Options": rec.get("Options") or {}, "MountCount": 0,
           "NeedsCopyUp": bool(rec.get("NeedsCopyUp")), "NeedsChown": bool(rec.get("NeedsChown"))}
    if rec.get("Anonymous"):
        out["Anonymous"] = True   # podman omits it when false
    return out


def remove(eng, name: str, force: bool = False, timeout: float = 10.0) -> str:
    """Remove a volume; one used by a container only with force, which removes those
    containers first (podman's `volume rm -f`)."""
    vols = Volumes(eng.root)
    vols.get(name)
    using = users(eng, name)
    if using and not force:
        names = ", ".join(c["name"] for c in using)
        raise VolumeInUse(f"volume {name} is being used by the following container(s): {names}: "
                          "remove them first or use -f")
    for c in using:
        eng.remove(c["id"], force=True, timeout=timeout)
    with vols.lock():
        if users(eng, name):
            raise VolumeInUse(f"volume {name}: a container started using it meanwhile")
        vols.remove_unlocked(name)
    return name


def remove_container_volumes(eng, c: dict, anonymous_only: bool = True) -> None:
    """The anonymous volumes of a removed container (`rm -v`, `run --rm`), unless another
    container uses them too."""
    vols = Volumes(eng.root)
    with vols.lock():
        for name, anon in volume_names(c):
            if (anon or not anonymous_only) and vols.exists(name) and \
                    not used_elsewhere(eng, name, c["id"]):
                vols.remove_unlocked(name)


def prune(eng, filters: dict | None = None) -> list[str]:
    """Remove every volume no container uses; the names removed."""
    vols = Volumes(eng.root)
    removed = []
    with vols.lock():
        vols.sweep()
        used = {n for c in eng.db.all() for n, _ in volume_names(c)}
        for rec in vols.all():
            if rec["Name"] in used or not _matches(rec, filters, used):
                continue
            vols.remove_unlocked(rec["Name"])
            removed.append(rec["Name"])
    return removed


def parse_filters(items: list[str]) -> dict:
    """`--filter key=value` items: label=K[=V], name=N, driver=D, anonymous=true|false,
    dangling=true|false (used by no container)."""
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or key not in ("label", "name", "driver", "anonymous", "dangling"):
            raise EngineError(f"--filter {item!r}: expected label=, name=, driver=, anonymous= or dangling=")
        if key in ("anonymous", "dangling") and value.lower() not in ("true", "false", "1", "0"):
            raise EngineError(f"--filter {item!r}: {key} takes true or false")
        out.setdefault(key, []).append(value)
    return out


def _matches(rec: dict, filters: dict | None, used: set | None = None) -> bool:
    for key, values in (filters or {}).items():
        for v in values:
            if key == "dangling" and (v.lower() in ("1", "true")) == (rec["Name"] in (used or set())):
                return False
            if key == "name" and v not in rec["Name"]:
                return False
            if key == "driver" and v != rec["Driver"]:
                return False
            if key == "anonymous" and (v.lower() in ("1", "true")) != bool(rec.get("Anonymous")):
                return False
            if key == "label":
                k, sep, val = v.partition("=")
                labels = rec.get("Labels") or {}
                if k not in labels or (sep and labels[k] != val):
                    return False
    return True


def list_volumes(eng, filters: dict | None = None) -> list[dict]:
    used = {n for c in eng.db.all() for n, _ in volume_names(c)} if "dangling" in (filters or {}) else None
    return [r for r in Volumes(eng.root).all() if _matches(r, filters, used)]
