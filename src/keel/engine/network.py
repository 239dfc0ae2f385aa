"""A container's networking with CNI: its network namespace set up by the real CNI plugins,
published ports, and its name-resolution files.

The networks themselves (conflists in a config dir, the default one) are keel.engine.networks;
`--network bridge` means the default network.

A container on networks (`--network NAME[,NAME...]`) gets:
    <runroot>/netns/<id>         its network namespace, bind-mounted (made by keel.engine.netns)
    <runroot>/netns/<id>.json    what was set up: each network's conflist and CNI result, the
                                 published ports, names; DEL uses exactly this, so removing a
                                 network's file never strands a container's rules
    <runroot>/cni/ipam/          host-local's allocations (dataDir), private to the run root
    <bundle>/hosts, resolv.conf, hostname   bind-mounted on /etc/... (see keel.engine.hosts)
`setup` runs at every start before the runtime (loopback, then ADD per network, ifnames eth0,
eth1, ...); `teardown` at cleanup (conmon's exit command), rm and every failure path (DEL in
reverse, unmount and delete the namespace). A state file is written before the first ADD, so a
setup killed half-way is still torn down by a later rm. Other containers' /etc/hosts on the same
network get the container's name when it starts and lose it when it stops.

`none` is a new, empty namespace the runtime makes; `host` shares the host's;
`container:<ref>` joins another running container's namespace by path (and reads its hosts and
resolv.conf).
"""

import contextlib
import errno
import fcntl
import json
import os

from keel.engine import cni, hosts, netns
from keel.engine.errors import EngineError
from keel.engine.networks import (CNI_VERSION, NetworkError, NetworkNotFound, ipam_dir, network_id,
                                  subnets_of)

PROTOCOLS = ("tcp", "udp", "sctp")


# -- what a container asks for -----------------------------------------------------------------

def parse_ports(specs: list[str]) -> list[dict]:
    """-p [[IP:][HOSTPORT]:]CTRPORT[/PROTO], ports or equal-length ranges (8000-8001:80-81)."""
    out = []
    for spec in specs or []:
        out.extend(_parse_port(spec))
    seen = set()
    for p in out:
        if p["hostPort"]:
            key = (p["hostPort"], p["protocol"], p["hostIP"])
            if key in seen:
                raise NetworkError(f"-p: host port {p['hostPort']}/{p['protocol']} is published twice")
            seen.add(key)
    return out


def _port_range(text, spec, allow_empty=False):
    if text == "" and allow_empty:
        return None
    lo, dash, hi = text.partition("-")
    try:
        a, b = int(lo), int(hi) if dash else int(lo)
    except ValueError:
        raise NetworkError(f"-p {spec}: {text!r} is not a port or port range") from None
    if not (1 <= a <= 65535 and 1 <= b <= 65535) or b < a:
        raise NetworkError(f"-p {spec}: port {text!r} out of range 1-65535")
    return a, b


def _parse_port(spec):
    import ipaddress

    body, _, proto = spec.partition("/")
    proto = proto.lower() or "tcp"
    if proto not in PROTOCOLS:
        raise NetworkError(f"-p {spec}: unknown protocol {proto!r} (tcp, udp or sctp)")
    host_ip = ""
    if body.startswith("["):
        end = body.find("]:")
        if end < 0:
            raise NetworkError(f"-p {spec}: bad IPv6 address")
        host_ip, body = body[1:end], body[end + 2:]
        parts = [host_ip] + body.split(":")
        parts = parts[1:]
    else:
        parts = body.split(":")
        if len(parts) == 3:
            host_ip = parts.pop(0)
        elif len(parts) > 3:
            raise NetworkError(f"-p {spec}: too many ':' (IPv6 addresses go in brackets)")
    if host_ip:
        try:
            host_ip = str(ipaddress.ip_address(host_ip))
        except ValueError:
            raise NetworkError(f"-p {spec}: {host_ip!r} is not an IP address") from None
    if len(parts) == 1:
        host, ctr = "", parts[0]
    elif len(parts) == 2:
        host, ctr = parts
    else:
        raise NetworkError(f"-p {spec}: expected [[IP:][HOSTPORT]:]CONTAINERPORT[/PROTOCOL]")
    c = _port_range(ctr, spec)
    h = _port_range(host, spec, allow_empty=True)
    if h is not None and h[1] - h[0] != c[1] - c[0]:
        raise NetworkError(f"-p {spec}: host and container port ranges differ in length")
    return [{"hostIP": host_ip, "hostPort": (h[0] + i) if h else 0, "containerPort": c[0] + i,
             "protocol": proto} for i in range(c[1] - c[0] + 1)]


