"""Leak checks shared by the engine and `keel` container tests: after a test, nothing of its
containers may remain (processes, mounts, cgroups, network namespaces)."""

import os
import signal
import subprocess
import time

import pytest

CGROUP = "/sys/fs/cgroup"
RUNTIMES = ["keel-runtime", "runc"]


def _own_cgroup_dirs():
    """Each v1/v2 hierarchy's cgroup dir of this process (a relative cgroupsPath lands there)."""
    out = []
    with open("/proc/self/cgroup") as f:
        for line in f:
            _, ctrls, path = line.rstrip("\n").split(":", 2)
            name = ctrls.split(",")[0].replace("name=", "") if ctrls else "unified"
            if path == "/":
                continue  # the hierarchy's root: its children are the whole machine's
            out.append(os.path.join(CGROUP, name, path.lstrip("/")))
    return out


def _cgroup_children():
    seen = set()
    for d in os.listdir(CGROUP):
        base = os.path.join(CGROUP, d, os.environ.get("KEEL_CGROUP_PARENT", "/keel").lstrip("/"))
        if os.path.isdir(base):
            seen.update(os.path.join(base, n) for n in os.listdir(base)
                        if os.path.isdir(os.path.join(base, n)))
    for d in _own_cgroup_dirs():
        if os.path.isdir(d):
            seen.update(os.path.join(d, n) for n in os.listdir(d) if os.path.isdir(os.path.join(d, n)))
    return seen


def _netns():
    """Named network namespaces (`ip netns`). A netns keel bind-mounts lives under the test's
    run dir and is caught as a mount there; counting every nsfs mount of the machine would
    also count other processes' namespaces."""
    return sorted(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else []


def snapshot():
    return {"cgroups": _cgroup_children(), "netns": _netns()}


def _procs_mentioning(text):
    out = []
    for p in os.listdir("/proc"):
        if not p.isdigit() or int(p) == os.getpid():
            continue
        try:
            with open(f"/proc/{p}/cmdline", "rb") as f:
                cmd = f.read()
            with open(f"/proc/{p}/cgroup") as f:
                cg = f.read()
        except OSError:
            continue
        if text.encode() in cmd or f":{os.environ.get('KEEL_CGROUP_PARENT', '/keel')}/" in cg:
            out.append((int(p), cmd.replace(b"\0", b" ").decode(errors="replace")))
    return out


def leftovers(tmp, before, settle=5.0):
    """What the test left behind under `tmp` or since `before`; kills and unmounts what it
    finds (by pid / path) so that one failure does not poison the next test."""
    tmp = str(tmp)
    deadline = time.monotonic() + settle
    while True:
        procs = _procs_mentioning(tmp)
        with open("/proc/self/mountinfo") as f:
            mounts = [ln.split()[4] for ln in f if tmp in ln.split()[4]]
        cgroups = sorted(_cgroup_children() - before["cgroups"])
        netns = _netns() != before["netns"]
        if not (procs or mounts or cgroups or netns) or time.monotonic() >= deadline:
            break
        time.sleep(0.1)
    problems = []
    if procs:
        problems.append(f"processes: {procs}")
        for pid, _ in procs:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    if mounts:
        problems.append(f"mounts: {mounts}")
        for m in reversed(mounts):
            subprocess.run(["umount", "-l", m], capture_output=True)
    if cgroups:
        problems.append(f"cgroups: {cgroups}")
        for c in cgroups:
            for root, dirs, _ in os.walk(c, topdown=False):
                for d in dirs:
                    try:
                        os.rmdir(os.path.join(root, d))
                    except OSError:
                        pass
            try:
                os.rmdir(c)
            except OSError:
                pass
    if netns:
        problems.append(f"network namespaces: before {before['netns']}, after {_netns()}")
    return problems


@pytest.fixture
def engine(roots):
    """An Engine on the test's roots; every container left in it is removed after the test
    (import it by name into the test module)."""
    from keel.engine import Engine

    e = Engine(*roots)
    yield e
    for c in e.containers():
        e.remove(c["id"], force=True)
    e.close()
