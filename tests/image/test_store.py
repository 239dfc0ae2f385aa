"""keel.image.store: verified atomic blobs, resumable ingests, per-digest locking, ENOSPC,
image records in SQLite, names, gc."""

import io
import json
import os
import sqlite3
import subprocess
import sys
import tarfile
import threading
import time

import pytest

from keel.image import digest
from keel.image.errors import BlobNotFound, DigestMismatch, ImageError, ImageNotFound, ReferenceError_
from keel.image.store import SCHEMA_VERSION, Store, chain_ids

PY = sys.executable


def _put_layout(store, info):
    """Copy every blob of a layout made by make_oci_layout into the store."""
    blobs = os.path.join(info["path"], "blobs", "sha256")
    for name in sorted(os.listdir(blobs)):
        with open(os.path.join(blobs, name), "rb") as f:
            store.write_blob(f.read(), "sha256:" + name)


@pytest.fixture
def add(store, make_oci_layout, tmp_path):
    """add(files_per_layer..., names=[...]) -> (Image, layout info): an image in `store`."""
    counter = [0]

    def _add(*layers, names=(), config=None):
        counter[0] += 1
        tars = [_tar(files) for files in layers] or None
        info = make_oci_layout(str(tmp_path / f"layout{counter[0]}"), layers=tars, config=config)
        _put_layout(store, info)
        return store.add_image(info["manifest_digest"], list(names)), info
    return _add


def _tar(files):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 1700000000
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _partials(store):
    return sorted(n for n in os.listdir(os.path.join(store.root, "ingest")) if n.endswith(".partial"))


# ---- blobs -----------------------------------------------------------------------------------

def test_write_read_blob(store):
    d = store.write_blob(b"hello")
    assert d == digest.of_bytes(b"hello")
    assert store.has_blob(d) and store.read_blob(d) == b"hello"
    path = store.blob_path(d)
    assert path == os.path.join(store.root, "blobs", "sha256", d[7:])
    assert os.stat(path).st_mode & 0o777 == 0o444
    assert store.write_blob(b"hello", d) == d                       # idempotent
    with store.open_blob(d) as f:
        assert f.read() == b"hello"
    assert store.blobs() == [d]
    assert not _partials(store)


def test_sha512_blob(store):
    d = digest.of_bytes(b"x" * 100, "sha512")
    assert store.write_blob(b"x" * 100, d) == d
    assert store.blob_path(d).endswith(f"blobs/sha512/{d[7:]}")
    store.verify_blob(d)


def test_write_blob_wrong_digest_stores_nothing(store):
    wrong = digest.of_bytes(b"other")
    with pytest.raises(DigestMismatch) as e:
        store.write_blob(b"hello", wrong)
    assert str(e.value) == f"blob {wrong}: digest mismatch: got {digest.of_bytes(b'hello')}"
    assert store.blobs() == [] and not _partials(store)


def test_missing_blob_errors(store):
    d = digest.of_bytes(b"nope")
    assert not store.has_blob(d)
    for call in (store.blob_path, store.read_blob, store.open_blob):
        with pytest.raises(BlobNotFound, match=f"blob {d}: not found in "):
            call(d)
    with pytest.raises(ImageError, match="invalid digest 'sha256:zz'"):
        store.has_blob("sha256:zz")


def test_ingest_streams_and_is_invisible_until_commit(store):
    data = os.urandom(300_000)
    d = digest.of_bytes(data)
    with store.ingest(d, len(data)) as ing:
        assert ing.offset == 0 and not ing.exists
        for i in range(0, len(data), 65536):
            ing.write(data[i:i + 65536])
            assert not store.has_blob(d)
        assert ing.written == len(data) and ing.digest == d
        assert ing.commit() == d
    assert store.read_blob(d) == data and not _partials(store)


