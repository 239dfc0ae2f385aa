"""A container network made on the host (a network namespace with a veth, as an engine or CNI
makes it) extended into the VM: tap + tc mirred, the guest's NIC gets the interface's address
and route. Traffic stays between namespaces this test makes (marker `vm`)."""

import os
import subprocess
import threading
import uuid

import pytest

pytestmark = pytest.mark.vm


def _ip(*args):
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@pytest.fixture
def netns_pair():
    tag = uuid.uuid4().hex[:6]
    a, b = f"kvn-{tag}-a", f"kvn-{tag}-b"
    net = f"10.{100 + int(tag[:2], 16) % 100}.{int(tag[2:4], 16)}"
    _ip("netns", "add", a)
    try:
        _ip("netns", "add", b)
        _ip("link", "add", f"kv{tag}a", "type", "veth", "peer", "name", f"kv{tag}b")
        _ip("link", "set", f"kv{tag}a", "netns", a)
        _ip("link", "set", f"kv{tag}b", "netns", b)
        _ip("-n", a, "addr", "add", f"{net}.2/24", "dev", f"kv{tag}a")
        _ip("-n", b, "addr", "add", f"{net}.1/24", "dev", f"kv{tag}b")
        for ns, dev in ((a, f"kv{tag}a"), (b, f"kv{tag}b")):
            _ip("-n", ns, "link", "set", dev, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", a, "route", "add", "default", "via", f"{net}.1")
        yield a, b, net, f"kv{tag}a"
    finally:
        for ns in (a, b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def test_container_network_reaches_the_vm(vm_runtime, vm_bundle, netns_pair):
    a, b, net, dev = netns_pair
    cfg = vm_bundle.config
    cfg["linux"]["namespaces"] = [n for n in cfg["linux"]["namespaces"] if n["type"] != "network"]
    cfg["linux"]["namespaces"].append({"type": "network", "path": f"/run/netns/{a}"})
    for s in cfg["process"]["capabilities"].values():
        s.append("CAP_NET_RAW")  # busybox ping
    vm_bundle.write(["sh", "-c", f"ping -c1 -W10 {net}.1 >/dev/null && echo ping-ok; "
                     f"echo out-of-vm | nc -w 5 {net}.1 7777; nc -l -p 8888 -w 30"])
    server = subprocess.Popen(["ip", "netns", "exec", b, "busybox", "nc", "-l", "-p", "7777", "-w", "60"],
                              stdout=subprocess.PIPE, text=True)
    stop = threading.Event()

    def into_vm():  # connect to the container's listener once it is up
        while not stop.is_set():
            r = subprocess.run(["ip", "netns", "exec", b, "busybox", "nc", "-w", "3", f"{net}.2", "8888"],
                               input="into-vm\n", capture_output=True, text=True)
            if r.returncode == 0:
                return
            stop.wait(0.5)

    t = threading.Thread(target=into_vm)
    t.start()
    try:
        r = vm_runtime("run", "--bundle", vm_bundle.path, vm_bundle.id, timeout=120)
    finally:
        stop.set()
        t.join()
        server.kill()
    out_of_vm = server.communicate()[0]
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert r.stdout.splitlines() == ["ping-ok", "into-vm"], r.stdout
    assert out_of_vm == "out-of-vm\n"
    # the engine's interface is as it was: no redirect left, no tap left
    qdisc = subprocess.run(["ip", "netns", "exec", a, "tc", "qdisc", "show", "dev", dev],
                           capture_output=True, text=True).stdout
    assert "ingress" not in qdisc, qdisc
    links = subprocess.run(["ip", "-n", a, "link"], capture_output=True, text=True).stdout
    assert "kvtap" not in links, links
    assert os.path.exists(f"/run/netns/{a}")
