"""keel.image.archive: OCI layout (dir, tar) and docker-archive import/export, verified imports,
and interop with skopeo and podman (real tools, private storage)."""

import contextlib
import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile

import pytest

from keel.image import archive
from keel.image.errors import BlobNotFound, DigestMismatch, ImageError
from keel.image.store import Store

MT_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"


def _tar(files: dict) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 1700000000, 0o644
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _tar_dir(src: str, dest: str, gz: bool = False, skip=()):
    with tarfile.open(dest, "w:gz" if gz else "w") as tf:
        for name in sorted(os.listdir(src)):
            if name not in skip:
                tf.add(os.path.join(src, name), arcname=name)
    return dest


def _members(path: str) -> dict:
    """{name: bytes} of the regular files of a tar."""
    out = {}
    with tarfile.open(path) as tf:
        for m in tf:
            if m.isfile():
                out[m.name] = tf.extractfile(m).read()
    return out


def _layout_files(path: str) -> dict:
    out = {}
    for dirpath, _, files in os.walk(path):
        for f in files:
            p = os.path.join(dirpath, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, path)] = fh.read()
    return out


def _snapshot(store: Store):
    """What a failed import must leave unchanged."""
    return (sorted(store.blobs()), sorted((i.id, i.manifest_digest, tuple(i.names)) for i in store.images()),
            sorted(os.listdir(os.path.join(store.root, "ingest"))))


@pytest.fixture
def small(make_oci_layout, tmp_path):
    """A two-layer gzip OCI layout (ref name "latest")."""
    return make_oci_layout(str(tmp_path / "small"), layers=[_tar({"a.txt": b"layer one\n"}),
                                                             _tar({"b.txt": b"layer two\n"})])


@pytest.fixture
def other(store, make_oci_layout, tmp_path):
    """An unrelated image already in the store: failed imports must leave it intact."""
    info = make_oci_layout(str(tmp_path / "other"), layers=[_tar({"other": b"previously stored\n"})])
    return archive.import_oci_layout(store, info["path"], name="localhost/previous:1")[0]


def _assert_intact(store, before, other):
    assert _snapshot(store) == before
    assert store.get("localhost/previous:1").id == other.id
    store.verify_image(other)


# ==============================================================================================
# OCI layout


def test_import_oci_dir_busybox(store, oci_busybox):
    imgs = archive.import_oci_layout(store, oci_busybox, name="busybox")
    assert len(imgs) == 1
    img = imgs[0]
    assert img.names == ["docker.io/library/busybox:latest"]      # ref name "latest" is the tag
    index = json.load(open(os.path.join(oci_busybox, "index.json")))
    assert img.manifest_digest == index["manifests"][0]["digest"]
    assert img.media_type == MT_OCI_MANIFEST and len(img.layers) == 1
    assert img.config["config"]["Cmd"] == ["/bin/sh"]
    store.verify_image(img)
    assert store.get("busybox").id == img.id


def test_oci_names(store, make_oci_layout, tmp_path):
    tag_only = make_oci_layout(str(tmp_path / "t"), ref_name="v2")
    assert archive.import_oci_layout(store, tag_only["path"])[0].names == []          # id only
    assert archive.import_oci_layout(store, tag_only["path"], name="quay.io/x/y")[0].names == \
        ["quay.io/x/y:v2"]
    assert "quay.io/x/y:v3" in archive.import_oci_layout(store, tag_only["path"], name="quay.io/x/y:v3")[0].names
    full = make_oci_layout(str(tmp_path / "f"), ref_name="localhost/app:v1",
                           layers=[_tar({"f": b"full"})])
    assert archive.import_oci_layout(store, full["path"])[0].names == ["localhost/app:v1"]
    short = make_oci_layout(str(tmp_path / "s"), ref_name="foo/bar:v1", layers=[_tar({"s": b"s"})])
    assert archive.import_oci_layout(store, short["path"])[0].names == ["docker.io/foo/bar:v1"]
    # containerd's annotation wins over a tag-only ref name
    ctr = make_oci_layout(str(tmp_path / "c"), layers=[_tar({"c": b"c"})])
    index_path = os.path.join(ctr["path"], "index.json")
    index = json.load(open(index_path))
    index["manifests"][0]["annotations"]["io.containerd.image.name"] = "docker.io/library/ctr:1"
    json.dump(index, open(index_path, "w"))
    assert archive.import_oci_layout(store, ctr["path"])[0].names == ["docker.io/library/ctr:1"]


