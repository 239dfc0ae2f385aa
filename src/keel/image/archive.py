"""Import and export of image archives: OCI image layout (a directory, or a tar of one: "oci-dir",
"oci-archive") and docker-archive (the `docker save` format), interoperable with skopeo, podman
save/load, docker save/load and ctr import.

Import verifies everything before anything becomes visible: each blob is streamed into an ingest
and checked against its digest and size (DigestMismatch naming the archive and the blob), every
manifest and config is checked for consistency, and only then are the blobs committed and the
image records added, under a store lease so a concurrent gc() cannot take them away.

Names on import:
- OCI layout: the `io.containerd.image.name` annotation if present, else
  `org.opencontainers.image.ref.name` when it is a full reference ("docker.io/library/busybox:1",
  "localhost/app:v1"). A ref name that is only a tag ("latest", as `skopeo copy ... oci:DIR:latest`
  writes) names nothing unless `name` is given: then the image is called `name`, with that tag
  when `name` has none of its own. Without any name the image is stored by id only.
- docker-archive: RepoTags ("busybox:latest" means docker.io/library/busybox:latest).

Export writes what the formats hold unchanged: an OCI layout gets the stored manifest, config and
layer blobs byte for byte (a docker schema2 manifest stays one) with one index.json entry per name
(ref name = the full name, also as io.containerd.image.name); a docker-archive gets the config
byte for byte as <hex>.json and each layer as the uncompressed tar its diff id names, <hex>.tar
(gzip blobs are decompressed and checked against the diff id). Importing a docker-archive stores
those tars as they are (media type application/vnd.docker.image.rootfs.diff.tar) under a
synthesised docker schema2 manifest, compact JSON as containers/image writes it.
"""

import contextlib
import gzip
import io
import json
import os
import posixpath
import re
import shutil
import tarfile
import zlib

from keel.image import digest as _digest
from keel.image import platform as _platform
from keel.image import reference as _reference
from keel.image.errors import BlobNotFound, DigestMismatch, ImageError
from keel.image.mediatypes import DOCKER_MANIFEST, INDEX_TYPES, MANIFEST_TYPES, OCI_INDEX, OCI_MANIFEST
from keel.image.store import Image, Store, _fsync_dir, check_diff_ids

REF_NAME = "org.opencontainers.image.ref.name"
CONTAINERD_NAME = "io.containerd.image.name"
LAYOUT_VERSION = "1.0.0"

MT_DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
MT_DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
MT_DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
MT_OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
MT_OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MT_OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"

FORMATS = ("oci-archive", "oci-dir", "docker-archive")

_TAG_ONLY = re.compile(r"[\w][\w.-]{0,127}", re.ASCII)
_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_CHUNK = 1 << 20
_MAX_JSON = 64 << 20      # manifests, configs, index.json: refuse absurd sizes before reading


# ==============================================================================================
# sources: a directory or a tar, read by relative path, never outside the archive


class _Source:
    def __init__(self, path: str):
        self.path = path

    @staticmethod
    def _norm(rel: str) -> str:
        if not isinstance(rel, str) or not rel:
            raise ImageError(f"invalid path {rel!r} in archive")
        n = posixpath.normpath(rel)
        if rel.startswith("/") or n == ".." or n.startswith("../"):
            raise ImageError(f"path {rel!r} in archive points outside it")
        return n

    def read(self, rel: str, what: str | None = None, limit: int = _MAX_JSON) -> bytes:
        if self.size(rel) > limit:
            raise ImageError(f"{self.path}: {what or rel}: larger than {limit} bytes")
        with self.open(rel) as f:
            return f.read()

    def read_json(self, rel: str, what: str | None = None):
        data = self.read(rel, what)
        try:
            return json.loads(data)
        except (ValueError, UnicodeDecodeError) as e:
            raise ImageError(f"{self.path}: {what or rel}: invalid json: {e}") from None

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


class _DirSource(_Source):
    def __init__(self, path: str):
        super().__init__(path)
        self._root = os.path.realpath(path)

    def _real(self, rel: str) -> str:
        n = self._norm(rel)
        real = os.path.realpath(os.path.join(self._root, n))
        if real != self._root and not real.startswith(self._root + os.sep):
            raise ImageError(f"{self.path}: {rel}: resolves outside the archive")
        return real

    def exists(self, rel: str) -> bool:
        return os.path.isfile(self._real(rel))

    def size(self, rel: str) -> int:
        try:
            return os.path.getsize(self._real(rel))
        except FileNotFoundError:
            raise BlobNotFound(f"{self.path}: {rel}: missing") from None

    def open(self, rel: str):
        try:
            return open(self._real(rel), "rb")
        except (FileNotFoundError, IsADirectoryError):
            raise BlobNotFound(f"{self.path}: {rel}: missing") from None

    def names(self):
        return set(os.listdir(self._root))