def test_ingest_truncated_blob_is_discarded(store):
    data = b"0123456789"
    d = digest.of_bytes(data)
    with pytest.raises(DigestMismatch, match=f"blob {d}: size mismatch: expected 10 bytes, got 5"):
        with store.ingest(d, len(data)) as ing:
            ing.write(data[:5])
            ing.commit()
    assert not store.has_blob(d) and not _partials(store)


def test_ingest_too_many_bytes_fails_early(store):
    d = digest.of_bytes(b"abc")
    with store.ingest(d, 3) as ing:
        with pytest.raises(DigestMismatch, match="size mismatch: expected 3 bytes, got at least 4"):
            ing.write(b"abcd")
    assert not _partials(store)


def test_ingest_wrong_content_is_discarded_and_never_served(store):
    d = digest.of_bytes(b"good")
    with pytest.raises(DigestMismatch, match=f"blob {d}: digest mismatch: got {digest.of_bytes(b'evil')}"):
        with store.ingest(d, 4) as ing:
            ing.write(b"evil")
            ing.commit()
    assert not store.has_blob(d) and not _partials(store)


def test_exit_without_commit_keeps_partial_for_resume(store):
    data = b"a" * 1000 + b"b" * 1000
    d = digest.of_bytes(data)
    with pytest.raises(RuntimeError):
        with store.ingest(d, len(data)) as ing:
            ing.write(data[:1000])
            raise RuntimeError("connection dropped")
    assert _partials(store) == [f"sha256-{d[7:]}.partial"]
    assert not store.has_blob(d)
    with store.ingest(d, len(data)) as ing:
        assert ing.offset == 1000
        ing.write(data[1000:])
        ing.commit()
    assert store.read_blob(d) == data and not _partials(store)


