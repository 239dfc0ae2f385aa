"""`keel network create|ls|rm|inspect`, `keel run -p/--network/--add-host/--dns`, `keel port`,
end to end through the command line, on keel-runtime and runc, with a private network config
dir (KEEL_NETWORK_CONFIG_DIR) and networks made by the test (masquerading off, unique bridges)."""

import json
import os
import socket
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "engine"))
from engine_helpers import RUNTIMES  # noqa: E402
from net_helpers import free_port, http_get, iptables, links  # noqa: E402
from test_containers import Keel, no_leftovers  # noqa: E402,F401  (its leak check runs here too)

IMAGE = "localhost/busybox:latest"


class NetKeel(Keel):
    """`keel` with a private network config dir."""

    def __init__(self, tmp_path, runtime):
        super().__init__(tmp_path, runtime)
        self.netdir = tmp_path / "net.d"
        self.bridges = []

    def __call__(self, *args, timeout=60, env=None):
        return super().__call__(*args, timeout=timeout, env=dict(env or {}, KEEL_NETWORK_CONFIG_DIR=str(self.netdir)))

    def fails(self, *args, match):
        r = self(*args)
        assert r.returncode == 125, (args, r.stdout, r.stderr)
        lines = r.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: ") and match in lines[0], r.stderr
        return lines[0]

    def network(self):
        tag = os.urandom(4).hex()
        name, bridge = f"kc-{tag}", f"kc{tag}"
        assert self.ok("network", "create", "--interface-name", bridge, "-o", "masquerade=false", name) == name + "\n"
        self.bridges.append(bridge)
        return name, bridge


def _keel(tmp_path, oci_busybox, runtime):
    k = NetKeel(tmp_path, runtime)
    r = k("load", "-i", oci_busybox)
    assert r.returncode == 0, r.stderr
    k.ok("tag", r.stdout.strip().rsplit(" ", 1)[-1], IMAGE) if IMAGE not in r.stdout else None
    yield k
    ids = k("ps", "-aq").stdout.split()
    if ids:
        k("rm", "-f", *ids)
    names = [n for n in k("network", "ls", "-q").stdout.split() if n != "keel"]
    if names:
        k("network", "rm", "-f", *names)
    left = [ln["ifname"] for ln in links() if ln["ifname"] in k.bridges or ln.get("master") in k.bridges]
    assert not left, f"links left: {left}"
    rules = iptables()
    assert not any(i in rules for i in ids), "iptables rules left"


@pytest.fixture(params=RUNTIMES)
def keel(request, tmp_path, oci_busybox):
    yield from _keel(tmp_path, oci_busybox, request.param)


@pytest.fixture
def keel_nets(tmp_path, oci_busybox):
    """For the tests that run no container."""
    yield from _keel(tmp_path, oci_busybox, RUNTIMES[0])


def test_network_create_ls_inspect_rm(keel_nets):
    keel = keel_nets
    name, bridge = keel.network()
    keel.ok("network", "create", "--subnet", "10.96.7.0/24", "--gateway", "10.96.7.254", "--internal",
            "--interface-name", bridge + "x", "--label", "team=a", name + "-2")
    keel.bridges.append(bridge + "x")
    table = keel.ok("network", "ls").splitlines()
    assert table[0].split() == ["NETWORK", "ID", "NAME", "DRIVER"]
    assert [ln.split()[1] for ln in table[1:]] == sorted(["keel", name, name + "-2"])
    nets = json.loads(keel.ok("network", "ls", "--format", "json"))
    assert [n["name"] for n in nets] == sorted(["keel", name, name + "-2"])
    [info] = json.loads(keel.ok("network", "inspect", name + "-2"))
    assert info["subnets"] == [{"subnet": "10.96.7.0/24", "gateway": "10.96.7.254"}]
    assert info["internal"] is True and info["labels"] == {"team": "a"} and info["driver"] == "bridge"
    assert info["network_interface"] == bridge + "x" and len(info["id"]) == 64
    assert info["ipam_options"] == {"driver": "host-local"}
    [default] = [n for n in nets if n["name"] == "keel"]
    assert default["network_interface"] == "keel0" and default["subnets"][0]["subnet"] == "10.90.0.0/16"
    with open(keel.netdir / f"{name}-2.conflist") as f:
        conf = json.load(f)
    bridge_conf = conf["plugins"][0]
    assert bridge_conf["ipMasq"] is False and bridge_conf["isGateway"] is False
    assert [p["type"] for p in conf["plugins"]] == ["bridge", "portmap", "firewall"]
    assert keel.ok("network", "rm", name, name + "-2") == f"{name}\n{name}-2\n"
    assert keel.ok("network", "ls", "-q").split() == ["keel"]


