"""mounts: bind/rbind, ro, tmpfs options, propagation, rootfsPropagation, readonly root,
maskedPaths, readonlyPaths."""

import contextlib
import os
import subprocess
import time

import pytest

from keel.kernel import libc


def _mountinfo(out):
    """mount point -> (options, optional fields, fstype, super options) from mountinfo text."""
    table = {}
    for line in out.splitlines():
        head, _, tail = line.partition(" - ")
        f = head.split()
        t = tail.split()
        if len(f) < 6 or len(t) < 3:
            continue
        table[f[4]] = (f[5].split(","), f[6:], t[0], t[2].split(","))
    return table


@contextlib.contextmanager
def host_mount(source, target, fstype=None, flags=0, data=None):
    """A mount on the host for the test's duration (unmounted after, lazily)."""
    libc.mount(source, str(target), fstype, flags, data)
    try:
        yield target
    finally:
        libc.umount(str(target), libc.MNT_DETACH)


def test_bind_dir(bundle, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "in").write_text("from host\n")
    bundle.mount("/data", source=src, options=["bind"])
    r = bundle.sh("cat /data/in; echo from container > /data/out").run()
    assert r.rc == 0, r
    assert r.out == "from host\n"
    assert (src / "out").read_text() == "from container\n"


def test_bind_file(bundle, tmp_path):
    f = tmp_path / "file.txt"
    f.write_text("single file\n")
    bundle.mount("/etc/the-file", source=f, options=["bind"])
    r = bundle.args("cat", "/etc/the-file").run()
    assert r.rc == 0 and r.out == "single file\n", r


def test_bind_relative_source(bundle):
    os.mkdir(os.path.join(bundle.path, "rel"))
    with open(os.path.join(bundle.path, "rel", "x"), "w") as f:
        f.write("relative\n")
    bundle.mount("/rel", source="rel", options=["rbind"])
    assert bundle.args("cat", "/rel/x").run().out == "relative\n"


def test_bind_type_without_option(bundle, tmp_path):
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "f").write_text("typed\n")
    bundle.mount("/typed", type="bind", source=tmp_path / "t")
    assert bundle.args("cat", "/typed/f").run().out == "typed\n"


def test_ro_bind(bundle, tmp_path):
    src = tmp_path / "ro"
    src.mkdir()
    (src / "f").write_text("keep\n")
    bundle.mount("/ro", source=src, options=["rbind", "ro"])
    r = bundle.sh("cat /ro/f; echo changed > /ro/f; echo rc=$?; touch /ro/new 2>&1").run()
    assert "keep" in r.out
    assert "Read-only file system" in r.out + r.err
    assert "rc=1" in r.out
    assert (src / "f").read_text() == "keep\n"
    assert not (src / "new").exists()


def test_bind_options_nosuid_noexec(bundle, tmp_path):
    src = tmp_path / "opts"
    src.mkdir()
    bundle.mount("/opts", source=src, options=["rbind", "nosuid", "noexec", "nodev"])
    r = bundle.args("cat", "/proc/self/mountinfo").run()
    opts = _mountinfo(r.out)["/opts"][0]
    assert {"nosuid", "noexec", "nodev", "rw"} <= set(opts), opts


def test_rbind_includes_submounts_bind_does_not(make_bundle, tmp_path):
    src = tmp_path / "tree"
    (src / "sub").mkdir(parents=True)
    with host_mount("tmpfs", src / "sub", "tmpfs"):
        (src / "sub" / "deep").write_text("submount\n")
        b1 = make_bundle("rbind")
        b1.mount("/tree", source=src, options=["rbind"])
        r = b1.sh("cat /tree/sub/deep 2>&1").run()
        assert r.out == "submount\n", r
        b2 = make_bundle("bind")
        b2.mount("/tree", source=src, options=["bind"])
        r = b2.sh("ls -A /tree/sub").run()
        assert r.rc == 0 and r.out == "", r


def test_bind_source_missing(bundle, runtime, tmp_path):
    bundle.mount("/x", source=tmp_path / "missing", options=["rbind"])
    r = bundle.create()
    assert r.rc != 0
    assert len(r.err_lines) == 1 and str(tmp_path / "missing") in r.err, r


def test_tmpfs_options(bundle):
    bundle.process["user"] = {"uid": 5, "gid": 6}
    bundle.mount("/scratch", type="tmpfs", source="tmpfs",
                 options=["nosuid", "nodev", "noexec", "size=1m", "mode=700", "uid=5", "gid=6"])
    r = bundle.sh("stat -c '%a %u %g' /scratch; cat /proc/self/mountinfo; "
                  "dd if=/dev/zero of=/scratch/big bs=1k count=2000 2>&1; echo dd=$?").run()
    assert r.rc == 0, r
    lines = r.out.splitlines()
    assert lines[0] == "700 5 6"
    opts, _opt, fstype, sopts = _mountinfo(r.out)["/scratch"]
    assert fstype == "tmpfs"
    assert {"nosuid", "nodev", "noexec"} <= set(opts)
    assert "size=1024k" in sopts and "mode=700" in sopts
    assert "No space left on device" in r.out and "dd=1" in r.out


