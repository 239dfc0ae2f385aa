"""Container networking with the real CNI plugins (bridge, host-local, loopback, portmap,
firewall) on keel-runtime and runc: published ports, containers reaching each other by address
and name, container:<id>, name-resolution files, bad input; and after each test nothing of its
containers is left in `ip link`, the mount table or iptables.

Every test makes its own networks (unique names and bridges, masquerading off) in its own
config dir; traffic goes only to loopback and to the test's own namespaces."""

import contextlib
import hashlib
import json
import os
import socket
import time
import urllib.request

import pytest

from engine_helpers import RUNTIMES
from net_helpers import free_port, http_get, iptables, links
from keel.engine import Engine, cni, network
from keel.engine.errors import EngineError
from keel.engine.network import NetworkError, NetworkNotFound

IMAGE = "localhost/busybox:latest"


class Nets:
    """An engine with a private network config dir, and the networks a test made."""

    def __init__(self, roots, tmp_path):
        self.engine = Engine(*roots, network_config_dir=str(tmp_path / "net.d"))
        self.made = []       # (name, bridge)
        self.seen = []       # (container id, address, network) of every container started

    def create(self, **kw):
        tag = os.urandom(4).hex()
        name, bridge = f"kt-{tag}", f"kt{tag}"
        conf = self.engine.networks.create(name, bridge=bridge, masquerade=False, **kw)
        self.made.append((name, bridge))
        return conf

    def started(self, c):
        s = network.settings(self.engine, self.engine.get(c["id"]))
        for name, n in s["Networks"].items():
            self.seen.append((c["id"], n["IPAddress"], name))
        return s

    def close(self):
        eng = self.engine
        for c in eng.containers():
            eng.remove(c["id"], force=True)
        problems = []
        for name, bridge in self.made:
            ports = [ln["ifname"] for ln in links() if ln.get("master") == bridge]
            if ports:
                problems.append(f"links still on bridge {bridge}: {ports}")
            with contextlib.suppress(NetworkNotFound):
                eng.networks.remove(name)
            if any(ln["ifname"] == bridge for ln in links()):
                problems.append(f"bridge {bridge} left after network rm")
        rules = iptables()
        for cid, ip, name in self.seen:
            chain = "CNI-DN-" + hashlib.sha512((name + cid).encode()).hexdigest()[:21]
            for needle in (cid, chain, f"{ip}/32" if ip else None):
                if needle and needle in rules:
                    problems.append(f"iptables still names {needle}")
        ns_dir = os.path.join(eng.runroot, "netns")
        if os.path.isdir(ns_dir) and os.listdir(ns_dir):
            problems.append(f"netns dir not empty: {os.listdir(ns_dir)}")
        eng.close()
        assert not problems, problems


@pytest.fixture
def nets(roots, tmp_path):
    n = Nets(roots, tmp_path)
    yield n
    n.close()


