"""linux.devices, the default devices and links, and the device cgroup."""

import os

import pytest

DEFAULTS = {"/dev/null": "1,3", "/dev/zero": "1,5", "/dev/full": "1,7", "/dev/random": "1,8",
            "/dev/urandom": "1,9", "/dev/tty": "5,0"}


def _stat_lines(out):
    return {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.startswith("/")}


def test_default_devices(bundle):
    paths = " ".join(DEFAULTS)
    r = bundle.sh(f"for d in {paths}; do stat -c '%n %F %t,%T %a %u %g' $d; done").run()
    assert r.rc == 0, r
    got = {line.split()[0]: line for line in r.out.splitlines()}
    for path, dev in DEFAULTS.items():
        major, minor = dev.split(",")
        assert got[path] == f"{path} character special file {int(major):x},{int(minor):x} 666 0 0", got[path]


def test_default_devices_work(bundle):
    r = bundle.sh("head -c 4 /dev/zero | od -An -tx1; echo x > /dev/null && echo null-ok; "
                  "echo x > /dev/full; echo full=$?; head -c 8 /dev/urandom | wc -c").run()
    assert r.rc == 0, r
    lines = [x.strip() for x in r.out.splitlines()]
    assert lines[0] == "00 00 00 00"
    assert "null-ok" in lines and "full=1" in lines and "8" in lines
    assert "No space left on device" in r.err


def test_default_links(bundle):
    r = bundle.sh("for l in fd stdin stdout stderr ptmx; do echo $l $(readlink /dev/$l); done; "
                  "ls -d /dev/pts /dev/shm /dev/mqueue").run()
    assert r.rc == 0, r
    links = dict(line.split(" ", 1) for line in r.out.splitlines()[:5])
    assert links == {"fd": "/proc/self/fd", "stdin": "/proc/self/fd/0", "stdout": "/proc/self/fd/1",
                     "stderr": "/proc/self/fd/2", "ptmx": "pts/ptmx"}
    assert sorted(r.out.splitlines()[5:]) == ["/dev/mqueue", "/dev/pts", "/dev/shm"]


def test_dev_fd_works(bundle):
    r = bundle.sh("cat /dev/stdin; ls /dev/fd/ | head -3").run(input="through-dev-stdin\n")
    assert r.out.splitlines() == ["through-dev-stdin", "0", "1", "2"], r


def test_linux_devices_node(bundle):
    bundle.linux["devices"] = [
        {"path": "/dev/kt-null", "type": "c", "major": 1, "minor": 3, "fileMode": 0o640, "uid": 1, "gid": 2},
        {"path": "/dev/sub/kt-zero", "type": "c", "major": 1, "minor": 5, "fileMode": 0o600},
        {"path": "/dev/kt-fifo", "type": "p", "fileMode": 0o620},
    ]
    r = bundle.sh("stat -c '%n %F %t,%T %a %u %g' /dev/kt-null /dev/sub/kt-zero /dev/kt-fifo; "
                  "head -c 2 /dev/sub/kt-zero | wc -c").run()
    assert r.rc == 0, r
    lines = r.out.splitlines()
    assert lines[0] == "/dev/kt-null character special file 1,3 640 1 2"
    assert lines[1] == "/dev/sub/kt-zero character special file 1,5 600 0 0"
    assert lines[2].startswith("/dev/kt-fifo fifo") and lines[2].endswith("620 0 0")
    assert lines[-1].strip() == "2"  # the device cgroup lets the listed devices through


def test_linux_devices_override_default(bundle):
    bundle.linux["devices"] = [{"path": "/dev/null", "type": "c", "major": 1, "minor": 3, "fileMode": 0o600,
                                "uid": 0, "gid": 0}]
    r = bundle.args("stat", "-c", "%a", "/dev/null").run()
    assert r.out == "600\n", r


def test_devices_in_image_dev(bundle):
    """Without a /dev tmpfs the image's own /dev gets the nodes."""
    bundle.drop_mount("/dev").drop_mount("/dev/pts").drop_mount("/dev/shm").drop_mount("/dev/mqueue")
    bundle.linux["devices"] = [{"path": "/dev/kt-zero", "type": "c", "major": 1, "minor": 5}]
    r = bundle.sh("ls /dev | sort | tr '\\n' ' '").run()
    assert r.rc == 0, r
    names = r.out.split()
    assert {"null", "zero", "full", "random", "urandom", "tty", "kt-zero", "fd"} <= set(names), names
    assert os.path.exists(bundle.rootfs_path("/dev/kt-zero"))


def test_device_cgroup_denies_unlisted(bundle):
    """The default spec denies every device; mknod of /dev/mem works (CAP_MKNOD) but open is refused."""
    caps = bundle.process["capabilities"]
    for s in ("bounding", "effective", "permitted"):
        caps[s].append("CAP_MKNOD")
    bundle.mount("/scratch", type="tmpfs", source="tmpfs", options=["dev"])
    r = bundle.sh("mknod /scratch/mem c 1 1 && echo made; head -c 1 /scratch/mem; echo rc=$?; "
                  "mknod /scratch/null c 1 3 && head -c 1 /scratch/null; echo null=$?").run()
    assert "made" in r.out, r
    assert "rc=1" in r.out and "Operation not permitted" in r.err, r
    assert "null=0" in r.out


@pytest.mark.parametrize("bad,field", [
    ({"path": "/dev/x", "type": "q", "major": 1, "minor": 1}, "linux.devices[0].type"),
    ({"path": "dev/x", "type": "c", "major": 1, "minor": 1}, "linux.devices[0].path"),
    ({"path": "/dev/x", "type": "c"}, "linux.devices[0]"),
])
def test_bad_device(bundle, runtime, bad, field):
    bundle.linux["devices"] = [bad]
    r = bundle.create()
    assert r.rc != 0
    assert len(r.err_lines) == 1 and field in r.err, r