def test_resume_after_writer_is_killed(store):
    """A writer SIGKILLed mid-blob: nothing is visible; a rerun resumes from the partial."""
    data = os.urandom(200_000)
    d = digest.of_bytes(data)
    src = os.path.join(store.root, "..", "data.bin")
    with open(src, "wb") as f:
        f.write(data)
    child = subprocess.Popen([PY, "-c", f"""
import os, signal, sys
from keel.image.store import Store
s = Store({store.root!r})
data = open({src!r}, 'rb').read()
ing = s.ingest({d!r}, len(data))
ing.write(data[:120_000])
print('half', flush=True)
sys.stdin.read()
"""], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "half"
        assert not store.has_blob(d)
    finally:
        child.kill()
        child.wait()
    assert not store.has_blob(d)
    with store.ingest(d, len(data)) as ing:
        assert ing.offset == 120_000
        ing.write(data[ing.offset:])
        ing.commit()
    store.verify_blob(d)


def test_resume_of_a_corrupt_partial_fails_verification_then_reruns_clean(store):
    data = b"x" * 4096
    d = digest.of_bytes(data)
    partial = os.path.join(store.root, "ingest", f"sha256-{d[7:]}.partial")
    with open(partial, "wb") as f:
        f.write(b"y" * 2048)                 # a crash left garbage
    with pytest.raises(DigestMismatch):
        with store.ingest(d, len(data)) as ing:
            assert ing.offset == 2048
            ing.write(data[2048:])
            ing.commit()
    assert not store.has_blob(d) and not os.path.exists(partial)
    with store.ingest(d, len(data)) as ing:
        assert ing.offset == 0
        ing.write(data)
        ing.commit()
    assert store.read_blob(d) == data


def test_partial_longer_than_expected_size_is_restarted(store):
    d = digest.of_bytes(b"abc")
    with open(os.path.join(store.root, "ingest", f"sha256-{d[7:]}.partial"), "wb") as f:
        f.write(b"abcdef")
    with store.ingest(d, 3) as ing:
        assert ing.offset == 0
        ing.write(b"abc")
        ing.commit()
    assert store.read_blob(d) == b"abc"


def test_reset_restarts_a_partial(store):
    d = digest.of_bytes(b"abc")
    with store.ingest(d, 3) as ing:
        ing.write(b"zz")
        ing.reset()
        assert ing.offset == 0
        ing.write(b"abc")
        ing.commit()
    assert store.read_blob(d) == b"abc"


def test_second_writer_of_same_digest_waits_then_sees_the_blob(store):
    data = os.urandom(100_000)
    d = digest.of_bytes(data)
    first = store.ingest(d, len(data))
    first.write(data[:50_000])
    result = {}

    def second():
        t0 = time.monotonic()
        with store.ingest(d, len(data)) as ing:
            result["waited"] = time.monotonic() - t0
            result["exists"] = ing.exists
            ing.write(b"ignored")
            result["digest"] = ing.commit()

    t = threading.Thread(target=second)
    t.start()
    time.sleep(0.3)
    assert t.is_alive(), "second writer did not wait for the first"
    first.write(data[50_000:])
    first.commit()
    t.join(5)
    assert result == {"waited": result["waited"], "exists": True, "digest": d}
    assert result["waited"] >= 0.25
    assert store.read_blob(d) == data


def test_second_writer_in_another_process_waits(store):
    data = os.urandom(50_000)
    d = digest.of_bytes(data)
    child = subprocess.Popen([PY, "-c", f"""
import time
from keel.image.store import Store
s = Store({store.root!r})
data = bytes.fromhex({data.hex()!r})
with s.ingest({d!r}, len(data)) as ing:
    ing.write(data[:1000])
    print('locked', flush=True)
    time.sleep(0.5)
    ing.write(data[1000:])
    ing.commit()
"""], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "locked"
        t0 = time.monotonic()
        with store.ingest(d, len(data)) as ing:
            waited = time.monotonic() - t0
            assert ing.exists and ing.offset == len(data)
            assert ing.commit() == d
        assert waited > 0.2
    finally:
        child.wait(10)
    assert child.returncode == 0
    store.verify_blob(d)


def test_verify_blob_detects_corruption_on_disk(store):
    d = store.write_blob(b"original")
    path = store.blob_path(d)
    os.chmod(path, 0o644)
    with open(path, "wb") as f:
        f.write(b"bit rot!")
    with pytest.raises(DigestMismatch, match=f"blob {d}: digest mismatch: got {digest.of_bytes(b'bit rot!')}"):
        store.verify_blob(d)


# ---- ENOSPC ----------------------------------------------------------------------------------

@pytest.fixture
def tiny_tmpfs(tmp_path, request):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "keel-test-tiny", str(mnt)], check=True)

    def unmount():
        subprocess.run(["umount", str(mnt)], check=False)
        if os.path.ismount(str(mnt)):
            subprocess.run(["umount", "-l", str(mnt)], check=False)
    request.addfinalizer(unmount)
    return str(mnt)


def test_enospc_while_writing_a_blob(tiny_tmpfs, make_oci_layout, tmp_path):
    store = Store(os.path.join(tiny_tmpfs, "store"))
    try:
        info = make_oci_layout(str(tmp_path / "small"))
        _put_layout(store, info)
        img = store.add_image(info["manifest_digest"], ["keep:me"])
        before = sorted(store.blobs())

        big = os.urandom(2 << 20)
        with pytest.raises(ImageError) as e:
            store.write_blob(big)
        msg = str(e.value)
        assert msg == (f"blob {digest.of_bytes(big)}: no space left on device writing "
                       f"{store.root}/ingest/sha256-{digest.of_bytes(big)[7:]}.partial")
        assert not isinstance(e.value, DigestMismatch)
        # the partial is gone, nothing else changed, and the store still works
        assert not _partials(store)
        assert sorted(store.blobs()) == before
        assert store.get("keep:me").id == img.id
        store.verify_image("keep:me")
        d = store.write_blob(b"small again")
        store.tag(img.id, "keep:too")
        assert store.get("keep:too").id == img.id and store.has_blob(d)

        # a full disk under the database: the change fails cleanly, the records stay readable
        filler = os.path.join(tiny_tmpfs, "filler")
        with open(filler, "wb") as f:
            with pytest.raises(OSError):
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
        try:
            with pytest.raises(ImageError) as e:
                for i in range(200):        # until the WAL needs a new page
                    store.tag(img.id, f"many:{i}")
            assert str(e.value).startswith(f"{store.db_path}: ") and "full" in str(e.value)
        finally:
            os.unlink(filler)
        assert store.get("keep:me").id == img.id
        store.tag(img.id, "after:full")
        store.verify_image("after:full")
    finally:
        store.close()


