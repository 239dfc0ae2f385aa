"""Session-wide: the engine's containers go under a cgroup parent unique to this test run,
removed (empty) at the end, so no test run leaves a cgroup behind on the host; and the default
network is "none"."""

import os
import uuid

import pytest

CGROUP_PARENT = f"/keel-test-{uuid.uuid4().hex[:12]}"
os.environ["KEEL_CGROUP_PARENT"] = CGROUP_PARENT
# keel's default network masquerades towards the outside: tests never set that up, so a
# container without --network gets an empty network namespace here; network tests name theirs
os.environ["KEEL_DEFAULT_NETWORK"] = "none"


@pytest.fixture(scope="session", autouse=True)
def _engine_cgroup_parent():
    yield
    name = CGROUP_PARENT.lstrip("/")
    for hierarchy in os.listdir("/sys/fs/cgroup"):
        path = os.path.join("/sys/fs/cgroup", hierarchy, name)
        try:
            os.rmdir(path)
        except FileNotFoundError:
            pass
        except OSError as e:
            raise AssertionError(f"the engine's cgroup parent is not empty at the end: {path}: {e}")
