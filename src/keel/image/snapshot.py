"""Overlay snapshots: one read-only directory per layer, keyed by chain id, shared by images.

Layout under `root` (the store's root/snapshots):

    layers/<chain-hex>/fs        a layer unpacked on its own (an overlayfs lower dir), never
                                 written again once in place
    layers/<chain-hex>/meta.json chain id, diff id, parent chain id, short link name
    l/<link>                     -> ../layers/<chain-hex>/fs: short names for long lowerdir lists
    tmp/                         unpacks in progress (renamed into layers/ when complete)
    active/<key>/{upper,work,rootfs,info.json}   a container's writable snapshot
    mounts/<image-hex>/{merged,info.json}        an image's read-only mount (`keel image mount`)
    empty/e0, empty/e1           padding: overlayfs without an upper needs two lowers
    locks/<chain-hex>.lock       flock: one unpack per chain id across processes
    gc.lock                      shared by ensure/prepare/remove/mount, exclusive for remove_unused

A layer becomes visible only by rename(2) of a complete, synced temporary directory, so a crash
mid-unpack leaves only tmp/ debris (cleared by remove_unused) and a reader never sees half a
layer. Two processes wanting the same chain serialise on its flock; the second finds it done.

Image mounts are counted, as containers/storage counts them for `podman image mount`: each
mount_image() adds one, each unmount_image() takes one away and the overlay is unmounted when
the count reaches zero (force: at once). The count lives in mounts/<hex>/info.json with the
kernel's boot id: the store outlives a reboot, its mounts do not, so a record from another boot,
or one whose overlay is no longer mounted (a crash between record and mount, an umount behind
keel's back), is stale: it counts as not mounted, holds no layers against remove_unused(), and
is cleared by the next mount, unmount or remove_unused().

The overlay mount option string is limited to a page: when the absolute lowerdir list does not
fit, the mount is done from a child process whose cwd is `root`, with lowerdir=l/<link>:...
(containers/storage's short links, containerd's chdir'ed mount), which fits well over 128 layers.
"""

import base64
import contextlib
import ctypes
import errno
import fcntl
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile

from keel.image.errors import DigestMismatch, ImageError
from keel.kernel import libc
from keel.kernel.boot import boot_id
from keel.kernel.errors import KernelError

_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}\Z")
_MAX_LOWERS = 500  # overlayfs' OVL_MAX_STACK


def _hex(d: str) -> str:
    alg, sep, h = d.partition(":")
    if not sep or not h or not re.fullmatch(r"[0-9a-f]+", h):
        raise ImageError(f"invalid digest {d!r}")
    return h if alg == "sha256" else f"{alg}-{h}"


def chain_ids(diff_ids):
    """ChainID(L0) = DiffID(L0); ChainID(Ln) = sha256(ChainID(Ln-1) + " " + DiffID(Ln))."""
    import hashlib

    out = []
    for d in diff_ids:
        out.append(d if not out else "sha256:" + hashlib.sha256(f"{out[-1]} {d}".encode()).hexdigest())
    return out


def _syncfs(fd):
    libc_ = ctypes.CDLL(None, use_errno=True)
    if libc_.syncfs(fd) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _fsync_dir(path):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _mountpoints():
    points = set()
    with open("/proc/self/mountinfo", "rb") as f:
        for line in f:
            field = line.split(b" ", 5)[4]
            points.add(os.fsdecode(re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m.group(1), 8)]), field)))
    return points


def is_mounted(path: str) -> bool:
    return os.path.realpath(path) in _mountpoints()


def _write_json(path, data):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, path)


def _read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


class _Flock:
    def __init__(self, path, shared=False):
        self.path = path
        self.shared = shared
        self.fd = None

    def __enter__(self):
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX)
        except BaseException:
            os.close(self.fd)
            raise
        return self

    def __exit__(self, *exc):
        os.close(self.fd)


