"""The image store: content-addressed blobs on disk and image metadata in SQLite.

Layout under one root (default /var/lib/keel; tests pass temporary dirs):

    root/blobs/<alg>/<hex>        verified content, read-only (0444), never rewritten
    root/ingest/<alg>-<hex>.partial   a blob being written (resumable after a crash)
    root/ingest/<alg>-<hex>.lock      its flock while a writer is active: the others wait
    root/gc.lock                  shared by every writer (Ingest, lease()), exclusive for gc()
    root/keel.db                  SQLite (WAL): images, their layers, names, manifest digests
    root/snapshots/               the snapshotter's (keel.image.snapshot), not touched here

Blobs. A blob becomes visible only by rename(2) of a partial that was fsynced and whose size and
digest were checked, so a reader never sees a torn or unverified blob (the containerd content-store
discipline). Writers of the same digest serialise on a per-digest flock: the second one blocks, then
finds the blob there (Ingest.exists) and writes nothing. A writer that dies leaves its partial
behind; the next ingest of that digest reopens it (Ingest.offset, e.g. for an HTTP Range request)
and rehashes what is there, and commit() verifies everything, so a bad partial is discarded rather
than served. ENOSPC (or any write error) discards the partial and raises ImageError; nothing else is
touched.

Metadata. One transaction per change (BEGIN IMMEDIATE; WAL; busy timeout), schema version in
PRAGMA user_version. An image is keyed by its id, the digest of its config (docker and podman
call it the image id); adding the same config under another manifest (e.g. the gzip and the plain-
tar variant of one image) records the new manifest as the current one and keeps the old digest as
an alias in image_digests. Image.size is the bytes the image holds in the store (manifest + config +
layer blobs, as stored).

Garbage collection. gc() deletes blobs no image references and partials no writer holds. A pull or
an import writes blobs before add_image() references them: it holds `with store.lease():` (a
shared lock on gc.lock) for that span, and gc() waits for leases to end, so it never deletes a blob
about to be referenced.
"""

import contextlib
import errno
import fcntl
import json
import os
import shutil
import sqlite3
import stat
import tempfile
import threading
import time

from keel.image import digest as _digest
from keel.image import reference as _reference
from keel.image.mediatypes import DOCKER_SCHEMA1, INDEX_TYPES, MANIFEST_TYPES, OCI_INDEX, OCI_MANIFEST
from keel.image.errors import BlobNotFound, DigestMismatch, ImageError, ImageNotFound, ReferenceError_

SCHEMA_VERSION = 1
DEFAULT_ROOT = "/var/lib/keel"


_SCHEMA = """
CREATE TABLE images (
    id              TEXT PRIMARY KEY,      -- config digest
    manifest_digest TEXT NOT NULL,
    media_type      TEXT NOT NULL,
    created         TEXT NOT NULL,         -- from the config, RFC 3339
    size            INTEGER NOT NULL,
    platform        TEXT NOT NULL,
    added           REAL NOT NULL
);
CREATE TABLE layers (
    image_id   TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE,
    idx        INTEGER NOT NULL,
    digest     TEXT NOT NULL,
    media_type TEXT NOT NULL,
    size       INTEGER NOT NULL,
    diff_id    TEXT NOT NULL,
    chain_id   TEXT NOT NULL,
    PRIMARY KEY (image_id, idx)
);
CREATE INDEX layers_digest ON layers(digest);
CREATE INDEX layers_chain ON layers(chain_id);
CREATE TABLE names (
    name     TEXT PRIMARY KEY,             -- normalised reference: docker.io/library/busybox:latest
    image_id TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE,
    added    REAL NOT NULL
);
CREATE INDEX names_image ON names(image_id);
CREATE TABLE image_digests (               -- every manifest digest the image was added under
    manifest_digest TEXT PRIMARY KEY,
    image_id        TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE
);
"""


def chain_ids(diff_ids: list[str]) -> list[str]:
    """OCI chain ids: ChainID(L0) = DiffID(L0); ChainID(Ln) = sha256(ChainID(Ln-1) + " " + DiffID(Ln))."""
    out = []
    for d in diff_ids:
        out.append(d if not out else _digest.of_bytes(f"{out[-1]} {d}".encode()))
    return out