def _log(eng, c):
    from keel.engine import logs

    entries, _ = logs.read_entries(eng.get(c["id"])["log_path"])
    return "".join(e.message.decode() + ("" if e.partial else "\n") for e in entries)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_httpd_answers_on_published_ports(nets, runtime):
    eng = nets.engine
    net = nets.create()
    lo_port, any_port = free_port(), free_port()
    c = eng.create(IMAGE, ["sh", "-c", "mkdir -p /www && echo hello from $(hostname) > /www/index.html "
                                       "&& exec httpd -f -p 80 -h /www"],
                   runtime=runtime, network=net["name"], hostname="web",
                   ports=[f"127.0.0.1:{lo_port}:80", f"{any_port}:80/tcp", "80/udp"])
    eng.start(c["id"])
    s = nets.started(c)
    assert http_get(f"http://127.0.0.1:{lo_port}/") == "hello from web\n"
    assert http_get(f"http://127.0.0.1:{any_port}/") == "hello from web\n"
    # the random host port of 80/udp was chosen at start and is shown as such
    ports = network.ports_of(eng, eng.get(c["id"]))
    udp = [p for p in ports if p["protocol"] == "udp"]
    assert len(udp) == 1 and udp[0]["hostPort"] > 0
    assert s["Ports"]["80/tcp"] == [{"HostIp": "127.0.0.1", "HostPort": str(lo_port)},
                                    {"HostIp": "", "HostPort": str(any_port)}]
    ip = s["Networks"][net["name"]]["IPAddress"]
    import ipaddress

    assert ipaddress.ip_address(ip) in ipaddress.ip_network(net["plugins"][0]["ipam"]["ranges"][0][0]["subnet"])
    assert s["SandboxKey"] == os.path.join(eng.runroot, "netns", c["id"])
    assert c["id"] in iptables()      # portmap's DNAT rules name the container while it runs
    eng.stop(c["id"], timeout=1)
    # conmon's exit command tore the network down: namespace, veth, rules
    assert not os.path.exists(s["SandboxKey"])
    assert c["id"] not in iptables()
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{lo_port}/", timeout=1)
    # a restart sets it all up again
    eng.start(c["id"])
    assert http_get(f"http://127.0.0.1:{lo_port}/") == "hello from web\n"
    nets.started(c)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_two_containers_reach_each_other_by_address_and_name(nets, runtime):
    import ipaddress

    eng = nets.engine
    net = nets.create()
    subnet = ipaddress.ip_network(net["plugins"][0]["ipam"]["ranges"][0][0]["subnet"])
    fixed = str(subnet.network_address + 77)
    # a waits until its /etc/hosts learns b (written when b starts), pings b by name, and exits
    # once b's line is gone again (b removed): the file follows its peers from inside too
    a = eng.create(IMAGE, ["sh", "-c", "for i in $(seq 100); do grep -q ' bbb' /etc/hosts && break; sleep 0.1; done; "
                                       "ping -c1 -W3 bbb && echo A-OK || exit 1; "
                                       "for i in $(seq 300); do grep -q ' bbb' /etc/hosts || exit 0; sleep 0.1; done; exit 2"],
                   name="aaa", runtime=runtime, network=net["name"], network_aliases=["db.alias"])
    eng.start(a["id"])
    a_ip = nets.started(a)["Networks"][net["name"]]["IPAddress"]
    b = eng.create(IMAGE, ["sh", "-c", f"ping -c1 -W3 {a_ip} && ping -c1 -W3 aaa && ping -c1 -W3 db.alias "
                                       "&& echo B-OK && sleep 30"],
                   name="bbb", runtime=runtime, network=net["name"], ip=fixed)
    eng.start(b["id"])
    b_ip = nets.started(b)["Networks"][net["name"]]["IPAddress"]
    assert b_ip == fixed and a_ip != b_ip
    # the address is taken: a third container asking for it gets host-local's refusal
    dup = eng.create(IMAGE, ["true"], runtime=runtime, network=net["name"], ip=fixed)
    with pytest.raises(EngineError, match=fixed):
        eng.start(dup["id"])
    eng.remove(dup["id"])
    deadline = time.monotonic() + 15
    while "B-OK" not in _log(eng, b) or "A-OK" not in _log(eng, a):
        assert time.monotonic() < deadline and eng.get(b["id"])["state"] == "running", (_log(eng, a), _log(eng, b))
        time.sleep(0.1)
    eng.remove(b["id"], force=True)
    assert eng.wait(a["id"]) == 0, _log(eng, a)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_container_mode_shares_the_namespace(nets, runtime):
    eng = nets.engine
    net = nets.create()
    a = eng.create(IMAGE, ["sleep", "60"], name="owner", runtime=runtime, network=net["name"])
    eng.start(a["id"])
    a_ip = nets.started(a)["Networks"][net["name"]]["IPAddress"]
    b = eng.create(IMAGE, ["sh", "-c", "ip -4 -o addr show eth0; cat /etc/hosts"], runtime=runtime,
                   network="container:owner")
    eng.start(b["id"])
    assert eng.wait(b["id"]) == 0
    out = _log(eng, b)
    assert f"inet {a_ip}/" in out and "owner" in out
    # joining a container on --network none: the runtime's namespace, by /proc/PID/ns/net
    n = eng.create(IMAGE, ["sleep", "60"], runtime=runtime, network="none")
    eng.start(n["id"])
    j = eng.create(IMAGE, ["readlink", "/proc/self/ns/net"], runtime=runtime, network=f"container:{n['id']}")
    eng.start(j["id"])
    assert eng.wait(j["id"]) == 0
    ino = os.stat(f"/proc/{eng.get(n['id'])['pid']}/ns/net").st_ino
    assert _log(eng, j).strip() == f"net:[{ino}]"
    eng.stop(n["id"], timeout=0)
    # a stopped owner cannot be joined: one clear error, nothing made
    with pytest.raises(NetworkError, match="not running"):
        eng.start(j["id"])
    assert eng.get(j["id"])["state"] == "exited"


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_name_resolution_files(nets, runtime):
    eng = nets.engine
    net = nets.create()
    c = eng.create(IMAGE, ["sh", "-c", "cat /etc/resolv.conf /etc/hosts /etc/hostname; hostname"],
                   runtime=runtime, network=net["name"], hostname="box1", dns=["192.0.2.53"],
                   dns_search=["example.test"], dns_options=["ndots:2"], add_hosts=["db.local:10.1.2.3"])
    eng.start(c["id"])
    ip = nets.started(c)["Networks"][net["name"]]["IPAddress"]
    assert eng.wait(c["id"]) == 0
    out = _log(eng, c)
    assert "search example.test\nnameserver 192.0.2.53\noptions ndots:2\n" in out
    assert "127.0.0.1\tlocalhost" in out and "10.1.2.3\tdb.local\n" in out
    assert f"{ip}\tbox1 {eng.get(c['id'])['name']}\n" in out
    assert out.endswith("box1\nbox1\n")
    # without --dns: the host's nameservers, loopback ones dropped
    d = eng.create(IMAGE, ["cat", "/etc/resolv.conf"], runtime=runtime, network="none")
    eng.start(d["id"])
    assert eng.wait(d["id"]) == 0
    expected = network.hosts.resolv_text(network.hosts.host_resolv_conf(), [], [], [], keep_loopback=False)
    assert _log(eng, d) == expected and "nameserver 127." not in expected