class _TarSource(_Source):
    """A tar (plain or gzip-compressed; a compressed one is first expanded into `scratch`)."""

    def __init__(self, path: str, scratch: str | None = None):
        super().__init__(path)
        self._tmp = None
        try:
            with open(path, "rb") as f:
                magic = f.read(4)
            real = path
            if magic[:2] == _GZIP_MAGIC:
                if scratch is None:
                    raise ImageError(f"{path}: compressed archive needs a scratch dir")
                self._tmp = os.path.join(scratch, "archive.tar")
                with gzip.open(path, "rb") as src, open(self._tmp, "wb") as dst:
                    shutil.copyfileobj(src, dst, _CHUNK)
                real = self._tmp
            self._tf = tarfile.open(real, "r:")
        except FileNotFoundError:
            raise ImageError(f"{path}: no such file") from None
        except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
            raise ImageError(f"{path}: not a readable tar archive: {e}") from None
        self._members = {}
        try:
            for m in self._tf.getmembers():
                self._members[posixpath.normpath(m.name.lstrip("/"))] = m
        except (tarfile.TarError, OSError, EOFError) as e:
            raise ImageError(f"{path}: truncated or corrupt tar archive: {e}") from None

    def _member(self, rel: str, hops: int = 0) -> tarfile.TarInfo:
        n = self._norm(rel)
        m = self._members.get(n)
        if m is None:
            raise BlobNotFound(f"{self.path}: {rel}: missing")
        if m.issym() or m.islnk():
            if hops > 16:
                raise ImageError(f"{self.path}: {rel}: too many levels of links")
            target = m.linkname
            if m.issym():
                target = posixpath.join(posixpath.dirname(n), target)
            return self._member(self._norm(target), hops + 1)
        if not m.isfile():
            raise ImageError(f"{self.path}: {rel}: not a regular file")
        return m

    def exists(self, rel: str) -> bool:
        try:
            self._member(rel)
            return True
        except BlobNotFound:
            return False

    def size(self, rel: str) -> int:
        return self._member(rel).size

    def open(self, rel: str):
        m = self._member(rel)
        f = self._tf.extractfile(m)
        return _CheckedTarFile(f, self.path, rel, m.size)

    def names(self):
        return {n.split("/", 1)[0] for n in self._members}

    def close(self):
        with contextlib.suppress(Exception):
            self._tf.close()
        if self._tmp:
            with contextlib.suppress(OSError):
                os.unlink(self._tmp)


class _CheckedTarFile(io.RawIOBase):
    """A tar member that raises on a short read (a truncated archive) instead of ending early."""

    def __init__(self, f, archive, rel, size):
        self._f, self._archive, self._rel, self._left = f, archive, rel, size

    def readable(self):
        return True

    def read(self, n=-1):
        want = self._left if n is None or n < 0 else min(n, self._left)
        if want == 0:
            return b""
        try:
            data = self._f.read(want)
        except (tarfile.TarError, OSError, EOFError) as e:
            raise ImageError(f"{self._archive}: {self._rel}: truncated archive: {e}") from None
        if not data:
            raise ImageError(f"{self._archive}: {self._rel}: truncated archive "
                             f"({self._left} bytes missing)")
        self._left -= len(data)
        return data

    def readinto(self, b):
        data = self.read(len(b))
        b[:len(data)] = data
        return len(data)

    def close(self):
        with contextlib.suppress(Exception):
            self._f.close()
        super().close()


def _open_source(path: str, scratch: str | None):
    if os.path.isdir(path):
        return _DirSource(path)
    if not os.path.exists(path):
        raise ImageError(f"{path}: no such file or directory")
    return _TarSource(path, scratch)


# ==============================================================================================
# the import transaction: verify every blob, then make it all visible


class _Staging:
    """Blobs of one import: streamed into ingests and verified (phase 1), then committed together
    (phase 2). Locks are taken in digest order so concurrent imports cannot deadlock."""

    def __init__(self, store: Store, archive: str):
        self.store = store
        self.archive = archive
        self.pending = {}     # digest -> (size, opener, what)
        self.memory = {}      # digest -> bytes (manifests, configs, synthesised manifests)
        self.created = []     # digests this import made visible

    def add_file(self, d: str, size: int | None, opener, what: str):
        if d not in self.pending:
            self.pending[d] = (size, opener, what)

    def add_bytes(self, data: bytes, what: str, expected: str | None = None, size: int | None = None) -> str:
        algorithm = _digest.parse(expected)[0] if expected else "sha256"
        d = _digest.of_bytes(data, algorithm)
        if expected is not None and d != expected:
            raise DigestMismatch(f"{self.archive}: {what} {expected}: digest mismatch: got {d}")
        if size is not None and size != len(data):
            raise DigestMismatch(f"{self.archive}: {what} {d}: size mismatch: expected {size} "
                                 f"bytes, got {len(data)}")
        self.memory[d] = data
        return d

    def commit(self):
        ingests = []
        try:
            for d in sorted(self.pending):
                size, opener, what = self.pending[d]
                if self.store.has_blob(d):
                    continue
                ing = self.store.ingest(d, size)
                ingests.append(ing)
                if ing.exists:
                    continue
                if ing.offset:
                    ing.reset()
                with opener() as f:
                    while True:
                        chunk = f.read(_CHUNK)
                        if not chunk:
                            break
                        if size is not None and ing.written + len(chunk) > size:
                            ing.abort()
                            raise DigestMismatch(f"{self.archive}: {what} {d}: size mismatch: "
                                                 f"expected {size} bytes, got more")
                        ing.write(chunk)
                try:
                    ing.verify()
                except DigestMismatch as e:
                    detail = str(e).split(": ", 1)[1]
                    raise DigestMismatch(f"{self.archive}: {what} {d}: {detail}") from None
            for ing in ingests:
                existed = ing.exists
                ing.commit()
                if not existed:
                    self.created.append(ing.expected)
        except BaseException:
            for ing in ingests:
                ing.abort()
            raise
        for d, data in sorted(self.memory.items()):
            if not self.store.has_blob(d):
                self.store.write_blob(data, d)
                self.created.append(d)

    def rollback(self):
        """Remove blobs this import made visible that no image references (after a failure)."""
        keep = self.store.referenced_blobs()
        for d in self.created:
            if d not in keep:
                with contextlib.suppress(OSError, ImageError):
                    os.unlink(self.store.blob_path(d))