def check_diff_ids(layers, config, where: str, config_where: str, config_name: str) -> list:
    """The manifest's layer list and the config's rootfs.diff_ids agree (shape, count, digests);
    returns the diff ids. `where`/`config_where` prefix the messages, `config_name` names it."""
    if not isinstance(layers, list):
        raise ImageError(f"{where}: layers: expected a list")
    rootfs = config.get("rootfs") if isinstance(config, dict) else None
    diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(diff_ids, list):
        raise ImageError(f"{config_where}: rootfs.diff_ids: expected a list")
    if len(diff_ids) != len(layers):
        raise ImageError(f"{where}: {len(layers)} layers but {config_name} has "
                         f"{len(diff_ids)} rootfs.diff_ids")
    for i, d in enumerate(diff_ids):
        if not isinstance(d, str) or not _digest.is_valid(d):
            raise ImageError(f"{config_where}: rootfs.diff_ids[{i}]: invalid digest {d!r}")
    return diff_ids


class Layer:
    __slots__ = ("digest", "media_type", "size", "diff_id", "chain_id")

    def __init__(self, digest, media_type, size, diff_id, chain_id):
        self.digest = digest
        self.media_type = media_type
        self.size = size
        self.diff_id = diff_id
        self.chain_id = chain_id

    def __repr__(self):
        return f"Layer({self.digest}, {self.media_type}, {self.size})"


class Image:
    """An image record. `config` and `manifest` are read from their blobs on first use."""

    def __init__(self, store, id, manifest_digest, media_type, names, created, size, layers,
                 platform, digests=()):
        self._store = store
        self.id = id
        self.manifest_digest = manifest_digest
        self.media_type = media_type
        self.names = list(names)
        self.created = created
        self.size = size
        self.layers = list(layers)
        self.platform = platform
        self.digests = list(digests) or [manifest_digest]
        self._config = None
        self._manifest = None

    @property
    def short_id(self) -> str:
        return self.id.partition(":")[2][:12]

    @property
    def chain_id(self) -> str | None:
        """The chain id of the top layer (None for an image without layers)."""
        return self.layers[-1].chain_id if self.layers else None

    @property
    def config(self) -> dict:
        if self._config is None:
            self._config = _load_json(self._store.read_blob(self.id), f"config {self.id}")
        return self._config

    @property
    def manifest(self) -> dict:
        if self._manifest is None:
            self._manifest = _load_json(self._store.read_blob(self.manifest_digest),
                                        f"manifest {self.manifest_digest}")
        return self._manifest

    @property
    def repo_digests(self) -> list[str]:
        """"docker.io/library/busybox@sha256:<manifest>" for each repository the image is named in."""
        seen = []
        for n in self.names:
            ref = _reference.try_parse(n)
            if ref is not None:
                rd = f"{ref.name}@{self.manifest_digest}"
                if rd not in seen:
                    seen.append(rd)
        return seen

    def __repr__(self):
        return f"Image({self.short_id}, names={self.names})"

    def __eq__(self, other):
        return isinstance(other, Image) and other.id == self.id and \
            other.manifest_digest == self.manifest_digest

    def __hash__(self):
        return hash((self.id, self.manifest_digest))


def _load_json(data: bytes, what: str):
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise ImageError(f"{what}: invalid json: {e}") from None


def _fsync_dir(path):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _flock_path(path, shared=False, blocking=True):
    """Open-and-flock `path` (created if missing); the fd, or None if non-blocking and busy.

    Re-checks after locking that the path still names the locked inode, so that a lock file
    unlinked by gc() (which unlinks only while holding the lock) is never mistaken for a live one.
    """
    op = (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | (0 if blocking else fcntl.LOCK_NB)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, op)
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        st = os.fstat(fd)
        try:
            cur = os.stat(path)
        except FileNotFoundError:
            os.close(fd)
            continue
        if (cur.st_dev, cur.st_ino) == (st.st_dev, st.st_ino):
            return fd
        os.close(fd)


def _unlock(fd):
    if fd is not None:
        try:
            os.close(fd)  # closing the only descriptor releases the flock
        except OSError:
            pass


def _write_error(what: str, path: str, e: OSError) -> ImageError:
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return ImageError(f"{what}: no space left on device writing {path}")
    return ImageError(f"{what}: writing {path}: {e.strerror or e}")


