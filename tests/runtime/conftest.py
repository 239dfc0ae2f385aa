"""Fixtures for keel-runtime's functional tests (crun's shape: one file per feature).

  base_rootfs   session: a busybox rootfs made once (keel.testing.rootfs.make_rootfs)
  base_config   session: the config.json `keel-runtime spec` writes
  runtime       function: keel-runtime with a private --root; after the test every container it
                made is force-deleted and nothing may be left: no state dir, no cgroup dir named
                after the id, no mount under the test's tmp dir, no process of the container
  bundle        function: a Bundle (its own rootfs: fresh directories, files hard-linked to the
                base; config from `spec` with terminal off) under a unique container id
  make_bundle   function: a factory for more bundles in the same test
  public_tmp    function: a directory every user may search (pytest's tmp_path is under a 0700
                directory that the root of a user namespace cannot enter)
"""

import os
import re
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import runtime_helpers as h  # noqa: E402


def pytest_collection_modifyitems(config, items):
    if os.geteuid() != 0:
        skip = pytest.mark.skip(reason="keel-runtime tests need root")
        for item in items:
            if "tests/runtime/" in str(item.fspath):
                item.add_marker(skip)


@pytest.fixture(scope="session")
def base_rootfs(tmp_path_factory):
    from keel.testing.rootfs import make_rootfs

    if not os.path.exists("/bin/busybox"):
        pytest.skip("/bin/busybox missing: install busybox-static")
    path = tmp_path_factory.mktemp("base") / "rootfs"
    make_rootfs(str(path))
    return str(path)


@pytest.fixture(scope="session")
def base_config(tmp_path_factory):
    d = tmp_path_factory.mktemp("spec")
    r = subprocess.run(h.runtime_argv() + ["spec", "--bundle", str(d)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    with open(d / "config.json") as f:
        import json

        return json.load(f)


@pytest.fixture
def runtime(tmp_path):
    rt = h.Runtime(tmp_path / "state")
    rt.extra_cgroups = []
    rt.extra_dirs = []
    yield rt
    problems = h.check_nothing_left(rt, tmp_path, rt.extra_cgroups)
    for d in rt.extra_dirs:
        problems += [f"mount left: {m}" for m in h.mounts_under(d)]
    assert not problems, "left behind:\n  " + "\n  ".join(problems)


@pytest.fixture
def public_tmp(runtime):
    import pathlib
    import shutil
    import tempfile

    d = tempfile.mkdtemp(prefix="keel-rt-test-")
    os.chmod(d, 0o755)
    runtime.extra_dirs.append(d)
    yield pathlib.Path(d)
    shutil.rmtree(d, ignore_errors=True)


def _short(name):
    return re.sub(r"[^A-Za-z0-9]+", "-", name.removeprefix("test_"))[:24].strip("-")


@pytest.fixture
def make_bundle(runtime, tmp_path, base_rootfs, base_config, request):
    count = [0]

    def make(name=None, copy_rootfs=True, parent=None):
        count[0] += 1
        path = (parent or tmp_path) / f"bundle{count[0]}"
        path.mkdir()
        rootfs = path / "rootfs"
        if copy_rootfs:
            subprocess.run(["cp", "-al", base_rootfs, str(rootfs)], check=True)
        config = h.deep(base_config)
        config["process"]["terminal"] = False
        config["process"]["args"] = ["true"]
        if copy_rootfs:
            config["root"]["path"] = "rootfs"
        else:
            config["root"] = {"path": base_rootfs, "readonly": True}
            rootfs = base_rootfs
        cid = f"kt-{name or _short(request.node.name)}-{os.urandom(4).hex()}"
        return h.Bundle(runtime, path, cid, config, rootfs)

    return make


@pytest.fixture
def bundle(make_bundle):
    return make_bundle()


@pytest.fixture
def console(tmp_path):
    sock = h.ConsoleSocket(tmp_path / "console.sock")
    yield sock
    sock.close()
