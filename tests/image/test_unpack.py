"""keel.image.unpack.apply_layer: entry kinds, metadata, compression, whiteouts, bad input.

Each layer is built here with tarfile; the checks read the unpacked tree back with lstat,
getxattr and readlink (root is needed for ownership, device nodes and trusted.* xattrs).
"""

import functools
import gzip
import hashlib
import io
import os
import stat
import struct
import tarfile
import tracemalloc

import pytest

import layer_helpers
from layer_helpers import make_tar, sha

from keel.image.errors import UnpackError
from keel.image.unpack import apply_layer

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="unpack tests need root")

MTIME = 1_600_000_000
entry = functools.partial(layer_helpers.entry, mtime=MTIME)


def apply(data, dest, **kw):
    return apply_layer(io.BytesIO(data), str(dest), **kw)


def is_whiteout(path):
    st = os.lstat(path)
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(0, 0)


# security.capability v2: cap_net_raw permitted and effective
CAP_NET_RAW = struct.pack("<IIIII", 0x02000001, 1 << 13, 0, 0, 0)


def test_every_entry_kind_and_its_metadata(tmp_path):
    dest = tmp_path / "d"
    dest.mkdir()
    tar = make_tar([
        entry("./", "dir", mode=0o755, mtime=MTIME - 100),
        entry("etc/", "dir", mode=0o750, uid=1000, gid=1001, mtime=MTIME - 5),
        entry("etc/conf", data=b"hello\n", mode=0o640, uid=1000, gid=1001, mtime=MTIME - 7,
              xattrs={"user.note": b"v1", "trusted.keel": b"t"}),
        entry("bin/", "dir", mtime=MTIME - 3),
        entry("bin/ping", data=b"\x7fELF", mode=0o4755, xattrs={"security.capability": CAP_NET_RAW}),
        entry("bin/sgid", data=b"x", mode=0o2711, gid=42),
        entry("bin/link", "hardlink", link="bin/ping"),
        entry("bin/sh", "symlink", link="/bin/busybox", uid=7, gid=8, mtime=MTIME - 9),
        entry("shared/", "dir", mode=0o2775, gid=50),
        entry("tmp/", "dir", mode=0o1777),
        entry("dev/", "dir"),
        entry("dev/null", "chr", mode=0o666, dev=(1, 3)),
        entry("dev/loop0", "blk", mode=0o660, dev=(7, 0), gid=6),
        entry("run/fifo", "fifo", mode=0o620),
        entry("empty", data=b"", mode=0o600),
    ])
    assert apply(tar, dest) == sha(tar)

    st = os.lstat(dest / "etc")
    assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o750
    assert (st.st_uid, st.st_gid, st.st_mtime) == (1000, 1001, MTIME - 5)  # set after children
    assert os.lstat(dest).st_mtime == MTIME - 100 and stat.S_IMODE(os.lstat(dest).st_mode) == 0o755
    st = os.lstat(dest / "etc/conf")
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_mtime) == (0o640, 1000, 1001, MTIME - 7)
    assert (dest / "etc/conf").read_bytes() == b"hello\n"
    assert os.getxattr(dest / "etc/conf", "user.note") == b"v1"
    assert os.getxattr(dest / "etc/conf", "trusted.keel") == b"t"
    st = os.lstat(dest / "bin/ping")
    assert stat.S_IMODE(st.st_mode) == 0o4755  # setuid survives chown: chmod comes after
    assert os.getxattr(dest / "bin/ping", "security.capability") == CAP_NET_RAW
    assert stat.S_IMODE(os.lstat(dest / "bin/sgid").st_mode) == 0o2711
    assert os.lstat(dest / "bin/link").st_ino == st.st_ino and st.st_nlink == 2
    st = os.lstat(dest / "bin/sh")
    assert stat.S_ISLNK(st.st_mode) and os.readlink(dest / "bin/sh") == "/bin/busybox"
    assert (st.st_uid, st.st_gid, st.st_mtime) == (7, 8, MTIME - 9)
    assert stat.S_IMODE(os.lstat(dest / "shared").st_mode) == 0o2775
    assert stat.S_IMODE(os.lstat(dest / "tmp").st_mode) == 0o1777
    st = os.lstat(dest / "dev/null")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3) and stat.S_IMODE(st.st_mode) == 0o666
    st = os.lstat(dest / "dev/loop0")
    assert stat.S_ISBLK(st.st_mode) and st.st_rdev == os.makedev(7, 0) and st.st_gid == 6
    st = os.lstat(dest / "run/fifo")
    assert stat.S_ISFIFO(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o620
    st = os.lstat(dest / "run")  # implicit parent: root-owned 0755
    assert stat.S_IMODE(st.st_mode) == 0o755 and (st.st_uid, st.st_gid) == (0, 0)
    assert (dest / "empty").read_bytes() == b""


def _sample_tar():
    return make_tar([entry("a/", "dir"), entry("a/big", data=os.urandom(300_000)),
                     entry("a/s", "symlink", link="big")])


@pytest.mark.parametrize("compression", ["none", "gzip", "zstd", "zstd-multiframe", "xz"])
def test_compression_detected_by_magic_and_diff_id_is_of_the_tar(tmp_path, compression):
    tar = _sample_tar()
    if compression == "gzip":
        blob = gzip.compress(tar)
    elif compression.startswith("zstd"):
        zstd = pytest.importorskip("zstandard")
        c = zstd.ZstdCompressor()
        blob = c.compress(tar) if compression == "zstd" else c.compress(tar[:5000]) + c.compress(tar[5000:])
    elif compression == "xz":
        import lzma

        blob = lzma.compress(tar)
    else:
        blob = tar
    path = tmp_path / "layer"
    path.write_bytes(blob)
    for src in (str(path), io.BytesIO(blob)):
        dest = tmp_path / f"d-{type(src).__name__}"
        dest.mkdir()
        # the media type is only a hint: a mislabeled layer still unpacks by its magic
        assert apply_layer(src, str(dest), "application/vnd.oci.image.layer.v1.tar+gzip") == sha(tar)
        assert os.readlink(dest / "a/s") == "big" and (dest / "a/big").stat().st_size == 300_000


def test_streams_without_holding_the_layer_in_memory(tmp_path):
    size = 48 << 20
    raw = tmp_path / "layer.tar.gz"
    h = hashlib.sha256()

    class Hashing:
        def __init__(self, f):
            self.f = f

        def write(self, b):
            h.update(b)
            return self.f.write(b)

        def flush(self):
            self.f.flush()

    with open(raw, "wb") as f, gzip.GzipFile(fileobj=f, mode="wb", compresslevel=1) as gz:
        sink = Hashing(gz)
        with tarfile.open(fileobj=sink, mode="w|", format=tarfile.PAX_FORMAT) as tf:
            ti = tarfile.TarInfo("zeros")
            ti.size = size

            class Zeros(io.RawIOBase):
                left = size

                def readinto(self, b):
                    n = min(len(b), self.left)
                    b[:n] = bytes(n)
                    self.left -= n
                    return n

            tf.addfile(ti, Zeros())
    dest = tmp_path / "d"
    dest.mkdir()
    tracemalloc.start()
    try:
        diff_id = apply_layer(str(raw), str(dest))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert diff_id == "sha256:" + h.hexdigest()
    assert (dest / "zeros").stat().st_size == size
    assert peak < 12 << 20, f"peak {peak} bytes for a {size} byte layer"


def test_empty_layers(tmp_path):
    for i, blob in enumerate((b"", bytes(1024), make_tar([]))):
        dest = tmp_path / str(i)
        dest.mkdir()
        assert apply(blob, dest) == sha(blob)
        assert os.listdir(dest) == []


def test_whiteouts_into_an_empty_layer_dir(tmp_path):
    dest = tmp_path / "d"
    dest.mkdir()
    apply(make_tar([
        entry("a/", "dir", mode=0o700),
        entry("a/.wh.gone", uid=3),
        entry("b/", "dir"),
        entry("b/.wh..wh..opq"),
        entry("b/new", data=b"n"),
        entry(".wh..wh.plnk/", "dir"),          # AUFS metadata: skipped
        entry(".wh..wh.plnk/123", data=b"x"),
    ]), dest)
    assert is_whiteout(dest / "a/gone")
    assert os.getxattr(dest / "b", "trusted.overlay.opaque") == b"y"
    assert (dest / "b/new").read_bytes() == b"n"
    assert sorted(os.listdir(dest)) == ["a", "b"]
    assert stat.S_IMODE(os.lstat(dest / "a").st_mode) == 0o700


def test_whiteouts_remove_earlier_layers_content_in_the_same_dest(tmp_path):
    dest = tmp_path / "d"
    dest.mkdir()
    apply(make_tar([
        entry("a/", "dir"), entry("a/x", data=b"x"), entry("a/keep", data=b"k"),
        entry("d/", "dir"), entry("d/sub/", "dir"), entry("d/sub/f", data=b"f"),
        entry("o/", "dir"), entry("o/old", data=b"old"), entry("o/olddir/", "dir"),
        entry("o/olddir/f", data=b"f"),
    ]), dest)
    apply(make_tar([
        entry("a/", "dir"), entry("a/.wh.x"),
        entry(".wh.d"),
        entry("o/", "dir", mode=0o711), entry("o/.wh..wh..opq"), entry("o/new", data=b"new"),
    ]), dest)
    assert is_whiteout(dest / "a/x") and (dest / "a/keep").read_bytes() == b"k"
    assert is_whiteout(dest / "d")
    assert sorted(os.listdir(dest / "o")) == ["new"]
    assert os.getxattr(dest / "o", "trusted.overlay.opaque") == b"y"
    assert stat.S_IMODE(os.lstat(dest / "o").st_mode) == 0o711


def test_later_entries_replace_earlier_ones(tmp_path):
    dest = tmp_path / "d"
    dest.mkdir()
    apply(make_tar([
        entry("x", data=b"file"), entry("x/", "dir"), entry("x/inner", data=b"i"),
        entry("y/", "dir"), entry("y/child", data=b"c"), entry("y", data=b"now a file"),
        entry("z", "symlink", link="/etc"), entry("z", data=b"plain"),
        entry("w/", "dir", mode=0o700), entry("w/", "dir", mode=0o755, uid=5),
        entry("n", "fifo"), entry("n", "symlink", link="x"),
    ]), dest)
    assert (dest / "x/inner").read_bytes() == b"i"
    assert (dest / "y").read_bytes() == b"now a file"
    assert not os.path.islink(dest / "z") and (dest / "z").read_bytes() == b"plain"
    st = os.lstat(dest / "w")
    assert stat.S_IMODE(st.st_mode) == 0o755 and st.st_uid == 5
    assert os.readlink(dest / "n") == "x"


def test_implicit_parents_take_the_lower_layers_attributes(tmp_path):
    lower = tmp_path / "lower"
    upper = tmp_path / "upper"
    lower.mkdir()
    upper.mkdir()
    apply(make_tar([entry("./", "dir", mode=0o755), entry("tmp/", "dir", mode=0o1777, mtime=MTIME - 50),
                    entry("home/", "dir", mode=0o750, uid=1000, gid=1000)]), lower)
    apply(make_tar([entry("tmp/x", data=b"x"), entry("home/u/f", data=b"f"), entry("new/f", data=b"f")]),
          upper, parents=[str(lower)])
    st = os.lstat(upper / "tmp")
    assert stat.S_IMODE(st.st_mode) == 0o1777 and st.st_mtime == MTIME - 50
    st = os.lstat(upper / "home")
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o750, 1000, 1000)
    assert stat.S_IMODE(os.lstat(upper / "new").st_mode) == 0o755
    assert stat.S_IMODE(os.lstat(upper).st_mode) == 0o755  # no "./" entry: the lower root's


