"""Layer tarballs built entry by entry with tarfile, for the unpack, snapshot and hostile-layer
tests (import what a test file uses: `from layer_helpers import entry, make_tar, sha`)."""

import hashlib
import io
import tarfile

_TYPES = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE,
          "hardlink": tarfile.LNKTYPE, "fifo": tarfile.FIFOTYPE, "chr": tarfile.CHRTYPE,
          "blk": tarfile.BLKTYPE}


def entry(name, kind="file", data=b"", mode=None, uid=0, gid=0, mtime=0, link="", dev=(0, 0),
          xattrs=None, pax=None):
    """A (TarInfo, data) pair; kind: file, dir, symlink, hardlink, fifo, chr, blk, or a raw
    one-byte tar type. xattrs ({name: bytes}) become SCHILY.xattr. PAX headers beside `pax`."""
    ti = tarfile.TarInfo(name)
    ti.type = _TYPES.get(kind, kind if isinstance(kind, bytes) else None)
    ti.mode = mode if mode is not None else (0o755 if kind == "dir" else 0o644)
    ti.uid, ti.gid, ti.mtime, ti.linkname = uid, gid, mtime, link
    ti.devmajor, ti.devminor = dev
    ti.size = len(data) if kind == "file" else 0
    headers = dict(pax or {})
    for k, v in (xattrs or {}).items():
        headers["SCHILY.xattr." + k] = v.decode("utf-8", "surrogateescape")
    ti.pax_headers = headers
    return ti, data


def make_tar(entries):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for ti, data in entries:
            tf.addfile(ti, io.BytesIO(data) if ti.isreg() else None)
    return buf.getvalue()


def sha(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()
