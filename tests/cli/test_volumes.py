"""Storage for `keel run`: bind mounts, named and anonymous volumes (with copy-up from the
image), tmpfs, --mount, and the `keel volume` commands, on keel-runtime and runc."""

import json
import os
import stat

from test_containers import IMAGE, keel, no_leftovers  # noqa: F401 (fixtures)


def test_bind_mount_rw_and_ro(keel, tmp_path):
    share = tmp_path / "share"
    share.mkdir()
    (share / "in.txt").write_text("from host\n")
    out = keel.ok("run", "--runtime", keel.runtime, "--rm", "-v", f"{share}:/data", IMAGE, "sh", "-c",
                  "cat /data/in.txt; echo from container > /data/out.txt")
    assert out == "from host\n"
    assert (share / "out.txt").read_text() == "from container\n"
    r = keel.run("--rm", "-v", f"{share}:/data:ro,z", IMAGE, "sh", "-c", "echo x > /data/new.txt")
    assert r.returncode != 0 and "Read-only file system" in r.stderr, r
    assert not (share / "new.txt").exists()
    # a single file, and --mount's spelling
    out = keel.ok("run", "--runtime", keel.runtime, "--rm", "--mount",
                  f"type=bind,source={share / 'in.txt'},target=/etc/greeting,readonly", IMAGE,
                  "sh", "-c", "cat /etc/greeting; echo y > /etc/greeting || echo REFUSED")
    assert out == "from host\nREFUSED\n"


def test_named_volume_copied_up_and_persists(keel):
    # first use: the image's /etc is copied into the new volume
    out = keel.ok("run", "--runtime", keel.runtime, "--rm", "-v", "conf:/etc", IMAGE, "sh", "-c",
                  "grep -c '^root:' /etc/passwd; echo kept > /etc/note")
    assert out == "1\n"
    vol = json.loads(keel.ok("volume", "inspect", "conf"))[0]
    assert vol["Name"] == "conf" and vol["Driver"] == "local" and vol["NeedsCopyUp"] is False
    assert os.path.isfile(os.path.join(vol["Mountpoint"], "passwd"))
    # another container, another path: the content is the volume's, not copied again
    out = keel.ok("run", "--runtime", keel.runtime, "--rm", "-v", "conf:/srv", IMAGE, "sh", "-c",
                  "cat /srv/note; ls /srv | grep -c passwd")
    assert out == "kept\n1\n"
    # nocopy: an empty volume stays empty
    out = keel.ok("run", "--runtime", keel.runtime, "--rm", "-v", "empty:/etc:nocopy", IMAGE,
                  "/bin/busybox", "ls", "-A", "/etc")
    assert out == ""
    # --mount type=volume
    out = keel.ok("run", "--runtime", keel.runtime, "--rm", "--mount", "type=volume,source=conf,target=/c,readonly",
                  IMAGE, "sh", "-c", "cat /c/note; touch /c/x || echo REFUSED")
    assert out == "kept\nREFUSED\n"
    assert keel.ok("volume", "ls", "-q").split() == ["conf", "empty"]
    # a new volume where the image has nothing goes to the container's user (podman)
    out = keel.ok("run", "--runtime", keel.runtime, "--rm", "-u", "1000:1000", "-v", "mine:/home/u", IMAGE,
                  "sh", "-c", "echo ok > /home/u/f && stat -c %u:%g /home/u")
    assert out == "1000:1000\n"


def test_anonymous_volumes_and_rm_v(keel):
    cid = keel.ok("create", "--runtime", keel.runtime, "-v", "/data", IMAGE, "true").strip()
    anon = keel.ok("volume", "ls", "-q").split()
    assert len(anon) == 1 and len(anon[0]) == 64
    assert json.loads(keel.ok("volume", "inspect", anon[0]))[0]["Anonymous"] is True
    mounts = json.loads(keel.ok("inspect", cid))[0]["Mounts"]
    assert mounts[0]["Destination"] == "/data" and mounts[0]["Name"] == anon[0]
    keel.ok("rm", cid)
    assert keel.ok("volume", "ls", "-q").split() == anon      # rm without -v keeps it
    keel.ok("volume", "rm", anon[0])
    cid = keel.ok("create", "--runtime", keel.runtime, "-v", "/data", "-v", "named:/n", IMAGE, "true").strip()
    keel.ok("rm", "-v", cid)
    assert keel.ok("volume", "ls", "-q").split() == ["named"]  # named volumes stay
    keel.ok("run", "--runtime", keel.runtime, "--rm", "-v", "/data", IMAGE, "true")
    assert keel.ok("volume", "ls", "-q").split() == ["named"]  # --rm removes anonymous ones


def test_tmpfs(keel):
    out = keel.ok("run", "--runtime", keel.runtime, "--rm", "--tmpfs", "/scratch:size=1m,mode=1770",
                  "--mount", "type=tmpfs,target=/t2,tmpfs-size=2m", IMAGE, "sh", "-c",
                  "grep -E ' /(scratch|t2) ' /proc/mounts; stat -c %a /scratch; echo x > /scratch/f && cat /scratch/f")
    lines = out.splitlines()
    scratch = next(ln for ln in lines if " /scratch " in ln)
    t2 = next(ln for ln in lines if " /t2 " in ln)
    assert scratch.split()[2] == "tmpfs" and "size=1024k" in scratch and "noexec" in scratch
    assert t2.split()[2] == "tmpfs" and "size=2048k" in t2
    assert lines[-2:] == ["1770", "x"]


