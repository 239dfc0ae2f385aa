"""The networks: CNI network config lists (`<name>.conflist`) in a config dir, plus the
built-in default, as podman's CNI backend keeps them.

Config dir: /etc/keel/cni/net.d by default (`--network-config-dir`, env KEEL_NETWORK_CONFIG_DIR).
A network made by `create` chains bridge (+ host-local IPAM), portmap and firewall; keel's own
fields (id, created, internal, labels) sit under the top-level key "keel", which CNI tools
ignore. The default network `keel` (bridge keel0, 10.90.0.0/16, masquerading on) needs no file;
a file with that name overrides it. `remove` deletes the file, the bridge (the bridge plugin
leaves it after the last DEL) and host-local's allocations.
"""

import contextlib
import fcntl
import json
import os
import re

from keel.engine.errors import EngineError

DEFAULT_CONFIG_DIR = "/etc/keel/cni/net.d"
DEFAULT_NETWORK = "keel"
DEFAULT_BRIDGE = "keel0"
DEFAULT_SUBNET = "10.90.0.0/16"
DEFAULT_GATEWAY = "10.90.0.1"
# `network create` without --subnet takes the first free /24 from here
AUTO_SUBNETS = "10.91.0.0/16"
# ... and with --ipv6 (no IPv6 --subnet) the first free /64 from here (a ULA prefix)
AUTO_SUBNETS6 = "fd91:6b65:656c::/48"
CNI_VERSION = "1.0.0"
_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*\Z")


class NetworkError(EngineError):
    """Bad network input, or a network could not be set up or torn down."""


class NetworkNotFound(NetworkError):
    """No network has that name."""


def config_dir(explicit: str | None = None) -> str:
    return os.path.abspath(explicit or os.environ.get("KEEL_NETWORK_CONFIG_DIR") or DEFAULT_CONFIG_DIR)


def network_id(name: str) -> str:
    import hashlib

    return hashlib.sha256(name.encode()).hexdigest()


# -- networks ------------------------------------------------------------------------------------

def _conflist(name, bridge, ranges, internal, masquerade, labels, created, mtu=None):
    """`ranges`: [(subnet, gateway)], one host-local range set each (IPv4, IPv6)."""
    ipam = {"type": "host-local", "ranges": [[{"subnet": str(n), "gateway": str(g)}] for n, g in ranges]}
    if not internal:
        ipam["routes"] = [{"dst": "::/0" if ":" in str(n) else "0.0.0.0/0"} for n, _ in ranges]
    return {
        "cniVersion": CNI_VERSION,
        "name": name,
        "plugins": [
            {"type": "bridge", "bridge": bridge, "isGateway": not internal, "ipMasq": masquerade,
             "hairpinMode": True, **({"mtu": mtu} if mtu else {}), "ipam": ipam,
             "capabilities": {"ips": True}},
            {"type": "portmap", "capabilities": {"portMappings": True}},
            {"type": "firewall", "backend": "iptables"},
        ],
        "keel": {"id": network_id(name), "driver": "bridge", "internal": internal,
                 "labels": labels, "created": created},
    }


def default_conflist() -> dict:
    return _conflist(DEFAULT_NETWORK, DEFAULT_BRIDGE, [(DEFAULT_SUBNET, DEFAULT_GATEWAY)], False, True, {}, 0.0)


def _check_conflist(conf, where):
    if not isinstance(conf, dict) or not isinstance(conf.get("name"), str) or not conf["name"]:
        raise NetworkError(f"{where}: not a CNI network config list (no name)")
    if not _NAME.match(conf["name"]):   # it becomes a path (host-local's dir) and a CLI argument
        raise NetworkError(f"{where}: invalid network name {conf['name']!r}")
    plugins = conf.get("plugins")
    if not isinstance(plugins, list) or not plugins or \
            not all(isinstance(p, dict) and isinstance(p.get("type"), str) for p in plugins):
        raise NetworkError(f"{where}: plugins must be a non-empty list of objects with a type")