def test_oci_tar_and_gzip_tar_import(store, small, tmp_path):
    plain = _tar_dir(small["path"], str(tmp_path / "plain.tar"))
    gz = _tar_dir(small["path"], str(tmp_path / "img.tar.gz"), gz=True)
    a = archive.import_oci_layout(store, plain, name="a:1")[0]
    b = archive.import_oci_layout(store, gz, name="b:1")[0]
    assert a.id == b.id == small["config_digest"] and a.manifest_digest == small["manifest_digest"]
    assert sorted(store.get(a.id).names) == ["docker.io/library/a:1", "docker.io/library/b:1"]
    assert not [n for n in os.listdir(os.path.join(store.root, "ingest")) if n.startswith("tmp-")]


def test_export_oci_dir_is_byte_identical_and_merges(store, small, make_oci_layout, tmp_path):
    img = archive.import_oci_layout(store, small["path"], name="localhost/small:1")[0]
    dest = str(tmp_path / "out")
    archive.export_oci_layout(store, [img], dest)
    out = _layout_files(dest)
    src = _layout_files(small["path"])
    for rel, data in src.items():
        if rel.startswith("blobs/"):
            assert out[rel] == data, rel
    assert set(r for r in out if r.startswith("blobs/")) == set(r for r in src if r.startswith("blobs/"))
    assert json.loads(out["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads(out["index.json"])
    assert index["manifests"] == [{
        "mediaType": MT_OCI_MANIFEST, "digest": img.manifest_digest, "size": len(src[f"blobs/sha256/{img.manifest_digest[7:]}"]),
        "platform": {"architecture": "amd64", "os": "linux"},
        "annotations": {"io.containerd.image.name": "localhost/small:1",
                        "org.opencontainers.image.ref.name": "localhost/small:1"}}]
    # a second image is added to the same layout; re-exporting a name replaces its entry
    second = make_oci_layout(str(tmp_path / "second"), layers=[_tar({"z": b"z"})])
    img2 = archive.import_oci_layout(store, second["path"], name="localhost/small:2")[0]
    archive.export_oci_layout(store, "localhost/small:2", dest)
    archive.export_oci_layout(store, "localhost/small:1", dest)
    names = [m["annotations"]["org.opencontainers.image.ref.name"]
             for m in json.load(open(os.path.join(dest, "index.json")))["manifests"]]
    assert sorted(names) == ["localhost/small:1", "localhost/small:2"]
    fresh = Store(str(tmp_path / "fresh"))
    try:
        got = {i.names[0]: i.id for i in archive.load(fresh, dest)}
        assert got == {"localhost/small:1": img.id, "localhost/small:2": img2.id}
    finally:
        fresh.close()


def test_export_oci_tar_round_trip_and_unnamed_image(store, small, tmp_path):
    img = archive.import_oci_layout(store, small["path"])[0]
    assert img.names == []
    dest = str(tmp_path / "x.tar")
    assert archive.save(store, [img.id], dest) == dest
    members = _members(dest)
    assert set(members) == {"oci-layout", "index.json"} | {
        f"blobs/sha256/{d[7:]}" for d in [img.manifest_digest, img.id] + [la.digest for la in img.layers]}
    entry = json.loads(members["index.json"])["manifests"][0]
    assert "annotations" not in entry and entry["digest"] == img.manifest_digest
    fresh = Store(str(tmp_path / "fresh"))
    try:
        again = archive.load(fresh, dest)[0]
        assert (again.id, again.manifest_digest) == (img.id, img.manifest_digest)
    finally:
        fresh.close()
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]


def test_nested_index_selects_the_platform(store, make_oci_layout, tmp_path):
    amd = make_oci_layout(str(tmp_path / "lay"), layers=[_tar({"amd": b"64"})], ref_name=None)
    arm = make_oci_layout(str(tmp_path / "lay"), layers=[_tar({"arm": b"64"})], ref_name=None,
                          config={"architecture": "arm64", "variant": "v8"})
    blobs = os.path.join(tmp_path, "lay", "blobs", "sha256")

    def desc(d, plat):
        return {"mediaType": MT_OCI_MANIFEST, "digest": d,
                "size": os.path.getsize(os.path.join(blobs, d[7:])), "platform": plat}
    idx = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                      "manifests": [desc(arm["manifest_digest"], {"os": "linux", "architecture": "arm64", "variant": "v8"}),
                                    desc(amd["manifest_digest"], {"os": "linux", "architecture": "amd64"})]}).encode()
    with open(os.path.join(blobs, _sha(idx)[7:]), "wb") as f:
        f.write(idx)
    json.dump({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.index.v1+json", "digest": _sha(idx), "size": len(idx),
        "annotations": {"org.opencontainers.image.ref.name": "localhost/multi:1"}}]},
        open(os.path.join(tmp_path, "lay", "index.json"), "w"))
    img = archive.import_oci_layout(store, str(tmp_path / "lay"))[0]
    assert img.manifest_digest == amd["manifest_digest"] and img.names == ["localhost/multi:1"]
    img = archive.import_oci_layout(store, str(tmp_path / "lay"), platform="linux/arm64")[0]
    assert img.manifest_digest == arm["manifest_digest"] and img.platform == "linux/arm64/v8"
    with pytest.raises(ImageError, match=r"no image for platform linux/s390x \(has linux/amd64, linux/arm64/v8\)"):
        archive.import_oci_layout(store, str(tmp_path / "lay"), platform="linux/s390x")


