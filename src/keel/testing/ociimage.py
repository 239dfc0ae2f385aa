"""An OCI image archive (oci-archive: a tar of an OCI image layout) of busybox, made offline from
Debian's busybox-static, for `make demo` and the benchmarks: `keel load -i` and `podman load -i`
both read it, so both engines run the very same image."""

import gzip
import hashlib
import io
import json
import os
import shutil
import tarfile
import tempfile

from keel.testing.rootfs import make_rootfs

PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def _tar_dir(path: str) -> bytes:
    """A reproducible tar of the tree at `path` (root-owned, mtime 0, sorted)."""
    def clean(info):
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        info.mtime = 0
        return info

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name in sorted(os.listdir(path)):
            tf.add(os.path.join(path, name), arcname=name, filter=clean)
    return buf.getvalue()


def _blob(layout: str, data: bytes) -> dict:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    with open(os.path.join(layout, "blobs", "sha256", digest[7:]), "wb") as f:
        f.write(data)
    return {"digest": digest, "size": len(data)}


def busybox_oci_archive(dest: str, name: str = "localhost/busybox:latest",
                        cmd: tuple = ("/bin/sh",)) -> str:
    """Write an oci-archive of a busybox image named `name` to `dest`; returns `dest`."""
    with tempfile.TemporaryDirectory(prefix="keel-image-") as tmp:
        rootfs = make_rootfs(os.path.join(tmp, "rootfs"))
        layer_tar = _tar_dir(rootfs)
        shutil.rmtree(rootfs)
        layout = os.path.join(tmp, "layout")
        os.makedirs(os.path.join(layout, "blobs", "sha256"))
        layer = _blob(layout, gzip.compress(layer_tar, mtime=0))
        layer["mediaType"] = "application/vnd.oci.image.layer.v1.tar+gzip"
        config = {
            "architecture": "amd64", "os": "linux", "created": "1970-01-01T00:00:00Z",
            "config": {"Cmd": list(cmd), "Env": [PATH_ENV], "WorkingDir": "/"},
            "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(layer_tar).hexdigest()]},
            "history": [{"created": "1970-01-01T00:00:00Z",
                         "created_by": "keel.testing.ociimage: busybox-static, offline"}],
        }
        cfg = _blob(layout, json.dumps(config, sort_keys=True).encode())
        cfg["mediaType"] = "application/vnd.oci.image.config.v1+json"
        manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "config": cfg, "layers": [layer]}
        man = _blob(layout, json.dumps(manifest, sort_keys=True).encode())
        man["mediaType"] = manifest["mediaType"]
        man["annotations"] = {"org.opencontainers.image.ref.name": name}
        with open(os.path.join(layout, "index.json"), "w") as f:
            json.dump({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                       "manifests": [man]}, f)
        with open(os.path.join(layout, "oci-layout"), "w") as f:
            json.dump({"imageLayoutVersion": "1.0.0"}, f)
        with tarfile.open(dest, "w") as tf:
            for entry in sorted(os.listdir(layout)):
                tf.add(os.path.join(layout, entry), arcname=entry)
    return dest