def _descriptor(desc, what: str, archive: str) -> tuple[str, int]:
    if not isinstance(desc, dict):
        raise ImageError(f"{archive}: {what}: not a descriptor")
    d, size = desc.get("digest"), desc.get("size")
    try:
        _digest.parse(d)
    except ImageError as e:
        raise ImageError(f"{archive}: {what}: {e}") from None
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ImageError(f"{archive}: {what}: size: expected a non-negative integer, got {size!r}")
    return d, size


def _blob_rel(d: str) -> str:
    alg, hexpart = _digest.parse(d)
    return f"blobs/{alg}/{hexpart}"


def _check_image(manifest: dict, config: dict, what: str, archive: str):
    check_diff_ids(manifest.get("layers"), config, f"{archive}: {what}", f"{archive}: {what}: config",
                   "the config")


def _parse_json(data: bytes, what: str, archive: str):
    try:
        v = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise ImageError(f"{archive}: {what}: invalid json: {e}") from None
    if not isinstance(v, dict):
        raise ImageError(f"{archive}: {what}: not a json object")
    return v


def _finish(store: Store, staging: _Staging, images: list) -> list[Image]:
    """Commit the staged blobs and add the image records; on failure leave nothing visible."""
    try:
        staging.commit()
        added = [store.add_image(m, names) for m, names in images]
    except BaseException:
        staging.rollback()
        raise
    # re-read: a later entry of the same archive may have moved a name
    return [store.get(img.id) for img in added]


def _explicit_tag(name: str) -> bool:
    last = name.partition("@")[0].rsplit("/", 1)[-1]
    return ":" in last


# ==============================================================================================
# OCI image layout


def import_oci_layout(store: Store, path_or_tar: str, name: str | None = None,
                      platform: str | None = None) -> list[Image]:
    """Import every image of an OCI image layout (a directory, or a tar of one, possibly
    gzip-compressed). Nested image indexes are resolved to `platform` (default: this
    host's). Returns the images."""
    platform = platform or _platform.host()
    _platform.parse(platform)
    with store.lease():
        scratch = store.scratch_dir()
        try:
            with _open_source(path_or_tar, scratch) as src:
                return _import_oci(store, src, name, platform)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)


def _import_oci(store, src, name, platform):
    archive = src.path
    if not src.exists("oci-layout"):
        raise ImageError(f"{archive}: not an oci image layout (oci-layout missing)")
    layout = src.read_json("oci-layout")
    version = layout.get("imageLayoutVersion") if isinstance(layout, dict) else None
    if version != LAYOUT_VERSION:
        raise ImageError(f"{archive}: oci-layout: unsupported imageLayoutVersion {version!r}")
    if not src.exists("index.json"):
        raise ImageError(f"{archive}: index.json missing")
    index = src.read_json("index.json")
    entries = index.get("manifests") if isinstance(index, dict) else None
    if not isinstance(entries, list):
        raise ImageError(f"{archive}: index.json: manifests: expected a list")

    staging = _Staging(store, archive)

    def read_blob(desc, what):
        d, size = _descriptor(desc, what, archive)
        rel = _blob_rel(d)
        if not src.exists(rel):
            raise BlobNotFound(f"{archive}: {what} blob {d} missing")
        if src.size(rel) != size:
            raise DigestMismatch(f"{archive}: {what} {d}: size mismatch: descriptor says {size} "
                                 f"bytes, blob has {src.size(rel)}")
        return staging.add_bytes(src.read(rel, f"{what} {d}"), what, d, size)

    images = []   # (manifest digest, [names])
    by_manifest = {}
    for i, entry in enumerate(entries):
        what = f"index.json manifests[{i}]"
        d, _ = _descriptor(entry, what, archive)
        media_type = entry.get("mediaType")
        read_blob(entry, "manifest")
        manifest = _parse_json(staging.memory[d], f"manifest {d}", archive)
        media_type = manifest.get("mediaType") or media_type
        if media_type in INDEX_TYPES or "manifests" in manifest:
            offered = manifest.get("manifests") if isinstance(manifest.get("manifests"), list) else []
            choices = _platform.matches(offered, platform)
            if not choices:
                have = sorted(set(_platform.available(offered)))
                raise ImageError(f"{archive}: index {d}: no image for platform {platform} "
                                 f"(has {', '.join(have) or 'none'})")
            del staging.memory[d]      # only the chosen platform's manifest is stored
            d, _ = _descriptor(choices[0], f"index {d} manifest", archive)
            read_blob(choices[0], "manifest")
            manifest = _parse_json(staging.memory[d], f"manifest {d}", archive)
            media_type = manifest.get("mediaType") or choices[0].get("mediaType")
        if (media_type or OCI_MANIFEST) not in MANIFEST_TYPES:
            raise ImageError(f"{archive}: manifest {d}: unsupported mediaType {media_type!r}")
        if d not in by_manifest:
            cdesc = manifest.get("config")
            cd = read_blob(cdesc, "config")
            config = _parse_json(staging.memory[cd], f"config {cd}", archive)
            _check_image(manifest, config, f"manifest {d}", archive)
            for j, ldesc in enumerate(manifest["layers"]):
                ld, lsize = _descriptor(ldesc, f"manifest {d} layers[{j}]", archive)
                rel = _blob_rel(ld)
                if not store.has_blob(ld) and not src.exists(rel):
                    raise BlobNotFound(f"{archive}: layer blob {ld} missing")
                staging.add_file(ld, lsize, (lambda rel=rel: src.open(rel)), "layer")
            by_manifest[d] = []
            images.append((d, by_manifest[d]))
        n = _oci_name(entry.get("annotations") or {}, name, archive)
        if n and n not in by_manifest[d]:
            by_manifest[d].append(n)
    if not images:
        raise ImageError(f"{archive}: index.json lists no images")
    return _finish(store, staging, images)