def test_tmpfs_ro(bundle):
    bundle.mount("/rotmp", type="tmpfs", source="tmpfs", options=["ro"])
    r = bundle.sh("touch /rotmp/x 2>&1; echo rc=$?").run()
    assert "Read-only file system" in r.out and "rc=1" in r.out


def test_tmpcopyup(bundle):
    bundle.mount("/etc", type="tmpfs", source="tmpfs", options=["tmpcopyup", "mode=755"])
    r = bundle.sh("grep -c root /etc/passwd; touch /etc/new && echo wrote; "
                  "grep ' /etc ' /proc/self/mountinfo | cut -d' ' -f9").run()
    assert r.rc == 0, r
    assert r.out.splitlines() == ["1", "wrote", "tmpfs"]
    assert not os.path.exists(bundle.rootfs_path("/etc/new"))


def test_nested_destination_is_created(bundle):
    bundle.mount("/a/b/c", type="tmpfs", source="tmpfs")
    r = bundle.sh("grep -c ' /a/b/c ' /proc/self/mountinfo").run()
    assert r.out == "1\n", r


def test_unknown_mount_type(bundle, runtime):
    bundle.mount("/x", type="no-such-fs", source="none")
    r = bundle.create()
    assert r.rc != 0
    assert len(r.err_lines) == 1 and "/x" in r.err and "no-such-fs" in r.err, r


def test_default_mounts(bundle):
    r = bundle.args("cat", "/proc/self/mountinfo").run()
    t = _mountinfo(r.out)
    assert t["/proc"][2] == "proc"
    assert t["/dev"][2] == "tmpfs"
    assert t["/dev/pts"][2] == "devpts"
    assert t["/dev/shm"][2] == "tmpfs"
    assert t["/dev/mqueue"][2] == "mqueue"
    assert t["/sys"][2] == "sysfs" and "ro" in t["/sys"][0]


@pytest.fixture
def shared_dir(tmp_path):
    """A shared mount on the host (this host's mounts are all private)."""
    d = tmp_path / "shared"
    d.mkdir()
    with host_mount("tmpfs", d, "tmpfs"):
        libc.mount(None, str(d), None, libc.MS_SHARED)
        yield d


def _wait_file(path, timeout=10):
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.01)


@pytest.mark.parametrize("prop,seen", [("rslave", True), ("rshared", True), ("rprivate", False)])
def test_propagation_host_to_container(bundle, runtime, tmp_path, shared_dir, prop, seen):
    out = tmp_path / "out"
    out.mkdir()
    bundle.mount("/shared", source=shared_dir, options=["rbind", prop])
    bundle.mount("/out", source=out, options=["rbind"])
    bundle.sh("touch /out/ready; i=0; while [ $i -lt 100 ]; do "
              "test -e /shared/sub/marker && { echo seen > /out/result; exit 0; }; "
              "sleep 0.02; i=$((i+1)); done; echo not-seen > /out/result")
    bundle.create_ok()
    bundle.start()
    _wait_file(out / "ready")
    (shared_dir / "sub").mkdir()
    with host_mount("tmpfs", shared_dir / "sub", "tmpfs"):
        (shared_dir / "sub" / "marker").write_text("")
        _wait_file(out / "result")
    runtime.wait_status(bundle.id, "stopped")
    assert (out / "result").read_text().strip() == ("seen" if seen else "not-seen")


def test_propagation_container_to_host_with_rshared(bundle, runtime, shared_dir):
    """rshared: a mount made in the container shows on the host (the container needs CAP_SYS_ADMIN)."""
    caps = bundle.process["capabilities"]
    for s in ("bounding", "effective", "permitted"):
        caps[s].append("CAP_SYS_ADMIN")
    (shared_dir / "sub").mkdir()
    bundle.mount("/shared", source=shared_dir, options=["rbind", "rshared"])
    bundle.linux["rootfsPropagation"] = "rshared"  # as docker sets it for an rshared volume
    bundle.sh("mount -t tmpfs -o size=1m tmpfs /shared/sub && touch /shared/sub/from-container && echo ok")
    try:
        r = bundle.run()
        assert r.out == "ok\n", r
        assert (shared_dir / "sub" / "from-container").exists()
    finally:
        subprocess.run(["umount", "-l", str(shared_dir / "sub")], capture_output=True)


def test_propagation_rslave_keeps_container_mounts_in(bundle, runtime, shared_dir):
    caps = bundle.process["capabilities"]
    for s in ("bounding", "effective", "permitted"):
        caps[s].append("CAP_SYS_ADMIN")
    (shared_dir / "sub").mkdir()
    bundle.mount("/shared", source=shared_dir, options=["rbind", "rslave"])
    r = bundle.sh("mount -t tmpfs tmpfs /shared/sub && touch /shared/sub/from-container && echo ok").run()
    assert r.out == "ok\n", r
    assert not (shared_dir / "sub" / "from-container").exists()