def test_enospc_in_a_streaming_ingest(tiny_tmpfs):
    store = Store(os.path.join(tiny_tmpfs, "store"))
    try:
        data = os.urandom(3 << 20)
        d = digest.of_bytes(data)
        with pytest.raises(ImageError, match="no space left on device"):
            with store.ingest(d, len(data)) as ing:
                for i in range(0, len(data), 1 << 18):
                    ing.write(data[i:i + (1 << 18)])
        assert not _partials(store) and not store.has_blob(d)
    finally:
        store.close()


# ---- image records ---------------------------------------------------------------------------

def test_add_image_records_everything(store, add):
    img, info = add({"a": b"1"}, {"b": b"2"}, {"c": b"3"}, names=["busybox", "localhost:5000/x/y:t"])
    assert img.id == info["config_digest"]
    assert img.manifest_digest == info["manifest_digest"]
    assert img.media_type == "application/vnd.oci.image.manifest.v1+json"
    assert img.names == sorted(["docker.io/library/busybox:latest", "localhost:5000/x/y:t"])
    assert img.created == "2023-11-14T22:13:20Z" and img.platform == "linux/amd64"
    assert [la.digest for la in img.layers] == info["layer_digests"]
    assert [la.diff_id for la in img.layers] == info["diff_ids"]
    assert [la.chain_id for la in img.layers] == chain_ids(info["diff_ids"])
    c = info["diff_ids"]
    assert img.layers[1].chain_id == digest.of_bytes(f"{c[0]} {c[1]}".encode())
    assert img.layers[0].chain_id == c[0] and img.chain_id == img.layers[2].chain_id
    assert img.size == (store.blob_size(img.manifest_digest) + store.blob_size(img.id)
                        + sum(la.size for la in img.layers))
    assert img.config["rootfs"]["diff_ids"] == info["diff_ids"]
    assert img.manifest["config"]["digest"] == img.id
    assert img.repo_digests == sorted([f"docker.io/library/busybox@{img.manifest_digest}",
                                       f"localhost:5000/x/y@{img.manifest_digest}"])
    assert store.images() == [img]


def test_get_by_every_handle(store, add):
    img, info = add(names=["quay.io/a/b:1"])
    hexid = img.id[7:]
    for handle in ("quay.io/a/b:1", img.id, hexid, hexid[:4], hexid[:12], "sha256:" + hexid[:8],
                   info["manifest_digest"], f"quay.io/a/b@{info['manifest_digest']}"):
        assert store.get(handle).id == img.id, handle
    for missing in ("quay.io/a/b:2", "busybox", hexid[:3], "sha256:" + "0" * 64, "zzzz"):
        with pytest.raises(ImageNotFound, match=r"image not found"):
            store.get(missing)
    with pytest.raises(ImageNotFound, match="^quay.io/a/b:2: image not found$"):
        store.get("quay.io/a/b:2")