def test_volume_commands(keel):
    assert keel.ok("volume", "create", "--label", "app=web", "data") == "data\n"
    r = keel("volume", "create", "data")
    assert r.returncode == 125 and "already exists" in r.stderr
    assert keel.ok("volume", "create", "--ignore", "data") == "data\n"
    keel.ok("volume", "create", "spare")
    listed = json.loads(keel.ok("volume", "ls", "--format", "json"))
    assert [v["Name"] for v in listed] == ["data", "spare"]
    assert set(listed[0]) >= {"Name", "Driver", "Mountpoint", "CreatedAt", "Labels", "Scope", "Options"}
    assert keel.ok("volume", "ls", "-q", "--filter", "label=app=web") == "data\n"
    assert keel("volume", "exists", "data").returncode == 0 and keel("volume", "exists", "nope").returncode == 1
    assert "DRIVER" in keel.ok("volume", "ls")
    cid = keel.ok("create", "--runtime", keel.runtime, "-v", "data:/d", IMAGE, "true").strip()
    r = keel("volume", "rm", "data")
    assert r.returncode == 125 and "being used" in r.stderr and r.stderr.count("\n") == 1
    assert keel.ok("volume", "ls", "-q", "--filter", "dangling=true") == "spare\n"
    # prune asks first (no answer: nothing removed), then removes only unused volumes
    assert keel.ok("volume", "prune") == ""
    assert keel.ok("volume", "prune", "-f") == "spare\n"
    assert keel.ok("volume", "ls", "-q") == "data\n"
    # rm -f removes the containers using it
    assert keel.ok("volume", "rm", "-f", "data") == "data\n"
    assert keel.ps("-a") == [] and keel.ok("volume", "ls", "-q") == ""
    r = keel("volume", "rm", "data")
    assert r.returncode == 125 and "no such volume" in r.stderr
    r = keel("volume", "inspect", "nope")
    assert r.returncode == 125 and "no such volume" in r.stderr
    for bad in (["volume", "create", "-bad"], ["volume", "create", "--driver", "nfs", "x"],
                ["volume", "create", "-o", "type=tmpfs", "x"]):
        r = keel(*bad)
        assert r.returncode == 125 and r.stderr.count("\n") == 1, (bad, r.stderr)
    assert keel.ok("volume", "ls", "-q") == ""
    del cid


def test_copy_up_stays_inside_the_rootfs(tmp_path):
    """A hostile image: the mount point is a symlink to an absolute path, and holds a fifo
    and a device node; the copy follows the link inside the rootfs only and never opens
    the special files."""
    from keel.engine.volumes import Volumes

    rootfs = tmp_path / "rootfs"
    (rootfs / "etc").mkdir(parents=True)
    (rootfs / "etc" / "inside").write_text("inside the image\n")
    os.symlink("/etc", rootfs / "data")              # /data -> /etc: the image's, not the host's
    os.mkfifo(rootfs / "etc" / "pipe")
    os.mknod(rootfs / "etc" / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.symlink("/etc/shadow", rootfs / "etc" / "link")
    (rootfs / "etc" / "sub").mkdir(mode=0o750)
    (rootfs / "etc" / "sub" / "tool").write_bytes(b"\x7fELF")
    os.chown(rootfs / "etc" / "sub" / "tool", 1234, 5678)
    os.chmod(rootfs / "etc" / "sub" / "tool", 0o4755)
    os.setxattr(rootfs / "etc" / "sub" / "tool", "user.keel", b"kept")
    os.link(rootfs / "etc" / "sub" / "tool", rootfs / "etc" / "tool-link")
    vols = Volumes(str(tmp_path / "root"))
    vols.ensure("v")
    vols.copy_up("v", str(rootfs), "/data")
    data = vols.data("v")
    assert sorted(os.listdir(data)) == ["inside", "link", "null", "pipe", "sub", "tool-link"]
    tool = os.path.join(data, "sub", "tool")
    st = os.lstat(tool)
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode), st.st_nlink) == (1234, 5678, 0o4755, 2)
    assert os.getxattr(tool, "user.keel") == b"kept"
    assert os.lstat(os.path.join(data, "tool-link")).st_ino == st.st_ino
    assert stat.S_IMODE(os.lstat(os.path.join(data, "sub")).st_mode) == 0o750
    assert open(os.path.join(data, "inside")).read() == "inside the image\n"
    assert stat.S_ISFIFO(os.lstat(os.path.join(data, "pipe")).st_mode)
    assert stat.S_ISCHR(os.lstat(os.path.join(data, "null")).st_mode)
    assert os.readlink(os.path.join(data, "link")) == "/etc/shadow"
    assert vols.get("v")["NeedsCopyUp"] is False
    # a copy that died half-way is started again from empty
    vols.ensure("w")
    rec = vols.get("w")
    rec["CopyUpInProgress"] = True
    vols._write(vols.path("w"), rec)
    with open(os.path.join(vols.data("w"), "half-copied"), "w") as f:
        f.write("partial")
    vols.copy_up("w", str(rootfs), "/etc")
    assert "half-copied" not in os.listdir(vols.data("w")) and "inside" in os.listdir(vols.data("w"))
    assert "CopyUpInProgress" not in vols.get("w")
    # copy-up happens once: later content is the volume's own
    os.unlink(os.path.join(data, "inside"))
    vols.copy_up("v", str(rootfs), "/data")
    assert "inside" not in os.listdir(data)
