"""keel.image.snapshot: chain-id layer dirs, container snapshots, image mounts, gc; and the
merged view of keel's overlay compared file by file with `umoci unpack` of the same image.

Every test leaves no mount behind under its tmp dir (checked against /proc/self/mountinfo).
"""

import functools
import gzip
import hashlib
import json
import os
import shutil
import stat
import subprocess
import threading
import time

import pytest

import layer_helpers
from layer_helpers import make_tar, sha

from keel.image.errors import DigestMismatch, ImageError, UnpackError
from keel.image.snapshot import Snapshotter, is_mounted

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="snapshot tests need root (overlay mounts)")

MTIME = 1_650_000_000
entry = functools.partial(layer_helpers.entry, mtime=MTIME)


# -- building images ---------------------------------------------------------------------------


def add_image(store, tars, name="localhost/test:latest", diff_ids=None, compress="gzip"):
    descs = []
    for tar in tars:
        if compress == "gzip":
            blob, mt = gzip.compress(tar, compresslevel=1, mtime=0), "+gzip"
        elif compress == "zstd":
            import zstandard

            blob, mt = zstandard.ZstdCompressor().compress(tar), "+zstd"
        else:
            blob, mt = tar, ""
        descs.append({"mediaType": "application/vnd.oci.image.layer.v1.tar" + mt,
                      "digest": store.write_blob(blob), "size": len(blob)})
    cfg = json.dumps({"architecture": "amd64", "os": "linux", "created": "2024-01-01T00:00:00Z",
                      "config": {"Cmd": ["sh"], "Labels": {"n": name}},
                      "rootfs": {"type": "layers", "diff_ids": diff_ids or [sha(t) for t in tars]}}).encode()
    manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                      "digest": store.write_blob(cfg), "size": len(cfg)},
                           "layers": descs}).encode()
    return store.add_image(store.write_blob(manifest), [name])


def mounts_under(path):
    path = os.path.realpath(str(path))
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mp = line.split()[4].replace("\\040", " ")
            if mp == path or mp.startswith(path + "/"):
                out.append(mp)
    return out


@pytest.fixture
def snap(store, tmp_path):
    s = Snapshotter(os.path.join(store.root, "snapshots"))
    yield s
    left = mounts_under(tmp_path)
    for mp in sorted(left, key=len, reverse=True):
        subprocess.run(["umount", "-l", mp], check=False)
    assert not left, f"mounts left behind: {left}"


BASE = [entry("./", "dir"), entry("bin/", "dir"), entry("bin/sh", data=b"#!sh\n", mode=0o755),
        entry("etc/", "dir"), entry("etc/os", data=b"base\n"), entry("tmp/", "dir", mode=0o1777),
        entry("gone", data=b"x"), entry("keep/", "dir"), entry("keep/a", data=b"a"),
        entry("opq/", "dir"), entry("opq/old", data=b"old")]
UPPER = [entry("etc/", "dir"), entry("etc/os", data=b"upper\n"), entry(".wh.gone"),
         entry("opq/", "dir"), entry("opq/.wh..wh..opq"), entry("opq/new", data=b"new"),
         entry("tmp/x", data=b"x")]


# -- layers ------------------------------------------------------------------------------------


def test_layers_are_unpacked_once_and_shared_between_images(store, snap):
    base, upper, other = make_tar(BASE), make_tar(UPPER), make_tar([entry("other", data=b"o")])
    a = add_image(store, [base, upper], "localhost/a:1")
    b = add_image(store, [base, other], "localhost/b:1", compress="zstd")
    la = snap.ensure_layers(a, store)
    lb = snap.ensure_layers(b, store)
    assert la[-1] == lb[-1] == snap.layer_dir(a.layers[0].chain_id)  # top first: base is last
    assert la[0] == snap.layer_dir(a.layers[1].chain_id)
    assert len(os.listdir(os.path.join(snap.root, "layers"))) == 3
    ino = os.stat(la[-1]).st_ino
    assert snap.ensure_layers(a, store) == la and os.stat(la[-1]).st_ino == ino  # not redone
    # per-layer dirs: whiteouts and opaque dirs in overlayfs form
    st = os.lstat(os.path.join(la[0], "gone"))
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
    assert os.getxattr(os.path.join(la[0], "opq"), "trusted.overlay.opaque") == b"y"
    # an implicit parent (tmp/ of the upper layer) keeps the base's sticky mode
    assert stat.S_IMODE(os.lstat(os.path.join(la[0], "tmp")).st_mode) == 0o1777
    assert os.listdir(os.path.join(snap.root, "tmp")) == []


