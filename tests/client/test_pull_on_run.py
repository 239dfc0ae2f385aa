"""`keel run` / `keel create` pull a missing image as podman does (--pull missing|always|never|
newer), with the registries.conf short-name rules of `keel pull`; a local docker-registry."""

import json
import os
import subprocess
import sys

import pytest

from registry_fixtures import skopeo_push


class Keel:
    def __init__(self, tmp_path, conf):
        self.root, self.runroot, self.conf = tmp_path / "root", tmp_path / "run", conf

    def __call__(self, *args):
        argv = [sys.executable, "-m", "keel.cli.main", "--root", str(self.root), "--runroot",
                str(self.runroot), "--registries-conf", str(self.conf), *map(str, args)]
        return subprocess.run(argv, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)

    def images(self):
        r = self("images", "--format", "json")
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)


@pytest.fixture
def keel(tmp_path, registry):
    conf = tmp_path / "registries.conf"
    conf.write_text(f'unqualified-search-registries = ["{registry.host}"]\n'
                    f'[[registry]]\nlocation = "{registry.host}"\ninsecure = true\n')
    k = Keel(tmp_path, conf)
    yield k
    ids = k("ps", "-aq").stdout.split()
    if ids:
        k("rm", "-f", *ids)


def test_run_pulls_missing_short_name(keel, registry, oci_busybox):
    ref = skopeo_push(oci_busybox, f"{registry.host}/pullrun/busybox:1")
    r = keel("run", "--rm", "pullrun/busybox:1", "echo", "from a pulled image")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "from a pulled image\n"
    assert [img["Names"] for img in keel.images()] == [[ref]]
    # present now: no second pull (a stopped registry would not matter), same output
    r = keel("create", "--pull", "never", "pullrun/busybox:1", "true")
    assert r.returncode == 0 and len(r.stdout.strip()) == 64, r.stderr
    ps = json.loads(keel("ps", "-a", "--format", "json").stdout)
    assert ps[0]["Image"] == ref


def test_pull_policies(keel, registry, busybox_variant):
    name = f"{registry.host}/pullrun/variant:1"
    skopeo_push(busybox_variant("v1", b"one"), name)
    r = keel("run", "--rm", "-q", name, "cat", "/marker")
    assert (r.returncode, r.stdout, r.stderr) == (0, "one", "")
    skopeo_push(busybox_variant("v2", b"two"), name)
    assert keel("run", "--rm", name, "cat", "/marker").stdout == "one"        # missing: the local one
    assert keel("run", "--rm", "--pull", "never", name, "cat", "/marker").stdout == "one"
    assert keel("run", "--rm", "--pull", "newer", name, "cat", "/marker").stdout == "two"
    skopeo_push(busybox_variant("v3", b"three"), name)
    r = keel("run", "--rm", "--pull", "always", name, "cat", "/marker")
    assert r.stdout == "three" and "Pulling" in r.stderr


def test_pull_errors_are_one_line_and_leave_nothing(keel, oci_busybox):
    r = keel("run", "--rm", "--pull", "never", "pullrun/absent:1", "true")
    assert r.returncode == 125 and r.stderr.count("\n") == 1
    assert "image not known locally" in r.stderr and "never" in r.stderr
    r = keel("run", "--rm", "pullrun/absent:1", "true")
    assert r.returncode == 125 and r.stderr.startswith("Error: ") and "absent" in r.stderr
    r = keel("run", "--pull", "sometimes", "pullrun/absent:1", "true")
    assert r.returncode == 125 and "--pull 'sometimes'" in r.stderr
    # an unreachable registry: `newer` falls back to the local image, `always` fails
    r = keel("load", "-i", oci_busybox)
    image_id = keel.images()[0]["Id"]
    assert keel("tag", image_id, "127.0.0.1:1/offline/busybox:1").returncode == 0
    r = keel("run", "--rm", "--pull", "newer", "127.0.0.1:1/offline/busybox:1", "echo", "local")
    assert (r.returncode, r.stdout) == (0, "local\n"), r.stderr
    r = keel("run", "--rm", "--pull", "always", "127.0.0.1:1/offline/busybox:1", "true")
    assert r.returncode == 125 and "127.0.0.1:1" in r.stderr
    assert keel("ps", "-aq").stdout == ""
    assert os.listdir(keel.runroot / "containers") == []
