"""Engine tests: a store holding busybox (built offline) per test, private --root/--runroot,
and a leak check after every test."""

import importlib.util
import os
import sys

import pytest

_HERE = os.path.dirname(os.path.abspath(__file__))
_IMAGE_TESTS = os.path.join(os.path.dirname(_HERE), "image")
sys.path.insert(0, _IMAGE_TESTS)
sys.path.insert(0, _HERE)

_spec = importlib.util.spec_from_file_location("image_conftest_for_engine", os.path.join(_IMAGE_TESTS, "conftest.py"))
_image_conftest = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_image_conftest)

busybox_tar = _image_conftest.busybox_tar
oci_busybox = _image_conftest.oci_busybox

import engine_helpers  # noqa: E402

IMAGE = "localhost/busybox:latest"


@pytest.fixture
def roots(tmp_path, oci_busybox):
    """(root, runroot) with busybox imported as localhost/busybox:latest."""
    from keel.image import archive
    from keel.image.store import Store

    root, runroot = tmp_path / "root", tmp_path / "run"
    with Store(str(root)) as s:
        archive.import_oci_layout(s, oci_busybox, name=IMAGE)
    return str(root), str(runroot)


@pytest.fixture(autouse=True)
def no_leftovers(tmp_path):
    before = engine_helpers.snapshot()
    yield
    problems = engine_helpers.leftovers(tmp_path, before)
    assert not problems, "left behind: " + "; ".join(problems)