# ==============================================================================================
# docker-archive


def test_docker_archive_export_decompresses_and_round_trips(store, small, tmp_path):
    img = archive.import_oci_layout(store, small["path"], name="localhost/app:1")[0]
    store.tag(img.id, "busybox:1.36")
    dest = archive.save(store, [img], str(tmp_path / "d.tar"), format="docker-archive")
    m = _members(dest)
    cfg_name = img.id[7:] + ".json"
    layer_names = [d[7:] + ".tar" for d in small["diff_ids"]]
    assert set(m) == {"manifest.json", cfg_name, *layer_names}
    assert m[cfg_name] == store.read_blob(img.id)
    for name, diff_id in zip(layer_names, small["diff_ids"]):
        assert _sha(m[name]) == diff_id
    manifest = json.loads(m["manifest.json"])
    assert manifest == [{"Config": cfg_name, "RepoTags": ["localhost/app:1", "busybox:1.36"],
                         "Layers": layer_names}]

    fresh = Store(str(tmp_path / "fresh"))
    try:
        back = archive.import_docker_archive(fresh, dest)[0]
        assert back.id == img.id
        assert sorted(back.names) == ["docker.io/library/busybox:1.36", "localhost/app:1"]
        assert back.media_type == MT_DOCKER_MANIFEST
        assert [la.digest for la in back.layers] == small["diff_ids"]
        assert {la.media_type for la in back.layers} == {"application/vnd.docker.image.rootfs.diff.tar"}
        assert back.manifest["config"] == {"mediaType": "application/vnd.docker.container.image.v1+json",
                                           "size": len(m[cfg_name]), "digest": img.id}
        fresh.verify_image(back)
        # docker-archive -> keel -> docker-archive is byte-identical, and so is the synthesised manifest
        again = archive.export_docker_archive(fresh, [back], str(tmp_path / "d2.tar"))
        assert _members(again) == m
        fresh2 = Store(str(tmp_path / "fresh2"))
        try:
            assert archive.load(fresh2, again)[0].manifest_digest == back.manifest_digest
        finally:
            fresh2.close()
    finally:
        fresh.close()


def test_docker_archive_directory_and_gzip_layers(store, tmp_path):
    """An extracted docker save (a directory) whose layer is gzip-compressed (some tools do that)."""
    layer = _tar({"g": b"gzipped layer\n"})
    gz = gzip.compress(layer, mtime=0)
    cfg = json.dumps({"architecture": "amd64", "os": "linux", "created": "2024-01-01T00:00:00Z",
                      "rootfs": {"type": "layers", "diff_ids": [_sha(layer)]}}).encode()
    d = tmp_path / "dd"
    d.mkdir()
    (d / (_sha(cfg)[7:] + ".json")).write_bytes(cfg)
    (d / "layer.tar.gz").write_bytes(gz)
    (d / "manifest.json").write_text(json.dumps([{"Config": _sha(cfg)[7:] + ".json",
                                                  "RepoTags": ["gz:1"], "Layers": ["layer.tar.gz"]}]))
    assert archive.detect_format(str(d)) == "docker-dir"
    img = archive.load(store, str(d))[0]
    assert img.names == ["docker.io/library/gz:1"] and img.id == _sha(cfg)
    assert img.layers[0].digest == _sha(gz) and img.layers[0].diff_id == _sha(layer)
    assert img.layers[0].media_type == "application/vnd.docker.image.rootfs.diff.tar.gzip"
    out = archive.export_docker_archive(store, "gz:1", str(tmp_path / "o.tar"))
    assert _members(out)[_sha(layer)[7:] + ".tar"] == layer