def test_diff_id_mismatch_and_hostile_layers_leave_nothing(store, snap):
    good = make_tar(BASE)
    img = add_image(store, [good], "localhost/lie:1", diff_ids=[sha(b"something else")])
    with pytest.raises(DigestMismatch, match="diff id mismatch"):
        snap.ensure_layers(img, store)
    bad = make_tar([entry("../escape", data=b"x")])
    img = add_image(store, [good, bad], "localhost/bad:1")
    with pytest.raises(UnpackError, match=r"entry \.\./escape"):
        snap.prepare("c1", img, store)
    assert os.listdir(os.path.join(snap.root, "tmp")) == []
    assert len(os.listdir(os.path.join(snap.root, "layers"))) == 1  # the good base stays
    assert snap.snapshots() == []


def test_concurrent_ensure_unpacks_each_chain_once(store, snap):
    img = add_image(store, [make_tar(BASE + [entry("big", data=os.urandom(2_000_000))]), make_tar(UPPER)])
    results, errors = [], []

    def run():
        try:
            results.append(Snapshotter(snap.root).ensure_layers(img, store))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 4 and all(r == results[0] for r in results)
    assert len(os.listdir(os.path.join(snap.root, "layers"))) == 2
    assert os.listdir(os.path.join(snap.root, "tmp")) == []


# -- mounts ------------------------------------------------------------------------------------------


def test_prepare_writable_snapshot_and_remove(store, snap, tmp_path):
    img = add_image(store, [make_tar(BASE), make_tar(UPPER)])
    rootfs = snap.prepare("ctr-1", img, store)
    assert is_mounted(rootfs)
    assert open(os.path.join(rootfs, "etc/os")).read() == "upper\n"
    assert not os.path.lexists(os.path.join(rootfs, "gone"))
    assert sorted(os.listdir(os.path.join(rootfs, "opq"))) == ["new"]
    assert sorted(os.listdir(os.path.join(rootfs, "keep"))) == ["a"]
    assert stat.S_IMODE(os.stat(os.path.join(rootfs, "tmp")).st_mode) == 0o1777
    # writes go to the upper dir; the shared layer dirs are untouched
    with open(os.path.join(rootfs, "etc/os"), "w") as f:
        f.write("mine\n")
    os.unlink(os.path.join(rootfs, "keep/a"))
    upper = os.path.join(snap.root, "active", "ctr-1", "upper")
    assert open(os.path.join(upper, "etc/os")).read() == "mine\n"
    lower = snap.layer_dir(img.layers[-1].chain_id)
    assert open(os.path.join(lower, "etc/os")).read() == "upper\n"
    assert open(os.path.join(snap.layer_dir(img.layers[0].chain_id), "keep/a")).read() == "a"
    # a second container of the same image sees the image, not the first one's writes
    rootfs2 = snap.prepare("ctr-2", img, store)
    assert open(os.path.join(rootfs2, "etc/os")).read() == "upper\n"
    with pytest.raises(ImageError, match="snapshot ctr-1: already exists"):
        snap.prepare("ctr-1", img, store)
    with pytest.raises(ImageError, match="invalid snapshot key"):
        snap.prepare("../x", img, store)
    assert snap.snapshots() == ["ctr-1", "ctr-2"]
    # remove: a busy mount (a process with its cwd inside) goes lazily
    busy = subprocess.Popen(["sleep", "30"], cwd=rootfs2)
    try:
        snap.remove("ctr-2")
        snap.remove("ctr-1")
    finally:
        busy.kill()
        busy.wait()
    assert snap.snapshots() == [] and not mounts_under(tmp_path)
    with pytest.raises(ImageError, match="no such snapshot"):
        snap.remove("ctr-1")


