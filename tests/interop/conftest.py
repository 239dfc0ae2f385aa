"""Fixtures with which real peers (podman + conmon, containerd + the runc v2 shim) drive any
runc-compatible runtime binary.

The runtime under test is the session-scoped parameter `runtime_binary`:
  runc          /usr/sbin/runc
  keel-runtime  `keel-runtime` next to this interpreter (the venv's bin), else on PATH
Restrict or extend the set with KEEL_INTEROP_RUNTIMES, a comma list of names, or name=path pairs
for any other runc-compatible binary:
  KEEL_INTEROP_RUNTIMES=runc                         only runc
  KEEL_INTEROP_RUNTIMES=keel-runtime                 only keel-runtime
  KEEL_INTEROP_RUNTIMES=runc,mine=/tmp/wrapper.sh    runc and a wrapper script
Default: runc,keel-runtime.

Fixtures (see each docstring):
  runtime_name, runtime_binary   session, parametrized
  rootfs_tar, oci_archive        session: the offline busybox image (make_rootfs)
  podman_session                 session per runtime: isolated podman storage with the image
  podman                         function: the same Podman; after the test every container is
                                 removed and nothing of ours may be left running
  containerd                     session: one private containerd daemon
  ctr                            function: a Ctr bound to a fresh namespace (image imported) and
                                 to the runtime under test; its tasks/containers/cgroups removed
                                 after the test
"""

from __future__ import annotations

import os
import shutil
import sys

import pytest

import interop_helpers as h
import interop_peers as peers

DEFAULT_RUNTIMES = "runc,keel-runtime"


def _keel_runtime_path():
    venv_bin = os.path.dirname(sys.executable)
    candidate = os.path.join(venv_bin, "keel-runtime")
    if os.path.exists(candidate):
        return candidate
    return shutil.which("keel-runtime") or candidate


KNOWN_RUNTIMES = {
    "runc": lambda: "/usr/sbin/runc" if os.path.exists("/usr/sbin/runc") else (shutil.which("runc") or "/usr/sbin/runc"),
    "keel-runtime": _keel_runtime_path,
}


def selected_runtimes():
    """[(name, path-or-None)] from KEEL_INTEROP_RUNTIMES (path None: resolved at fixture time)."""
    spec = os.environ.get("KEEL_INTEROP_RUNTIMES", "").strip() or DEFAULT_RUNTIMES
    result = []
    for item in spec.split(","):
        item = item.strip()
        if not item:
            continue
        name, sep, path = item.partition("=")
        name = name.strip()
        if not sep and name not in KNOWN_RUNTIMES:
            raise pytest.UsageError(
                f"KEEL_INTEROP_RUNTIMES: unknown runtime {name!r}; known: {', '.join(KNOWN_RUNTIMES)}"
                " (or give name=/path/to/binary)")
        result.append((name, path.strip() if sep else None))
    return result


def _require_root_and(*tools):
    if os.geteuid() != 0:
        pytest.skip("interop tests run as root (they create cgroups, mounts and namespaces)")
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        # a loud failure, not a skip: CI must install the peers (see tests/interop/README)
        pytest.fail(f"peer tools not installed: {', '.join(missing)} (apt-get install podman "
                    f"containerd conmon runc busybox-static)", pytrace=False)


# ---------------------------------------------------------------------------------------------
# the runtime under test


_RUNTIMES = selected_runtimes()


@pytest.fixture(scope="session", params=[n for n, _ in _RUNTIMES], ids=[n for n, _ in _RUNTIMES])
def runtime_name(request):
    """The name of the runtime under test ("runc", "keel-runtime", or a KEEL_INTEROP_RUNTIMES name)."""
    return request.param


@pytest.fixture(scope="session")
def runtime_binary(runtime_name):
    """Absolute path of the runc-compatible binary under test (it must exist)."""
    path = dict(_RUNTIMES)[runtime_name] or KNOWN_RUNTIMES[runtime_name]()
    path = os.path.abspath(path)
    if not os.access(path, os.X_OK):
        pytest.fail(f"runtime {runtime_name!r} not found or not executable at {path}", pytrace=False)
    return path


# ---------------------------------------------------------------------------------------------
# the offline busybox image


@pytest.fixture(scope="session")
def image_workdir():
    d = peers.make_workdir("keel-img-")
    yield d
    h.rmtree(d)


@pytest.fixture(scope="session")
def rootfs_tar(image_workdir):
    """A tar of a busybox rootfs made by keel.testing.rootfs.make_rootfs (no network)."""
    return h.build_rootfs_tar(image_workdir)


@pytest.fixture(scope="session")
def oci_archive(rootfs_tar, image_workdir):
    """An oci-archive of the same rootfs, named docker.io/keel/busybox:latest, CMD /bin/sh."""
    return h.build_oci_archive(rootfs_tar, os.path.join(image_workdir, "busybox-oci.tar"))


# ---------------------------------------------------------------------------------------------
# podman


@pytest.fixture(scope="session")
def podman_session(runtime_binary, rootfs_tar):
    """A Podman isolated in its own temp dir for the runtime under test, with the busybox image
    imported as `podman.image` (localhost/keel-busybox:latest). Removed whole at the end."""
    _require_root_and("podman", "conmon")
    p = peers.Podman(peers.make_workdir("keel-podman-"), runtime_binary)
    try:
        p.import_image(rootfs_tar)
        yield p
    finally:
        p.close()


@pytest.fixture
def podman(podman_session):
    """The session's Podman. After the test: `podman rm -af -t 0`, and any process of ours still
    alive (by our unique cgroup parent or workdir) is killed by pid; the test fails if the peer
    left one running."""
    yield podman_session
    stray = podman_session.remove_all_containers()
    assert not stray, f"processes left after `podman rm -af`: {stray}"


# ---------------------------------------------------------------------------------------------
# containerd


@pytest.fixture(scope="session")
def containerd():
    """One private containerd daemon for the whole session (it does not depend on the runtime:
    the runtime is chosen per container with `ctr run --runc-binary`)."""
    _require_root_and("containerd", "ctr", "containerd-shim-runc-v2")
    d = peers.Containerd(peers.make_workdir("keel-ctrd-"))
    try:
        d.start()
        yield d
    finally:
        d.stop()


@pytest.fixture
def ctr(containerd, runtime_binary, oci_archive):
    """A Ctr in a fresh namespace with the busybox image imported, running containers with the
    runtime under test. Every task and container of the namespace is killed/deleted after the test;
    the test errors if a process had to be killed by pid after that."""
    c = containerd.ctr(runtime_binary)
    try:
        c.import_image(oci_archive)
        yield c
    finally:
        stray = c.cleanup()
    assert not stray, f"processes left after killing and deleting every task: {stray}"
