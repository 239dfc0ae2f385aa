"""keel.Client tests: busybox built offline, a local docker-registry, private roots per test,
and a leak check limited to what the test made (its tmp dir, its containers' cgroups)."""

import importlib.util
import os
import sys

import pytest

_TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(_TESTS, "image"))
sys.path.insert(0, os.path.join(_TESTS, "engine"))

_spec = importlib.util.spec_from_file_location("engine_conftest_for_client", os.path.join(_TESTS, "engine", "conftest.py"))
_engine_conftest = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_engine_conftest)

# busybox built offline, imported as localhost/busybox:latest in a private root per test
busybox_tar = _engine_conftest.busybox_tar
oci_busybox = _engine_conftest.oci_busybox
roots = _engine_conftest.roots

import engine_helpers  # noqa: E402
from registry_fixtures import registry  # noqa: E402,F401

@pytest.fixture(autouse=True)
def no_leftovers(tmp_path):
    before = engine_helpers.snapshot()
    yield
    # network namespaces are counted machine-wide there: other suites running at the same
    # time make them; this suite's containers only use unnamed ones (--network none/host)
    problems = [p for p in engine_helpers.leftovers(tmp_path, before) if not p.startswith("network")]
    assert not problems, "left behind: " + "; ".join(problems)


@pytest.fixture
def client(roots, tmp_path):
    import keel

    conf = tmp_path / "registries.conf"
    conf.write_text('unqualified-search-registries = []\n')
    c = keel.Client(root=roots[0], runroot=roots[1], registries_conf=str(conf))
    yield c
    eng = c._engine()
    for rec in eng.containers():
        try:
            eng.remove(rec["id"], force=True)
        except Exception:
            pass
    c.close()


@pytest.fixture
def busybox_variant(busybox_tar, tmp_path):
    """make(name, marker): an OCI layout of busybox plus a file /marker holding `marker`."""
    ic = _engine_conftest._image_conftest

    def make(name, marker: bytes):
        with open(busybox_tar, "rb") as f:
            base = f.read()
        return ic.build_oci_layout(str(tmp_path / name), layers=[base, ic.tar_of_files({"marker": marker})])["path"]
    return make
