"""`keel cp` end to end, on keel-runtime and runc: both directions, tar streams, running and
stopped containers, and hostile symlinks planted in the container (absolute, "../..", to a host
directory, swapped while the copy runs): nothing outside the container's root is ever read or
written (Docker CVE-2018-15664 is the class)."""

import hashlib
import io
import os
import stat
import tarfile
import time
import uuid

from test_ops import IMAGE, keel, no_leftovers  # noqa: F401  (fixtures)

from keel.image.snapshot import is_mounted


def _fail(r, text):
    assert r.returncode == 125, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and text in lines[0], r.stderr


def _rootfs(keel, name):
    cid = keel.ok("inspect", "--format", "json", name)
    import json

    return json.loads(cid)[0]["GraphDriver"]["Data"]["MergedDir"]


def _wait_log(keel, name, text, timeout=10):
    deadline = time.monotonic() + timeout
    while text not in keel.ok("logs", name):
        assert time.monotonic() < deadline, keel.ok("logs", name)
        time.sleep(0.05)
    return keel.ok("logs", name)


def test_round_trip_running_container(keel, tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "data.bin").write_bytes(os.urandom(300_000))
    (src / "sub" / "script.sh").write_text("echo hi\n")
    os.chmod(src / "sub" / "script.sh", 0o4750)
    os.chmod(src / "sub", 0o710)
    os.symlink("../data.bin", src / "sub" / "rel-link")
    os.link(src / "data.bin", src / "hard.bin")
    os.utime(src / "data.bin", (1_000_000_000, 1_000_000_000))
    keel.ok("run", "--runtime", keel.runtime, "-d", "--name", "c", IMAGE, "sh", "-c",
            "while [ ! -f /tmp/src/sub/script.sh ]; do sleep 0.05; done; sleep 0.2; "
            "stat -c '%a %u %s' /tmp/src/sub/script.sh /tmp/src/data.bin; readlink /tmp/src/sub/rel-link; "
            "echo done; sleep 1000")
    keel.ok("cp", src, "c:/tmp")                     # an existing directory: SRC goes in by name
    out = _wait_log(keel, "c", "done")
    assert "4750 0 8\n" in out and "644 0 300000\n" in out and "../data.bin\n" in out
    back = tmp_path / "back"
    keel.ok("cp", "c:/tmp/src", back)                # a new name: the directory becomes it
    for rel in ("data.bin", "hard.bin", "sub/script.sh"):
        assert (back / rel).read_bytes() == (src / rel).read_bytes()
        assert stat.S_IMODE(os.stat(back / rel).st_mode) == stat.S_IMODE(os.stat(src / rel).st_mode)
    assert stat.S_IMODE(os.stat(back / "sub").st_mode) == 0o710
    assert os.readlink(back / "sub" / "rel-link") == "../data.bin"
    assert os.stat(back / "data.bin").st_ino == os.stat(back / "hard.bin").st_ino
    assert int(os.stat(back / "data.bin").st_mtime) == 1_000_000_000
    # a single file onto an existing file, and into an existing directory
    keel.ok("cp", "c:/etc/passwd", back / "data.bin")
    assert (back / "data.bin").read_bytes().startswith(b"root:x:0:0")
    keel.ok("cp", "c:/etc/group", back / "sub")
    assert (back / "sub" / "group").read_bytes().startswith(b"root:x:0:")
    # SRC/. copies the content
    dot = tmp_path / "dot"
    dot.mkdir()
    keel.ok("cp", "c:/tmp/src/sub/.", dot)
    assert sorted(os.listdir(dot)) == ["rel-link", "script.sh"]


def test_stopped_container_is_mounted_only_for_the_copy(keel, tmp_path):
    keel.run("--name", "s", IMAGE, "sh", "-c", "cat /in/msg 2>/dev/null || echo none")
    assert keel.ok("wait", "s").strip() == "0"
    rootfs = _rootfs(keel, "s")
    assert not is_mounted(rootfs)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "msg").write_text("hello from the host\n")
    _fail(keel("cp", tmp_path / "in" / "msg", "s:/in/"), "no such directory")   # trailing /: a directory
    keel.ok("cp", tmp_path / "in", "s:/")
    assert not is_mounted(rootfs)                        # unmounted again after the copy
    keel.ok("cp", "s:/in/msg", tmp_path / "out")
    assert (tmp_path / "out").read_text() == "hello from the host\n"
    keel.ok("start", "-a", "s")
    assert keel.ok("logs", "s").splitlines() == ["none", "hello from the host"]
    assert not is_mounted(rootfs)


