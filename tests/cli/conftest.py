"""The `keel` command tests reuse the image tests' registries and images."""

import importlib.util
import os
import sys

_IMAGE_TESTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "image")
sys.path.insert(0, _IMAGE_TESTS)

_spec = importlib.util.spec_from_file_location("image_conftest", os.path.join(_IMAGE_TESTS, "conftest.py"))
_image_conftest = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_image_conftest)

busybox_tar = _image_conftest.busybox_tar
oci_busybox = _image_conftest.oci_busybox

from registry_fixtures import registry, registry_basic  # noqa: E402,F401
