"""Hostile layers never write outside their destination.

Every case builds a tarball with tarfile that tries to escape (absolute paths, "..", symlinks
planted by an earlier entry or an earlier layer, hardlinks out or through symlinks, whiteout
tricks, setuid through a symlink, device nodes), applies it, and proves that a sentinel tree
beside the destination is byte-for-byte, mode-for-mode and mtime-for-mtime what it was, with
no file added or removed anywhere outside the destination. A case may fail with UnpackError
(naming the entry) or succeed by landing inside the destination; it may never touch outside.
Classes: containerd CVE-2021-32760 (chmod through a symlink), Docker CVE-2018-15664 (writes
through a symlink), and the tar path-traversal family.
"""

import functools
import hashlib
import io
import os
import stat
import tarfile

import pytest

import layer_helpers
from layer_helpers import make_tar

from keel.image.errors import UnpackError
from keel.image.unpack import apply_layer

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="unpack tests need root")

MTIME = 1_500_000_000
entry = functools.partial(layer_helpers.entry, mtime=MTIME + 12345)


def snapshot(top, skip):
    """Everything under `top` except `skip`: type, mode, owner, size, mtime, content, link
    target, xattrs."""
    seen = {}
    for dirpath, dirnames, filenames in os.walk(top, followlinks=False):
        if os.path.abspath(dirpath) == os.path.abspath(skip):
            dirnames[:] = []
            continue
        for name in [""] + dirnames + filenames:
            path = os.path.join(dirpath, name) if name else dirpath
            if os.path.abspath(path) == os.path.abspath(skip):
                continue
            st = os.lstat(path)
            rec = [stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid,
                   st.st_size, st.st_mtime_ns, st.st_nlink]
            if stat.S_ISREG(st.st_mode):
                with open(path, "rb") as f:
                    rec.append(hashlib.sha256(f.read()).hexdigest())
            elif stat.S_ISLNK(st.st_mode):
                rec.append(os.readlink(path))
            if not stat.S_ISLNK(st.st_mode):
                rec.append(sorted((k, os.getxattr(path, k)) for k in os.listxattr(path)))
            seen[os.path.relpath(path, top)] = rec
    return seen


