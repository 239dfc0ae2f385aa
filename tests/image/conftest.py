"""Shared fixtures of the keel.image tests (kept small: add what several test files need).

  store            function: a keel.image.store.Store in a fresh temporary dir
  busybox_tar      session: path of an uncompressed, reproducible tar of a busybox rootfs
                   (keel.testing.rootfs.make_rootfs; uid/gid 0, fixed mtimes, sorted)
  oci_busybox      session: path of an OCI image layout dir holding that rootfs as one gzip
                   layer, index.json ref name "latest" (skopeo's oci:DIR:latest). Shared by the
                   session: copy it (shutil.copytree) before changing anything in it.
  make_oci_layout  function: make_oci_layout(dir, layers=[tar bytes...], ref_name="latest",
                   compress=True, config=None) builds an OCI layout dir offline and returns it
                   as a dict {"path", "manifest_digest", "config_digest", "layer_digests",
                   "diff_ids"}; layers default to one small tar with a file.
"""

import gzip
import hashlib
import io
import json
import os
import shutil
import tarfile

import pytest

from keel.image.store import Store
from keel.testing.rootfs import make_rootfs

MTIME = 1700000000


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _reproducible(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    info.mtime = MTIME
    return info


def tar_of_dir(path: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name in sorted(os.listdir(path)):
            tf.add(os.path.join(path, name), arcname=name, filter=_reproducible)
    return buf.getvalue()


def tar_of_files(files: dict) -> bytes:
    """A tar holding {name: bytes} regular files (directories implied are not added)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in files.items():
            info = _reproducible(tarfile.TarInfo(name))
            info.size = len(data)
            info.mode = 0o644
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def build_oci_layout(path, layers=None, ref_name="latest", compress=True, config=None):
    """Write an OCI image layout at `path` (created); see make_oci_layout above."""
    if layers is None:
        layers = [tar_of_files({"hello.txt": b"hello from keel\n"})]
    blobs = os.path.join(path, "blobs", "sha256")
    os.makedirs(blobs, exist_ok=True)

    def put(data: bytes) -> str:
        d = _sha256(data)
        with open(os.path.join(blobs, d.split(":", 1)[1]), "wb") as f:
            f.write(data)
        return d

    diff_ids, descs = [], []
    for tar in layers:
        diff_ids.append(_sha256(tar))
        blob = gzip.compress(tar, compresslevel=6, mtime=0) if compress else tar
        descs.append({"mediaType": "application/vnd.oci.image.layer.v1.tar" + ("+gzip" if compress else ""),
                      "digest": put(blob), "size": len(blob)})
    cfg = {
        "created": "2023-11-14T22:13:20Z",
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                   "Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created": "2023-11-14T22:13:20Z", "created_by": "keel tests"} for _ in layers],
    }
    if config:
        cfg.update(config)
    cfg_bytes = json.dumps(cfg, sort_keys=True, separators=(",", ":")).encode()
    cfg_digest = put(cfg_bytes)
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                           "digest": cfg_digest, "size": len(cfg_bytes)},
                "layers": descs}
    m_bytes = json.dumps(manifest, separators=(",", ":")).encode()
    m_digest = put(m_bytes)
    entry = {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": m_digest,
             "size": len(m_bytes)}
    if ref_name:
        entry["annotations"] = {"org.opencontainers.image.ref.name": ref_name}
    with open(os.path.join(path, "index.json"), "w") as f:
        json.dump({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                   "manifests": [entry]}, f)
    with open(os.path.join(path, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    return {"path": str(path), "manifest_digest": m_digest, "config_digest": cfg_digest,
            "layer_digests": [d["digest"] for d in descs], "diff_ids": diff_ids}


@pytest.fixture
def store(tmp_path):
    s = Store(str(tmp_path / "store"))
    yield s
    s.close()


@pytest.fixture(scope="session")
def busybox_tar(tmp_path_factory):
    base = tmp_path_factory.mktemp("busybox-rootfs")
    rootfs = make_rootfs(str(base / "rootfs"))
    path = base / "rootfs.tar"
    path.write_bytes(tar_of_dir(rootfs))
    shutil.rmtree(rootfs)
    return str(path)


@pytest.fixture(scope="session")
def oci_busybox(tmp_path_factory, busybox_tar):
    path = tmp_path_factory.mktemp("oci-busybox") / "layout"
    with open(busybox_tar, "rb") as f:
        build_oci_layout(str(path), layers=[f.read()], ref_name="latest")
    return str(path)


@pytest.fixture
def make_oci_layout():
    return build_oci_layout