def _oci_name(annotations: dict, name: str | None, archive: str) -> str | None:
    ref_name = annotations.get(REF_NAME)
    full = annotations.get(CONTAINERD_NAME)
    tag = None
    if isinstance(ref_name, str) and ref_name:
        if _TAG_ONLY.fullmatch(ref_name):
            tag = ref_name
        elif full is None:
            full = ref_name
    if name:
        ref = _reference.parse(name)
        if tag and not _explicit_tag(name) and not ref.digest:
            ref = ref.with_tag(tag)
        return str(ref)
    if full:
        ref = _reference.try_parse(full)
        if ref is None:
            raise ImageError(f"{archive}: annotation {REF_NAME}: invalid reference {full!r}")
        if ref.digest:
            return None
        return str(ref)
    return None


def _entries_for(store: Store, images_or_names) -> list[tuple[Image, list[str]]]:
    """[(image, names to write)] in order, one per image (names merged)."""
    if isinstance(images_or_names, (str, Image)):
        images_or_names = [images_or_names]
    out = {}
    for item in images_or_names:
        if isinstance(item, Image):
            img = store.get(item.id)            # current names, not those of a stale object
            names = list(img.names)
        else:
            img = store.get(item)
            _, matched = store._resolve(item)
            names = [matched] if matched else list(img.names)
        if img.id in out:
            for n in names:
                if n not in out[img.id][1]:
                    out[img.id][1].append(n)
        else:
            out[img.id] = (img, names)
    if not out:
        raise ImageError("nothing to export: no images given")
    return list(out.values())


def _image_blobs(img: Image) -> list[tuple[str, int]]:
    return ([(img.manifest_digest, img._store.blob_size(img.manifest_digest)),
             (img.id, img._store.blob_size(img.id))]
            + [(la.digest, la.size) for la in img.layers])


def _copy_verified(store: Store, d: str, dst, size: int | None = None):
    """Copy a stored blob into the file object dst, checking it still matches its digest."""
    v = _digest.Verifier(d, size)
    with store.open_blob(d) as f:
        while True:
            chunk = f.read(_CHUNK)
            if not chunk:
                break
            v.update(chunk)
            dst.write(chunk)
    v.check(f"stored blob {d}")


def _index_entries(entries) -> list[dict]:
    out = []
    for img, names in entries:
        base = {"mediaType": img.media_type, "digest": img.manifest_digest,
                "size": img._store.blob_size(img.manifest_digest)}
        if img.platform:
            parts = img.platform.split("/")
            plat = {"architecture": parts[1] if len(parts) > 1 else "", "os": parts[0]}
            if len(parts) > 2:
                plat["variant"] = parts[2]
            base["platform"] = plat
        if not names:
            out.append(dict(base))
        for n in names:
            e = dict(base)
            e["annotations"] = {CONTAINERD_NAME: n, REF_NAME: n}
            out.append(e)
    return out


def export_oci_layout(store: Store, images_or_names, dest: str, tar: bool = False) -> str:
    """Write images as an OCI image layout: a directory `dest` (merged into an existing layout,
    entries of the same names replaced) or, with tar=True, a tar file `dest` (replaced
    atomically). Returns dest."""
    entries = _entries_for(store, images_or_names)
    if tar:
        return _write_oci_tar(store, entries, dest)
    return _write_oci_dir(store, entries, dest)


def _atomic_write(path: str, data: bytes):
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, path)


