"""Isolation: each namespace kind, joining a namespace by path, user/cgroup/time namespaces."""

import os
import re

import pytest

NS_FILES = ("pid", "net", "mnt", "ipc", "uts", "cgroup", "user", "time")


def _ns_inside(bundle, *extra_script):
    script = "; ".join([f"echo {n}=$(readlink /proc/self/ns/{n})" for n in NS_FILES] + list(extra_script))
    r = bundle.sh(script).run()
    assert r.rc == 0, r
    out = dict(line.split("=", 1) for line in r.out.splitlines() if "=" in line)
    return out, r.out


def _host_ns(n, pid="self"):
    return os.readlink(f"/proc/{pid}/ns/{n}")


def test_default_namespaces_are_new(bundle):
    ns, _ = _ns_inside(bundle)
    for n in ("pid", "net", "mnt", "ipc", "uts", "cgroup"):
        assert ns[n] != _host_ns(n), n
    # not asked for: shared with the host
    assert ns["user"] == _host_ns("user")
    assert ns["time"] == _host_ns("time")


def test_no_namespace_shares_the_host(bundle):
    for kind in ("network", "ipc", "uts", "cgroup"):
        bundle.set_namespace(kind, remove=True)
    bundle.config.pop("hostname")
    ns, _ = _ns_inside(bundle)
    for n in ("net", "ipc", "uts", "cgroup"):
        assert ns[n] == _host_ns(n), n


def test_hostname_and_domainname(bundle):
    bundle.config["hostname"] = "kt-host"
    bundle.config["domainname"] = "kt.example"
    r = bundle.sh("hostname; cat /proc/sys/kernel/domainname").run()
    assert r.rc == 0, r
    assert r.out.splitlines() == ["kt-host", "kt.example"]
    assert os.uname().nodename != "kt-host"


@pytest.mark.parametrize("field", ["hostname", "domainname"])
def test_hostname_needs_uts_namespace(bundle, runtime, field):
    bundle.set_namespace("uts", remove=True)
    bundle.config.pop("hostname")
    bundle.config[field] = "not-the-host"
    r = bundle.create()
    assert r.rc != 0
    assert r.err_lines == [f"keel-runtime: {field}: setting it needs a uts namespace in linux.namespaces"], r
    assert os.uname().nodename != "not-the-host"


def test_hostname_in_joined_uts_namespace(make_bundle, runtime):
    a = make_bundle("uts-a")
    st = a.start_detached()
    b = make_bundle("uts-b")
    b.set_namespace("uts", path=f"/proc/{st['pid']}/ns/uts")
    b.config["hostname"] = "renamed"
    assert b.args("true").run().rc == 0
    assert runtime("exec", a.id, "hostname").out == "renamed\n"


def test_pid_namespace(bundle):
    r = bundle.sh("echo $$; ps -o pid,args").run()
    assert r.rc == 0, r
    lines = r.out.splitlines()
    assert lines[0] == "1"
    pids = [int(line.split()[0]) for line in lines[2:]]
    assert 1 in pids and len(pids) <= 3  # sh, ps (and perhaps a subshell): nothing of the host


def test_own_mount_table(bundle, tmp_path):
    r = bundle.sh("cat /proc/self/mountinfo").run()
    assert r.rc == 0, r
    mounts = [line.split() for line in r.out.splitlines()]
    points = [m[4] for m in mounts]
    assert "/" in points and "/proc" in points and "/dev" in points
    # nothing of the host's tree is visible: no mount point outside the container's own
    assert not any(p.startswith(str(tmp_path)) for p in points)
    assert not any(p.startswith("/work") for p in points)
    # only the config's mounts (and the masked/read-only paths under /proc and /sys)
    assert all(p == "/" or p.split("/")[1] in ("proc", "dev", "sys") for p in points), points
    host_only = {line.split()[4] for line in open("/proc/self/mountinfo")} - {"/"}
    host_only = {p for p in host_only if p.split("/")[1] not in ("proc", "dev", "sys")}
    assert not host_only & set(points)


def test_network_namespace_lo_up(bundle):
    r = bundle.sh("ip -o link; ip -o addr").run()
    assert r.rc == 0, r
    links = [line for line in r.out.splitlines() if ": <" in line]
    assert len(links) == 1, r.out
    assert re.match(r"1: lo: <[^>]*\bUP\b", links[0]), links[0]
    assert "127.0.0.1" in r.out


def test_loopback_works(bundle):
    # a server and a client on 127.0.0.1 inside the container's own network
    bundle.sh("nc -l -p 4242 > /tmp/got & sleep 0.2; echo over-lo | nc -w 1 127.0.0.1 4242; "
              "wait; cat /tmp/got")
    bundle.config["root"]["readonly"] = False
    bundle.mount("/tmp", type="tmpfs", source="tmpfs")
    r = bundle.run()
    assert r.rc == 0, r
    assert r.out.strip().endswith("over-lo")


def test_uts_and_ipc(bundle):
    ns, _ = _ns_inside(bundle)
    assert ns["uts"] != _host_ns("uts") and ns["ipc"] != _host_ns("ipc")


def test_ipc_namespace_isolates_sysv(bundle):
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    key = 0x4B45454C
    shmid = libc.shmget(key, 4096, 0o1000 | 0o600)  # IPC_CREAT
    assert shmid >= 0
    try:
        r = bundle.sh("cat /proc/sysvipc/shm").run()
        assert r.rc == 0, r
        assert str(key) not in r.out and str(shmid) not in r.out.split()
    finally:
        libc.shmctl(shmid, 0, None)  # IPC_RMID