def test_names_are_normalised_and_move(store, add):
    a, _ = add({"a": b"1"}, names=["app:1"])
    b, _ = add({"b": b"2"}, names=["app:1"])
    assert store.get("docker.io/library/app:1").id == b.id
    assert store.get(a.id).names == []
    store.tag(a.id, "app:1")
    assert store.get("app:1").id == a.id
    store.tag("app:1", "localhost/other")
    assert store.get("localhost/other:latest").id == a.id
    store.untag("app:1")
    with pytest.raises(ImageNotFound):
        store.get("app:1")
    with pytest.raises(ImageNotFound, match="app:1: no image has this name"):
        store.untag("app:1")
    with pytest.raises(ReferenceError_, match="cannot carry a digest"):
        store.tag(a.id, "app@sha256:" + "0" * 64)
    with pytest.raises(ReferenceError_, match="must be lowercase"):
        store.tag(a.id, "App")
    with pytest.raises(ImageNotFound):
        store.tag("nothing:here", "x")


def test_remove_semantics(store, add):
    img, _ = add(names=["a:1", "b:1"])
    with pytest.raises(ImageError, match=f"image {img.id}: has several names"):
        store.remove(img.id)
    assert store.remove("a:1") == {"untagged": ["docker.io/library/a:1"], "deleted": []}
    assert store.get(img.id).names == ["docker.io/library/b:1"]
    assert store.remove("b:1") == {"untagged": ["docker.io/library/b:1"], "deleted": [img.id]}
    with pytest.raises(ImageNotFound):
        store.get(img.id)
    img2, _ = add({"z": b"z"}, names=["c:1", "d:1"])
    assert store.remove(img2.id, force=True)["deleted"] == [img2.id]
    assert store.images() == []
    # blobs stay until gc
    assert store.has_blob(img2.manifest_digest)


def test_same_config_under_two_manifests(store, add, make_oci_layout, tmp_path):
    img, info = add({"a": b"1"}, names=["x:1"])
    plain = make_oci_layout(str(tmp_path / "plain"), layers=[_tar({"a": b"1"})], compress=False)
    assert plain["config_digest"] == img.id
    _put_layout(store, plain)
    again = store.add_image(plain["manifest_digest"], ["x:2"])
    assert again.id == img.id and again.manifest_digest == plain["manifest_digest"]
    assert set(again.digests) == {plain["manifest_digest"], info["manifest_digest"]}
    assert again.layers[0].media_type == "application/vnd.oci.image.layer.v1.tar"
    assert store.get(info["manifest_digest"]).id == img.id
    assert sorted(again.names) == ["docker.io/library/x:1", "docker.io/library/x:2"]
    assert len(store.images()) == 1


def test_add_image_rejects_bad_manifests(store, add):
    img, info = add({"a": b"1"})
    cfg = info["config_digest"]
    layer = info["layer_digests"][0]
    lsize = store.blob_size(layer)
    csize = store.blob_size(cfg)

    def manifest(**kw):
        m = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
             "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cfg, "size": csize},
             "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer, "size": lsize}]}
        m.update(kw)
        return store.write_blob(json.dumps(m).encode())

    missing = digest.of_bytes(b"absent")
    cases = [
        (manifest(layers=[{"digest": missing, "size": 6}]), BlobNotFound, f"layers[0]: blob {missing} not in store"),
        (manifest(layers=[]), ImageError, f"0 layers but config {cfg} has 1 rootfs.diff_ids"),
        (manifest(layers=[{"digest": layer, "size": lsize + 1}]), DigestMismatch, "size mismatch"),
        (manifest(config={"digest": "sha256:12", "size": 1}), ImageError, "config: invalid digest 'sha256:12'"),
        (manifest(mediaType="application/vnd.oci.image.index.v1+json"), ImageError, "is an image index"),
        (manifest(schemaVersion=1), ImageError, "schema 1"),
        (store.write_blob(b"<html>not json</html>"), ImageError, "invalid json"),
    ]
    for md, exc, text in cases:
        with pytest.raises(exc) as e:
            store.add_image(md, ["bad:1"])
        assert text in str(e.value) and "\n" not in str(e.value)
        assert str(e.value).startswith(f"manifest {md}") or exc is BlobNotFound and md in str(e.value)
    with pytest.raises(BlobNotFound):
        store.add_image(missing)
    assert [i.id for i in store.images()] == [img.id]
    with pytest.raises(ImageNotFound):
        store.get("bad:1")