class Ingest:
    """Writes one blob. Use as a context manager:

        with store.ingest("sha256:..", size) as ing:
            if not ing.exists:
                download(start=ing.offset, write=ing.write)   # ing.reset() if the server ignores Range
                ing.commit()

    Creating it blocks while another writer (any process) holds the same digest. `exists` is True
    when the blob is already in the store (e.g. that other writer finished it): write() is then a
    no-op, commit() returns the digest, and offset is the blob's size. Leaving the block without
    commit keeps the partial for a later resume, except after a DigestMismatch or a write error,
    which discard it.
    """

    def __init__(self, store: "Store", expected: str, size: int | None = None):
        self.store = store
        self.expected = expected
        self.algorithm, self._hex = _digest.parse(expected)
        if size is not None and size < 0:
            raise ImageError(f"blob {expected}: invalid size {size}")
        self.size = size
        self.path = os.path.join(store.root, "ingest", f"{self.algorithm}-{self._hex}.partial")
        self._fd = None
        self._done = False
        self._lease = store._lease_fd()
        self._lock_path = os.path.join(store.root, "ingest", f"{self.algorithm}-{self._hex}.lock")
        try:
            self._lock = _flock_path(self._lock_path)
        except BaseException:
            _unlock(self._lease)
            raise
        try:
            self._open()
        except BaseException:
            self._release()
            raise

    def _open(self):
        self.exists = self.store.has_blob(self.expected)
        self._verifier = _digest.Verifier(self.expected, self.size)
        if self.exists:
            self.offset = os.path.getsize(self.store._blob_file(self.expected))
            return
        try:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            have = os.fstat(self._fd).st_size
            if self.size is not None and have > self.size:
                os.ftruncate(self._fd, 0)
                have = 0
            # rehash what a previous writer left, so the final check covers all of it
            os.lseek(self._fd, 0, os.SEEK_SET)
            left = have
            while left:
                chunk = os.read(self._fd, min(left, 1 << 20))
                if not chunk:
                    break
                self._verifier.update(chunk)
                left -= len(chunk)
            if self._verifier.count != have:
                os.ftruncate(self._fd, self._verifier.count)
            os.lseek(self._fd, 0, os.SEEK_END)
        except OSError as e:
            raise _write_error(f"blob {self.expected}", self.path, e) from None
        self.offset = self._verifier.count

    @property
    def written(self) -> int:
        """Bytes in the partial so far (offset plus what this writer added)."""
        return self._verifier.count

    @property
    def digest(self) -> str:
        """Digest of what is in the partial so far."""
        return self._verifier.digest

    def _check_open(self):
        if self._done:
            raise ImageError(f"blob {self.expected}: ingest already committed or aborted")

    def reset(self) -> None:
        """Throw away what the partial holds and start at offset 0."""
        self._check_open()
        if self.exists:
            return
        try:
            os.ftruncate(self._fd, 0)
            os.lseek(self._fd, 0, os.SEEK_SET)
        except OSError as e:
            self._discard()
            raise _write_error(f"blob {self.expected}", self.path, e) from None
        self._verifier = _digest.Verifier(self.expected, self.size)
        self.offset = 0

    def write(self, chunk: bytes) -> None:
        self._check_open()
        if self.exists or not chunk:
            return
        if self.size is not None and self._verifier.count + len(chunk) > self.size:
            got = self._verifier.count + len(chunk)
            self._discard()
            raise DigestMismatch(f"blob {self.expected}: size mismatch: expected {self.size} "
                                 f"bytes, got at least {got}")
        view = memoryview(chunk)
        try:
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
        except OSError as e:
            self._discard()
            raise _write_error(f"blob {self.expected}", self.path, e) from None
        self._verifier.update(chunk)

    def verify(self) -> None:
        """Check size and digest now (DigestMismatch, partial discarded), without committing."""
        self._check_open()
        if self.exists:
            return
        try:
            self._verifier.check()
        except DigestMismatch:
            self._discard()
            raise

    def commit(self, sync_dir: bool = True) -> str:
        """Verify, fsync, and rename into root/blobs; returns the digest.

        sync_dir=False leaves the fsync of the blobs directory (which makes the rename
        durable) to the caller: a pull of many blobs calls Store.sync_blob_dirs() once,
        before add_image() records anything that refers to them."""
        self._check_open()
        if self.exists:
            self._done = True
            self._release()
            return self.expected
        self.verify()
        dest = self.store._blob_file(self.expected)
        try:
            os.fsync(self._fd)
            os.fchmod(self._fd, 0o444)
            os.rename(self.path, dest)
            if sync_dir:
                _fsync_dir(os.path.dirname(dest))
        except OSError as e:
            self._discard()
            raise _write_error(f"blob {self.expected}", dest, e) from None
        self._done = True
        self._release()
        return self.expected

    def abort(self) -> None:
        """Discard the partial."""
        if not self._done:
            self._discard()

    def close(self) -> None:
        """Stop writing but keep the partial for a later resume."""
        if not self._done:
            self._done = True
            self._release()

    def _discard(self):
        self._done = True
        if not self.exists:
            with contextlib.suppress(OSError):
                os.unlink(self.path)
        self._release()

    def _release(self):
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
        if self._lock is not None:
            # unlinked while still held: a waiter that opened this inode notices and retries
            with contextlib.suppress(OSError):
                os.unlink(self._lock_path)
        _unlock(self._lock)
        _unlock(self._lease)
        self._lock = self._lease = None

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None and issubclass(exc_type, DigestMismatch):
            self.abort()
        else:
            self.close()
        return False

    def __del__(self):
        with contextlib.suppress(Exception):
            if not self._done:
                self.close()


