"""linux.sysctl: namespaced keys are set in the container's namespaces; others are refused."""

import pytest


def _host(key):
    with open("/proc/sys/" + key.replace(".", "/")) as f:
        return f.read().strip()


def test_net_sysctl_in_container_netns(bundle):
    host_before = _host("net.ipv4.ip_forward")
    bundle.linux["sysctl"] = {"net.ipv4.ip_forward": "1", "net.ipv4.ping_group_range": "0 2147483647"}
    r = bundle.sh("cat /proc/sys/net/ipv4/ip_forward /proc/sys/net/ipv4/ping_group_range").run()
    assert r.rc == 0, r
    assert r.out.split() == ["1", "0", "2147483647"]
    assert _host("net.ipv4.ip_forward") == host_before


def test_ipc_sysctl(bundle):
    host_before = _host("kernel.shmmni")
    bundle.linux["sysctl"] = {"kernel.shmmni": "1234", "fs.mqueue.msg_max": "20"}
    r = bundle.sh("cat /proc/sys/kernel/shmmni /proc/sys/fs/mqueue/msg_max").run()
    assert r.rc == 0, r
    assert r.out.split() == ["1234", "20"]
    assert _host("kernel.shmmni") == host_before


def test_kernel_panic_is_refused(bundle, runtime):
    before = _host("kernel.panic")
    bundle.linux["sysctl"] = {"kernel.panic": "5"}
    r = bundle.create()
    assert r.rc != 0
    assert r.err_lines == ["keel-runtime: linux.sysctl.kernel.panic: not allowed: it is not in a namespace "
                           "the container owns"], r
    assert _host("kernel.panic") == before


@pytest.mark.parametrize("key,ns", [("net.ipv4.ip_forward", "network"), ("kernel.shmmax", "ipc")])
def test_sysctl_needs_own_namespace(bundle, runtime, key, ns):
    before = _host(key)
    bundle.set_namespace(ns, remove=True)
    bundle.linux["sysctl"] = {key: "1"}
    r = bundle.create()
    assert r.rc != 0
    assert len(r.err_lines) == 1 and f"linux.sysctl.{key}" in r.err and ns in r.err, r
    assert _host(key) == before


def test_sysctl_in_joined_netns(make_bundle, runtime):
    a = make_bundle("sysctl-a")
    st = a.start_detached()
    b = make_bundle("sysctl-b")
    b.set_namespace("network", path=f"/proc/{st['pid']}/ns/net")
    b.linux["sysctl"] = {"net.ipv4.ip_forward": "1"}
    assert b.args("true").run().rc == 0
    r = a.exec("cat", "/proc/sys/net/ipv4/ip_forward")
    assert r.out == "1\n", r


def test_sysctl_bad_value(bundle, runtime):
    bundle.linux["sysctl"] = {"net.ipv4.ip_forward": "not-a-number"}
    r = bundle.create()
    assert r.rc != 0
    assert len(r.err_lines) == 1 and "linux.sysctl.net.ipv4.ip_forward" in r.err, r


def test_sysctl_unknown_net_key(bundle, runtime):
    bundle.linux["sysctl"] = {"net.ipv4.no_such_key": "1"}
    r = bundle.create()
    assert r.rc != 0
    assert len(r.err_lines) == 1 and "net.ipv4.no_such_key" in r.err, r