def test_join_network_namespace_by_path(make_bundle, runtime):
    a = make_bundle("join-a")
    st = a.start_detached()
    b = make_bundle("join-b")
    b.set_namespace("network", path=f"/proc/{st['pid']}/ns/net")
    r = b.sh("readlink /proc/self/ns/net; readlink /proc/self/ns/uts").run()
    assert r.rc == 0, r
    net, uts = r.out.split()
    assert net == os.readlink(f"/proc/{st['pid']}/ns/net")
    assert uts != os.readlink(f"/proc/{st['pid']}/ns/uts")


def test_join_several_namespaces(make_bundle, runtime):
    a = make_bundle("join3-a")
    a.config["hostname"] = "shared-uts"
    st = a.start_detached()
    b = make_bundle("join3-b")
    b.config.pop("hostname")
    for kind, f in (("network", "net"), ("uts", "uts"), ("ipc", "ipc")):
        b.set_namespace(kind, path=f"/proc/{st['pid']}/ns/{f}")
    r = b.sh("hostname; readlink /proc/self/ns/ipc").run()
    assert r.rc == 0, r
    host, ipc = r.out.split()
    assert host == "shared-uts"
    assert ipc == os.readlink(f"/proc/{st['pid']}/ns/ipc")


def test_join_missing_namespace_path(bundle, runtime):
    bundle.set_namespace("network", path="/proc/999999999/ns/net")
    r = bundle.create()
    assert r.rc != 0
    assert len(r.err_lines) == 1 and "/proc/999999999/ns/net" in r.err, r


def _userns(bundle, host=100000):
    bundle.set_namespace("user")
    bundle.linux["uidMappings"] = [{"containerID": 0, "hostID": host, "size": 65536}]
    bundle.linux["gidMappings"] = [{"containerID": 0, "hostID": host, "size": 65536}]


@pytest.fixture
def ubundle(make_bundle, public_tmp):
    """A bundle in a directory the container's (unprivileged on the host) root can enter."""
    b = make_bundle(parent=public_tmp)
    _userns(b)
    return b


def test_user_namespace(ubundle, public_tmp):
    bundle = ubundle
    shared = public_tmp / "shared"
    shared.mkdir()
    os.chown(shared, 100000, 100000)
    os.mkdir(bundle.rootfs_path("/shared"))  # the rootfs is the host root's: no mkdir as 100000
    bundle.mount("/shared", source=shared, options=["rbind"])
    r = bundle.sh("id -u; id -g; cat /proc/self/uid_map; touch /shared/made; stat -c '%u %g' /shared/made").run()
    assert r.rc == 0, r
    lines = r.out.splitlines()
    assert lines[0] == "0" and lines[1] == "0"
    assert lines[2].split() == ["0", "100000", "65536"]
    assert lines[3] == "0 0"
    st = os.stat(shared / "made")
    assert (st.st_uid, st.st_gid) == (100000, 100000)


def test_user_namespace_mountpoint_not_creatable(ubundle, public_tmp, runtime):
    ubundle.mount("/nowhere/deeper", source=public_tmp, options=["rbind"])
    r = ubundle.create()
    assert r.rc != 0
    assert r.err_lines == ["keel-runtime: mount destination /nowhere/deeper: mkdir /nowhere in the "
                           "rootfs: permission denied"], r


def test_user_namespace_host_root_is_nobody(ubundle):
    bundle = ubundle
    r = bundle.sh("stat -c '%u' /bin/busybox; touch /etc/x 2>&1; echo rc=$?").run()
    assert r.rc == 0, r
    assert r.out.splitlines()[0] == "65534"  # host root is unmapped
    assert "rc=1" in r.out


def test_user_namespace_process_user(ubundle):
    bundle = ubundle
    bundle.process["user"] = {"uid": 1000, "gid": 1000}
    r = bundle.sh("id -u; id -g; cat /proc/self/status | grep ^Uid").run()
    assert r.rc == 0, r
    lines = r.out.splitlines()
    assert lines[:2] == ["1000", "1000"]


def test_user_namespace_needs_mappings(bundle, runtime):
    bundle.set_namespace("user")
    r = bundle.create()
    assert r.rc != 0 and "uidMappings" in r.err and len(r.err_lines) == 1, r


def test_cgroup_namespace(bundle):
    r = bundle.sh("cat /proc/self/cgroup").run()
    assert r.rc == 0, r
    for line in r.out.splitlines():
        assert line.split(":", 2)[2] == "/", line


def test_without_cgroup_namespace_the_path_shows(bundle):
    bundle.set_namespace("cgroup", remove=True)
    r = bundle.sh("cat /proc/self/cgroup").run()
    assert r.rc == 0, r
    paths = [line.split(":", 2)[2] for line in r.out.splitlines()]
    assert any(p.endswith("/" + bundle.id) for p in paths), r.out


@pytest.mark.skipif(not os.path.exists("/proc/self/ns/time"), reason="no time namespaces")
def test_time_namespace_offsets(bundle):
    day = 86400
    bundle.set_namespace("time")
    bundle.linux["timeOffsets"] = {"boottime": {"secs": 10 * day, "nanosecs": 0},
                                   "monotonic": {"secs": 2 * day, "nanosecs": 0}}
    before = float(open("/proc/uptime").read().split()[0])
    r = bundle.sh("cat /proc/uptime; readlink /proc/self/ns/time").run()
    after = float(open("/proc/uptime").read().split()[0])
    assert r.rc == 0, r
    inside = float(r.out.split()[0])
    assert before + 10 * day - 1 <= inside <= after + 10 * day + 1, (before, inside, after)
    assert r.out.split()[2] != os.readlink("/proc/self/ns/time")


def test_time_offsets_need_time_namespace(bundle, runtime):
    bundle.linux["timeOffsets"] = {"boottime": {"secs": 5}}
    r = bundle.create()
    assert r.rc != 0 and "timeOffsets" in r.err and len(r.err_lines) == 1, r
