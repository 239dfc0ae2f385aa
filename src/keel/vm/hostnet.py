"""The container's network namespace (made by the engine or CNI) extended into the VM.

As Kata's tc-filter model: in the container's network namespace a tap device is made next to
the interface the engine set up (eth0), and tc mirred redirects every frame arriving on one to
the other, both ways. QEMU gets the tap's fd for a virtio-net NIC with eth0's MAC; the agent
gives the guest's NIC eth0's IPv4 address, MTU and default route, and the container runs in
the guest's network namespace. The host's eth0 keeps its address but never sees a frame (the
ingress redirect takes them first), so the guest answers for it.
"""

import fcntl
import json
import os
import struct
import subprocess

from keel.vm.errors import VMError

TUNSETIFF = 0x400454CA
IFF_TAP, IFF_NO_PI = 0x0002, 0x1000


class NetInfo:
    __slots__ = ("path", "ifname", "mac", "mtu", "addr", "gateway", "tap", "tap_fd")

    def fields(self):
        return {"net_addr": self.addr, "net_gw": self.gateway or "", "net_mtu": self.mtu}


def _ns(path, *argv):
    try:
        r = subprocess.run(["nsenter", f"--net={path}", *argv], capture_output=True, text=True, timeout=10)
    except FileNotFoundError:
        raise VMError("nsenter is not installed (util-linux)") from None
    if r.returncode != 0:
        raise VMError(f"network namespace {path}: {' '.join(argv)}: {r.stderr.strip() or r.returncode}")
    return r.stdout


def inspect(path):
    """The one ethernet interface of the namespace at `path`, with its IPv4 set-up."""
    links = json.loads(_ns(path, "ip", "-j", "addr", "show") or "[]")
    eth = [ln for ln in links if ln.get("link_type") == "ether"]
    if not eth:
        return None  # only loopback: nothing to extend
    if len(eth) > 1:
        raise VMError(f"network namespace {path}: {len(eth)} interfaces; keel-vm extends one")
    ln = eth[0]
    v4 = [a for a in ln.get("addr_info") or () if a.get("family") == "inet"]
    if not v4:
        raise VMError(f"network namespace {path}: {ln['ifname']} has no IPv4 address")
    info = NetInfo()
    info.path, info.ifname, info.mac, info.mtu = path, ln["ifname"], ln["address"], ln.get("mtu") or 1500
    info.addr = f"{v4[0]['local']}/{v4[0]['prefixlen']}"
    routes = json.loads(_ns(path, "ip", "-j", "-4", "route", "show", "default") or "[]")
    info.gateway = next((r["gateway"] for r in routes if r.get("gateway")), None)
    info.tap, info.tap_fd = None, None
    return info


def attach(info, name):
    """Make the tap in the namespace (its fd is kept for QEMU) and the redirects both ways."""
    own = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    target = os.open(info.path, os.O_RDONLY | os.O_CLOEXEC)
    from keel.kernel import libc

    try:
        libc.setns(target, 0, f"network namespace {info.path}")
        try:
            fd = os.open("/dev/net/tun", os.O_RDWR)  # inherited by QEMU: no O_CLOEXEC
            fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", name.encode(), IFF_TAP | IFF_NO_PI))
        finally:
            libc.setns(own, 0, "our own network namespace")
    finally:
        os.close(own)
        os.close(target)
    info.tap, info.tap_fd = name, fd
    _ns(info.path, "ip", "link", "set", name, "mtu", str(info.mtu), "up")
    for src, dst in ((info.ifname, name), (name, info.ifname)):
        _ns(info.path, "tc", "qdisc", "add", "dev", src, "ingress")
        _ns(info.path, "tc", "filter", "add", "dev", src, "parent", "ffff:", "protocol", "all", "u32",
            "match", "u8", "0", "0", "action", "mirred", "egress", "redirect", "dev", dst)


def detach(info):
    """Remove the redirect from the engine's interface (the tap goes with QEMU's fd)."""
    if info.tap_fd is not None:
        try:
            os.close(info.tap_fd)
        except OSError:
            pass
        info.tap_fd = None
    try:
        _ns(info.path, "tc", "qdisc", "del", "dev", info.ifname, "ingress")
    except VMError:
        pass