def test_tar_streams(keel, tmp_path):
    keel.run("--name", "t", IMAGE, "true")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data, mode in (("a.txt", b"alpha", 0o600), ("d/b.txt", b"beta", 0o755)):
            ti = tarfile.TarInfo(name)
            ti.size, ti.mode, ti.uid = len(data), mode, 1234
            tf.addfile(ti, io.BytesIO(data))
    r = keel("cp", "-", "t:/", input_bytes=buf.getvalue())
    assert r.returncode == 0, r.stderr
    r = keel("cp", "t:/d", "-", binary=True)
    assert r.returncode == 0
    with tarfile.open(fileobj=io.BytesIO(r.stdout)) as tf:
        members = {m.name: m for m in tf.getmembers()}
        assert sorted(members) == ["d", "d/b.txt"]
        assert tf.extractfile("d/b.txt").read() == b"beta"
        assert members["d/b.txt"].mode == 0o755 and members["d/b.txt"].uid == 0   # --archive: the container's user
    # --archive=false keeps the stream's owner
    r = keel("cp", "--archive=false", "-", "t:/", input_bytes=buf.getvalue())
    assert r.returncode == 0, r.stderr
    r = keel("cp", "t:/a.txt", "-", binary=True)
    with tarfile.open(fileobj=io.BytesIO(r.stdout)) as tf:
        assert tf.getmember("a.txt").uid == 1234 and tf.getmember("a.txt").mode == 0o600
    # a hostile stream: '..' is refused, nothing is written
    bad = io.BytesIO()
    with tarfile.open(fileobj=bad, mode="w") as tf:
        ti = tarfile.TarInfo("../../../escape-" + uuid.uuid4().hex)
        ti.size = 1
        tf.addfile(ti, io.BytesIO(b"x"))
    _fail(keel("cp", "-", "t:/", input_bytes=bad.getvalue()), "'..' in a name")
    _fail(keel("cp", "-", "t:/", input_bytes=b"not a tar stream at all" * 40), "tar stream")


def _hash_tree(path):
    h = hashlib.sha256()
    for root, dirs, files in sorted(os.walk(path)):
        for n in sorted(files):
            p = os.path.join(root, n)
            h.update(p.encode())
            with open(p, "rb") as f:
                h.update(f.read())
    return h.hexdigest()