def test_network_bad_input(keel_nets):
    keel = keel_nets
    name, _ = keel.network()
    keel.fails("network", "create", "--subnet", "10.1.2.3/24", "x", match="has host bits set")
    keel.fails("network", "create", "--subnet", "300.1.2.0/24", "x", match="--subnet 300.1.2.0/24")
    keel.fails("network", "create", "--subnet", "fd00::/64", "x", match="overlaps fd00::/64")
    keel.fails("network", "create", "--subnet", "10.96.1.0/24", "--subnet", "10.96.2.0/24", "x",
               match="one IPv4 and one IPv6 subnet at most")
    keel.fails("network", "create", "--gateway", "10.0.0.1", "x", match="--gateway needs --subnet")
    keel.fails("network", "create", "--driver", "macvlan", "x", match="only bridge")
    keel.fails("network", "create", "-o", "color=blue", "x", match="unknown option")
    keel.fails("network", "create", name, match="already exists")
    keel.fails("network", "create", "bad/name", match="invalid network name")
    keel.fails("network", "create", "--interface-name", "a-very-long-bridge-name", "x", match="1-15 characters")
    keel.fails("network", "inspect", "nope", match="network 'nope' not found")
    keel.fails("network", "rm", "nope", match="network 'nope' not found")
    keel.fails("network", "rm", "keel", match="built-in default")
    keel.fails("network", "ls", "--format", "yaml", match="json or table")
    assert keel.ok("network", "ls", "-q").split() == sorted(["keel", name])
    assert sorted(os.listdir(keel.netdir)) == [".keel.lock", f"{name}.conflist"]


def test_run_publish_port_and_port_command(keel):
    name, _ = keel.network()
    p1, p2 = free_port(), free_port()
    cid = keel.ok("run", "--runtime", keel.runtime, "-d", "--name", "web", "--network", name,
                  "-p", f"127.0.0.1:{p1}:80", "-p", f"{p2}:80", "--hostname", "webhost", IMAGE,
                  "sh", "-c", "mkdir /www && hostname > /www/index.html && exec httpd -f -p 80 -h /www").strip()
    assert http_get(f"http://127.0.0.1:{p1}/") == "webhost\n"
    assert http_get(f"http://127.0.0.1:{p2}/") == "webhost\n"
    assert keel.ok("port", "web").splitlines() == [f"80/tcp -> 127.0.0.1:{p1}", f"80/tcp -> 0.0.0.0:{p2}"]
    assert keel.ok("port", "web", "80/tcp").splitlines() == [f"127.0.0.1:{p1}", f"0.0.0.0:{p2}"]
    keel.fails("port", "web", "81", match="no public port 81/tcp")
    [ps] = json.loads(keel.ok("ps", "--format", "json"))
    assert ps["Networks"] == [name] and {p["host_port"] for p in ps["Ports"]} == {p1, p2}
    assert f"127.0.0.1:{p1}->80/tcp" in keel.ok("ps")
    [info] = json.loads(keel.ok("container", "inspect", "web"))
    assert info["NetworkSettings"]["Networks"][name]["IPAddress"]
    assert info["HostConfig"]["PortBindings"]["80/tcp"][0] == {"HostIp": "127.0.0.1", "HostPort": str(p1)}
    # a second container cannot take the same host port
    keel.fails("run", "--runtime", keel.runtime, "--rm", "--network", name, "-p", f"{p2}:80", IMAGE, "true",
               match=f"port {p2}/tcp is already published by container web")
    keel.ok("rm", "-f", cid)
    assert keel.ok("ps", "-aq") == ""


def test_run_on_networks_by_name(keel):
    name, _ = keel.network()
    keel.ok("run", "--runtime", keel.runtime, "-d", "--name", "srv", "--network", name, IMAGE, "sleep", "60")
    out = keel.run("--rm", "--network", name, "--add-host", "extra:10.9.8.7", "--dns", "192.0.2.1",
                   IMAGE, "sh", "-c", "ping -c1 -W3 srv >/dev/null && echo reached; grep -c extra /etc/hosts; "
                                      "cat /etc/resolv.conf")
    assert out.returncode == 0, out.stderr
    assert out.stdout == "reached\n1\nnameserver 192.0.2.1\n"
    # srv joins a second network while it runs, and leaves it
    other, _ = keel.network()
    assert keel.ok("network", "connect", other, "srv") == ""
    r = keel.run("--rm", "--network", other, IMAGE, "ping", "-c1", "-W3", "srv")
    assert r.returncode == 0, r.stderr
    keel.fails("network", "connect", other, "srv", match="already connected")
    assert keel.ok("network", "disconnect", other, "srv") == ""
    keel.fails("network", "disconnect", other, "srv", match="not connected")
    keel.ok("network", "rm", other)
    # network rm refuses while srv uses the network, -f removes srv too
    keel.fails("network", "rm", name, match=f"network '{name}' is used by container(s) srv")
    # prune keeps networks in use and the default one
    spare, _ = keel.network()
    r = keel("network", "prune")          # no answer on stdin: nothing is removed
    assert r.returncode == 0 and r.stdout == "" and "Are you sure" in r.stderr
    assert keel.ok("network", "prune", "-f") == spare + "\n"
    assert keel("network", "exists", spare).returncode == 1 and keel("network", "exists", name).returncode == 0
    assert keel.ok("network", "rm", "-f", name) == name + "\n"
    assert keel.ok("ps", "-aq") == ""
    assert keel.ok("network", "ls", "-q") == "keel\n"