def test_names_times_and_xattrs_from_pax(tmp_path):
    dest = tmp_path / "d"
    dest.mkdir()
    long = "/".join(["p" * 60] * 5) + "/file"
    odd = b"caf\xe9-latin1".decode("utf-8", "surrogateescape")
    ti, data = entry(long, data=b"L")
    ti2, _ = entry(odd, data=b"")
    ti3, data3 = entry("precise", data=b"p", pax={"mtime": "1600000000.123456789"})
    sym, _ = entry("sym", "symlink", link="precise", xattrs={"trusted.on-link": b"1"})
    bsd, _ = entry("bsd", data=b"", pax={"LIBARCHIVE.xattr.user.b%20s": "dmFsdWU"})
    ovl, _ = entry("ovl/", "dir", xattrs={"trusted.overlay.redirect": b"/etc", "user.ok": b"1"})
    apply(make_tar([(ti, data), (ti2, b""), (ti3, data3), (sym, b""), (bsd, b""), (ovl, b"")]), dest)
    assert (dest / long).read_bytes() == b"L"
    assert os.path.exists(os.path.join(os.fsencode(str(dest)), b"caf\xe9-latin1"))
    assert os.lstat(dest / "precise").st_mtime_ns == 1_600_000_000_123_456_789
    assert os.getxattr(dest / "sym", "trusted.on-link", follow_symlinks=False) == b"1"
    assert os.getxattr(dest / "bsd", "user.b s") == b"value"
    assert os.listxattr(dest / "ovl") == ["user.ok"]  # trusted.overlay.* from a layer is dropped