def _write_oci_dir(store, entries, dest):
    try:
        blobs = os.path.join(dest, "blobs", "sha256")
        os.makedirs(blobs, exist_ok=True)
        for img, _ in entries:
            for d, size in _image_blobs(img):
                alg, hexpart = _digest.parse(d)
                os.makedirs(os.path.join(dest, "blobs", alg), exist_ok=True)
                target = os.path.join(dest, "blobs", alg, hexpart)
                if os.path.exists(target) and os.path.getsize(target) == size:
                    continue
                tmp = f"{target}.tmp-{os.getpid()}"
                try:
                    with open(tmp, "wb") as f:
                        _copy_verified(store, d, f, size)
                        f.flush()
                        os.fsync(f.fileno())
                    os.rename(tmp, target)
                except BaseException:
                    with contextlib.suppress(OSError):
                        os.unlink(tmp)
                    raise
        index_path = os.path.join(dest, "index.json")
        new = _index_entries(entries)
        old = []
        if os.path.exists(index_path):
            with open(index_path, "rb") as f:
                try:
                    existing = json.load(f)
                except ValueError as e:
                    raise ImageError(f"{index_path}: invalid json: {e}") from None
            names = {e["annotations"][REF_NAME] for e in new if "annotations" in e}
            digests_unnamed = {e["digest"] for e in new if "annotations" not in e}
            for e in existing.get("manifests") or []:
                ann = e.get("annotations") or {}
                if ann.get(REF_NAME) in names:
                    continue
                if not ann.get(REF_NAME) and e.get("digest") in digests_unnamed:
                    continue
                old.append(e)
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": old + new}
        layout_path = os.path.join(dest, "oci-layout")
        if not os.path.exists(layout_path):
            _atomic_write(layout_path, json.dumps({"imageLayoutVersion": LAYOUT_VERSION}).encode())
        _atomic_write(index_path, json.dumps(index, separators=(",", ":")).encode())
        _fsync_dir(dest)
    except OSError as e:
        raise ImageError(f"{dest}: writing oci layout: {e.strerror or e}") from None
    return dest


class _TarWriter:
    """A tar written to dest.tmp-<pid> and renamed over dest on success."""

    def __init__(self, dest: str):
        self.dest = dest
        self.tmp = f"{dest}.tmp-{os.getpid()}"
        self.f = open(self.tmp, "wb")
        self.tf = tarfile.open(fileobj=self.f, mode="w", format=tarfile.PAX_FORMAT)
        self.dirs = set()

    def _info(self, name, size=0, type_=tarfile.REGTYPE):
        info = tarfile.TarInfo(name)
        info.size, info.type = size, type_
        info.mode = 0o755 if type_ == tarfile.DIRTYPE else 0o644
        info.uid = info.gid = 0
        info.mtime = 0
        return info

    def mkdirs(self, name):
        parent = posixpath.dirname(name)
        if parent and parent not in self.dirs:
            self.mkdirs(parent)
            self.tf.addfile(self._info(parent + "/", type_=tarfile.DIRTYPE))
            self.dirs.add(parent)

    def add_bytes(self, name, data: bytes):
        self.mkdirs(name)
        self.tf.addfile(self._info(name, len(data)), io.BytesIO(data))

    def add_file(self, name, fileobj, size):
        self.mkdirs(name)
        self.tf.addfile(self._info(name, size), fileobj)

    def finish(self):
        self.tf.close()
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()
        os.rename(self.tmp, self.dest)

    def discard(self):
        with contextlib.suppress(Exception):
            self.tf.close()
        with contextlib.suppress(Exception):
            self.f.close()
        with contextlib.suppress(OSError):
            os.unlink(self.tmp)


class _VerifyingReader(io.RawIOBase):
    def __init__(self, f, verifier):
        self._f, self._v = f, verifier

    def readable(self):
        return True

    def read(self, n=-1):
        data = self._f.read(n)
        self._v.update(data)
        return data


def _write_tar(dest: str, fill) -> str:
    try:
        w = _TarWriter(dest)
    except OSError as e:
        raise ImageError(f"{dest}: {e.strerror or e}") from None
    try:
        fill(w)
        w.finish()
    except OSError as e:
        w.discard()
        raise ImageError(f"{dest}: writing archive: {e.strerror or e}") from None
    except BaseException:
        w.discard()
        raise
    return dest


def _add_blob(w: _TarWriter, store: Store, name: str, d: str, size: int):
    v = _digest.Verifier(d, size)
    with store.open_blob(d) as f:
        w.add_file(name, _VerifyingReader(f, v), size)
    v.check(f"stored blob {d}")


def _write_oci_tar(store, entries, dest):
    def fill(w):
        w.add_bytes("oci-layout", json.dumps({"imageLayoutVersion": LAYOUT_VERSION}).encode())
        done = set()
        for img, _ in entries:
            for d, size in _image_blobs(img):
                if d not in done:
                    done.add(d)
                    _add_blob(w, store, _blob_rel(d), d, size)
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": _index_entries(entries)}
        w.add_bytes("index.json", json.dumps(index, separators=(",", ":")).encode())
    return _write_tar(dest, fill)