def test_hostile_symlinks_stay_inside(keel, tmp_path):
    host_dir = tmp_path / "host-secret"
    host_dir.mkdir()
    (host_dir / "secret").write_text("host only\n")
    marker = "keel-cp-" + uuid.uuid4().hex
    plant = (f"ln -s /etc /abs; ln -s ../../../../../../../etc /rel; ln -s {host_dir} /tohost; "
             f"mkdir -p /data; ln -s / /data/root; echo planted")
    keel.run("--name", "h", IMAGE, "sh", "-c", plant)
    keel.ok("wait", "h")
    etc_before = {n: os.stat(os.path.join("/etc", n), follow_symlinks=False).st_mtime_ns for n in os.listdir("/etc")}
    secret_before = _hash_tree(host_dir)
    (tmp_path / "payload").write_text("payload\n")
    # writes through the planted links land in the container's /etc
    keel.ok("cp", tmp_path / "payload", f"h:/abs/{marker}-1")
    keel.ok("cp", tmp_path / "payload", f"h:/rel/{marker}-2")
    keel.ok("cp", tmp_path / "payload", f"h:/data/root/etc/{marker}-3")
    _fail(keel("cp", tmp_path / "payload", "h:/tohost"), "no such file or directory")  # dangles inside
    for i in (1, 2, 3):
        assert not os.path.exists(f"/etc/{marker}-{i}")
    # reads through them read the container's files, never the host's
    keel.ok("cp", "h:/rel/passwd", tmp_path / "passwd")
    keel.ok("cp", "h:/abs/" + f"{marker}-1", tmp_path / "m1")
    assert (tmp_path / "m1").read_text() == "payload\n"
    with open("/etc/passwd", "rb") as f:
        assert (tmp_path / "passwd").read_bytes() != f.read()
    assert (tmp_path / "passwd").read_bytes().startswith(b"root:x:0:0")
    r = keel("cp", f"h:{host_dir}/secret", tmp_path / "stolen")
    _fail(r, "no such file or directory")
    assert not (tmp_path / "stolen").exists()
    # the link itself is copied as a link (no -L) and -L follows it inside the container
    keel.ok("cp", "h:/abs", tmp_path / "abs-link")
    assert os.readlink(tmp_path / "abs-link") == "/etc"
    keel.ok("cp", "-L", "h:/rel", tmp_path / "rel-followed")
    assert sorted(os.listdir(tmp_path / "rel-followed")) == sorted(
        os.listdir(os.path.join(_mounted_view(keel, "h"), "etc")))
    # a lexical escape is refused
    _fail(keel("cp", tmp_path / "payload", "h:../../../tmp/x"), "leads outside the container's root")
    _fail(keel("cp", "h:/../etc/passwd", tmp_path / "x"), "leads outside the container's root")
    assert {n: os.stat(os.path.join("/etc", n), follow_symlinks=False).st_mtime_ns
            for n in os.listdir("/etc")} == etc_before
    assert _hash_tree(host_dir) == secret_before and os.listdir(host_dir) == ["secret"]


def _mounted_view(keel, name):
    """A copy of the container's files taken with keel cp (its rootfs is not mounted now)."""
    out = keel.root.parent / f"view-{name}"
    if not out.exists():
        keel.ok("cp", f"{name}:/", out)
    return str(out)


def test_symlink_swapped_during_copy(keel, tmp_path):
    """The CVE-2018-15664 race: the container swaps a directory for a symlink to / while cp
    writes into it; every copy lands inside the container."""
    target = tmp_path / "hostroot"
    target.mkdir()
    swap = (f"mkdir -p /w/d {target}; while true; do mv /w/d /w/x; ln -s {target} /w/d; "
            "rm /w/d; mv /w/x /w/d; done")
    keel.ok("run", "--runtime", keel.runtime, "-d", "--name", "race", IMAGE, "sh", "-c", swap)
    (tmp_path / "f").write_text("f\n")
    ok = 0
    for i in range(25):
        r = keel("cp", tmp_path / "f", f"race:/w/d/f{i}")
        ok += r.returncode == 0
        if r.returncode != 0:
            assert r.stderr.count("\n") == 1 and r.returncode == 125, r.stderr
    assert ok > 0
    assert os.listdir(target) == []


def test_bad_input(keel, tmp_path):
    keel.run("--name", "b", IMAGE, "true")
    (tmp_path / "f").write_text("f")
    _fail(keel("cp", tmp_path / "f", "nosuch:/x"), "no container with name or id 'nosuch'")
    _fail(keel("cp", "b:/x", "b:/y"), "b:/x: no such file or directory")
    _fail(keel("cp", "b:/etc/passwd", "nosuch:/y"), "no container with name or id 'nosuch'")
    _fail(keel("cp", tmp_path / "f", tmp_path / "g"), "one of SRC and DEST must be CONTAINER:PATH")
    _fail(keel("cp", "b:/no/such/file", tmp_path / "g"), "no such file or directory")
    _fail(keel("cp", tmp_path / "missing", "b:/x"), "no such file or directory")
    _fail(keel("cp", tmp_path / "f", "b:/no/such/dir/x"), "no such file or directory")
    _fail(keel("cp", "b:/etc", tmp_path / "f"), "cannot copy a directory onto a file")
    _fail(keel("cp", "b:/etc/passwd", tmp_path / "nodir" / "x"), "no such file or directory")
    _fail(keel("cp", tmp_path / "f", "b:/etc/passwd/x"), "not a directory")
    _fail(keel("cp", tmp_path / "f", "-"), "one of SRC and DEST must be CONTAINER:PATH")
    assert not is_mounted(_rootfs(keel, "b"))
    assert not (tmp_path / "g").exists()