class Snapshotter:
    """Layer directories keyed by chain id, and overlay mounts of them (see the module doc)."""

    def __init__(self, root: str):
        self.root = os.path.abspath(root)
        try:
            os.makedirs(self.root, 0o711, exist_ok=True)
            for name, mode in (("layers", 0o700), ("l", 0o700), ("tmp", 0o700), ("locks", 0o700),
                               ("active", 0o711), ("mounts", 0o711), ("empty", 0o700),
                               ("empty/e0", 0o755), ("empty/e1", 0o755)):
                p = os.path.join(self.root, name)
                if not os.path.isdir(p):
                    os.makedirs(p, mode, exist_ok=True)
        except OSError as e:
            raise ImageError(f"snapshots {self.root}: {e.strerror.lower()}") from None

    # -- paths and locks --------------------------------------------------------------------------

    def _p(self, *parts):
        return os.path.join(self.root, *parts)

    def layer_dir(self, chain_id: str) -> str:
        """The lower dir (…/layers/<hex>/fs) of a chain id, whether or not it exists yet."""
        return self._p("layers", _hex(chain_id), "fs")

    def _shared(self):
        return _Flock(self._p("gc.lock"), shared=True)

    def _exclusive(self):
        return _Flock(self._p("gc.lock"))

    def _chain_lock(self, hexid):
        return _Flock(self._p("locks", hexid + ".lock"))

    # -- layers -------------------------------------------------------------------------------------

    def ensure_layers(self, image, store) -> list[str]:
        """Unpack every layer of `image` not yet here (in order, each on its parent), verifying
        diff ids; returns the lower dirs, top first."""
        with self._shared():
            return [self.layer_dir(c) for c in reversed(self._ensure(image, store))]

    def _ensure(self, image, store):
        """The chain ids of `image`, bottom first, every one unpacked."""
        layers = list(image.layers)
        chains = chain_ids([la.diff_id for la in layers])
        done = []
        for layer, chain in zip(layers, chains):
            if getattr(layer, "chain_id", None) and layer.chain_id != chain:
                raise ImageError(f"layer {layer.digest}: chain id {layer.chain_id} does not follow "
                                 f"from the diff ids (expected {chain})")
            if not os.path.isdir(self._p("layers", _hex(chain))):
                with self._chain_lock(_hex(chain)):
                    if not os.path.isdir(self._p("layers", _hex(chain))):
                        self._unpack(store, layer, chain, done)
            done.append(chain)
        return chains

    def _unpack(self, store, layer, chain, parents):
        from keel.image.unpack import apply_layer   # not on `keel run`'s path: layers are there

        hexid = _hex(chain)
        tmp = tempfile.mkdtemp(prefix=hexid[:16] + "-", dir=self._p("tmp"))
        link = None
        try:
            fs = os.path.join(tmp, "fs")
            os.mkdir(fs, 0o755)
            lowers = [self.layer_dir(c) for c in reversed(parents)]
            with store.open_blob(layer.digest) as f:
                got = apply_layer(f, fs, layer.media_type, parents=lowers)
            if got != layer.diff_id:
                raise DigestMismatch(f"layer {layer.digest}: diff id mismatch: got {got}, "
                                     f"the image config says {layer.diff_id}")
            link = self._make_link(hexid)
            _write_json(os.path.join(tmp, "meta.json"),
                        {"chain_id": chain, "diff_id": layer.diff_id, "digest": layer.digest,
                         "parent": parents[-1] if parents else None, "link": link})
            fd = os.open(tmp, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                _syncfs(fd)
            finally:
                os.close(fd)
            os.rename(tmp, self._p("layers", hexid))
            _fsync_dir(self._p("layers"))
        except BaseException as e:
            shutil.rmtree(tmp, ignore_errors=True)
            if link:
                with contextlib.suppress(OSError):
                    os.unlink(self._p("l", link))
            if isinstance(e, OSError):
                raise ImageError(f"layer {layer.digest}: unpacking into {tmp}: "
                                 f"{(e.strerror or str(e)).lower()}") from None
            raise

    def _make_link(self, hexid):
        target = os.path.join("..", "layers", hexid, "fs")
        while True:
            name = base64.b32encode(os.urandom(10)).decode().lower()[:10]
            try:
                os.symlink(target, self._p("l", name))
                return name
            except FileExistsError:
                continue

    def _link_of(self, chain):
        meta = _read_json(self._p("layers", _hex(chain), "meta.json")) or {}
        link = meta.get("link")
        try:
            ok = bool(link) and os.readlink(self._p("l", link)) == os.path.join("..", "layers", _hex(chain), "fs")
        except OSError:
            ok = False
        if not ok:
            # lost or never made (an older layout): make one now
            with self._chain_lock(_hex(chain)):
                link = self._make_link(_hex(chain))
                meta["link"] = link
                _write_json(self._p("layers", _hex(chain), "meta.json"), meta)
        return link

    # -- mounts --------------------------------------------------------------------------------------

    def _mount_overlay(self, chains_bottom_first, target, flags=0, upper=None, work=None):
        """Mount an overlay of the chains (plus upper/work if given) on `target`."""
        top_first = list(reversed(chains_bottom_first))
        if len(top_first) > _MAX_LOWERS:
            raise ImageError(f"mount {target}: {len(top_first)} layers, overlayfs stacks at most "
                             f"{_MAX_LOWERS}")
        if os.geteuid() != 0:
            raise ImageError(f"mount overlay on {target}: needs root (a rootless store can be "
                             "pulled into and unpacked; mounting it is not supported yet)")
        lowers = [self.layer_dir(c) for c in top_first]
        pad = [] if upper else [self._p("empty", f"e{i}") for i in range(max(0, 2 - len(lowers)))]
        if upper and not lowers:
            pad = [self._p("empty", "e0")]
        data = "lowerdir=" + ":".join(lowers + pad)
        if upper:
            data += f",upperdir={upper},workdir={work}"
        page = os.sysconf("SC_PAGESIZE")
        paths = lowers + pad + ([upper, work] if upper else [])
        if len(data) < page and not any(c in p for p in paths for c in ",:\\"):
            try:
                libc.mount("overlay", target, "overlay", flags, data)
            except KernelError as e:
                raise ImageError(f"mount overlay on {target}: {_kernel_why(e)}") from None
            return
        # too long for one page (or odd characters): short relative names, from a child
        # process whose cwd is root, so that no thread of ours changes directory
        rel = [f"l/{self._link_of(c)}" for c in top_first] + \
              [os.path.relpath(p, self.root) for p in pad]
        data = "lowerdir=" + ":".join(rel)
        if upper:
            data += f",upperdir={os.path.relpath(upper, self.root)},workdir={os.path.relpath(work, self.root)}"
        if len(data) >= page:
            raise ImageError(f"mount {target}: {len(top_first)} layers do not fit in one overlay "
                             f"mount ({len(data)} bytes of options, the limit is {page - 1})")
        code = ("import ctypes,os,sys\n"
                "l=ctypes.CDLL(None,use_errno=True)\n"
                "r=l.mount(b'overlay',os.fsencode(sys.argv[1]),b'overlay',ctypes.c_ulong(int(sys.argv[2])),"
                "os.fsencode(sys.argv[3]))\n"
                "if r!=0:\n"
                " sys.stderr.write(os.strerror(ctypes.get_errno()).lower());sys.exit(1)\n")
        r = subprocess.run([sys.executable, "-I", "-S", "-c", code, target, str(flags), data],
                           cwd=self.root, capture_output=True, text=True)
        if r.returncode != 0:
            raise ImageError(f"mount overlay on {target}: {r.stderr.strip() or 'failed'} "
                             f"({len(top_first)} layers, relative lowerdirs)")

    def _umount(self, path):
        for _ in range(16):
            if not is_mounted(path):
                return
            try:
                libc.umount(path)
            except KernelError as e:
                if e.errno == errno.EBUSY:
                    libc.umount(path, libc.MNT_DETACH)
                elif e.errno == errno.EINVAL:
                    return
                else:
                    raise ImageError(f"unmount {path}: {_kernel_why(e)}") from None
        raise ImageError(f"unmount {path}: still mounted")

    # -- container snapshots ---------------------------------------------------------------------------

    def prepare(self, key: str, image, store) -> str:
        """A writable overlay for a container (root/active/<key>): returns the mounted rootfs."""
        _check_key(key)
        with self._shared():
            chains = self._ensure(image, store)
            adir = self._p("active", key)
            try:
                os.mkdir(adir, 0o711)
            except FileExistsError:
                raise ImageError(f"snapshot {key}: already exists") from None
            rootfs = os.path.join(adir, "rootfs")
            try:
                upper, work = os.path.join(adir, "upper"), os.path.join(adir, "work")
                os.mkdir(upper, 0o755)
                os.mkdir(work, 0o700)
                os.mkdir(rootfs, 0o755)
                if chains:
                    # the merged root takes the upper dir's attributes: give it the top layer's
                    st = os.stat(self.layer_dir(chains[-1]))
                    os.chown(upper, st.st_uid, st.st_gid)
                    os.chmod(upper, stat.S_IMODE(st.st_mode))
                _write_json(os.path.join(adir, "info.json"),
                            {"key": key, "image": image.id, "chains": chains})
                self._mount_overlay(chains, rootfs, 0, upper, work)
            except BaseException:
                with contextlib.suppress(ImageError, KernelError):
                    self._umount(rootfs)
                if not is_mounted(rootfs):
                    shutil.rmtree(adir, ignore_errors=True)
                raise
            return rootfs

    def rootfs(self, key: str) -> str:
        _check_key(key)
        return self._p("active", key, "rootfs")

    def mount(self, key: str) -> str:
        """Mount a container snapshot again after unmount() (a no-op when it is mounted);
        returns the rootfs. Callers serialise calls per key (the engine holds its lock)."""
        _check_key(key)
        with self._shared():
            adir = self._p("active", key)
            info = _read_json(os.path.join(adir, "info.json"))
            if info is None:
                raise ImageError(f"snapshot {key}: no such snapshot")
            rootfs = os.path.join(adir, "rootfs")
            if not is_mounted(rootfs):
                self._mount_overlay(info["chains"], rootfs, 0, os.path.join(adir, "upper"),
                                    os.path.join(adir, "work"))
            return rootfs

    def unmount(self, key: str) -> None:
        """Unmount a container snapshot, keeping its upper dir (mount() brings it back)."""
        _check_key(key)
        with self._shared():
            self._umount(self._p("active", key, "rootfs"))

    def snapshots(self) -> list[str]:
        """Keys of the active (container) snapshots."""
        return sorted(os.listdir(self._p("active")))

    def remove(self, key: str) -> None:
        """Unmount a container snapshot (lazily if busy) and delete it."""
        _check_key(key)
        with self._shared():
            adir = self._p("active", key)
            if not os.path.isdir(adir):
                raise ImageError(f"snapshot {key}: no such snapshot")
            self._umount(os.path.join(adir, "rootfs"))
            self._discard(adir, "active-" + key)

    def _discard(self, path, label):
        """Take `path` out of view atomically (rename into tmp/), then delete it."""
        dead = tempfile.mkdtemp(prefix=f"rm-{label}-", dir=self._p("tmp"))
        try:
            os.rename(path, os.path.join(dead, "x"))
        except OSError as e:
            os.rmdir(dead)
            raise ImageError(f"remove {path}: {e.strerror.lower()}") from None
        shutil.rmtree(dead, ignore_errors=True)

    # -- image mounts ------------------------------------------------------------------------------------

    def mount_image(self, image, store) -> str:
        """The image's layers mounted read-only (nosuid, nodev) at root/mounts/<id>/merged;
        mounting a mounted image returns the same path and adds one to its mount count."""
        with self._shared():
            chains = self._ensure(image, store)
            hexid = _hex(image.id)
            mdir = self._p("mounts", hexid)
            merged = os.path.join(mdir, "merged")
            with self._mount_lock(hexid):
                info = self._live_mount(hexid)
                if info is not None:
                    info["count"] += 1
                    _write_json(os.path.join(mdir, "info.json"), info)
                    return merged
                self._clear_mount(hexid)
                os.makedirs(merged, 0o755, exist_ok=True)
                os.chmod(mdir, 0o711)
                _write_json(os.path.join(mdir, "info.json"),
                            {"image": image.id, "chains": chains, "count": 1, "boot_id": boot_id()})
                try:
                    self._mount_overlay(chains, merged, libc.MS_RDONLY | libc.MS_NOSUID | libc.MS_NODEV)
                except BaseException:
                    shutil.rmtree(mdir, ignore_errors=True)
                    raise
            return merged

    def _mount_lock(self, hexid):
        return _Flock(self._p("locks", "mount-" + hexid + ".lock"))

    def _live_mount(self, hexid) -> dict | None:
        """The record of the image's mount when it is live (this boot, overlay mounted)."""
        mdir = self._p("mounts", hexid)
        info = _read_json(os.path.join(mdir, "info.json"))
        if (not isinstance(info, dict) or info.get("boot_id") != boot_id()
                or not isinstance(info.get("count"), int) or info["count"] < 1
                or not is_mounted(os.path.join(mdir, "merged"))):
            return None
        return info

    def _clear_mount(self, hexid) -> None:
        """Unmount (if mounted) and delete the image's mount dir."""
        mdir = self._p("mounts", hexid)
        if os.path.isdir(mdir):
            self._umount(os.path.join(mdir, "merged"))
            self._discard(mdir, "mount-" + hexid)

    def image_mount_path(self, image) -> str | None:
        """Where the image is mounted, or None (never mounted, unmounted, or stale)."""
        info = self._live_mount(_hex(image.id))
        return self._p("mounts", _hex(image.id), "merged") if info is not None else None

    def image_mount_count(self, image) -> int:
        info = self._live_mount(_hex(image.id))
        return info["count"] if info is not None else 0

    def mounted_images(self) -> list[tuple[str, str, int]]:
        """(image id, merged path, mount count) of each live image mount."""
        out = []
        for hexid in sorted(os.listdir(self._p("mounts"))):
            info = self._live_mount(hexid)
            if info is not None:
                out.append((info.get("image") or f"sha256:{hexid}",
                            self._p("mounts", hexid, "merged"), info["count"]))
        return out

    def unmount_image(self, image, force: bool = False) -> int:
        """Take one mount away (force: all of them); the overlay is unmounted when none is
        left. Returns the mounts left. ImageError when the image is not mounted (a stale
        record is cleared first)."""
        hexid = _hex(image.id)
        with self._shared(), self._mount_lock(hexid):
            info = self._live_mount(hexid)
            if info is None:
                self._clear_mount(hexid)
                raise ImageError(f"image {hexid[:12]} is not mounted")
            left = 0 if force else info["count"] - 1
            if left > 0:
                info["count"] = left
                _write_json(self._p("mounts", hexid, "info.json"), info)
                return left
            self._clear_mount(hexid)
            return 0

    # -- garbage collection ------------------------------------------------------------------------------

    def remove_unused(self, store) -> int:
        """Delete chain dirs that no image in `store`, container snapshot or image mount uses
        (and debris of interrupted unpacks); returns how many layers were removed."""
        with self._exclusive():
            keep = set()
            for img in store.images():
                keep.update(_hex(c) for c in chain_ids([la.diff_id for la in img.layers]))
            for name in os.listdir(self._p("mounts")):
                info = self._live_mount(name)
                if info is None:               # stale: from another boot, or never mounted
                    self._clear_mount(name)
                    continue
                keep.update(_hex(c) for c in info.get("chains", []))
            for name in os.listdir(self._p("active")):
                # info.json is written before the mount; without it nothing was mounted
                info = _read_json(self._p("active", name, "info.json")) or {}
                keep.update(_hex(c) for c in info.get("chains", []))
            removed = 0
            for name in os.listdir(self._p("layers")):
                if name in keep:
                    continue
                meta = _read_json(self._p("layers", name, "meta.json")) or {}
                self._discard(self._p("layers", name), "layer-" + name[:16])
                if meta.get("link"):
                    with contextlib.suppress(OSError):
                        os.unlink(self._p("l", meta["link"]))
                with contextlib.suppress(OSError):
                    os.unlink(self._p("locks", name + ".lock"))
                removed += 1
            for name in os.listdir(self._p("l")):
                if not os.path.exists(self._p("l", name)):
                    with contextlib.suppress(OSError):
                        os.unlink(self._p("l", name))
            for name in os.listdir(self._p("tmp")):  # nobody unpacks while we hold gc.lock
                shutil.rmtree(self._p("tmp", name), ignore_errors=True)
            return removed


def _check_key(key):
    if not isinstance(key, str) or not _KEY.match(key):
        raise ImageError(f"invalid snapshot key {key!r}: letters, digits, '_', '.', '-' "
                         "(at most 128, not starting with a symbol)")


def _kernel_why(e):
    msg = str(e)
    return msg.rsplit(": ", 1)[-1] if ": " in msg else msg