def _legacy_archive(path, tags=("legacy:1",)):
    """The pre-1.10 docker save layout: repositories + <id>/{json,layer.tar,VERSION}, 2 layers."""
    l1, l2 = _tar({"bottom": b"1"}), _tar({"top": b"2"})
    id1, id2 = "1" * 64, "2" * 64
    files = {
        f"{id1}/json": json.dumps({"id": id1, "created": "2015-01-01T00:00:00Z",
                                   "container_config": {"Cmd": ["/bin/sh", "-c", "#(nop) ADD file"]},
                                   "os": "linux", "architecture": "amd64"}).encode(),
        f"{id1}/layer.tar": l1, f"{id1}/VERSION": b"1.0",
        f"{id2}/json": json.dumps({"id": id2, "parent": id1, "created": "2015-01-02T00:00:00Z",
                                   "config": {"Cmd": ["/bin/sh"], "Env": ["A=1"]},
                                   "container_config": {"Cmd": ["/bin/sh", "-c", "#(nop) CMD"]},
                                   "os": "linux", "architecture": "amd64", "Size": 2}).encode(),
        f"{id2}/layer.tar": l2, f"{id2}/VERSION": b"1.0",
        "repositories": json.dumps({t.split(":")[0]: {t.split(":")[1]: id2} for t in tags}).encode(),
    }
    with open(path, "wb") as f:
        f.write(_tar(files))
    return path, [_sha(l1), _sha(l2)]


def test_legacy_docker_archive(store, tmp_path):
    path, diff_ids = _legacy_archive(str(tmp_path / "legacy.tar"))
    assert archive.detect_format(path) == "docker-archive"
    img = archive.load(store, path)[0]
    assert img.names == ["docker.io/library/legacy:1"]
    assert [la.diff_id for la in img.layers] == diff_ids
    assert img.config["config"] == {"Cmd": ["/bin/sh"], "Env": ["A=1"]}
    assert img.config["created"] == "2015-01-02T00:00:00Z"
    assert "parent" not in img.config and "id" not in img.config
    assert [h["created_by"] for h in img.config["history"]] == ["/bin/sh -c #(nop) ADD file", "/bin/sh -c #(nop) CMD"]
    store.verify_image(img)


# ==============================================================================================
# load / save dispatch


def test_load_detects_every_format(store, small, tmp_path):
    img = archive.import_oci_layout(store, small["path"], name="localhost/fmt:1")[0]
    paths = {
        "oci-archive": archive.save(store, ["localhost/fmt:1"], str(tmp_path / "o.tar")),
        "oci-dir": archive.save(store, ["localhost/fmt:1"], str(tmp_path / "o-dir"), format="oci-dir"),
        "docker-archive": archive.save(store, ["localhost/fmt:1"], str(tmp_path / "d.tar"), format="docker-archive"),
    }
    for fmt, path in paths.items():
        assert archive.detect_format(path) == fmt
        fresh = Store(str(tmp_path / f"store-{fmt}"))
        try:
            got = archive.load(fresh, path)
            assert [(i.id, i.names) for i in got] == [(img.id, ["localhost/fmt:1"])], fmt
        finally:
            fresh.close()
    with pytest.raises(ImageError, match="unknown archive format 'zip'"):
        archive.save(store, ["localhost/fmt:1"], str(tmp_path / "z"), format="zip")
    (tmp_path / "junk").write_bytes(b"not a tar at all" * 100)
    with pytest.raises(ImageError, match="junk: not a readable tar archive"):
        archive.load(store, str(tmp_path / "junk"))
    (tmp_path / "emptydir").mkdir()
    with pytest.raises(ImageError, match="emptydir: not an image archive"):
        archive.load(store, str(tmp_path / "emptydir"))
    with pytest.raises(ImageError, match="nope: no such file or directory"):
        archive.load(store, str(tmp_path / "nope"))


# ==============================================================================================
# bad input: clear errors, nothing partially imported, the store intact


def _copy(src, tmp_path, name="bad"):
    dest = str(tmp_path / name)
    shutil.copytree(src, dest)
    return dest