def test_run_bad_network_input(keel):
    keel.fails("run", "--runtime", keel.runtime, "--rm", "--network", "nope", IMAGE, "true",
               match="network 'nope' not found")
    keel.fails("run", "--runtime", keel.runtime, "--rm", "-p", "99999:80", "--network", "bridge", IMAGE, "true",
               match="out of range")
    keel.fails("run", "--runtime", keel.runtime, "--rm", "-p", "80:80", "--network", "none", IMAGE, "true",
               match="cannot be published with --network none")
    keel.fails("run", "--runtime", keel.runtime, "--rm", "--network", "container:ghost", IMAGE, "true",
               match="no such container 'ghost'")
    name, _ = keel.network()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        keel.fails("run", "--runtime", keel.runtime, "--rm", "--network", name, "-p", f"127.0.0.1:{port}:80",
                   IMAGE, "true", match=f"port 127.0.0.1:{port}/tcp is already in use")
    assert keel.ok("ps", "-aq") == ""
    assert not os.path.isdir(keel.runroot / "netns") or os.listdir(keel.runroot / "netns") == []


def test_concurrent_runs_on_one_network(keel):
    """Six `keel run -d` at once on one network: distinct addresses, and every container's
    /etc/hosts names all the others; rm -f of all leaves nothing."""
    from concurrent.futures import ThreadPoolExecutor

    name, bridge = keel.network()
    names = [f"c{i}" for i in range(6)]
    with ThreadPoolExecutor(len(names)) as pool:
        results = list(pool.map(lambda n: keel.run("-d", "--name", n, "--network", name, IMAGE, "sleep", "60",
                                                   timeout=120), names))
    assert all(r.returncode == 0 for r in results), [r.stderr for r in results]
    infos = json.loads(keel.ok("container", "inspect", *names))
    ips = [i["NetworkSettings"]["Networks"][name]["IPAddress"] for i in infos]
    assert len(set(ips)) == 6 and all(ips)
    for info in infos:
        with open(keel.runroot / "containers" / info["Id"] / "hosts") as f:
            hosts = f.read()
        assert all(f"{ip}\t" in hosts for ip in ips) and all(n in hosts for n in names)
    keel.ok("rm", "-f", *names)
    assert not [ln for ln in links() if ln.get("master") == bridge]


def test_run_rm_with_a_failing_plugin_leaves_nothing(keel):
    name, bridge = keel.network()
    path = keel.netdir / f"{name}.conflist"
    conf = json.loads(path.read_text())
    conf["plugins"].append({"type": "no-such-plugin"})
    path.write_text(json.dumps(conf))
    keel.fails("run", "--runtime", keel.runtime, "--rm", "--network", name, IMAGE, "true",
               match="cni plugin 'no-such-plugin' not found")
    assert keel.ok("ps", "-aq") == ""
    assert not [ln for ln in links() if ln.get("master") == bridge]


def test_publish_all_exposed_ports(keel, tmp_path, busybox_tar):
    """-P publishes what the image exposes on free host ports; an explicit -p of the same
    container port wins."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "image_conftest_for_network", os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                                   "image", "conftest.py"))
    image_conftest = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(image_conftest)
    with open(busybox_tar, "rb") as f:
        image_conftest.build_oci_layout(str(tmp_path / "exposing"), layers=[f.read()], config={"config": {
            "Env": ["PATH=/bin"], "Cmd": ["sh"], "ExposedPorts": {"80/tcp": {}, "53/udp": {}}}})
    loaded = keel.ok("load", "-i", tmp_path / "exposing")
    keel.ok("tag", loaded.strip().rsplit(" ", 1)[-1], "localhost/exposing:1")
    name, _ = keel.network()
    port = free_port()
    keel.ok("run", "--runtime", keel.runtime, "-d", "--name", "exp", "--network", name, "-P",
            "-p", f"127.0.0.1:{port}:80", "localhost/exposing:1", "sleep", "60")
    lines = sorted(keel.ok("port", "exp").splitlines())
    assert len(lines) == 2 and lines[1] == f"80/tcp -> 127.0.0.1:{port}"
    assert lines[0].startswith("53/udp -> 0.0.0.0:") and int(lines[0].rsplit(":", 1)[1]) > 0
    keel.ok("rm", "-f", "exp")


def test_a_volume_on_etc_hosts_wins(keel, tmp_path):
    """-v FILE:/etc/hosts replaces keel's generated file (podman: the user's mount wins)."""
    mine = tmp_path / "myhosts"
    mine.write_text("10.9.9.9\tmine\n")
    out = keel.ok("run", "--runtime", keel.runtime, "--rm", "-v", f"{mine}:/etc/hosts:ro", "--add-host", "x:1.2.3.4",
                  IMAGE, "cat", "/etc/hosts", "/etc/hostname")
    assert out.startswith("10.9.9.9\tmine\n") and "x\n" not in out