def test_mount_image_read_only_single_layer_and_empty(store, snap, tmp_path):
    one = add_image(store, [make_tar(BASE)], "localhost/one:1")
    merged = snap.mount_image(one, store)
    assert snap.mount_image(one, store) == merged  # the same path, counted twice
    assert open(os.path.join(merged, "etc/os")).read() == "base\n"
    with pytest.raises(OSError):
        open(os.path.join(merged, "new"), "w")
    assert snap.image_mount_path(one) == merged
    assert snap.unmount_image(one) == 1 and snap.unmount_image(one) == 0
    assert not mounts_under(tmp_path) and snap.image_mount_path(one) is None
    with pytest.raises(ImageError, match="is not mounted"):
        snap.unmount_image(one)
    empty = add_image(store, [], "localhost/empty:1")
    merged = snap.mount_image(empty, store)
    assert os.listdir(merged) == []
    rootfs = snap.prepare("e", empty, store)
    open(os.path.join(rootfs, "f"), "w").close()
    snap.remove("e")
    snap.unmount_image(empty)


def test_many_layers_fit_one_overlay_mount(store, snap, tmp_path):
    n = 130
    tars = [make_tar([entry(f"layer{i:03d}", data=f"{i}".encode()), entry("top", data=f"{i}".encode())])
            for i in range(n)]
    img = add_image(store, tars, compress="none")
    t0 = time.monotonic()
    merged = snap.mount_image(img, store)
    rootfs = snap.prepare("many", img, store)
    for path in (merged, rootfs):
        names = os.listdir(path)
        assert len(names) == n + 1
        assert open(os.path.join(path, "top")).read() == str(n - 1)
        assert open(os.path.join(path, "layer000")).read() == "0"
    opts = [line for line in open("/proc/self/mountinfo") if f" {rootfs} " in line][0]
    assert "l/" in opts  # mounted with the short relative names
    snap.remove("many")
    snap.unmount_image(img)
    assert time.monotonic() - t0 < 20


def test_remove_unused_keeps_what_images_and_snapshots_use(store, snap):
    base, upper = make_tar(BASE), make_tar(UPPER)
    a = add_image(store, [base, upper], "localhost/a:1")
    b = add_image(store, [base], "localhost/b:1")
    snap.ensure_layers(a, store)
    rootfs = snap.prepare("keep-me", b, store)
    os.makedirs(os.path.join(snap.root, "tmp", "crashed-unpack", "fs"))  # debris of a crash
    assert snap.remove_unused(store) == 0
    store.remove("localhost/a:1")
    store.remove("localhost/b:1")
    assert snap.remove_unused(store) == 1  # the upper; the base is in use by the container
    assert os.listdir(os.path.join(snap.root, "tmp")) == []
    assert os.path.isfile(os.path.join(rootfs, "etc/os"))
    snap.remove("keep-me")
    assert snap.remove_unused(store) == 1
    assert os.listdir(os.path.join(snap.root, "layers")) == []
    assert os.listdir(os.path.join(snap.root, "l")) == []


# -- against umoci -------------------------------------------------------------------------------------


CAP = b"\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"

UMOCI_LAYERS = [
    [entry("./", "dir"), entry("etc/", "dir"), entry("etc/passwd", data=b"root:x:0:0::/root:/bin/sh\n"),
     entry("usr/", "dir"), entry("usr/bin/", "dir", mode=0o755),
     entry("usr/bin/tool", data=b"\x7fELF tool", mode=0o4755),
     entry("usr/bin/sg", data=b"sg", mode=0o2711, gid=50),
     entry("usr/bin/hl", "hardlink", link="usr/bin/tool"),
     entry("usr/bin/ln", "symlink", link="tool"),
     entry("usr/bin/abs", "symlink", link="/etc/passwd"),
     entry("usr/bin/ping", data=b"ping", mode=0o755, xattrs={"security.capability": CAP}),
     entry("tmp/", "dir", mode=0o1777),
     entry("home/", "dir"), entry("home/u/", "dir", mode=0o700, uid=1000, gid=1000),
     entry("home/u/notes", data=b"n" * 5000, mode=0o600, uid=1000, gid=1000,
           xattrs={"user.mime": b"text/plain", "user.bin": b"\x00\xff\x01"}),
     entry("run/", "dir"), entry("run/fifo", "fifo", mode=0o620),
     entry("dev/", "dir"), entry("dev/null", "chr", mode=0o666, dev=(1, 3)),
     entry("dev/loop9", "blk", mode=0o660, dev=(7, 9), gid=6),
     entry("odd", data=b"odd", mode=0o7001),
     entry("olddir/", "dir"), entry("olddir/f", data=b"f"),
     entry("opq/", "dir", mode=0o750), entry("opq/a", data=b"a"), entry("opq/sub/", "dir"),
     entry("opq/sub/b", data=b"b"),
     entry("gone", data=b"gone")],
    [entry("etc/", "dir"), entry("etc/passwd", data=b"root:x:0:0::/root:/bin/sh\nu:x:1000:1000::/home/u:/bin/sh\n"),
     entry(".wh.gone"), entry(".wh.olddir"),
     entry("opq/", "dir", mode=0o755), entry("opq/.wh..wh..opq"), entry("opq/new", data=b"new"),
     entry("usr/", "dir"), entry("usr/bin/", "dir"), entry("usr/bin/.wh.ln"),
     entry("usr/bin/ln2", "hardlink", link="usr/bin/ping"),
     entry("home/", "dir"), entry("home/u/", "dir", mode=0o750, uid=1000, gid=1000,
                                  xattrs={"user.dir": b"1"})],
    [entry("gone/", "dir", mode=0o711), entry("gone/again", data=b"again"),
     entry("usr/", "dir"), entry("usr/bin/", "dir"), entry("usr/bin/abs", data=b"now a file", mode=0o640),
     entry("opq/", "dir", mode=0o755), entry("opq/sub/", "dir", mode=0o700)],
]