class Store:
    """Blobs and image records under `root`. Safe to share between threads and processes."""

    def __init__(self, root: str = DEFAULT_ROOT):
        self.root = os.path.abspath(root)
        try:
            for d in ("blobs/sha256", "blobs/sha512", "ingest"):
                os.makedirs(os.path.join(self.root, d), exist_ok=True)
        except OSError as e:
            raise ImageError(f"store {self.root}: {e.strerror or e}") from None
        self.db_path = os.path.join(self.root, "keel.db")
        self._local = threading.local()
        self._conns = []
        self._conns_lock = threading.Lock()
        self._init_db()

    # ---- database -----------------------------------------------------------------------

    def _db(self) -> sqlite3.Connection:
        c = getattr(self._local, "conn", None)
        if c is None:
            try:
                c = sqlite3.connect(self.db_path, timeout=60, isolation_level=None,
                                    check_same_thread=False)
                c.execute("PRAGMA foreign_keys = ON")
                c.execute("PRAGMA busy_timeout = 60000")
            except sqlite3.Error as e:
                raise ImageError(f"{self.db_path}: {e}") from None
            self._local.conn = c
            with self._conns_lock:
                self._conns.append(c)
        return c

    @contextlib.contextmanager
    def _tx(self):
        c = self._db()
        try:
            c.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as e:
            raise ImageError(f"{self.db_path}: {e}") from None
        try:
            yield c
        except sqlite3.Error as e:
            with contextlib.suppress(sqlite3.Error):
                c.execute("ROLLBACK")
            raise ImageError(f"{self.db_path}: {e}") from None
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                c.execute("ROLLBACK")
            raise
        try:
            c.execute("COMMIT")
        except sqlite3.Error as e:
            with contextlib.suppress(sqlite3.Error):
                c.execute("ROLLBACK")
            raise ImageError(f"{self.db_path}: {e}") from None

    def _query(self, sql, args=()):
        try:
            return self._db().execute(sql, args).fetchall()
        except sqlite3.Error as e:
            raise ImageError(f"{self.db_path}: {e}") from None

    def _init_db(self):
        # Two processes opening a new store at once race on the switch to WAL, where SQLite
        # answers "database is locked" without waiting: serialise the set-up.
        lock = os.open(self.db_path + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self._init_db_locked()
        finally:
            os.close(lock)

    def _init_db_locked(self):
        c = self._db()
        try:
            if c.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                c.execute("PRAGMA journal_mode = WAL")
        except sqlite3.Error as e:
            raise ImageError(f"{self.db_path}: {e}") from None
        with self._tx() as t:
            version = t.execute("PRAGMA user_version").fetchone()[0]
            if version == 0:
                for stmt in _SCHEMA.split(";"):
                    if stmt.strip():
                        t.execute(stmt)
                t.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            elif version > SCHEMA_VERSION:
                raise ImageError(f"{self.db_path}: schema version {version} is newer than this "
                                 f"keel supports ({SCHEMA_VERSION})")

    def close(self):
        with self._conns_lock:
            conns, self._conns = self._conns, []
        for c in conns:
            with contextlib.suppress(sqlite3.Error):
                c.close()
        self._local = threading.local()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    # ---- blobs ----------------------------------------------------------------------------

    def _blob_file(self, d: str) -> str:
        alg, hexpart = _digest.parse(d)
        return os.path.join(self.root, "blobs", alg, hexpart)

    def has_blob(self, d: str) -> bool:
        return os.path.exists(self._blob_file(d))

    def blob_path(self, d: str) -> str:
        p = self._blob_file(d)
        if not os.path.exists(p):
            raise BlobNotFound(f"blob {d}: not found in {self.root}")
        return p

    def blob_size(self, d: str) -> int:
        return os.path.getsize(self.blob_path(d))

    def open_blob(self, d: str):
        p = self._blob_file(d)
        try:
            return open(p, "rb")
        except FileNotFoundError:
            raise BlobNotFound(f"blob {d}: not found in {self.root}") from None

    def read_blob(self, d: str) -> bytes:
        with self.open_blob(d) as f:
            return f.read()

    def verify_blob(self, d: str) -> None:
        """Rehash a stored blob: DigestMismatch if it no longer matches its name."""
        with self.open_blob(d) as f:
            got, _ = _digest.of_file(f, _digest.parse(d)[0])
        if got != d:
            raise DigestMismatch(f"blob {d}: digest mismatch: got {got} ({self._blob_file(d)})")

    def blobs(self) -> list[str]:
        out = []
        for alg in _digest.ALGORITHMS:
            d = os.path.join(self.root, "blobs", alg)
            with contextlib.suppress(FileNotFoundError):
                out.extend(f"{alg}:{name}" for name in os.listdir(d) if _digest.is_valid(f"{alg}:{name}"))
        return out

    def ingest(self, expected: str, size: int | None = None) -> Ingest:
        return Ingest(self, expected, size)

    def write_blob(self, data: bytes, expected: str | None = None, sync_dir: bool = True) -> str:
        algorithm = _digest.parse(expected)[0] if expected else "sha256"
        d = _digest.of_bytes(data, algorithm)
        if expected and d != expected:
            raise DigestMismatch(f"blob {expected}: digest mismatch: got {d}")
        if self.has_blob(d):
            return d
        with self.ingest(d, len(data)) as ing:
            if ing.exists:
                return ing.commit()
            if ing.offset:
                ing.reset()
            ing.write(data)
            return ing.commit(sync_dir)

    def sync_blob_dirs(self) -> None:
        """fsync the blob directories: renames of commit(sync_dir=False) become durable."""
        for alg in ("sha256", "sha512"):
            path = os.path.join(self.root, "blobs", alg)
            try:
                _fsync_dir(path)
            except OSError as e:
                raise _write_error("blobs", path, e) from None

    def write_blob_from(self, fileobj, expected: str, size: int | None = None) -> str:
        """Stream a file object into the store under `expected` (verified)."""
        with self.ingest(expected, size) as ing:
            if not ing.exists:
                if ing.offset:
                    ing.reset()
                while True:
                    chunk = fileobj.read(1 << 20)
                    if not chunk:
                        break
                    ing.write(chunk)
            return ing.commit()

    def _lease_fd(self, blocking=True, shared=True):
        try:
            return _flock_path(os.path.join(self.root, "gc.lock"), shared=shared, blocking=blocking)
        except OSError as e:
            raise ImageError(f"store {self.root}: locking gc.lock: {e.strerror or e}") from None

    @contextlib.contextmanager
    def lease(self):
        """Hold off gc() while blobs are written and then referenced by add_image()."""
        fd = self._lease_fd()
        try:
            yield self
        finally:
            _unlock(fd)

    # ---- images ---------------------------------------------------------------------------

    def add_image(self, manifest_digest: str, names=()) -> Image:
        """Record the image whose manifest (and config and layers) are already blobs."""
        raw = self.read_blob(manifest_digest)
        what = f"manifest {manifest_digest}"
        m = _load_json(raw, what)
        if not isinstance(m, dict):
            raise ImageError(f"{what}: not a json object")
        media_type = m.get("mediaType")
        if media_type in INDEX_TYPES or (media_type is None and "manifests" in m):
            raise ImageError(f"{what}: is an image index ({media_type or OCI_INDEX}), not an "
                             "image manifest: select a platform first")
        if media_type in DOCKER_SCHEMA1 or m.get("schemaVersion") == 1:
            raise ImageError(f"{what}: docker schema 1 manifests are not supported")
        if m.get("schemaVersion") != 2:
            raise ImageError(f"{what}: schemaVersion: expected 2, got {m.get('schemaVersion')!r}")
        if media_type is None:
            media_type = OCI_MANIFEST
        if media_type not in MANIFEST_TYPES:
            raise ImageError(f"{what}: unsupported mediaType {media_type!r}")
        cdesc = m.get("config")
        if not isinstance(cdesc, dict):
            raise ImageError(f"{what}: config: missing descriptor")
        config_digest = self._check_descriptor(cdesc, f"{what}: config")
        config = _load_json(self.read_blob(config_digest), f"config {config_digest}")
        if not isinstance(config, dict):
            raise ImageError(f"config {config_digest}: not a json object")
        ldescs = m.get("layers")
        diff_ids = check_diff_ids(ldescs, config, what, f"config {config_digest}",
                                  f"config {config_digest}")
        layers = []
        chains = chain_ids(diff_ids)
        for i, ld in enumerate(ldescs):
            if not isinstance(ld, dict):
                raise ImageError(f"{what}: layers[{i}]: not a descriptor")
            ldig = self._check_descriptor(ld, f"{what}: layers[{i}]")
            layers.append(Layer(ldig, ld.get("mediaType") or "", ld["size"], diff_ids[i], chains[i]))
        os_ = config.get("os") or "linux"
        arch = config.get("architecture") or "amd64"
        platform = f"{os_}/{arch}" + (f"/{config['variant']}" if config.get("variant") else "")
        created = config.get("created") or ""
        size = len(raw) + cdesc["size"] + sum(layer.size for layer in layers)
        refs = [self._name(n) for n in names]
        now = time.time()
        with self._tx() as t:
            t.execute("INSERT INTO images (id, manifest_digest, media_type, created, size, platform, added)"
                      " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET"
                      " manifest_digest=excluded.manifest_digest, media_type=excluded.media_type,"
                      " created=excluded.created, size=excluded.size, platform=excluded.platform",
                      (config_digest, manifest_digest, media_type, str(created), size, platform, now))
            t.execute("DELETE FROM layers WHERE image_id = ?", (config_digest,))
            t.executemany("INSERT INTO layers VALUES (?, ?, ?, ?, ?, ?, ?)",
                          [(config_digest, i, la.digest, la.media_type, la.size, la.diff_id, la.chain_id)
                           for i, la in enumerate(layers)])
            t.execute("INSERT OR REPLACE INTO image_digests VALUES (?, ?)", (manifest_digest, config_digest))
            for n in refs:
                t.execute("INSERT OR REPLACE INTO names VALUES (?, ?, ?)", (n, config_digest, now))
        return self._load(config_digest)

    def _check_descriptor(self, desc: dict, what: str) -> str:
        d = desc.get("digest")
        if not isinstance(d, str):
            raise ImageError(f"{what}: digest: missing")
        try:
            _digest.parse(d)
        except ImageError as e:
            raise ImageError(f"{what}: {e}") from None
        size = desc.get("size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ImageError(f"{what}: size: expected a non-negative integer, got {size!r}")
        if not self.has_blob(d):
            raise BlobNotFound(f"{what}: blob {d} not in store")
        actual = os.path.getsize(self._blob_file(d))
        if actual != size:
            raise DigestMismatch(f"{what}: blob {d}: size mismatch: descriptor says {size} bytes, "
                                 f"blob has {actual}")
        return d

    @staticmethod
    def _name(name: str) -> str:
        ref = _reference.parse(name)
        if ref.digest:
            raise ReferenceError_(f"invalid name {name!r}: an image name cannot carry a digest")
        return str(ref)

    def _load(self, image_id: str) -> Image:
        rows = self._query("SELECT id, manifest_digest, media_type, created, size, platform"
                           " FROM images WHERE id = ?", (image_id,))
        if not rows:
            raise ImageNotFound(f"{image_id}: image not found")
        return self._build(rows[0])

    def _build(self, row) -> Image:
        image_id = row[0]
        names = [r[0] for r in self._query(
            "SELECT name FROM names WHERE image_id = ? ORDER BY rowid", (image_id,))]
        layers = [Layer(*r) for r in self._query(
            "SELECT digest, media_type, size, diff_id, chain_id FROM layers WHERE image_id = ?"
            " ORDER BY idx", (image_id,))]
        digests = [row[1]] + [r[0] for r in self._query(
            "SELECT manifest_digest FROM image_digests WHERE image_id = ? AND manifest_digest != ?"
            " ORDER BY manifest_digest", (image_id, row[1]))]
        return Image(self, image_id, row[1], row[2], names, row[3], row[4], layers, row[5], digests)

    def _resolve(self, name_or_id: str) -> tuple[str, str | None]:
        """(image id, the name matched or None when matched by id/digest)."""
        s = name_or_id
        if not isinstance(s, str) or not s:
            raise ImageNotFound(f"{s!r}: image not found")
        if _digest.is_valid(s):
            rows = self._query("SELECT id FROM images WHERE id = ? UNION "
                               "SELECT image_id FROM image_digests WHERE manifest_digest = ?", (s, s))
            if rows:
                return rows[0][0], None
            raise ImageNotFound(f"{s}: image not found")
        rows = self._query("SELECT image_id, name FROM names WHERE name = ?", (s,))
        if rows:
            return rows[0][0], rows[0][1]
        ref = _reference.try_parse(s)
        if ref is not None:
            if ref.digest:
                rows = self._query("SELECT image_id FROM image_digests WHERE manifest_digest = ?",
                                   (ref.digest,))
                if rows:
                    return rows[0][0], None
            else:
                rows = self._query("SELECT image_id, name FROM names WHERE name = ?", (str(ref),))
                if rows:
                    return rows[0][0], rows[0][1]
        prefix = s[len("sha256:"):] if s.startswith("sha256:") else s
        if 4 <= len(prefix) <= 64 and all(c in "0123456789abcdef" for c in prefix):
            rows = self._query("SELECT id FROM images WHERE id LIKE ?", (f"sha256:{prefix}%",))
            if len(rows) == 1:
                return rows[0][0], None
            if len(rows) > 1:
                raise ImageNotFound(f"{s}: ambiguous image id prefix ({len(rows)} images match)")
        raise ImageNotFound(f"{s}: image not found")

    def get(self, name_or_id: str) -> Image:
        image_id, _ = self._resolve(name_or_id)
        return self._load(image_id)

    def images(self) -> list[Image]:
        rows = self._query("SELECT id, manifest_digest, media_type, created, size, platform"
                           " FROM images ORDER BY added DESC, id")
        return [self._build(r) for r in rows]

    def tag(self, image: str, name: str) -> None:
        """Give the image `image` (name, id or Image) the name `name` (moved from any other image)."""
        image_id = image.id if isinstance(image, Image) else self._resolve(image)[0]
        n = self._name(name)
        with self._tx() as t:
            if not t.execute("SELECT 1 FROM images WHERE id = ?", (image_id,)).fetchall():
                raise ImageNotFound(f"{image_id}: image not found")
            t.execute("INSERT OR REPLACE INTO names VALUES (?, ?, ?)", (n, image_id, time.time()))

    def untag(self, name: str) -> None:
        candidates = [name]
        ref = _reference.try_parse(name)
        if ref is not None and not ref.digest:
            candidates.append(str(ref))
        with self._tx() as t:
            for n in candidates:
                if t.execute("DELETE FROM names WHERE name = ?", (n,)).rowcount:
                    return
        raise ImageNotFound(f"{name}: no image has this name")

    def remove(self, name_or_id: str, force: bool = False) -> dict:
        """docker rmi: by name, drop that name (and the image once it has no name left); by id,
        the image record, which with several names needs force. Blobs are left to gc().
        Returns {"untagged": [names], "deleted": [ids]}."""
        image_id, matched = self._resolve(name_or_id)
        with self._tx() as t:
            names = [r[0] for r in t.execute("SELECT name FROM names WHERE image_id = ?", (image_id,))]
            if matched is not None and len(names) > 1:
                t.execute("DELETE FROM names WHERE name = ?", (matched,))
                return {"untagged": [matched], "deleted": []}
            if matched is None and len(names) > 1 and not force:
                raise ImageError(f"image {image_id}: has several names ({', '.join(sorted(names))}):"
                                 " remove them by name, or force")
            t.execute("DELETE FROM names WHERE image_id = ?", (image_id,))
            t.execute("DELETE FROM image_digests WHERE image_id = ?", (image_id,))
            t.execute("DELETE FROM layers WHERE image_id = ?", (image_id,))
            t.execute("DELETE FROM images WHERE id = ?", (image_id,))
        return {"untagged": sorted(names), "deleted": [image_id]}

    def verify_image(self, image) -> None:
        """Rehash every blob of an image (name, id or Image): BlobNotFound / DigestMismatch."""
        img = image if isinstance(image, Image) else self.get(image)
        for d in [img.manifest_digest, img.id] + [la.digest for la in img.layers]:
            self.verify_blob(d)

    def referenced_blobs(self) -> set[str]:
        rows = self._query("SELECT id FROM images UNION SELECT manifest_digest FROM images "
                           "UNION SELECT digest FROM layers")
        return {r[0] for r in rows}

    # ---- garbage collection -----------------------------------------------------------------

    def gc(self, ingest_age: float = 0.0, timeout: float = 30.0) -> dict:
        """Delete unreferenced blobs and abandoned partials (not held by a writer and at least
        `ingest_age` seconds old). Waits up to `timeout` s for leases (pulls, imports) to end.
        Returns {"blobs": n, "bytes": freed, "ingests": n}."""
        deadline = time.monotonic() + timeout
        while True:
            gc_fd = self._lease_fd(blocking=False, shared=False)
            if gc_fd is not None:
                break
            if time.monotonic() >= deadline:
                raise ImageError(f"store {self.root}: busy (a pull or import holds gc.lock); gc not run")
            time.sleep(0.05)
        counts = {"blobs": 0, "bytes": 0, "ingests": 0}
        try:
            keep = self.referenced_blobs()
            ingest_dir = os.path.join(self.root, "ingest")
            for d in self.blobs():
                if d in keep:
                    continue
                alg, hexpart = _digest.parse(d)
                lock_path = os.path.join(ingest_dir, f"{alg}-{hexpart}.lock")
                fd = _flock_path(lock_path, blocking=False)
                if fd is None:
                    continue
                try:
                    p = self._blob_file(d)
                    with contextlib.suppress(FileNotFoundError):
                        size = os.path.getsize(p)
                        os.unlink(p)
                        counts["blobs"] += 1
                        counts["bytes"] += size
                    if not os.path.exists(os.path.join(ingest_dir, f"{alg}-{hexpart}.partial")):
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(lock_path)
                finally:
                    _unlock(fd)
            now = time.time()
            for name in os.listdir(ingest_dir):
                path = os.path.join(ingest_dir, name)
                if name.endswith(".partial"):
                    lock_path = path[:-len(".partial")] + ".lock"
                elif name.endswith(".lock"):
                    lock_path = path
                else:
                    # scratch files of exports/imports (tmp-*), abandoned by a dead process
                    with contextlib.suppress(OSError):
                        st = os.lstat(path)
                        if now - st.st_mtime >= max(ingest_age, 3600):
                            if stat.S_ISDIR(st.st_mode):
                                shutil.rmtree(path, ignore_errors=True)
                            else:
                                os.unlink(path)
                    continue
                fd = _flock_path(lock_path, blocking=False)
                if fd is None:
                    continue
                try:
                    partial = lock_path[:-len(".lock")] + ".partial"
                    with contextlib.suppress(FileNotFoundError):
                        if now - os.path.getmtime(partial) >= ingest_age:
                            os.unlink(partial)
                            counts["ingests"] += 1
                    if not os.path.exists(partial):
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(lock_path)
                finally:
                    _unlock(fd)
        finally:
            _unlock(gc_fd)
        return counts

    def scratch_dir(self) -> str:
        """A fresh private directory under root/ingest for temporary files (same filesystem as
        the blobs); the caller removes it. gc() removes abandoned ones after an hour."""
        return tempfile.mkdtemp(prefix="tmp-", dir=os.path.join(self.root, "ingest"))