@pytest.mark.parametrize("entries, message", [
    ([entry("vol", b"V")], "entry vol: unsupported tar entry type 'V'"),
    ([entry("h", "hardlink", link="missing")], "entry h: hardlink target missing does not exist"),
    ([entry("d/", "dir"), entry("h", "hardlink", link="d")], "entry h: hardlink target d is a directory"),
    ([entry("h", "hardlink", link="h")], "entry h: hardlink to itself"),
    ([entry("a/../b", data=b"")], "entry a/../b: '..' in path"),
    ([entry("f", data=b""), entry("f/g", data=b"")], "entry f/g: a parent is not a directory"),
    ([entry("/", data=b"x")], "the layer root must be a directory"),
    ([entry("a/.wh...")], "entry a/.wh...: invalid whiteout name '..'"),
])
def test_invalid_entries_are_named(tmp_path, entries, message):
    dest = tmp_path / "d"
    dest.mkdir()
    with pytest.raises(UnpackError) as ei:
        apply(make_tar(entries), dest)
    assert message in str(ei.value)
    assert "\n" not in str(ei.value) and str(ei.value)[0].islower()


def test_corrupt_streams(tmp_path):
    tar = make_tar([entry("a", data=os.urandom(20_000)), entry("b", data=b"b")])
    gz = gzip.compress(tar)
    cases = {
        "truncated tar": tar[:15_000],
        "truncated gzip": gz[: len(gz) // 2],
        "corrupt gzip": gz[:20] + bytes(200) + gz[220:],
        "garbage": b"<html>not a layer</html>" * 40,
    }
    for what, blob in cases.items():
        dest = tmp_path / what.replace(" ", "-")
        dest.mkdir()
        with pytest.raises(UnpackError) as ei:
            apply(blob, dest)
        msg = str(ei.value)
        assert msg.startswith("layer") or msg.startswith("entry"), (what, msg)
        assert "\n" not in msg, (what, msg)


def test_missing_file_and_dest(tmp_path):
    with pytest.raises(UnpackError, match="no such file"):
        apply_layer(str(tmp_path / "nope"), str(tmp_path))
    with pytest.raises(UnpackError, match="layer destination"):
        apply(make_tar([]), tmp_path / "nodir")


def test_hardlink_to_a_lower_layer_file_copies_it_up(tmp_path):
    lower, upper = tmp_path / "lower", tmp_path / "upper"
    lower.mkdir()
    upper.mkdir()
    apply(make_tar([entry("bin/", "dir"), entry("bin/tool", data=b"tool", mode=0o4755, uid=3, gid=4,
                                                   mtime=MTIME - 11, xattrs={"user.k": b"v"}),
                    entry("bin/gone", data=b"g")]), lower)
    mid = tmp_path / "mid"
    mid.mkdir()
    apply(make_tar([entry("bin/.wh.gone")]), mid, parents=[str(lower)])
    apply(make_tar([entry("bin/alias", "hardlink", link="bin/tool")]), upper, parents=[str(mid), str(lower)])
    st = os.lstat(upper / "bin/tool")
    assert os.lstat(upper / "bin/alias").st_ino == st.st_ino and st.st_nlink == 2
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_mtime) == (0o4755, 3, 4, MTIME - 11)
    assert (upper / "bin/tool").read_bytes() == b"tool" and os.getxattr(upper / "bin/tool", "user.k") == b"v"
    assert os.lstat(lower / "bin/tool").st_nlink == 1  # the lower layer is not touched
    # a target whited out by a layer in between is gone, not copied
    with pytest.raises(UnpackError, match="entry bin/x: hardlink target bin/gone does not exist"):
        apply(make_tar([entry("bin/x", "hardlink", link="bin/gone")]), upper, parents=[str(mid), str(lower)])


def test_garbage_after_the_first_entry_is_an_error_but_zero_padding_is_not(tmp_path):
    tar = make_tar([entry("a", data=b"a" * 100)])
    body = tar.rstrip(b"\0")  # the entry ends here; the end-of-archive zeros follow
    end = len(body) + (-len(body) % 512)
    dest = tmp_path / "ok"
    dest.mkdir()
    padded = tar + bytes(4096)
    assert apply(padded, dest) == sha(padded)
    dest = tmp_path / "bad"
    dest.mkdir()
    with pytest.raises(UnpackError, match="layer: invalid tar stream after entry a: invalid header"):
        apply(tar[:end] + b"\x01garbage".ljust(512, b"x") + bytes(1024), dest)