# ==============================================================================================
# docker-archive


def import_docker_archive(store: Store, path: str) -> list[Image]:
    """Import a `docker save` archive (tar, gzip'd tar, or its extracted directory): manifest.json
    with Config/RepoTags/Layers, or the older layout of a `repositories` file and <id>/layer.tar
    dirs. Layer tars are stored as they are, each checked against its config diff id."""
    with store.lease():
        scratch = store.scratch_dir()
        try:
            with _open_source(path, scratch) as src:
                if src.exists("manifest.json"):
                    return _import_docker(store, src)
                if src.exists("repositories"):
                    return _import_docker_legacy(store, src)
                raise ImageError(f"{path}: not a docker archive (no manifest.json or repositories)")
        finally:
            shutil.rmtree(scratch, ignore_errors=True)


def _layer_kind(src, rel) -> str:
    with src.open(rel) as f:
        magic = f.read(4)
    if magic[:2] == _GZIP_MAGIC:
        return "gzip"
    if magic == _ZSTD_MAGIC:
        return "zstd"
    return "tar"


def _stage_docker_layer(staging, src, rel, diff_id, what) -> dict:
    """Stage one docker-archive layer file; the manifest descriptor of it."""
    archive = staging.archive
    if not src.exists(rel):
        raise BlobNotFound(f"{archive}: {what} {rel} missing")
    size = src.size(rel)
    kind = _layer_kind(src, rel) if size else "tar"
    if kind == "tar":
        staging.add_file(diff_id, size, lambda: src.open(rel), f"{what} {rel}")
        return {"mediaType": MT_DOCKER_LAYER, "size": size, "digest": diff_id}
    if kind == "zstd":
        raise ImageError(f"{archive}: {what} {rel}: zstd-compressed layers are not supported in a "
                         "docker archive")
    # a gzip'd layer: its diff id is the digest of the decompressed tar, its blob digest is ours
    alg = _digest.parse(diff_id)[0]
    blob_v = _digest.hasher(alg)
    tar_v = _digest.Verifier(diff_id)
    dec = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        with src.open(rel) as f:
            while True:
                chunk = f.read(_CHUNK)
                if not chunk:
                    break
                blob_v.update(chunk)
                tar_v.update(dec.decompress(chunk))
        tar_v.update(dec.flush())
    except zlib.error as e:
        raise ImageError(f"{archive}: {what} {rel}: corrupt gzip: {e}") from None
    tar_v.check(f"{archive}: {what} {rel} {diff_id}")
    blob_digest = f"{alg}:{blob_v.hexdigest()}"
    staging.add_file(blob_digest, size, lambda: src.open(rel), f"{what} {rel}")
    return {"mediaType": MT_DOCKER_LAYER_GZIP, "size": size, "digest": blob_digest}


def _docker_manifest(config_digest: str, config_size: int, layers: list[dict]) -> bytes:
    m = {"schemaVersion": 2, "mediaType": DOCKER_MANIFEST,
         "config": {"mediaType": MT_DOCKER_CONFIG, "size": config_size, "digest": config_digest},
         "layers": layers}
    return json.dumps(m, separators=(",", ":")).encode()


def _repo_tags(tags, archive, what) -> list[str]:
    if tags is None:
        return []
    if not isinstance(tags, list):
        raise ImageError(f"{archive}: {what}: RepoTags: expected a list")
    out = []
    for t in tags:
        try:
            ref = _reference.parse(t)
        except ImageError as e:
            raise ImageError(f"{archive}: {what}: RepoTags: {e}") from None
        if ref.digest:
            continue
        out.append(str(ref))
    return out


def _import_docker(store, src):
    archive = src.path
    entries = src.read_json("manifest.json")
    if not isinstance(entries, list) or not entries:
        raise ImageError(f"{archive}: manifest.json: expected a non-empty list")
    staging = _Staging(store, archive)
    images, seen = [], {}
    for i, entry in enumerate(entries):
        what = f"manifest.json[{i}]"
        if not isinstance(entry, dict):
            raise ImageError(f"{archive}: {what}: not an object")
        cfg_rel, layer_rels = entry.get("Config"), entry.get("Layers")
        if not isinstance(cfg_rel, str):
            raise ImageError(f"{archive}: {what}: Config: missing")
        if not isinstance(layer_rels, list) or not all(isinstance(x, str) for x in layer_rels):
            raise ImageError(f"{archive}: {what}: Layers: expected a list of paths")
        if not src.exists(cfg_rel):
            raise BlobNotFound(f"{archive}: config {cfg_rel} missing")
        cfg_bytes = src.read(cfg_rel, f"config {cfg_rel}")
        cd = _digest.of_bytes(cfg_bytes)
        named = _digest_in_name(cfg_rel)
        if named and named != cd:
            raise DigestMismatch(f"{archive}: config {cfg_rel} {named}: digest mismatch: got {cd}")
        config = _parse_json(cfg_bytes, f"config {cfg_rel}", archive)
        diff_ids = (config.get("rootfs") or {}).get("diff_ids") if isinstance(config.get("rootfs"), dict) else None
        if not isinstance(diff_ids, list) or len(diff_ids) != len(layer_rels):
            have = len(diff_ids) if isinstance(diff_ids, list) else "no"
            raise ImageError(f"{archive}: {what}: {len(layer_rels)} Layers but config {cfg_rel} "
                             f"has {have} rootfs.diff_ids")
        for j, d in enumerate(diff_ids):
            if not isinstance(d, str) or not _digest.is_valid(d):
                raise ImageError(f"{archive}: config {cfg_rel}: rootfs.diff_ids[{j}]: invalid digest {d!r}")
        staging.add_bytes(cfg_bytes, "config")
        descs = [_stage_docker_layer(staging, src, rel, diff_ids[j], "layer")
                 for j, rel in enumerate(layer_rels)]
        md = staging.add_bytes(_docker_manifest(cd, len(cfg_bytes), descs), "manifest")
        names = _repo_tags(entry.get("RepoTags"), archive, what)
        if md in seen:
            seen[md].extend(n for n in names if n not in seen[md])
        else:
            seen[md] = names
            images.append((md, names))
    return _finish(store, staging, images)