def test_resolv_conf_drops_loopback_nameservers():
    text = "nameserver 127.0.0.53\nnameserver ::1\nnameserver 10.0.0.2\nsearch a.test b.test\noptions edns0\n"
    assert network.hosts.resolv_text(text, [], [], [], keep_loopback=False) == \
        "search a.test b.test\nnameserver 10.0.0.2\noptions edns0\n"
    assert "nameserver 127.0.0.53" in network.hosts.resolv_text(text, [], [], [], keep_loopback=True)
    assert "nameserver 8.8.8.8" in network.hosts.resolv_text("nameserver 127.0.0.1\n", [], [], [], False)


@pytest.mark.parametrize("spec,error", [
    ("abc", "'abc' is not a port"), ("0:80", "out of range"), ("70000", "out of range"),
    ("80/icmp", "unknown protocol"), ("1.2.3:80:80", "not an IP address"),
    ("1-3:80-81", "differ in length"), ("a:b:c:d", "too many ':'"), ("8080:", "'' is not a port"),
])
def test_bad_publish_specs(spec, error):
    with pytest.raises(NetworkError, match=error):
        network.parse_ports([spec])


def test_publish_specs():
    assert network.parse_ports(["127.0.0.1:8080:80/udp", "[::1]:9090:90", "8000-8001:80-81", "53"]) == [
        {"hostIP": "127.0.0.1", "hostPort": 8080, "containerPort": 80, "protocol": "udp"},
        {"hostIP": "::1", "hostPort": 9090, "containerPort": 90, "protocol": "tcp"},
        {"hostIP": "", "hostPort": 8000, "containerPort": 80, "protocol": "tcp"},
        {"hostIP": "", "hostPort": 8001, "containerPort": 81, "protocol": "tcp"},
        {"hostIP": "", "hostPort": 0, "containerPort": 53, "protocol": "tcp"}]


def _ns_files(eng):
    d = os.path.join(eng.runroot, "netns")
    return sorted(os.listdir(d)) if os.path.isdir(d) else []


def _nothing_left(eng):
    assert eng.containers() == [] and eng.snapshotter.snapshots() == []
    assert os.listdir(os.path.join(eng.runroot, "containers")) == []
    assert _ns_files(eng) == []