DEFAULT_MODE_ENV = "KEEL_DEFAULT_NETWORK"


def default_mode() -> str:
    """--network when none is given: the default bridge network, as Docker and podman (root)
    do; env KEEL_DEFAULT_NETWORK changes it (the test suite says "none": tests never NAT)."""
    return os.environ.get(DEFAULT_MODE_ENV) or "bridge"


def plan(engine, mode: str, *, ports=None, dns=None, dns_search=None, dns_options=None,
         add_hosts=None, hostname=None, ip=None, aliases=None) -> dict:
    """Check what was asked for (before anything is made) and return it as the container's
    options["net"]: {"mode": none|host|cni|container, "networks": [...], "container": id, ...}.
    No mode: "none", or the default network when ports are published (Docker's default)."""
    # the hostname goes into this and other containers' /etc/hosts: no room for a second line
    if hostname is not None and (len(hostname) > 64 or not hosts.valid_hostname(hostname)):
        raise NetworkError(f"--hostname {hostname!r}: not a valid host name (letters, digits, '-', '_', '.'; "
                           "at most 64 characters)")
    mode = (mode or ("bridge" if ports else default_mode())).strip()
    net = {"mode": mode, "requested": mode, "networks": [], "container": None}
    if mode in ("none", "host"):
        pass
    elif mode.startswith("container:"):
        ref = mode.partition(":")[2]
        if not ref:
            raise NetworkError("--network container: needs a container name or id")
        from keel.engine.errors import ContainerNotFound

        try:
            target = engine.db.find(ref)
        except ContainerNotFound:
            raise NetworkError(f"--network {mode}: no such container {ref!r}") from None
        net.update(mode="container", container=target["id"])
    else:
        names = [n.strip() for n in mode.split(",")]
        if not all(names):
            raise NetworkError(f"--network {mode!r}: empty network name")
        if any(n in ("none", "host") or n.startswith("container:") for n in names) and len(names) > 1:
            raise NetworkError(f"--network {mode}: none, host and container: cannot be combined with networks")
        nets = engine.networks
        confs = [nets.get(n) for n in names]
        if len({c["name"] for c in confs}) != len(confs):
            raise NetworkError(f"--network {mode}: a network is named twice")
        net.update(mode="cni", networks=[c["name"] for c in confs])
        if ip is not None:
            net["ips"] = {confs[0]["name"]: _static_ip(ip, confs)}
    if ip is not None and net["mode"] != "cni":
        raise NetworkError(f"--ip: only on a network (not with --network {mode})")
    for a in aliases or []:
        if net["mode"] != "cni":
            raise NetworkError(f"--network-alias: only on a network (not with --network {mode})")
        if not hosts.valid_hostname(a):
            raise NetworkError(f"--network-alias {a!r}: not a valid host name")
    net["aliases"] = list(dict.fromkeys(aliases or []))
    net["ports"] = parse_ports(ports)
    if net["ports"] and net["mode"] != "cni":
        raise NetworkError(f"-p: ports cannot be published with --network {mode} "
                           "(only on a network such as bridge)")
    for d in dns or []:
        import ipaddress

        try:
            ipaddress.ip_address(d)
        except ValueError:
            raise NetworkError(f"--dns {d!r}: not an IP address") from None
    try:
        net["add_hosts"] = [list(hosts.parse_add_host(h)) for h in add_hosts or []]
    except ValueError as e:
        raise NetworkError(str(e)) from None
    for s in dns_search or []:
        if s != "." and not hosts.valid_hostname(s):
            raise NetworkError(f"--dns-search {s!r}: not a domain name")
    for o in dns_options or []:
        if not o or any(ch.isspace() for ch in o):
            raise NetworkError(f"--dns-option {o!r}: not a resolver option")
    net.update(dns=list(dns or []), dns_search=list(dns_search or []), dns_options=list(dns_options or []))
    return net