def _digest_in_name(rel: str) -> str | None:
    """The digest a docker-archive path claims: "<hex>.json", "blobs/sha256/<hex>", "<hex>.tar"."""
    parts = rel.split("/")
    base = parts[-1]
    if len(parts) >= 3 and parts[-3] == "blobs" and _digest.is_valid(f"{parts[-2]}:{base}"):
        return f"{parts[-2]}:{base}"
    stem = base.rsplit(".", 1)[0] if base.endswith((".json", ".tar")) else None
    if stem and _digest.is_valid(f"sha256:{stem}"):
        return f"sha256:{stem}"
    return None


_V1_DROP = ("id", "parent", "Size", "parent_id", "layer_id", "throwaway", "checksum")


def _import_docker_legacy(store, src):
    """The pre-1.10 `docker save` layout: repositories {repo: {tag: top layer id}} and one dir per
    layer: <id>/json (v1 image json with a parent link), <id>/layer.tar."""
    archive = src.path
    repos = src.read_json("repositories")
    if not isinstance(repos, dict):
        raise ImageError(f"{archive}: repositories: expected an object")
    tops = {}
    for repo, tags in repos.items():
        if not isinstance(tags, dict):
            raise ImageError(f"{archive}: repositories: {repo}: expected an object of tags")
        for tag, top in tags.items():
            if not isinstance(top, str) or not re.fullmatch(r"[a-f0-9]{64}", top):
                raise ImageError(f"{archive}: repositories: {repo}:{tag}: invalid layer id {top!r}")
            tops.setdefault(top, []).extend(_repo_tags([f"{repo}:{tag}"], archive, "repositories"))
    staging = _Staging(store, archive)
    images = []
    for top, names in tops.items():
        chain, layer_id = [], top
        while layer_id:
            if len(chain) > 1000 or layer_id in {c[0] for c in chain}:
                raise ImageError(f"{archive}: layer {top}: parent chain loops")
            v1 = src.read_json(f"{layer_id}/json", f"{layer_id}/json")
            if not isinstance(v1, dict):
                raise ImageError(f"{archive}: {layer_id}/json: not a json object")
            chain.append((layer_id, v1))
            layer_id = v1.get("parent")
        chain.reverse()
        diff_ids, history, descs = [], [], []
        for layer_id, v1 in chain:
            rel = f"{layer_id}/layer.tar"
            if not src.exists(rel):
                raise BlobNotFound(f"{archive}: layer {rel} missing")
            with src.open(rel) as f:
                kind_probe = f.read(4)
            if kind_probe[:2] == _GZIP_MAGIC or kind_probe == _ZSTD_MAGIC:
                raise ImageError(f"{archive}: layer {rel}: compressed layers are not supported in "
                                 "the legacy docker archive layout")
            with src.open(rel) as f:
                diff_id, _ = _digest.of_file(f)
            diff_ids.append(diff_id)
            descs.append(_stage_docker_layer(staging, src, rel, diff_id, "layer"))
            cc = (v1.get("container_config") or {}).get("Cmd") or []
            history.append({"created": v1.get("created", ""),
                            "created_by": " ".join(cc) if isinstance(cc, list) else str(cc)})
        config = {k: v for k, v in chain[-1][1].items() if k not in _V1_DROP}
        config["rootfs"] = {"type": "layers", "diff_ids": diff_ids}
        config["history"] = history
        cfg_bytes = json.dumps(config, separators=(",", ":")).encode()
        cd = staging.add_bytes(cfg_bytes, "config")
        md = staging.add_bytes(_docker_manifest(cd, len(cfg_bytes), descs), "manifest")
        images.append((md, names))
    if not images:
        raise ImageError(f"{archive}: repositories names no image")
    return _finish(store, staging, images)