def test_bad_input_leaves_nothing(nets, monkeypatch):
    eng = nets.engine
    net = nets.create()
    for kw, error in [
        ({"network": "no-such-net"}, "network 'no-such-net' not found"),
        ({"network": f"{net['name']},{net['name']}"}, "named twice"),
        ({"network": "container:nobody"}, "no such container 'nobody'"),
        ({"network": "none", "ports": ["80:80"]}, "cannot be published with --network none"),
        ({"network": "host", "ports": ["80:80"]}, "cannot be published with --network host"),
        ({"network": net["name"], "ports": ["80:80:80"]}, "not an IP address"),
        ({"network": "none", "dns": ["nameserver"]}, "--dns 'nameserver': not an IP address"),
        ({"network": "none", "add_hosts": ["db"]}, "is not an IP address"),
        ({"network": "none", "add_hosts": ["bad host:1.2.3.4"]}, "invalid host name"),
        ({"network": net["name"], "hostname": "a\n10.0.0.1 evil"}, "--hostname .*: not a valid host name"),
        ({"network": "none", "hostname": "x" * 65}, "not a valid host name"),
        ({"network": net["name"], "ip": "192.0.2.9"}, "not in a subnet of network"),
        ({"network": net["name"], "ip": "nope"}, "--ip 'nope': not an IP address"),
        ({"network": "none", "ip": "10.0.0.2"}, "--ip: only on a network"),
        ({"network": "none", "network_aliases": ["db"]}, "--network-alias: only on a network"),
        ({"network": net["name"], "network_aliases": ["a b"]}, "not a valid host name"),
    ]:
        with pytest.raises(NetworkError, match=error):
            eng.create(IMAGE, ["true"], **kw)
    _nothing_left(eng)
    # -p without --network means the default network (only planned here: no container starts)
    c = eng.create(IMAGE, ["true"], ports=["80"])
    assert c["options"]["network"] == "bridge" and c["options"]["net"]["networks"] == ["keel"]
    assert eng.create(IMAGE, ["true"])["options"]["net"]["mode"] == "none"   # tests/conftest.py
    monkeypatch.delenv("KEEL_DEFAULT_NETWORK")
    c = eng.create(IMAGE, ["true"])              # a user's default: the default bridge network
    assert c["options"]["net"]["mode"] == "cni" and c["options"]["net"]["networks"] == ["keel"]
    for c in eng.containers():
        eng.remove(c["id"])
    with pytest.raises(NetworkError, match="--subnet 10.0.0.1/24: .*has host bits set"):
        eng.networks.create("x1", subnet="10.0.0.1/24")
    with pytest.raises(NetworkError, match="--subnet nope"):
        eng.networks.create("x1", subnet="nope")
    with pytest.raises(NetworkError, match="overlaps"):
        eng.networks.create("x1", subnet=net["plugins"][0]["ipam"]["ranges"][0][0]["subnet"])
    with pytest.raises(NetworkError, match="not a host address"):
        eng.networks.create("x1", subnet="10.97.0.0/24", gateway="10.98.0.1")
    with pytest.raises(NetworkError, match="already exists"):
        eng.networks.create(net["name"])
    with pytest.raises(NetworkError, match="reserved"):
        eng.networks.create("bridge")
    assert [n["name"] for n in eng.networks.all()] == sorted(["keel", net["name"]])


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_port_conflicts_fail_start_cleanly(nets, runtime):
    eng = nets.engine
    net = nets.create()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        c = eng.create(IMAGE, ["sleep", "60"], runtime=runtime, network=net["name"],
                       ports=[f"127.0.0.1:{port}:80"])
        with pytest.raises(NetworkError, match=f"port 127.0.0.1:{port}/tcp is already in use"):
            eng.start(c["id"])
    assert eng.get(c["id"])["state"] == "created"
    assert _ns_files(eng) == []
    eng.remove(c["id"])
    port = free_port()
    a = eng.create(IMAGE, ["sleep", "60"], name="first", runtime=runtime, network=net["name"], ports=[f"{port}:80"])
    eng.start(a["id"])
    nets.started(a)
    b = eng.create(IMAGE, ["sleep", "60"], runtime=runtime, network=net["name"], ports=[f"127.0.0.1:{port}:81"])
    with pytest.raises(NetworkError, match=f"port {port}/tcp is already published by container first"):
        eng.start(b["id"])
    with pytest.raises(NetworkError, match="192.0.2.254 is not an address of this host"):
        eng.start(eng.create(IMAGE, ["true"], runtime=runtime, network=net["name"],
                             ports=["192.0.2.254:8080:80"])["id"])
    assert _ns_files(eng) == sorted([a["id"], a["id"] + ".json"])