def netns_path(runroot: str, cid: str) -> str:
    return os.path.join(runroot, "netns", cid)


def state_path(runroot: str, cid: str) -> str:
    return os.path.join(runroot, "netns", cid + ".json")


_FILES = ("hosts", "resolv.conf", "hostname")


def configure_spec(engine, cid: str, spec: dict, net: dict) -> None:
    """The network parts of config.json: the namespace (new, none, or a path) and the bind
    mounts of the generated /etc files."""
    linux = spec.setdefault("linux", {})
    nss = [ns for ns in linux.get("namespaces", []) if ns["type"] != "network"]
    if net["mode"] == "none":
        nss.append({"type": "network"})
    elif net["mode"] == "cni":
        nss.append({"type": "network", "path": netns_path(engine.runroot, cid)})
    elif net["mode"] == "container":
        nss.append({"type": "network", "path": _container_netns(engine, net["container"], check=False)})
    linux["namespaces"] = nss
    src = engine.bundle_dir(net["container"]) if net["mode"] == "container" else engine.bundle_dir(cid)
    mounts = [m for m in spec.get("mounts", []) if m.get("destination") not in [f"/etc/{f}" for f in _FILES]]
    for f in _FILES:
        d = src if f != "hostname" else engine.bundle_dir(cid)
        mounts.append({"destination": f"/etc/{f}", "type": "bind", "source": os.path.join(d, f),
                       "options": ["bind", "rprivate", "nosuid", "nodev", "noexec"]})
    spec["mounts"] = mounts


def _container_netns(engine, target_id: str, check: bool = True) -> str:
    """The namespace path of the container whose network is joined."""
    path = netns_path(engine.runroot, target_id)
    if os.path.exists(path) and netns.is_mounted(path):
        return path
    t = engine.db.get(target_id)
    if t is None:
        raise NetworkError(f"--network container:{target_id[:12]}: that container was removed")
    t = engine._sync(t)
    opts = (t["options"].get("net") or {})
    if opts.get("mode") == "cni" and not check:
        return path
    if t["state"] != "running" or not t["pid"]:
        if not check:
            return path
        raise NetworkError(f"--network container:{t['name']}: that container is not running")
    return f"/proc/{t['pid']}/ns/net"