def test_tampered_layer_blob(store, other, small, tmp_path):
    before = _snapshot(store)
    bad = _copy(small["path"], tmp_path)
    layer = small["layer_digests"][1]
    path = os.path.join(bad, "blobs", "sha256", layer[7:])
    data = bytearray(open(path, "rb").read())
    data[-5] ^= 0xFF
    open(path, "wb").write(bytes(data))
    with pytest.raises(DigestMismatch) as e:
        archive.import_oci_layout(store, bad, name="bad:1")
    assert str(e.value) == f"{bad}: layer {layer}: digest mismatch: got {_sha(bytes(data))}"
    _assert_intact(store, before, other)
    # the same, from a tar
    with pytest.raises(DigestMismatch, match=f"layer {layer}: digest mismatch"):
        archive.load(store, _tar_dir(bad, str(tmp_path / "bad.tar")))
    _assert_intact(store, before, other)


def test_tampered_manifest(store, other, small, tmp_path):
    before = _snapshot(store)
    bad = _copy(small["path"], tmp_path)
    md = small["manifest_digest"]
    path = os.path.join(bad, "blobs", "sha256", md[7:])
    data = open(path, "rb").read().replace(b"schemaVersion\":2", b"schemaVersion\":3")
    assert len(data) == os.path.getsize(path)
    open(path, "wb").write(data)
    with pytest.raises(DigestMismatch, match=f"^{bad}: manifest {md}: digest mismatch: got {_sha(data)}$"):
        archive.import_oci_layout(store, bad)
    _assert_intact(store, before, other)


def test_truncated_blob(store, other, small, tmp_path):
    before = _snapshot(store)
    bad = _copy(small["path"], tmp_path)
    layer = small["layer_digests"][0]
    path = os.path.join(bad, "blobs", "sha256", layer[7:])
    size = os.path.getsize(path)
    os.truncate(path, size - 10)
    with pytest.raises(DigestMismatch, match=f"layer {layer}: size mismatch: expected {size} bytes, got {size - 10}"):
        archive.import_oci_layout(store, bad)
    _assert_intact(store, before, other)


def test_missing_blobs(store, other, small, tmp_path):
    before = _snapshot(store)
    bad = _copy(small["path"], tmp_path)
    layer = small["layer_digests"][1]
    os.unlink(os.path.join(bad, "blobs", "sha256", layer[7:]))
    with pytest.raises(BlobNotFound, match=f"^{bad}: layer blob {layer} missing$"):
        archive.import_oci_layout(store, bad)
    _assert_intact(store, before, other)
    os.unlink(os.path.join(bad, "blobs", "sha256", small["config_digest"][7:]))
    with pytest.raises(BlobNotFound, match=f"config blob {small['config_digest']} missing"):
        archive.import_oci_layout(store, bad)
    os.unlink(os.path.join(bad, "oci-layout"))
    with pytest.raises(ImageError, match="not an oci image layout"):
        archive.import_oci_layout(store, bad)
    _assert_intact(store, before, other)