@pytest.mark.parametrize("prop,tag", [("shared", "shared:"), ("rshared", "shared:"), ("private", None),
                                      ("rprivate", None), ("unbindable", "unbindable"),
                                      ("runbindable", "unbindable")])
def test_rootfs_propagation(bundle, prop, tag):
    bundle.linux["rootfsPropagation"] = prop
    r = bundle.args("cat", "/proc/self/mountinfo").run()
    assert r.rc == 0, r
    optional = _mountinfo(r.out)["/"][1]
    if tag is None:
        assert optional == [], optional
    else:
        assert any(o.startswith(tag) for o in optional), optional


def test_rootfs_propagation_slave_of_shared_host(bundle, tmp_path, shared_dir):
    """The rootfs inside a shared mount, rootfsPropagation slave: "/" is a slave (master:N)."""
    import shutil

    root = shared_dir / "rootfs"
    shutil.copytree(bundle.rootfs, root, symlinks=True)
    bundle.config["root"]["path"] = str(root)
    bundle.linux["rootfsPropagation"] = "rslave"
    r = bundle.args("cat", "/proc/self/mountinfo").run()
    assert r.rc == 0, r
    optional = _mountinfo(r.out)["/"][1]
    assert any(o.startswith("master:") for o in optional), optional


def test_readonly_root(bundle):
    assert bundle.config["root"]["readonly"] is True
    bundle.mount("/scratch", type="tmpfs", source="tmpfs")
    r = bundle.sh("touch /newfile 2>&1; echo rc=$?; touch /scratch/ok && echo tmpfs-ok").run()
    assert "Read-only file system" in r.out and "rc=1" in r.out
    assert "tmpfs-ok" in r.out
    assert not os.path.exists(bundle.rootfs_path("/newfile"))


def test_writable_root(bundle):
    bundle.config["root"]["readonly"] = False
    r = bundle.sh("echo data > /newfile && cat /newfile").run()
    assert r.out == "data\n", r
    with open(bundle.rootfs_path("/newfile")) as f:
        assert f.read() == "data\n"


def test_masked_paths_default(bundle):
    r = bundle.sh("cat /proc/timer_list | wc -c; ls -A /sys/firmware | wc -l; cat /proc/keys | wc -c").run()
    assert r.rc == 0, r
    assert [x.strip() for x in r.out.splitlines()] == ["0", "0", "0"]


def test_masked_paths_custom(bundle):
    bundle.write_rootfs_file("/etc/secret", "top secret\n")
    os.makedirs(bundle.rootfs_path("/secretdir"))
    bundle.write_rootfs_file("/secretdir/f", "hidden\n")
    bundle.linux["maskedPaths"] = ["/etc/secret", "/secretdir", "/does/not/exist"]
    r = bundle.sh("cat /etc/secret | wc -c; ls -A /secretdir | wc -l; echo x > /etc/secret 2>&1; "
                  "touch /secretdir/y 2>&1; echo done").run()
    assert r.rc == 0, r
    lines = [x.strip() for x in r.out.splitlines()]
    assert lines[:2] == ["0", "0"]
    assert "done" in lines


def test_readonly_paths_default(bundle):
    bundle.process["capabilities"] = {s: ["CAP_SYS_ADMIN", "CAP_DAC_OVERRIDE"]
                                      for s in ("bounding", "effective", "permitted")}
    bundle.config["hostname"] = "before"
    r = bundle.sh("echo after > /proc/sys/kernel/hostname; echo rc=$?; hostname").run()
    assert "Read-only file system" in r.err and "rc=1" in r.out, r
    assert r.out.splitlines()[-1] == "before"


def test_readonly_paths_custom(bundle):
    bundle.config["root"]["readonly"] = False
    os.makedirs(bundle.rootfs_path("/data"))
    bundle.linux["readonlyPaths"] = ["/data", "/missing/is/fine"]
    r = bundle.sh("touch /data/x 2>&1; echo rc=$?; touch /other && echo other-ok").run()
    assert r.rc == 0, r
    assert "Read-only file system" in r.out and "rc=1" in r.out
    assert "other-ok" in r.out


def test_container_mounts_do_not_reach_the_host(bundle, tmp_path):
    bundle.mount("/scratch", type="tmpfs", source="tmpfs")
    src = tmp_path / "b"
    src.mkdir()
    bundle.mount("/b", source=src, options=["rbind"])
    before = [m for m in open("/proc/self/mountinfo") if str(tmp_path) in m or " /tmp " in m]
    bundle.sh("true").create_ok()
    after = [m for m in open("/proc/self/mountinfo") if str(tmp_path) in m or " /tmp " in m]
    assert before == after == []
    assert bundle.start().rc == 0


def test_no_pivot(bundle):
    """--no-pivot: the rootfs is moved over / and chrooted into; the container sees the same."""
    r = bundle.sh("ls /bin/busybox; touch /x 2>&1; echo rc=$?; grep -c ' / ' /proc/self/mountinfo").run(
        "--no-pivot")
    assert r.rc == 0, r
    lines = r.out.splitlines()
    assert lines[0] == "/bin/busybox"
    assert "Read-only file system" in r.out and "rc=1" in r.out