@contextlib.contextmanager
def _global_lock(runroot):
    d = os.path.join(runroot, "cni")
    os.makedirs(d, 0o700, exist_ok=True)
    fd = os.open(os.path.join(d, "lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _read_state(runroot, cid):
    try:
        with open(state_path(runroot, cid)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _write_state(runroot, cid, state):
    os.makedirs(os.path.join(runroot, "netns"), 0o700, exist_ok=True)
    hosts.write_atomic(state_path(runroot, cid), json.dumps(state))


def _states(runroot):
    d = os.path.join(runroot, "netns")
    out = []
    with contextlib.suppress(FileNotFoundError):
        for n in os.listdir(d):
            if n.endswith(".json"):
                s = _read_state(runroot, n[:-5])
                if s:
                    out.append(s)
    return out


def _ips(result):
    """IPv4/IPv6 addresses (no prefix) of a CNI result's container interface(s)."""
    ifaces = result.get("interfaces") or []
    out = []
    for ip in result.get("ips") or []:
        i = ip.get("interface")
        if i is not None and 0 <= i < len(ifaces) and not ifaces[i].get("sandbox"):
            continue
        out.append(ip["address"])
    return out


def _static_ip(ip, confs):
    """--ip: an address of the (one) network's subnet, in the CIDR form host-local takes."""
    import ipaddress

    if len(confs) != 1:
        raise NetworkError("--ip: only with exactly one network")
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        raise NetworkError(f"--ip {ip!r}: not an IP address") from None
    for s in subnets_of(confs[0]):
        net = ipaddress.ip_network(s["subnet"], strict=False)
        if addr in net:
            if addr in (net.network_address, net.broadcast_address) or str(addr) == s.get("gateway"):
                raise NetworkError(f"--ip {ip}: the subnet's network, broadcast or gateway address")
            return f"{addr}/{net.prefixlen}"
    raise NetworkError(f"--ip {ip}: not in a subnet of network {confs[0]['name']!r}")


def _runtime_config(ports, ip):
    """The CNI runtime arguments of one network: published ports (they go to the first
    network), a static address. Kept with the network's state: DEL gets the same."""
    rc = {}
    if ports:
        rc["portMappings"] = ports
    if ip:
        rc["ips"] = [ip]
    return rc


def _check_ports(runroot, cid, name, ports):
    """Assign random host ports and refuse ports another container publishes or a host process
    listens on (the DNAT rule would silently steal its traffic)."""
    taken = [(p, s.get("name", "")) for s in _states(runroot) if s.get("id") != cid for p in s.get("ports") or []]

    def owner(p):
        return next((who for q, who in taken if (q["hostPort"], q["protocol"]) == (p["hostPort"], p["protocol"])
                     and (not q["hostIP"] or not p["hostIP"] or q["hostIP"] == p["hostIP"])), None)

    out = []
    for p in ports:
        p = dict(p)
        if p["hostPort"]:
            if owner(p) is not None:
                raise NetworkError(f"port {p['hostPort']}/{p['protocol']} is already published by container {owner(p)}")
            _probe(p)
        else:
            # a free port of the host may still be one another container publishes (no socket
            # holds it, a DNAT rule does): ask again
            for _ in range(50):
                p["hostPort"] = _probe(dict(p, hostPort=0))
                if owner(p) is None:
                    break
            else:
                raise NetworkError(f"-p {p['containerPort']}/{p['protocol']}: no free host port found")
        taken.append((p, name))
        out.append(p)
    return out


def _probe(p):
    import socket

    if p["protocol"] == "sctp":
        if not p["hostPort"]:
            raise NetworkError("-p: an sctp port needs a host port")
        return p["hostPort"]
    ip = p["hostIP"] or "0.0.0.0"
    fam = socket.AF_INET6 if ":" in ip else socket.AF_INET
    kind = socket.SOCK_STREAM if p["protocol"] == "tcp" else socket.SOCK_DGRAM
    with socket.socket(fam, kind) as s:
        if kind == socket.SOCK_STREAM:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((ip, p["hostPort"]))
        except OSError as e:
            where = f"{p['hostIP']}:" if p["hostIP"] else ""
            if e.errno == errno.EADDRINUSE:
                raise NetworkError(f"port {where}{p['hostPort']}/{p['protocol']} is already in use on the host") from None
            if e.errno == errno.EADDRNOTAVAIL:
                raise NetworkError(f"-p: {p['hostIP']} is not an address of this host") from None
            raise NetworkError(f"port {where}{p['hostPort']}/{p['protocol']}: {(e.strerror or str(e)).lower()}") from None
        return s.getsockname()[1]


def setup(engine, c: dict) -> None:
    """Before the runtime runs: the namespace, CNI ADD per network, the /etc files. On any
    failure everything made here is undone and NetworkError raised."""
    cid = c["id"]
    net = c["options"].get("net") or {"mode": c["options"].get("network", "none")}
    bundle = engine.bundle_dir(cid)
    hostname = c["config"].get("hostname") or cid[:12]
    if net["mode"] == "container":
        _join_container(engine, c, net)
        hosts.write_atomic(os.path.join(bundle, "hostname"), hostname + "\n")
        return
    if net["mode"] != "cni":
        _write_files(engine, c, net, hostname, [])
        return
    with _global_lock(engine.runroot):
        teardown_locked(engine, cid)   # a leftover of a run whose cleanup never came
        state = {"id": cid, "name": c["name"], "hostname": hostname, "aliases": net.get("aliases") or [],
                 "netns": netns_path(engine.runroot, cid),
                 "networks": [], "hosts": os.path.join(bundle, "hosts"), "cni_path": cni.plugin_dirs()}
        try:
            state["ports"] = _check_ports(engine.runroot, cid, c["name"], net.get("ports") or [])
            confs = [_with_ipam_dir(engine.networks.get(n), engine.runroot) for n in net["networks"]]
            _write_state(engine.runroot, cid, state)
            netns.create(state["netns"])
            cni.add_network_list({"cniVersion": CNI_VERSION, "name": "lo", "plugins": [{"type": "loopback"}]},
                                 cid, state["netns"], "lo", dirs=state["cni_path"])
            for i, conf in enumerate(confs):
                rc = _runtime_config(state["ports"] if i == 0 else [], (net.get("ips") or {}).get(conf["name"]))
                _add(engine.runroot, state, conf, f"eth{i}", rc)
            state["hosts_head"] = _write_files(engine, c, net, hostname, state["networks"])
            _write_state(engine.runroot, cid, state)
            _refresh_peers(engine.runroot, cid, {e["name"] for e in state["networks"]})
        except BaseException as e:
            errors = teardown_locked(engine, cid)
            if not isinstance(e, (EngineError, OSError)):
                raise
            msg = str(e) if isinstance(e, EngineError) else \
                f"network setup of {c['name']}: {e.filename or ''}: {(e.strerror or str(e)).lower()}"
            if errors:
                msg += f" (and undoing it: {errors[0]})"
            raise NetworkError(msg) from None


def _add(runroot, state, conf, ifname, rc):
    """CNI ADD of one network, its state written before and after each plugin (so a DEL after
    a crash knows what was made)."""
    entry = {"name": conf["name"], "ifname": ifname, "conf": conf, "runtime_config": rc, "result": None}
    state["networks"].append(entry)
    _write_state(runroot, state["id"], state)

    def progress(result):
        entry["result"] = result
        _write_state(runroot, state["id"], state)

    cni.add_network_list(conf, state["id"], state["netns"], ifname, rc, dirs=state.get("cni_path"), progress=progress)
    return entry


def _del(ns, state, entry):
    # the plugin dirs of the ADD: conmon's exit command need not have keel's environment
    return cni.del_network_list(entry["conf"], state["id"], ns, entry["ifname"], entry.get("runtime_config"),
                                entry.get("result"), dirs=state.get("cni_path"))


def _with_ipam_dir(conf, runroot):
    conf = json.loads(json.dumps({k: v for k, v in conf.items() if not k.startswith("_")}))
    for p in conf["plugins"]:
        ipam = p.get("ipam")
        if isinstance(ipam, dict) and ipam.get("type") == "host-local":
            ipam.setdefault("dataDir", ipam_dir(runroot))
    return conf


def _join_container(engine, c, net):
    path = _container_netns(engine, net["container"])
    spec = c["config"]
    for ns in spec.get("linux", {}).get("namespaces", []):
        if ns["type"] == "network" and ns.get("path") != path:
            ns["path"] = path
            from keel.engine.engine import _write_config

            _write_config(engine.bundle_dir(c["id"]), spec)
            engine.db.update(c["id"], config=spec)
    for f in ("hosts", "resolv.conf"):
        if not os.path.exists(os.path.join(engine.bundle_dir(net["container"]), f)):
            raise NetworkError(f"--network container:{net['container'][:12]}: its /etc/{f} is gone")


def _own_entries(c, networks, hostname):
    names = [hostname, c["name"]] + list((c["options"].get("net") or {}).get("aliases") or [])
    out = []
    for e in networks:
        for addr in _ips(e.get("result") or {}):
            out.append((addr.split("/")[0], names))
    return out


def _write_files(engine, c, net, hostname, networks, running=False):
    """Write hosts, resolv.conf and hostname; the hosts lines before the peers' are returned.
    A running container's files are rewritten in place (its bind mounts pin the inodes)."""
    write = hosts.write_in_place if running else hosts.write_atomic
    bundle = engine.bundle_dir(c["id"])
    host_mode = net["mode"] == "host"
    own = _own_entries(c, networks, hostname) or [("127.0.1.1", [hostname, c["name"]])]
    base = None
    if host_mode:
        with contextlib.suppress(OSError):
            with open("/etc/hosts") as f:
                base = f.read()
    head = hosts.hosts_text(own, net.get("add_hosts") or [], [], base)
    peers = _peers(engine.runroot, c["id"], {e["name"] for e in networks})
    write(os.path.join(bundle, "hosts"), head + hosts.hosts_text([], [], peers, base=""))
    if not running:
        write(os.path.join(bundle, "resolv.conf"),
              hosts.resolv_text(hosts.host_resolv_conf(), net.get("dns") or [], net.get("dns_search") or [],
                                net.get("dns_options") or [], keep_loopback=host_mode))
        write(os.path.join(bundle, "hostname"), hostname + "\n")
    return head


def _peers(runroot, cid, names):
    """(address, names) of the other containers on the networks `names`."""
    out = []
    if not names:
        return out
    for s in _states(runroot):
        if s.get("id") == cid:
            continue
        for e in s.get("networks") or []:
            if e["name"] in names and e.get("result"):
                for addr in _ips(e["result"]):
                    out.append((addr.split("/")[0], [s["name"], s.get("hostname", "")] + (s.get("aliases") or [])))
    return out


def _refresh_peers(runroot, cid, names):
    """Rewrite the /etc/hosts of the other containers on `names`: their peer lines change."""
    if not names:
        return
    for s in _states(runroot):
        if s.get("id") == cid or not {e["name"] for e in s.get("networks") or []} & names:
            continue
        mine = {e["name"] for e in s["networks"]}
        text = s.get("hosts_head", "") + hosts.hosts_text([], [], _peers(runroot, s["id"], mine), base="")
        with contextlib.suppress(OSError, TypeError):
            hosts.write_in_place(s.get("hosts"), text)


def teardown(engine, cid: str) -> list[str]:
    """CNI DEL per network (reverse), namespace unmounted and deleted, state dropped; every step
    is tried; the errors are returned. Idempotent."""
    if not os.path.exists(state_path(engine.runroot, cid)) and not os.path.exists(netns_path(engine.runroot, cid)):
        return []
    with _global_lock(engine.runroot):
        return teardown_locked(engine, cid)


def teardown_locked(engine, cid: str) -> list[str]:
    runroot = engine.runroot
    state = _read_state(runroot, cid)
    path = netns_path(runroot, cid)
    errors = []
    if state:
        # a namespace gone (a reboot: /run may not be a tmpfs) is no namespace: the plugins then
        # skip the in-namespace part of DEL and still free addresses and rules
        ns = path if netns.is_mounted(path) else ""
        for e in reversed(state.get("networks") or []):
            errors += _del(ns, dict(state, id=cid), e)
    try:
        netns.remove(path)
    except EngineError as e:
        errors.append(str(e))
    with contextlib.suppress(FileNotFoundError):
        os.unlink(state_path(runroot, cid))
    if state:
        _refresh_peers(runroot, cid, {e["name"] for e in state.get("networks") or []})
    return errors


# -- what `inspect`, `ps` and `port` show -------------------------------------------------------

def ports_of(engine, c: dict) -> list[dict]:
    """The published ports: as set up (random host ports resolved) while it runs, else as asked."""
    s = _read_state(engine.runroot, c["id"])
    if s and s.get("ports") is not None:
        return s["ports"]
    return list((c["options"].get("net") or {}).get("ports") or [])


def format_port(p: dict) -> str:
    return f"{p['containerPort']}/{p['protocol']} -> {p['hostIP'] or '0.0.0.0'}:{p['hostPort']}"


def _endpoint(name, cid, result=None, aliases=()):
    """One network of a container in podman's inspect shape, from its CNI result."""
    res = result or {}

    def first(version):   # (address, prefix length, gateway) of that IP version
        for x in res.get("ips") or []:
            addr, _, plen = x.get("address", "").partition("/")
            if addr in [a.split("/")[0] for a in _ips(res)] and (":" in addr) == (version == 6):
                return addr, int(plen or 0), x.get("gateway", "")
        return "", 0, ""

    ip4, ip6 = first(4), first(6)
    iface = next((i for i in res.get("interfaces") or [] if i.get("sandbox")), {})
    return {"EndpointID": "", "Gateway": ip4[2], "IPAddress": ip4[0], "IPPrefixLen": ip4[1], "IPv6Gateway": ip6[2],
            "GlobalIPv6Address": ip6[0], "GlobalIPv6PrefixLen": ip6[1], "MacAddress": iface.get("mac", ""),
            "NetworkID": network_id(name), "DriverOpts": None, "IPAMConfig": None, "Links": None,
            "Aliases": [cid[:12]] + list(aliases)}


def settings(engine, c: dict) -> dict:
    """podman's NetworkSettings of `container inspect`."""
    s = _read_state(engine.runroot, c["id"]) or {}
    net = c["options"].get("net") or {}
    ports = {}
    for p in ports_of(engine, c):
        ports.setdefault(f"{p['containerPort']}/{p['protocol']}", []).append(
            {"HostIp": p["hostIP"], "HostPort": str(p["hostPort"]) if p["hostPort"] else ""})
    networks = {}
    for e in s.get("networks") or []:
        networks[e["name"]] = _endpoint(e["name"], c["id"], e.get("result"), net.get("aliases") or ())
    for n in net.get("networks") or []:
        networks.setdefault(n, _endpoint(n, c["id"], aliases=net.get("aliases") or ()))
    first = next(iter(networks.values()), _endpoint("", c["id"]))
    out = {k: first[k] for k in ("EndpointID", "Gateway", "IPAddress", "IPPrefixLen", "IPv6Gateway",
                                 "GlobalIPv6Address", "GlobalIPv6PrefixLen", "MacAddress")}
    out.update({"Bridge": "", "SandboxID": "", "HairpinMode": False, "LinkLocalIPv6Address": "",
                "LinkLocalIPv6PrefixLen": 0, "Ports": ports, "SandboxKey": s.get("netns", ""),
                "Networks": networks})
    return out


def users(engine, name: str) -> list[dict]:
    """The containers configured to use network `name`."""
    return [c for c in engine.db.all() if name in ((c["options"].get("net") or {}).get("networks") or [])]


def remove_network(engine, name: str, force: bool = False) -> str:
    """Remove a network; one in use by containers only with force, which removes them first
    (podman's `network rm -f`). Returns the network's name."""
    conf = engine.networks.get(name)
    using = users(engine, conf["name"])
    if using and not force:
        raise NetworkError(f"network {conf['name']!r} is used by container(s) "
                           f"{', '.join(c['name'] for c in using)}: remove them first or use rm -f")
    for c in using:
        engine.remove(c["id"], force=True)
    engine.networks.remove(conf["name"])
    return conf["name"]


def connect(engine, ref: str, name: str, ip: str | None = None) -> None:
    """Put a container on one more network (podman's `network connect`): a running one gets the
    interface at once (the next free ethN) and its and the network's peers' /etc/hosts learn
    the address; a stopped one at its next start."""
    c = engine.db.find(ref)
    with engine._lock(c["id"]):
        c = engine._sync(engine.db.find(c["id"]))
        net = c["options"].get("net") or {}
        if net.get("mode") != "cni":
            raise NetworkError(f"container {c['name']} has --network {net.get('requested', net.get('mode'))}: "
                               "only a container on networks can join another")
        conf = engine.networks.get(name)
        if conf["name"] in net["networks"]:
            raise NetworkError(f"container {c['name']} is already connected to network {conf['name']!r}")
        static = _static_ip(ip, [conf]) if ip is not None else None
        if c["state"] == "running":
            with _global_lock(engine.runroot):
                state = _read_state(engine.runroot, c["id"])
                if state is None or not netns.is_mounted(state["netns"]):
                    raise NetworkError(f"container {c['name']}: its network namespace is gone")
                used = {e["ifname"] for e in state["networks"]}
                ifname = next(f"eth{i}" for i in range(len(used) + 1) if f"eth{i}" not in used)
                try:
                    _add(engine.runroot, state, _with_ipam_dir(conf, engine.runroot), ifname,
                         _runtime_config([], static))
                except EngineError as e:
                    entry = state["networks"].pop()
                    errors = _del(state["netns"], state, entry)
                    _write_state(engine.runroot, c["id"], state)
                    raise NetworkError(str(e) + (f" (and undoing it: {errors[0]})" if errors else "")) from None
                _rewrite_own_hosts(engine, c, net, state)
                _refresh_peers(engine.runroot, c["id"], {conf["name"]})
        net = dict(net, networks=net["networks"] + [conf["name"]])
        if static:
            net["ips"] = dict(net.get("ips") or {}, **{conf["name"]: static})
        engine.db.update(c["id"], options=dict(c["options"], net=net))


def disconnect(engine, ref: str, name: str) -> None:
    """Take a container off a network (podman's `network disconnect`): CNI DEL of that network
    now if it runs, and the network is gone from its configuration."""
    c = engine.db.find(ref)
    with engine._lock(c["id"]):
        c = engine._sync(engine.db.find(c["id"]))
        net = c["options"].get("net") or {}
        try:
            target = engine.networks.get(name)["name"]
        except NetworkNotFound:
            target = name   # its definition is gone: the container can still leave it
        if target not in (net.get("networks") or []):
            raise NetworkError(f"container {c['name']} is not connected to network {name!r}")
        errors = []
        if c["state"] == "running":
            with _global_lock(engine.runroot):
                state = _read_state(engine.runroot, c["id"])
                entry = next((e for e in (state or {}).get("networks", []) if e["name"] == target), None)
                if entry is not None:
                    errors = _del(state["netns"], state, entry)
                    state["networks"].remove(entry)
                    _write_state(engine.runroot, c["id"], state)
                    _rewrite_own_hosts(engine, c, net, state)
                    _refresh_peers(engine.runroot, c["id"], {target})
        ips = {k: v for k, v in (net.get("ips") or {}).items() if k != target}
        net = dict(net, networks=[n for n in net["networks"] if n != target], ips=ips)
        engine.db.update(c["id"], options=dict(c["options"], net=net))
        if errors:
            raise NetworkError(f"disconnecting {c['name']} from {target}: {errors[0]}")


def _rewrite_own_hosts(engine, c, net, state):
    hostname = state.get("hostname") or c["id"][:12]
    state["hosts_head"] = _write_files(engine, c, net, hostname, state["networks"], running=True)
    _write_state(engine.runroot, c["id"], state)


def prune_networks(engine) -> list[str]:
    """Remove every network no container uses (the built-in default stays); their names."""
    used = {n for c in engine.db.all() for n in ((c["options"].get("net") or {}).get("networks") or [])}
    out = []
    for conf in engine.networks.all():
        if conf.get("_path") and conf["name"] not in used:
            engine.networks.remove(conf["name"])
            out.append(conf["name"])
    return out