@pytest.fixture
def world(tmp_path):
    """tmp/outside: the sentinel (files, a dir, a setuid-able binary); tmp/dest: the target."""
    out = tmp_path / "outside"
    (out / "etc").mkdir(parents=True)
    (out / "etc/passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    (out / "bin").mkdir()
    (out / "bin/tool").write_bytes(b"\x7fELF tool")
    os.chmod(out / "bin/tool", 0o755)
    os.chmod(out / "etc/passwd", 0o644)
    for p in (out / "etc/passwd", out / "bin/tool", out / "etc", out / "bin", out):
        os.utime(p, (MTIME, MTIME))
    dest = tmp_path / "dest"
    dest.mkdir()
    before = snapshot(str(tmp_path), str(dest))

    class World:
        pass

    w = World()
    w.tmp, w.out, w.dest = tmp_path, out, dest
    w.check = lambda: _check(before, snapshot(str(tmp_path), str(dest)))
    return w


def _check(before, after):
    added = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    changed = sorted(k for k in set(before) & set(after) if before[k] != after[k])
    assert not (added or removed or changed), f"outside changed: added {added}, removed {removed}, " \
                                              f"changed {[(k, before[k], after[k]) for k in changed]}"


def apply(w, entries):
    return apply_layer(io.BytesIO(make_tar(entries)), str(w.dest))


def attempt(w, entries):
    """Apply; return the UnpackError message, or None if the layer was accepted."""
    try:
        apply(w, entries)
        return None
    except UnpackError as e:
        msg = str(e)
        assert "\n" not in msg and msg.startswith(("entry ", "layer")), msg
        return msg


def O(w, *rest):  # an absolute path into the sentinel
    return os.path.join(str(w.out), *rest)


# -- paths -------------------------------------------------------------------------------------


def test_absolute_paths_land_inside(world):
    w = world
    apply(w, [entry(O(w, "etc/passwd"), data=b"pwned"), entry("/abs", data=b"a")])
    w.check()
    assert (w.dest / O(w, "etc/passwd").lstrip("/")).read_bytes() == b"pwned"
    assert (w.dest / "abs").read_bytes() == b"a"


@pytest.mark.parametrize("name", ["../outside/etc/passwd", "a/../../outside/etc/passwd", "./../x",
                                  "a/b/../../../x", "..", "../"])
def test_dotdot_is_refused(world, name):
    msg = attempt(world, [entry("a/", "dir"), entry(name, data=b"pwned")])
    assert msg is not None and "'..' in path" in msg
    world.check()


def test_dotdot_in_pax_and_gnu_long_names_is_refused(world):
    w = world
    pax = entry("innocent", data=b"x", pax={"path": "../outside/etc/passwd"})
    assert "'..' in path" in attempt(w, [pax])
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        ti = tarfile.TarInfo("../" * 40 + "x" * 100)
        tf.addfile(ti, io.BytesIO(b""))
    with pytest.raises(UnpackError, match="'..' in path"):
        apply_layer(io.BytesIO(buf.getvalue()), str(w.dest))
    w.check()


# -- symlinks ------------------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["OUT", "OUT/etc", "../outside", "../../../../../..", "/"])
def test_write_through_a_symlink_planted_by_an_earlier_entry(world, target):
    w = world
    target = target.replace("OUT", str(w.out))
    attempt(w, [entry("a", "symlink", link=target), entry("a/etc/passwd", data=b"pwned"),
                entry("a/passwd", data=b"pwned"), entry("a/etc/", "dir", mode=0o777),
                entry("a/new", "fifo")])
    w.check()


def test_symlink_chain_and_loop(world):
    w = world
    attempt(w, [entry("a", "symlink", link="b"), entry("b", "symlink", link="c/.."),
                entry("c", "symlink", link=str(w.out)), entry("a/etc/passwd", data=b"pwned")])
    w.check()
    msg = attempt(w, [entry("loop", "symlink", link="loop"), entry("loop/x", data=b"x")])
    assert msg and msg.startswith("entry loop/x")
    w.check()


def test_write_through_a_symlink_from_an_earlier_layer(world):
    w = world
    apply(w, [entry("etc", "symlink", link=str(w.out / "etc")),
              entry("up", "symlink", link="../outside"),
              entry("bin", "symlink", link=str(w.out / "bin")),
              entry(str(w.out / "etc").lstrip("/") + "/", "dir")])
    for second in ([entry("etc/passwd", data=b"pwned")], [entry("up/etc/passwd", data=b"pwned")],
                   [entry("bin/tool", data=b"evil", mode=0o4777)]):
        msg = attempt(w, second)
        # a dangling link (its target missing inside the destination) is refused
        assert msg is None or "dangling symlink" in msg
        w.check()
    # where it was accepted it landed inside: the symlink resolves with the destination as "/"
    assert (w.dest / str(w.out / "etc/passwd").lstrip("/")).read_bytes() == b"pwned"


@pytest.mark.parametrize("kind", ["file", "dir", "fifo", "chr", "symlink"])
def test_setuid_and_chmod_never_go_through_a_symlink(world, kind):
    """CVE-2021-32760: an entry named like an existing symlink must replace the symlink, and
    its mode (setuid here) must go to what was made, never to the symlink's target."""
    w = world
    for planted_by_earlier_layer in (False, True):
        first = [entry("s", "symlink", link=str(w.out / "bin/tool")),
                 entry("d", "symlink", link=str(w.out / "bin"))]
        second = [entry("s", kind, data=b"new" if kind == "file" else b"", mode=0o6777,
                        link="elsewhere", dev=(1, 3)),
                  entry("d", "dir" if kind != "dir" else "file", mode=0o4777)]
        if planted_by_earlier_layer:
            apply(w, first)
            apply(w, second)
        else:
            apply(w, first + second)
        w.check()
        st = os.lstat(w.dest / "s")
        if kind != "symlink":
            assert not stat.S_ISLNK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o6777
        else:
            assert os.readlink(w.dest / "s") == "elsewhere"


# -- hardlinks -------------------------------------------------------------------------------------


@pytest.mark.parametrize("link", ["OUT/etc/passwd", "../outside/etc/passwd", "a/etc/passwd",
                                  "a/../../outside/etc/passwd", "/etc/passwd"])
def test_hardlinks_to_outside_are_refused(world, link):
    w = world
    msg = attempt(w, [entry("a", "symlink", link=str(w.out)),
                      entry("h", "hardlink", link=link.replace("OUT", str(w.out))),
                      entry("h", data=b"pwned")])
    assert msg is not None and msg.startswith("entry h:")
    w.check()
    assert os.lstat(w.out / "etc/passwd").st_nlink == 1


def test_hardlink_to_a_symlink_links_the_symlink_itself(world):
    w = world
    apply(w, [entry("s", "symlink", link=str(w.out / "etc/passwd")),
              entry("h", "hardlink", link="s"),
              entry("d/", "dir"), entry("d/x", "hardlink", link="s")])
    w.check()
    assert os.path.islink(w.dest / "h") and os.lstat(w.dest / "h").st_ino == os.lstat(w.dest / "s").st_ino
    # then writing an entry over the hardlinked symlink replaces it
    apply(w, [entry("h", data=b"pwned", mode=0o4755)])
    w.check()
    assert (w.dest / "h").read_bytes() == b"pwned"


def test_hardlink_through_a_symlinked_directory_stays_inside(world):
    w = world
    apply(w, [entry("real/", "dir"), entry("real/f", data=b"f"), entry("lnk", "symlink", link="/real"),
              entry("h", "hardlink", link="lnk/f")])
    w.check()
    assert os.lstat(w.dest / "h").st_ino == os.lstat(w.dest / "real/f").st_ino


# -- whiteouts -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [".wh...", ".wh..", ".wh.", "a/.wh...", "a/.wh."])
def test_whiteout_tricks_are_refused(world, name):
    msg = attempt(world, [entry("a/", "dir"), entry(name)])
    assert msg is not None and "invalid whiteout name" in msg
    world.check()


def test_whiteouts_and_opaque_dirs_through_symlinks_stay_inside(world):
    w = world
    # an earlier layer planted symlinks; the whiteout must remove the link, not its target
    apply(w, [entry("x", "symlink", link=str(w.out)), entry("y", "symlink", link=str(w.out / "etc")),
              entry("z", "symlink", link="../outside"), entry("keep/", "dir"),
              entry("keep/link", "symlink", link=str(w.out / "etc"))])
    for second in ([entry(".wh.x")], [entry("y/.wh.passwd")], [entry("z/.wh..wh..opq")],
                   [entry("keep/.wh..wh..opq")], [entry("/.wh..wh..opq")], [entry(".wh.keep")]):
        msg = attempt(w, second)
        assert msg is None or "dangling symlink" in msg
        w.check()
    assert not os.path.islink(w.dest / "x")
    assert os.listxattr(w.out) == []


def test_replacing_a_directory_that_holds_symlinks_does_not_follow_them(world):
    w = world
    apply(w, [entry("d/", "dir"), entry("d/out", "symlink", link=str(w.out)),
              entry("d/sub/", "dir"), entry("d/sub/up", "symlink", link="../../../outside/etc")])
    apply(w, [entry("d", data=b"now a file")])
    w.check()
    assert (w.dest / "d").read_bytes() == b"now a file"


# -- device nodes ----------------------------------------------------------------------------------


def test_device_nodes_are_created_not_opened(world):
    w = world
    # a node named like an existing symlink to a host file; a node over a host device path
    apply(w, [entry("null", "symlink", link="/dev/null"),
              entry("null", "chr", dev=(1, 3), mode=0o666),
              entry("dev/sda", "blk", dev=(8, 0), mode=0o660),
              entry("tool", "symlink", link=str(w.out / "bin/tool")),
              entry("tool", "fifo", mode=0o4777)])
    w.check()
    assert stat.S_ISCHR(os.lstat(w.dest / "null").st_mode)
    assert stat.S_ISBLK(os.lstat(w.dest / "dev/sda").st_mode)
    # and the host's /dev/null is what it was
    assert stat.S_IMODE(os.stat("/dev/null").st_mode) == 0o666


def test_xattrs_cannot_reach_overlayfs_or_outside(world):
    w = world
    ti, _ = entry("a/", "dir", pax={"SCHILY.xattr.trusted.overlay.redirect": str(w.out),
                                    "SCHILY.xattr.trusted.overlay.opaque": "y"})
    apply(w, [(ti, b""), entry("s", "symlink", link=str(w.out / "etc/passwd"),
                              pax={"SCHILY.xattr.trusted.x": "1"})])
    w.check()
    assert os.listxattr(w.dest / "a") == []
    assert os.getxattr(w.dest / "s", "trusted.x", follow_symlinks=False) == b"1"