def test_truncated_tar_archive(store, other, small, tmp_path):
    before = _snapshot(store)
    path = _tar_dir(small["path"], str(tmp_path / "t.tar"))
    data = open(path, "rb").read()
    # cut inside the last member's data (blobs are sorted, index.json/oci-layout come last)
    with tarfile.open(path) as tf:
        last_blob = [m for m in tf.getmembers() if m.name.startswith("blobs/sha256/") and m.isfile()][-1]
    open(path, "wb").write(data[:last_blob.offset_data + last_blob.size // 2])
    with pytest.raises(ImageError) as e:
        archive.load(store, path)
    assert str(e.value).startswith(path) and "\n" not in str(e.value)
    _assert_intact(store, before, other)


def test_docker_archive_layer_not_matching_diff_id(store, other, small, tmp_path):
    img = archive.import_oci_layout(store, small["path"], name="localhost/d:1")[0]
    good = archive.export_docker_archive(store, img, str(tmp_path / "d.tar"))
    store.remove("localhost/d:1")
    store.gc()
    before = _snapshot(store)
    members = _members(good)
    name = small["diff_ids"][0][7:] + ".tar"
    members[name] = members[name].replace(b"layer one", b"LAYER ONE")
    bad = str(tmp_path / "bad.tar")
    open(bad, "wb").write(_tar(members))
    with pytest.raises(DigestMismatch) as e:
        archive.load(store, bad)
    assert str(e.value) == (f"{bad}: layer {name} {small['diff_ids'][0]}: digest mismatch: got "
                            f"{_sha(members[name])}")
    _assert_intact(store, before, other)
    # a config whose content does not match its file name
    members = _members(good)
    cfg = img.id[7:] + ".json"
    members[cfg] = members[cfg].replace(b"keel tests", b"evil tests")
    open(bad, "wb").write(_tar(members))
    with pytest.raises(DigestMismatch, match=f"config {cfg} {img.id}: digest mismatch"):
        archive.load(store, bad)
    # a Layers path that leaves the archive
    members = _members(good)
    m = json.loads(members["manifest.json"])
    m[0]["Layers"][0] = "../../../etc/passwd"
    members["manifest.json"] = json.dumps(m).encode()
    open(bad, "wb").write(_tar(members))
    with pytest.raises(ImageError, match="'../../../etc/passwd' in archive points outside it"):
        archive.load(store, bad)
    d = str(tmp_path / "baddir")
    os.mkdir(d)
    for n, data in members.items():
        open(os.path.join(d, n), "wb").write(data)
    os.symlink("/etc/passwd", os.path.join(d, "link.tar"))
    m[0]["Layers"][0] = "link.tar"
    open(os.path.join(d, "manifest.json"), "w").write(json.dumps(m))
    with pytest.raises(ImageError, match="link.tar: resolves outside the archive"):
        archive.load(store, d)
    _assert_intact(store, before, other)


def test_export_refuses_a_corrupt_store_blob(store, small, tmp_path):
    img = archive.import_oci_layout(store, small["path"], name="localhost/c:1")[0]
    path = store.blob_path(img.layers[0].digest)
    os.chmod(path, 0o644)
    data = bytearray(open(path, "rb").read())
    data[-3] ^= 1
    open(path, "wb").write(bytes(data))
    for fmt, dest in (("oci-archive", "o.tar"), ("docker-archive", "d.tar"), ("oci-dir", "o-dir")):
        with pytest.raises((DigestMismatch, ImageError), match=img.layers[0].digest):
            archive.save(store, ["localhost/c:1"], str(tmp_path / dest), format=fmt)
        assert not os.path.exists(tmp_path / dest) or fmt == "oci-dir"
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]


def test_enospc_during_import(tmp_path, request, make_oci_layout):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "keel-test-tiny", str(mnt)], check=True)
    request.addfinalizer(lambda: subprocess.run(["umount", "-l", str(mnt)], check=False))
    store = Store(str(mnt / "store"))
    try:
        kept = archive.import_oci_layout(store, make_oci_layout(str(tmp_path / "s"))["path"],
                                         name="localhost/previous:1")[0]
        before = _snapshot(store)
        big = make_oci_layout(str(tmp_path / "big"), layers=[_tar({"r": os.urandom(2 << 20)})])
        with pytest.raises(ImageError, match="no space left on device"):
            archive.import_oci_layout(store, big["path"], name="big:1")
        _assert_intact(store, before, kept)
    finally:
        store.close()