class Networks:
    """The networks defined in a config dir (plus the built-in default)."""

    def __init__(self, config_dir_: str, runroot: str):
        self.dir = config_dir_
        self.runroot = runroot

    def _files(self):
        try:
            names = sorted(os.listdir(self.dir))
        except FileNotFoundError:
            return []
        except OSError as e:
            raise NetworkError(f"network config dir {self.dir}: {(e.strerror or str(e)).lower()}") from None
        return [os.path.join(self.dir, n) for n in names if n.endswith((".conflist", ".json"))]

    def _load(self, path):
        try:
            with open(path) as f:
                conf = json.load(f)
        except (OSError, ValueError) as e:
            raise NetworkError(f"network config {path}: {getattr(e, 'strerror', None) or e}") from None
        _check_conflist(conf, f"network config {path}")
        return conf

    def all(self, problems: list | None = None) -> list[dict]:
        """Every network, by name (as podman lists them); broken files are skipped (and told in
        `problems`)."""
        out = {}
        for path in self._files():
            try:
                conf = self._load(path)
            except NetworkError as e:
                if problems is not None:
                    problems.append(str(e))
                continue
            out.setdefault(conf["name"], dict(conf, _path=path))
        out.setdefault(DEFAULT_NETWORK, default_conflist())
        return sorted(out.values(), key=lambda c: c["name"])

    def get(self, name: str) -> dict:
        if name == "bridge":
            name = DEFAULT_NETWORK
        for conf in self.all():
            if conf["name"] == name:
                return conf
        raise NetworkNotFound(f"network {name!r} not found")

    @contextlib.contextmanager
    def _lock(self):
        os.makedirs(self.dir, 0o755, exist_ok=True)
        fd = os.open(os.path.join(self.dir, ".keel.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def create(self, name: str, subnet=None, gateway=None, internal: bool = False, driver: str = "bridge",
               labels: dict | None = None, bridge: str | None = None, masquerade: bool | None = None,
               mtu: int | None = None, ipv6: bool = False) -> dict:
        """A bridge network. `subnet` and `gateway`: one or a list each (gateways pair with
        subnets in order; IPv4 and IPv6 make a dual-stack network); without an IPv4 subnet a
        free /24 from AUTO_SUBNETS, with `ipv6` and no IPv6 subnet a free /64 from AUTO_SUBNETS6."""
        import ipaddress
        import time

        if not _NAME.match(name or ""):
            raise NetworkError(f"invalid network name {name!r}: [a-zA-Z0-9][a-zA-Z0-9_.-]* is allowed")
        if name in ("bridge", "none", "host", DEFAULT_NETWORK) or name.startswith("container:"):
            raise NetworkError(f"network name {name!r} is reserved")
        if driver != "bridge":
            raise NetworkError(f"--driver {driver}: only bridge is supported")
        if bridge is not None and not re.fullmatch(r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,14}", bridge):
            raise NetworkError(f"bridge name {bridge!r}: 1-15 characters [a-zA-Z0-9_.-]")
        subnets = [subnet] if isinstance(subnet, str) else list(subnet or [])
        gateways = [gateway] if isinstance(gateway, str) else list(gateway or [])
        if len(gateways) > len(subnets):
            raise NetworkError("--gateway needs --subnet (one gateway per subnet, in order)")
        nets = []
        for sub in subnets:
            try:
                n = ipaddress.ip_network(sub, strict=True)
            except ValueError as e:
                raise NetworkError(f"--subnet {sub}: {e}") from None
            if n.num_addresses < 4:
                raise NetworkError(f"--subnet {sub}: too small (at least a /30 or /126)")
            if any(m.version == n.version for m in nets):
                raise NetworkError(f"--subnet {sub}: one IPv4 and one IPv6 subnet at most")
            nets.append(n)
        with self._lock():
            existing = self.all()
            if any(c["name"] == name for c in existing):
                raise NetworkError(f"network {name!r} already exists")
            used = [n for c in existing for n in _subnets(c)] + _host_routes()
            for n in nets:
                clash = next((u for u in used if n.version == u.version and n.overlaps(u)), None)
                if clash is not None:
                    raise NetworkError(f"--subnet {n}: overlaps {clash}, already used by a network or a host route")
            for version, pool, prefix in ((4, AUTO_SUBNETS, 24), (6, AUTO_SUBNETS6, 64)):
                if (version == 4 or ipv6) and not any(n.version == version for n in nets):
                    free = next((s for s in ipaddress.ip_network(pool).subnets(new_prefix=prefix)
                                 if not any(s.version == u.version and s.overlaps(u) for u in used)), None)
                    if free is None:
                        raise NetworkError(f"no free subnet left in {pool}: give one with --subnet")
                    nets.append(free)
            nets.sort(key=lambda n: n.version)
            ranges = []
            for i, n in enumerate(nets):
                gw = n.network_address + 1
                given = next((g for j, g in enumerate(gateways) if j < len(subnets)
                              and ipaddress.ip_network(subnets[j]) == n), None)
                if given is not None:
                    try:
                        gw = ipaddress.ip_address(given)
                    except ValueError:
                        raise NetworkError(f"--gateway {given}: not an IP address") from None
                    if gw not in n or gw in (n.network_address, n.broadcast_address):
                        raise NetworkError(f"--gateway {given}: not a host address of {n}")
                ranges.append((n, gw))
            if bridge is None:
                taken = {p.get("bridge") for c in existing for p in c["plugins"]} | set(_links())
                bridge = next(f"keel{i}" for i in range(1, 100000) if f"keel{i}" not in taken)
            elif any(p.get("bridge") == bridge for c in existing for p in c["plugins"]):
                raise NetworkError(f"bridge {bridge!r} is already used by another network")
            masq = (not internal) if masquerade is None else masquerade
            conf = _conflist(name, bridge, ranges, internal, masq, dict(labels or {}), time.time(), mtu)
            path = os.path.join(self.dir, f"{name}.conflist")
            tmp = path + ".tmp"
            with open(tmp, "w") as f:
                json.dump(conf, f, indent=2)
                f.flush()
                os.fsync(f.fileno())
            os.rename(tmp, path)
        return dict(conf, _path=path)

    def remove(self, name: str) -> None:
        """Delete the network's file, its bridge (only one keel made: a foreign conflist may name
        any link) and its address allocations (users of it are the caller's business: see
        keel.engine.network.remove_network)."""
        conf = self.get(name)
        path = conf.get("_path")
        if path is None:
            raise NetworkError(f"network {conf['name']!r} is the built-in default: it cannot be removed")
        with self._lock():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        if isinstance(conf.get("keel"), dict):
            for bridge in {p.get("bridge") for p in conf["plugins"] if p.get("type") == "bridge"} - {None}:
                _delete_bridge(bridge)
        import shutil

        shutil.rmtree(os.path.join(ipam_dir(self.runroot), conf["name"]), ignore_errors=True)


def _subnets(conf):
    import ipaddress

    out = []
    for p in conf.get("plugins", []):
        for rng in ((p.get("ipam") or {}).get("ranges") or []):
            for r in rng if isinstance(rng, list) else []:
                with contextlib.suppress(ValueError, TypeError, KeyError):
                    out.append(ipaddress.ip_network(r["subnet"], strict=False))
        with contextlib.suppress(ValueError, TypeError, KeyError):
            out.append(ipaddress.ip_network((p.get("ipam") or {})["subnet"], strict=False))
    return out


def _host_routes():
    """The host's routes other than default and link-local ones (a new subnet must not shadow
    them)."""
    import ipaddress
    import socket

    out = []
    with contextlib.suppress(OSError):
        with open("/proc/net/route") as f:
            next(f)
            for line in f:
                fields = line.split()
                dst, mask = (socket.inet_ntoa(int(x, 16).to_bytes(4, "little")) for x in (fields[1], fields[7]))
                if mask != "0.0.0.0":
                    out.append(ipaddress.ip_network(f"{dst}/{mask}", strict=False))
    with contextlib.suppress(OSError):
        with open("/proc/net/ipv6_route") as f:
            for line in f:
                dst, plen = line.split()[:2]
                plen = int(plen, 16)
                if 0 < plen < 128 and not dst.startswith("fe80"):
                    addr = ":".join(dst[i:i + 4] for i in range(0, 32, 4))
                    out.append(ipaddress.ip_network(f"{addr}/{plen}", strict=False))
    return out


def _links():
    with contextlib.suppress(OSError):
        return os.listdir("/sys/class/net")
    return []


def _delete_bridge(name):
    import subprocess

    if isinstance(name, str) and "/" not in name and os.path.isdir(f"/sys/class/net/{name}/bridge"):
        subprocess.run(["ip", "link", "delete", "dev", name], capture_output=True)


def subnets_of(conf: dict) -> list[dict]:
    out = []
    for p in conf.get("plugins", []):
        for rng in ((p.get("ipam") or {}).get("ranges") or []):
            for r in rng if isinstance(rng, list) else []:
                if isinstance(r, dict) and "subnet" in r:
                    out.append({"subnet": r["subnet"], **({"gateway": r["gateway"]} if r.get("gateway") else {})})
    return out


def inspect_network(conf: dict) -> dict:
    """podman's `network inspect` shape."""
    from keel.engine.engine import format_time

    meta = conf.get("keel") or {}
    bridge = next((p for p in conf["plugins"] if p.get("type") == "bridge"), {})
    ipam = (bridge.get("ipam") or {}).get("type", "")
    return {
        "name": conf["name"],
        "id": meta.get("id") or network_id(conf["name"]),
        "driver": meta.get("driver") or bridge.get("type") or conf["plugins"][0]["type"],
        "network_interface": bridge.get("bridge", ""),
        "created": format_time(meta.get("created") or _mtime(conf.get("_path"))),
        "subnets": subnets_of(conf),
        "ipv6_enabled": any(":" in s["subnet"] for s in subnets_of(conf)),
        "internal": bool(meta.get("internal", False)),
        "dns_enabled": False,
        "labels": meta.get("labels") or {},
        "ipam_options": {"driver": ipam} if ipam else {},
    }


def _mtime(path):
    try:
        return os.stat(path).st_mtime if path else 0.0
    except OSError:
        return 0.0


def ipam_dir(runroot: str) -> str:
    return os.path.join(runroot, "cni", "ipam")