def test_whole_root_of_a_running_container_skips_kernel_filesystems(keel, tmp_path):
    keel.ok("run", "--runtime", keel.runtime, "-d", "--name", "r", IMAGE, "sh", "-c",
            "echo inside > /marker; sleep 1000")
    deadline = time.monotonic() + 10
    while keel("cp", "r:/marker", tmp_path / "m").returncode != 0:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    out = tmp_path / "all"
    keel.ok("cp", "r:/", out)
    assert (out / "marker").read_text() == "inside\n"
    assert os.path.isfile(out / "bin" / "busybox")
    assert not (out / "proc").exists() and not (out / "sys").exists()   # procfs, sysfs: not walked
    r = keel("cp", "r:/", "-", binary=True)
    with tarfile.open(fileobj=io.BytesIO(r.stdout)) as tf:
        names = tf.getnames()
    assert "marker" in names and not any(n.startswith("proc/") for n in names)
    assert "bin/busybox" in names


def test_container_to_container(keel, tmp_path):
    """podman's container-to-container copy: running to stopped, stopped to stopped (opposite
    directions at once cannot deadlock), and within one container."""
    keel.ok("run", "--runtime", keel.runtime, "-d", "--name", "live", IMAGE, "sh", "-c",
            "mkdir -p /srv/site; echo page > /srv/site/index.html; ln -s /etc /srv/site/etc; sleep 1000")
    keel.run("--name", "s1", IMAGE, "sh", "-c", "echo one > /one")
    keel.run("--name", "s2", IMAGE, "sh", "-c", "echo two > /two")
    deadline = time.monotonic() + 10
    while keel("cp", "live:/srv/site/index.html", tmp_path / "probe").returncode != 0:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    keel.ok("cp", "live:/srv/site", "s1:/")
    keel.ok("cp", "s1:/site/index.html", tmp_path / "index.html")
    assert (tmp_path / "index.html").read_text() == "page\n"
    keel.ok("cp", "s1:/site/etc", tmp_path / "etc-link")                # still a link, not /etc
    assert os.readlink(tmp_path / "etc-link") == "/etc"
    import subprocess
    import sys

    base = [sys.executable, "-m", "keel.cli.main", "--root", str(keel.root), "--runroot", str(keel.runroot)]
    ps = [subprocess.Popen(base + ["cp", a, b], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE) for a, b in (("s1:/one", "s2:/"), ("s2:/two", "s1:/"))]
    for p in ps:
        assert p.wait(timeout=60) == 0, p.stderr.read()
    keel.ok("cp", "s1:/one", "s1:/one-again")
    for ref, want in (("s1:/two", "two\n"), ("s2:/one", "one\n"), ("s1:/one-again", "one\n")):
        keel.ok("cp", ref, tmp_path / "x")
        assert (tmp_path / "x").read_text() == want
    for name in ("s1", "s2"):
        assert not is_mounted(_rootfs(keel, name))


def test_fifos_are_never_opened(keel, tmp_path):
    """A fifo planted where cp writes, or in a tree it reads, is replaced or copied as a fifo:
    opening it would hang the copy (or, for a device node, write to the device)."""
    keel.run("--name", "ff", IMAGE, "sh", "-c", "mkfifo /pipe; mkdir /d; mkfifo /d/p; echo x > /d/f")
    (tmp_path / "f").write_text("data\n")
    keel.ok("cp", tmp_path / "f", "ff:/pipe", timeout=30)          # replaced, not written through
    keel.ok("cp", "ff:/pipe", tmp_path / "back", timeout=30)
    assert (tmp_path / "back").read_text() == "data\n"
    keel.ok("cp", "ff:/d", tmp_path / "d", timeout=30)
    assert stat.S_ISFIFO(os.lstat(tmp_path / "d" / "p").st_mode)
    assert (tmp_path / "d" / "f").read_text() == "x\n"