def export_docker_archive(store: Store, images_or_names, dest: str) -> str:
    """Write images as a `docker save` tar at `dest` (replaced atomically): manifest.json,
    <config hex>.json and one uncompressed <diff id hex>.tar per layer. Returns dest."""
    entries = _entries_for(store, images_or_names)
    scratch = store.scratch_dir()
    try:
        def fill(w):
            written = set()
            manifest = []
            for img, names in entries:
                layer_rels = []
                for la in img.layers:
                    rel = _digest.parse(la.diff_id)[1] + ".tar"
                    layer_rels.append(rel)
                    if rel not in written:
                        _add_docker_layer(w, store, rel, la, scratch)
                        written.add(rel)
                cfg_rel = _digest.parse(img.id)[1] + ".json"
                if cfg_rel not in written:
                    _add_blob(w, store, cfg_rel, img.id, store.blob_size(img.id))
                    written.add(cfg_rel)
                tags = []
                for n in names:
                    ref = _reference.try_parse(n)
                    if ref is not None and ref.tag:
                        tags.append(ref.familiar())
                manifest.append({"Config": cfg_rel, "RepoTags": tags or None, "Layers": layer_rels})
            w.add_bytes("manifest.json", json.dumps(manifest, separators=(",", ":")).encode())
        return _write_tar(dest, fill)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _add_docker_layer(w, store, rel, layer, scratch):
    mt = layer.media_type or ""
    with store.open_blob(layer.digest) as f:
        magic = f.read(4)
    if mt.endswith("zstd") or magic == _ZSTD_MAGIC:
        raise ImageError(f"layer {layer.digest}: zstd layers cannot be written to a docker archive")
    if magic[:2] != _GZIP_MAGIC:
        if layer.digest != layer.diff_id:
            raise ImageError(f"layer {layer.digest}: uncompressed layer whose digest is not its "
                             f"diff id {layer.diff_id}")
        _add_blob(w, store, rel, layer.digest, layer.size)
        return
    # gzip: decompress into scratch (a tar member needs its size first), checking the diff id
    tmp = os.path.join(scratch, "layer.tar")
    blob_v = _digest.Verifier(layer.digest, layer.size)
    tar_v = _digest.Verifier(layer.diff_id)
    dec = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        with store.open_blob(layer.digest) as f, open(tmp, "wb") as out:
            while True:
                chunk = f.read(_CHUNK)
                if not chunk:
                    break
                blob_v.update(chunk)
                data = dec.decompress(chunk)
                tar_v.update(data)
                out.write(data)
                # concatenated gzip members (pigz, some registries): keep going
                while dec.eof and dec.unused_data:
                    rest = dec.unused_data
                    dec = zlib.decompressobj(16 + zlib.MAX_WBITS)
                    data = dec.decompress(rest)
                    tar_v.update(data)
                    out.write(data)
            data = dec.flush()
            tar_v.update(data)
            out.write(data)
    except zlib.error as e:
        raise ImageError(f"layer {layer.digest}: corrupt gzip in the store: {e}") from None
    blob_v.check(f"stored blob {layer.digest}")
    tar_v.check(f"layer {layer.digest} diff id {layer.diff_id}")
    with open(tmp, "rb") as f:
        w.add_file(rel, f, os.path.getsize(tmp))
    os.unlink(tmp)


# ==============================================================================================
# podman-style load / save


def detect_format(path: str) -> str:
    """"oci-dir", "oci-archive", "docker-dir" (an extracted docker save) or "docker-archive"."""
    if os.path.isdir(path):
        names = set(os.listdir(path))
        if "oci-layout" in names:
            return "oci-dir"
        if "manifest.json" in names or "repositories" in names:
            return "docker-dir"
        raise ImageError(f"{path}: not an image archive (no oci-layout, manifest.json or repositories)")
    if not os.path.exists(path):
        raise ImageError(f"{path}: no such file or directory")
    names = _tar_top_names(path)
    if "oci-layout" in names:
        return "oci-archive"
    if "manifest.json" in names or "repositories" in names:
        return "docker-archive"
    raise ImageError(f"{path}: not an image archive (no oci-layout, manifest.json or repositories)")


def _tar_top_names(path: str) -> set:
    try:
        with open(path, "rb") as f:
            gz = f.read(2) == _GZIP_MAGIC
        with tarfile.open(path, "r:gz" if gz else "r:") as tf:
            out = set()
            for m in tf:
                out.add(posixpath.normpath(m.name.lstrip("/")).split("/", 1)[0])
                if {"oci-layout", "manifest.json"} & out:
                    break
            return out
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise ImageError(f"{path}: not a readable tar archive: {e}") from None


def load(store: Store, path: str) -> list[Image]:
    """`podman load`: import whichever archive `path` is (see detect_format)."""
    fmt = detect_format(path)
    if fmt in ("oci-dir", "oci-archive"):
        return import_oci_layout(store, path)
    return import_docker_archive(store, path)


def save(store: Store, names, dest: str, format: str = "oci-archive") -> str:
    """`podman save`: write the images `names` (names, ids or Images) to dest in `format`."""
    if format == "oci-archive":
        return export_oci_layout(store, names, dest, tar=True)
    if format == "oci-dir":
        return export_oci_layout(store, names, dest, tar=False)
    if format == "docker-archive":
        return export_docker_archive(store, names, dest)
    raise ImageError(f"unknown archive format {format!r} (known: {', '.join(FORMATS)})")