def test_plugin_failure_is_undone(nets, roots):
    """An ADD that fails half-way (the bridge plugin refuses a bridge name that is not one) is
    followed by DEL and the namespace's removal."""
    eng = nets.engine
    conf = nets.create()
    path = conf["_path"]
    with open(path) as f:
        data = json.load(f)
    data["plugins"].append({"type": "no-such-plugin"})
    with open(path, "w") as f:
        json.dump(data, f)
    c = eng.create(IMAGE, ["true"], network=conf["name"])
    with pytest.raises(EngineError, match="cni plugin 'no-such-plugin' not found"):
        eng.start(c["id"])
    assert _ns_files(eng) == []
    assert not [ln for ln in links() if ln.get("master") == conf["plugins"][0]["bridge"]]
    assert c["id"] not in iptables()


def test_cni_check_and_errors(nets, tmp_path):
    conf = nets.create()
    conf = network._with_ipam_dir(conf, nets.engine.runroot)
    conf["plugins"] = [p for p in conf["plugins"] if p["type"] != "portmap"]
    ns = str(tmp_path / "ns")
    from keel.engine import netns

    netns.create(ns)
    try:
        result = cni.add_network_list(conf, "cnitest", ns, "eth0")
        assert result["ips"][0]["address"].startswith(conf["plugins"][0]["ipam"]["ranges"][0][0]["subnet"][:6])
        cni.check_network_list(conf, "cnitest", ns, "eth0", result)
        with pytest.raises(cni.CNIError, match="cni plugin bridge CHECK"):
            cni.check_network_list(conf, "cnitest", ns, "eth9", result)
        assert cni.del_network_list(conf, "cnitest", ns, "eth0", prev_result=result) == []
    finally:
        netns.remove(ns)
    assert not os.path.exists(ns)
    with pytest.raises(cni.CNIError, match="not a plugin name"):
        cni.exec_plugin({"type": "../bin/sh"}, "ADD", "x", ns, "eth0")


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_two_networks_and_a_crashed_monitor(nets, runtime):
    """A container on two networks has eth0 and eth1; when its conmon and process are killed
    (no exit command runs), rm -f still tears down both networks."""
    import signal

    eng = nets.engine
    n1, n2 = nets.create(), nets.create()
    c = eng.create(IMAGE, ["sleep", "60"], runtime=runtime, network=f"{n1['name']},{n2['name']}")
    eng.start(c["id"])
    s = nets.started(c)
    assert set(s["Networks"]) == {n1["name"], n2["name"]}
    peer = eng.create(IMAGE, ["sh", "-c", "ip -o -4 addr show eth1 && ping -c1 -W3 " +
                              s["Networks"][n2["name"]]["IPAddress"]],
                      runtime=runtime, network=f"{n1['name']},{n2['name']}")
    eng.start(peer["id"])
    nets.started(peer)
    assert eng.wait(peer["id"]) == 0, _log(eng, peer)
    c = eng.get(c["id"])
    os.kill(c["conmon_pid"], signal.SIGKILL)
    os.kill(c["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 10
    while os.path.exists(f"/proc/{c['pid']}"):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert os.path.exists(s["SandboxKey"])      # nobody cleaned up
    eng.remove(c["id"], force=True)
    assert not os.path.exists(s["SandboxKey"]) and c["id"] not in iptables()
    for n in (n1, n2):
        assert not [ln for ln in links() if ln.get("master") == n["plugins"][0]["bridge"]]


def test_keel_killed_during_setup_leaves_nothing_rm_cannot_clean(nets, tmp_path, oci_busybox):
    """`keel start` SIGKILLed while a plugin of the chain runs (after bridge's ADD): the state
    written before each ADD lets a later `keel rm` run DEL for what was made."""
    import signal
    import subprocess
    import sys

    eng = nets.engine
    plugdir = tmp_path / "plugins"
    plugdir.mkdir()
    pidfile = tmp_path / "sleeper.pid"
    # a plugin that hangs in ADD (DEL succeeds at once)
    (plugdir / "sleeper").write_text(f'#!/bin/sh\n[ "$CNI_COMMAND" = ADD ] || exit 0\n'
                                     f"echo $$ > {pidfile}\nexec sleep 60\n")
    (plugdir / "sleeper").chmod(0o755)
    conf = nets.create()
    with open(conf["_path"]) as f:
        data = json.load(f)
    data["plugins"].append({"type": "sleeper"})
    with open(conf["_path"], "w") as f:
        json.dump(data, f)
    c = eng.create(IMAGE, ["true"], network=conf["name"], ports=[f"127.0.0.1:{free_port()}:80"])
    env = dict(os.environ, KEEL_CNI_PLUGIN_DIRS=f"{plugdir}:/usr/lib/cni",
               KEEL_NETWORK_CONFIG_DIR=eng.networks.dir)
    p = subprocess.Popen([sys.executable, "-m", "keel.cli.main", "--root", eng.root, "--runroot", eng.runroot,
                          "start", c["id"]], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while not pidfile.exists() or not pidfile.read_text().strip():
            assert time.monotonic() < deadline and p.poll() is None
            time.sleep(0.05)
        assert c["id"] in iptables()          # portmap's ADD ran
        p.kill()
        p.wait()
    finally:
        if pidfile.exists() and pidfile.read_text().strip():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pidfile.read_text()), signal.SIGKILL)
    [ip] = [a.split("/")[0] for e in network._read_state(eng.runroot, c["id"])["networks"]
            for a in network._ips(e["result"] or {})]
    assert f"{ip}/32" in iptables()           # the firewall plugin's rules
    assert os.path.exists(network.netns_path(eng.runroot, c["id"]))
    eng.remove(c["id"])      # the plugin dirs of the ADD are in the state: no environment needed
    assert _ns_files(eng) == [] and c["id"] not in iptables()
    assert not [ln for ln in links() if ln.get("master") == conf["plugins"][0]["bridge"]]
    assert f"{ip}/32" not in iptables()


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_runtime_failure_tears_the_network_down(nets, runtime):
    eng = nets.engine
    net = nets.create()
    c = eng.create(IMAGE, ["/no/such/binary"], runtime=runtime, network=net["name"], ports=[f"{free_port()}:80"])
    with pytest.raises(EngineError):
        eng.start(c["id"])
    assert _ns_files(eng) == [] and c["id"] not in iptables()
    assert not [ln for ln in links() if ln.get("master") == net["plugins"][0]["bridge"]]
    assert eng.get(c["id"])["state"] in ("created", "exited")


def test_state_from_before_a_reboot_is_cleaned(nets):
    """After a reboot the namespace mount is gone but the state file and host-local's
    allocation stay (/run need not be a tmpfs): the next start frees them and sets up anew."""
    from keel.engine import netns

    eng = nets.engine
    net = nets.create()
    c = eng.create(IMAGE, ["sleep", "60"], network=net["name"])
    # replay "what a reboot leaves": the state of a set-up network, its namespace file unmounted
    network.setup(eng, eng.get(c["id"]))
    first = nets.started(c)["Networks"][net["name"]]["IPAddress"]
    assert f"{first}/32" in iptables()
    path = network.netns_path(eng.runroot, c["id"])
    netns.remove(path)
    open(path, "w").close()
    ipam = os.path.join(network.ipam_dir(eng.runroot), net["name"])
    assert first in os.listdir(ipam)
    assert network.teardown(eng, c["id"]) == []
    assert first not in os.listdir(ipam) and _ns_files(eng) == []
    assert f"{first}/32" not in iptables()


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_connect_and_disconnect(nets, runtime):
    import ipaddress

    eng = nets.engine
    n1, n2 = nets.create(), nets.create()
    fixed = str(ipaddress.ip_network(n2["plugins"][0]["ipam"]["ranges"][0][0]["subnet"]).network_address + 50)
    a = eng.create(IMAGE, ["sleep", "60"], name="alpha", runtime=runtime, network=n1["name"])
    eng.start(a["id"])
    b = eng.create(IMAGE, ["sleep", "60"], name="beta", runtime=runtime, network=n2["name"])
    eng.start(b["id"])
    b_ip = nets.started(b)["Networks"][n2["name"]]["IPAddress"]
    network.connect(eng, "alpha", n2["name"], ip=fixed)
    s = nets.started(a)
    assert set(s["Networks"]) == {n1["name"], n2["name"]} and s["Networks"][n2["name"]]["IPAddress"] == fixed

    def hosts_of(c):
        with open(os.path.join(eng.bundle_dir(c["id"]), "hosts")) as f:
            return f.read()

    assert f"{b_ip}\tbeta" in hosts_of(a) and f"{fixed}\talpha" in hosts_of(b)
    # a third container on n2 reaches alpha by name, on alpha's new interface
    c = eng.create(IMAGE, ["sh", "-c", "ping -c1 -W3 alpha | head -1"], runtime=runtime, network=n2["name"])
    eng.start(c["id"])
    nets.started(c)
    assert eng.wait(c["id"]) == 0 and f"({fixed})" in _log(eng, c)
    with pytest.raises(NetworkError, match="already connected"):
        network.connect(eng, "alpha", n2["name"])
    network.disconnect(eng, "alpha", n2["name"])
    assert set(network.settings(eng, eng.get("alpha"))["Networks"]) == {n1["name"]}
    assert "alpha" not in hosts_of(b) and "beta" not in hosts_of(a)
    assert f"{fixed}/32" not in iptables()
    assert len([ln for ln in links() if ln.get("master") == n2["plugins"][0]["bridge"]]) == 1   # beta's
    with pytest.raises(NetworkError, match="not connected"):
        network.disconnect(eng, "alpha", n2["name"])
    # a stopped container joins at its next start
    eng.stop("beta", timeout=0)
    network.connect(eng, "beta", n1["name"])
    eng.start("beta")
    assert set(nets.started(eng.get("beta"))["Networks"]) == {n1["name"], n2["name"]}
    n = eng.create(IMAGE, ["true"], runtime=runtime, network="none")
    with pytest.raises(NetworkError, match="only a container on networks"):
        network.connect(eng, n["id"], n1["name"])


def test_hostile_network_configs(nets):
    """Config files keel did not write: a name that is a path is refused; `network rm` of a
    foreign conflist naming a host link never deletes that link."""
    eng = nets.engine
    d = eng.networks.dir
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "evil.conflist"), "w") as f:
        json.dump({"cniVersion": "1.0.0", "name": "../../etc", "plugins": [{"type": "bridge"}]}, f)
    with open(os.path.join(d, "foreign.conflist"), "w") as f:
        json.dump({"cniVersion": "1.0.0", "name": "foreign", "plugins": [{"type": "bridge", "bridge": "lo"}]}, f)
    with open(os.path.join(d, "broken.conflist"), "w") as f:
        f.write("{not json")
    problems = []
    assert sorted(n["name"] for n in eng.networks.all(problems)) == ["foreign", "keel"]
    assert len(problems) == 2 and any("invalid network name '../../etc'" in p for p in problems)
    with pytest.raises(NetworkNotFound):
        eng.networks.get("../../etc")
    eng.networks.remove("foreign")
    assert os.path.exists("/sys/class/net/lo") and not os.path.exists(os.path.join(d, "foreign.conflist"))
    with pytest.raises(cni.CNIError, match="not a plugin name"):
        cni.find_plugin("../../bin/sh", ["/usr/lib/cni"])


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_dual_stack_network(nets, runtime):
    eng = nets.engine
    net = nets.create(ipv6=True)
    v4, v6 = network.subnets_of(net)
    assert ":" not in v4["subnet"] and v6["subnet"].startswith("fd91:6b65:656c:") and v6["subnet"].endswith("::/64")
    a = eng.create(IMAGE, ["sleep", "60"], name="six", runtime=runtime, network=net["name"])
    eng.start(a["id"])
    s = nets.started(a)["Networks"][net["name"]]
    assert s["IPAddress"] and s["GlobalIPv6Address"].startswith(v6["subnet"][:-4]) and s["GlobalIPv6PrefixLen"] == 64
    b = eng.create(IMAGE, ["sh", "-c", f"ping -6 -c1 -W3 {s['GlobalIPv6Address']} && ping -6 -c1 -W3 six"],
                   runtime=runtime, network=net["name"])
    eng.start(b["id"])
    nets.started(b)
    assert eng.wait(b["id"]) == 0, _log(eng, b)
    assert a["id"] in iptables() or s["GlobalIPv6Address"] in iptables()   # the firewall plugin's v6 rules
    eng.remove(a["id"], force=True)
    assert a["id"] not in iptables() and s["GlobalIPv6Address"] not in iptables()