def test_two_concurrent_imports_of_the_same_image(store, oci_busybox, tmp_path):
    script = (f"import sys; from keel.image.store import Store; from keel.image import archive; "
              f"s = Store({store.root!r}); "
              f"print(archive.import_oci_layout(s, {oci_busybox!r}, name=sys.argv[1])[0].id)")
    procs = [subprocess.Popen([sys.executable, "-c", script, f"busybox:{i}"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert outs[0][0] == outs[1][0]
    img = store.get("busybox:0")
    assert sorted(img.names) == ["docker.io/library/busybox:0", "docker.io/library/busybox:1"]
    store.verify_image(img)
    assert len(store.images()) == 1 and len(store.blobs()) == 3
    assert not [n for n in os.listdir(os.path.join(store.root, "ingest")) if n.endswith(".partial")]


# ==============================================================================================
# interop: skopeo and podman


BLOB_CACHE = "/var/lib/containers/cache"


@pytest.fixture(scope="session")
def host_blob_cache():
    """skopeo and podman (containers/image) write a blob-info cache under /var/lib/containers
    whatever the storage root: remove it at the end if this session created it."""
    existed = [p for p in ("/var/lib/containers", BLOB_CACHE) if os.path.exists(p)]
    yield
    if BLOB_CACHE not in existed:
        with _suppress():
            os.unlink(os.path.join(BLOB_CACHE, "blob-info-cache-v1.boltdb"))
        with _suppress():
            os.rmdir(BLOB_CACHE)
    if "/var/lib/containers" not in existed:
        with _suppress():
            os.rmdir("/var/lib/containers")


def _suppress():
    return contextlib.suppress(OSError)


def _need(*tools):
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.fail(f"peer tools not installed: {', '.join(missing)} "
                    "(apt-get install -y --no-install-recommends skopeo podman)", pytrace=False)


def _run(argv, env=None, timeout=60):
    res = subprocess.run([str(a) for a in argv], capture_output=True, text=True, env=env, timeout=timeout)
    assert res.returncode == 0, f"{argv}: rc={res.returncode}\n{res.stdout}\n{res.stderr}"
    return res.stdout


@pytest.fixture
def skopeo(host_blob_cache, tmp_path):
    _need("skopeo")
    env = dict(os.environ, TMPDIR=str(tmp_path))
    (tmp_path / "policy.json").write_text('{"default":[{"type":"insecureAcceptAnything"}]}')
    return lambda *args: _run(["skopeo", "--policy", tmp_path / "policy.json", *args], env=env)


class _Podman:
    def __init__(self, workdir):
        self.workdir = workdir
        for d in ("root", "runroot", "tmp"):
            os.makedirs(os.path.join(workdir, d), exist_ok=True)
        conf = os.path.join(workdir, "containers.conf")
        with open(conf, "w") as f:
            f.write('[engine]\ncgroup_manager = "cgroupfs"\nevents_logger = "file"\n'
                    f'events_logfile_path = "{workdir}/events.log"\ntmp_dir = "{workdir}/tmp"\n')
        with open(os.path.join(workdir, "storage.conf"), "w") as f:
            f.write(f'[storage]\ndriver = "vfs"\ngraphroot = "{workdir}/root"\nrunroot = "{workdir}/runroot"\n')
        with open(os.path.join(workdir, "registries.conf"), "w") as f:
            f.write('unqualified-search-registries = []\nshort-name-mode = "disabled"\n')
        self.env = dict(os.environ, CONTAINERS_CONF=conf,
                        CONTAINERS_STORAGE_CONF=os.path.join(workdir, "storage.conf"),
                        CONTAINERS_REGISTRIES_CONF=os.path.join(workdir, "registries.conf"),
                        TMPDIR=os.path.join(workdir, "tmp"))
        self.env.pop("CONTAINER_HOST", None)
        self.base = ["podman", "--root", f"{workdir}/root", "--runroot", f"{workdir}/runroot",
                     "--storage-driver", "vfs", "--tmpdir", f"{workdir}/tmp",
                     "--cgroup-manager", "cgroupfs", "--events-backend", "file"]

    def __call__(self, *args):
        return _run(self.base + list(args), env=self.env, timeout=120)

    def image_id(self, name):
        return "sha256:" + self("image", "inspect", "--format", "{{.Id}}", name).strip()

    def close(self):
        with _suppress():
            self("rmi", "-af")
        for line in open("/proc/self/mounts").read().splitlines():
            mnt = line.split()[1]
            if mnt.startswith(self.workdir + "/"):
                subprocess.run(["umount", "-l", mnt], check=False)
        shutil.rmtree(self.workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def podman(host_blob_cache, tmp_path_factory, busybox_tar):
    """podman with private storage (vfs) holding localhost/imp:v1 made by `podman import`."""
    _need("podman")
    if os.geteuid() != 0:
        pytest.skip("podman interop tests run as root")
    p = _Podman(str(tmp_path_factory.mktemp("podman")))
    try:
        p("import", "--change", "CMD=/bin/sh", busybox_tar, "localhost/imp:v1")
        yield p
    finally:
        p.close()


@pytest.mark.interop
def test_skopeo_reads_keel_exports_and_keel_reads_skopeo(store, oci_busybox, skopeo, tmp_path):
    img = archive.import_oci_layout(store, oci_busybox, name="busybox:1")[0]
    name = "docker.io/library/busybox:1"
    oci_dir = archive.save(store, [name], str(tmp_path / "keel-oci"), format="oci-dir")
    oci_tar = archive.save(store, [name], str(tmp_path / "keel-oci.tar"))
    docker_tar = archive.save(store, [name], str(tmp_path / "keel-docker.tar"), format="docker-archive")

    # skopeo reads all three keel exports
    skopeo("copy", "--quiet", f"oci:{oci_dir}:{name}", f"oci-archive:{tmp_path}/sk-oci.tar:busybox:1")
    skopeo("copy", "--quiet", f"oci:{oci_dir}:{name}", f"docker-archive:{tmp_path}/sk-docker.tar:busybox:1")
    skopeo("copy", "--quiet", f"oci-archive:{oci_tar}:{name}", f"oci:{tmp_path}/sk-from-tar:x")
    skopeo("copy", "--quiet", f"docker-archive:{docker_tar}", f"oci:{tmp_path}/sk-from-docker:x")
    inspected = json.loads(skopeo("inspect", "--raw", f"oci-archive:{oci_tar}:{name}"))
    assert inspected == img.manifest
    idx = json.load(open(tmp_path / "sk-from-tar" / "index.json"))
    assert idx["manifests"][0]["digest"] == img.manifest_digest          # byte-identical manifest
    idx = json.load(open(tmp_path / "sk-from-docker" / "index.json"))
    blobs = tmp_path / "sk-from-docker" / "blobs" / "sha256"
    man = json.load(open(blobs / idx["manifests"][0]["digest"][7:]))
    # skopeo converts docker -> OCI (re-encodes the config, gzips the layers): same content
    assert json.load(open(blobs / man["config"]["digest"][7:])) == img.config

    # keel reads what skopeo wrote: same image, same manifest where the format keeps it
    fresh = Store(str(tmp_path / "fresh"))
    try:
        a = archive.load(fresh, str(tmp_path / "sk-oci.tar"))[0]
        assert (a.id, a.manifest_digest, a.names) == (img.id, img.manifest_digest, ["docker.io/library/busybox:1"])
        b = archive.load(fresh, str(tmp_path / "sk-docker.tar"))[0]
        assert b.id == img.id and b.names == ["docker.io/library/busybox:1"]
        assert [la.digest for la in b.layers] == [la.diff_id for la in img.layers]
        assert _members(archive.export_docker_archive(fresh, b, str(tmp_path / "again.tar")))[img.id[7:] + ".json"] == \
            store.read_blob(img.id)
        # the legacy layout that skopeo also writes (repositories + <id>/layer.tar symlinks)
        legacy = str(tmp_path / "legacy.tar")
        with tarfile.open(tmp_path / "sk-docker.tar") as src, tarfile.open(legacy, "w") as dst:
            for m in src:
                if m.name != "manifest.json":
                    dst.addfile(m, src.extractfile(m) if m.isfile() else None)
        fresh3 = Store(str(tmp_path / "fresh3"))
        try:
            c = archive.load(fresh3, legacy)[0]
            assert [la.diff_id for la in c.layers] == [la.diff_id for la in img.layers]
            assert c.names == ["docker.io/library/busybox:1"]
        finally:
            fresh3.close()
    finally:
        fresh.close()


@pytest.mark.interop
def test_keel_loads_podman_saves_and_podman_loads_keel_saves(store, podman, tmp_path):
    pid = podman.image_id("localhost/imp:v1")
    out = {}
    for fmt, dest in (("oci-archive", "p-oci.tar"), ("docker-archive", "p-docker.tar"), ("oci-dir", "p-oci-dir")):
        out[fmt] = str(tmp_path / dest)
        podman("save", "--format", fmt, "-o", out[fmt], "localhost/imp:v1")
    for fmt, path in out.items():
        fresh = Store(str(tmp_path / f"s-{fmt}"))
        try:
            img = archive.load(fresh, path)[0]
            assert img.id == pid, fmt
            assert img.names == ["localhost/imp:v1"], fmt
            fresh.verify_image(img)
        finally:
            fresh.close()

    # podman oci-archive -> keel -> keel oci-archive: the same manifest and blobs, byte for byte
    img = archive.load(store, out["oci-archive"])[0]
    mine = archive.save(store, ["localhost/imp:v1"], str(tmp_path / "k-oci.tar"))
    theirs = {k: v for k, v in _members(out["oci-archive"]).items() if k.startswith("blobs/")}
    assert {k: v for k, v in _members(mine).items() if k.startswith("blobs/")} == theirs

    # podman loads keel's saves, as the same image
    podman("rmi", "localhost/imp:v1")
    podman("load", "-i", mine)
    assert podman.image_id("localhost/imp:v1") == img.id
    store.tag(img.id, "localhost/from-keel:docker")
    podman("load", "-i", archive.save(store, ["localhost/from-keel:docker"], str(tmp_path / "k-d.tar"),
                                      format="docker-archive"))
    assert podman.image_id("localhost/from-keel:docker") == img.id