def _tree(top):
    """path -> comparable record, and the hardlink groups (sets of paths sharing an inode)."""
    recs, inodes = {}, {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, top)
            st = os.lstat(path)
            rec = {"type": stat.S_IFMT(st.st_mode), "mode": oct(stat.S_IMODE(st.st_mode)),
                   "owner": (st.st_uid, st.st_gid)}
            if stat.S_ISREG(st.st_mode):
                rec["sha"] = hashlib.sha256(open(path, "rb").read()).hexdigest()
                rec["mtime"] = st.st_mtime_ns
                inodes.setdefault(st.st_ino, set()).add(rel)
            elif stat.S_ISLNK(st.st_mode):
                rec["target"] = os.readlink(path)
                rec["mtime"] = st.st_mtime_ns
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                rec["rdev"] = st.st_rdev
            if not stat.S_ISREG(st.st_mode) and not stat.S_ISLNK(st.st_mode):
                rec["mtime"] = st.st_mtime_ns
            if not stat.S_ISLNK(st.st_mode):
                rec["xattrs"] = {k: os.getxattr(path, k) for k in os.listxattr(path)
                                 if not k.startswith(("trusted.overlay.", "user.rootlesscontainers",
                                                      "security.selinux"))}
            recs[rel] = rec
    return recs, sorted(sorted(g) for g in inodes.values() if len(g) > 1)


def test_merged_view_matches_umoci_unpack(store, snap, tmp_path, make_oci_layout):
    if not shutil.which("umoci"):
        pytest.skip("umoci not installed (apt-get install umoci)")
    tars = [make_tar(layer) for layer in UMOCI_LAYERS]
    layout = make_oci_layout(str(tmp_path / "layout"), layers=tars, ref_name="latest")
    r = subprocess.run(["umoci", "unpack", "--image", f"{layout['path']}:latest", str(tmp_path / "bundle")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    # the same blobs into keel's store
    blobs = os.path.join(layout["path"], "blobs", "sha256")
    for name in os.listdir(blobs):
        with open(os.path.join(blobs, name), "rb") as f:
            store.write_blob(f.read(), "sha256:" + name)
    img = store.add_image(layout["manifest_digest"], ["localhost/umoci:latest"])
    merged = snap.mount_image(img, store)
    try:
        ours, our_links = _tree(merged)
        theirs, their_links = _tree(str(tmp_path / "bundle" / "rootfs"))
    finally:
        snap.unmount_image(img)
    assert sorted(ours) == sorted(theirs)
    diffs = [(p, ours[p], theirs[p]) for p in sorted(ours) if ours[p] != theirs[p]]
    assert not diffs, "\n".join(f"{p}: keel {a} umoci {b}" for p, a, b in diffs)
    assert our_links == their_links
    # spot checks that the comparison covered what it claims to
    assert ours["usr/bin/tool"]["mode"] == "0o4755" and ["usr/bin/hl", "usr/bin/tool"] in our_links
    assert ours["usr/bin/ping"]["xattrs"]["security.capability"] == CAP
    assert ours["home/u/notes"]["xattrs"] == {"user.mime": b"text/plain", "user.bin": b"\x00\xff\x01"}
    assert "gone/again" in ours and "olddir" not in ours and "usr/bin/ln" not in ours
    assert sorted(p for p in ours if p.startswith("opq/")) == ["opq/new", "opq/sub"]
