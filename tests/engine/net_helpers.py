"""Shared by the engine and `keel` network tests: free loopback ports, HTTP with retries, and
the host's links and iptables rules (to prove nothing of a container is left)."""

import json
import socket
import subprocess
import time
import urllib.request


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url, timeout=10.0):
    """The body at `url`, retried until the server answers or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                return r.read().decode()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def links():
    return json.loads(subprocess.run(["ip", "-j", "link", "show"], capture_output=True, text=True,
                                     check=True).stdout)


def iptables():
    """The host's IPv4 and IPv6 rules, as iptables-save and ip6tables-save print them."""
    return "".join(subprocess.run([cmd], capture_output=True, text=True, check=True).stdout
                   for cmd in ("iptables-save", "ip6tables-save"))