def test_verify_image_detects_a_tampered_layer(store, add):
    img, _ = add({"a": b"1"}, names=["ok:1"])
    store.verify_image("ok:1")
    path = store.blob_path(img.layers[0].digest)
    os.chmod(path, 0o644)
    with open(path, "r+b") as f:
        f.seek(3)
        f.write(b"\xff")
    with pytest.raises(DigestMismatch, match=f"blob {img.layers[0].digest}: digest mismatch"):
        store.verify_image(img)


# ---- database --------------------------------------------------------------------------------

def test_database_is_wal_versioned_and_persistent(store, add):
    img, _ = add(names=["persist:1"])
    db = sqlite3.connect(store.db_path)
    try:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    finally:
        db.close()
    store.close()
    again = Store(store.root)
    try:
        assert again.get("persist:1").id == img.id
    finally:
        again.close()


def test_newer_schema_is_refused(tmp_path):
    root = str(tmp_path / "s")
    Store(root).close()
    db = sqlite3.connect(os.path.join(root, "keel.db"))
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(ImageError, match=f"schema version {SCHEMA_VERSION + 1} is newer"):
        Store(root)


def test_store_is_usable_from_threads(store, add):
    img, _ = add(names=["t:0"])
    errors = []

    def tagger(i):
        try:
            store.tag(img.id, f"t:{i}")
            store.get(f"t:{i}")
        except Exception as e:          # noqa: BLE001
            errors.append(e)
    threads = [threading.Thread(target=tagger, args=(i,)) for i in range(1, 9)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(store.get(img.id).names) == 9


# ---- gc --------------------------------------------------------------------------------------

def test_gc_removes_only_unreferenced_blobs_and_abandoned_partials(store, add):
    keep, _ = add({"k": b"keep"}, names=["keep:1"])
    gone, _ = add({"g": b"gone"}, names=["gone:1"])
    stray = store.write_blob(b"stray")
    store.remove("gone:1")
    abandoned = digest.of_bytes(b"abandoned")
    with store.ingest(abandoned, 9) as ing:
        ing.write(b"aban")                      # left behind, as by a dead writer
    kept_blobs = {keep.id, keep.manifest_digest} | {la.digest for la in keep.layers}
    gone_blobs = {gone.id, gone.manifest_digest, stray} | {la.digest for la in gone.layers}
    freed = sum(store.blob_size(d) for d in gone_blobs)
    assert store.gc() == {"blobs": len(gone_blobs), "bytes": freed, "ingests": 1}
    assert set(store.blobs()) == kept_blobs
    assert not _partials(store)
    assert sorted(os.listdir(os.path.join(store.root, "ingest"))) == []
    store.verify_image("keep:1")
    assert store.gc() == {"blobs": 0, "bytes": 0, "ingests": 0}


def test_gc_waits_for_leases_and_live_writers(store):
    stray = store.write_blob(b"about to be referenced")
    with store.lease():
        t0 = time.monotonic()
        with pytest.raises(ImageError, match="busy .*gc not run"):
            store.gc(timeout=0.2)
        assert time.monotonic() - t0 >= 0.2
        assert store.has_blob(stray)
    live = digest.of_bytes(b"live!")
    with store.ingest(live, 5) as writer:
        writer.write(b"li")
        with pytest.raises(ImageError, match="busy"):
            store.gc(timeout=0.1)
        writer.write(b"ve!")
        writer.commit()
    assert store.gc() == {"blobs": 2, "bytes": len(b"about to be referenced") + 5, "ingests": 0}


def test_gc_keeps_resumable_partials_younger_than_ingest_age(store):
    d = digest.of_bytes(b"young")
    with store.ingest(d, 5) as ing:
        ing.write(b"yo")
    assert store.gc(ingest_age=3600)["ingests"] == 0
    assert _partials(store)
    assert store.gc()["ingests"] == 1
