"""`spec --rootless` output run by an unprivileged host user that the test creates.

The user must reach the interpreter and keel's code: the package is copied into a
directory every user may read (a clean clone may sit under a 0700 mktemp dir).
"""

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import uuid

import pytest

import keel
from keel.testing.rootfs import make_rootfs


@pytest.fixture
def rootless_user():
    name = "keelrl" + uuid.uuid4().hex[:8]
    subprocess.run(["useradd", "-M", "-s", "/bin/sh", name], check=True, capture_output=True)
    try:
        yield pwd.getpwnam(name)
    finally:
        subprocess.run(["userdel", name], capture_output=True)


@pytest.fixture
def rootless_world(rootless_user):
    top = tempfile.mkdtemp(prefix="keel-rootless-")
    os.chmod(top, 0o755)
    pkg = os.path.join(top, "lib")
    shutil.copytree(os.path.dirname(keel.__file__), os.path.join(pkg, "keel"),
                    ignore=shutil.ignore_patterns("__pycache__"))
    bundle = os.path.join(top, "bundle")
    os.makedirs(bundle)
    make_rootfs(os.path.join(bundle, "rootfs"))
    for d, dirs, files in os.walk(top):
        os.chmod(d, 0o755)
    subprocess.run(["chown", "-R", f"{rootless_user.pw_uid}:{rootless_user.pw_gid}", bundle], check=True)
    xdg = os.path.join(top, "run")
    os.makedirs(xdg, 0o700)
    os.chown(xdg, rootless_user.pw_uid, rootless_user.pw_gid)
    try:
        yield top, pkg, bundle, xdg
    finally:
        shutil.rmtree(top, ignore_errors=True)


def as_user(user, pkg, xdg, *args, cwd=None):
    code = f"import sys; sys.path.insert(0, {pkg!r}); from keel.runtime.cli import main; sys.exit(main())"
    argv = ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups",
            os.path.realpath(sys.executable), "-IS", "-c", code, *args]
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "XDG_RUNTIME_DIR": xdg, "HOME": "/"}
    return subprocess.run(argv, capture_output=True, text=True, cwd=cwd, env=env, timeout=60)


def test_rootless_spec_runs_as_unprivileged_user(rootless_user, rootless_world):
    top, pkg, bundle, xdg = rootless_world
    r = as_user(rootless_user, pkg, xdg, "spec", "--rootless", cwd=bundle)
    assert r.returncode == 0, r.stderr
    with open(os.path.join(bundle, "config.json")) as f:
        config = json.load(f)
    assert config["linux"]["uidMappings"] == [{"containerID": 0, "hostID": rootless_user.pw_uid, "size": 1}]
    assert "resources" not in config["linux"]
    config["process"]["terminal"] = False
    config["root"]["readonly"] = False
    config["process"]["args"] = ["sh", "-c", "id -u; cat /proc/self/uid_map; touch /tmp/made-inside; hostname"]
    with open(os.path.join(bundle, "config.json"), "w") as f:
        json.dump(config, f)
    cid = "rl-" + uuid.uuid4().hex[:8]
    r = as_user(rootless_user, pkg, xdg, "run", cid, cwd=bundle)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.split("\n")
    assert lines[0] == "0"  # root in the container
    assert lines[1].split() == ["0", str(rootless_user.pw_uid), "1"]
    assert lines[2] == "keel"
    # The file made by the container's root belongs to the unprivileged user on the host.
    st = os.stat(os.path.join(bundle, "rootfs/tmp/made-inside"))
    assert (st.st_uid, st.st_gid) == (rootless_user.pw_uid, rootless_user.pw_gid)
    # Its state lived under the user's XDG_RUNTIME_DIR and is gone after run.
    assert os.listdir(os.path.join(xdg, "keel-runtime")) == []


def test_rootless_limits_without_cgroup_are_refused(rootless_user, rootless_world):
    top, pkg, bundle, xdg = rootless_world
    r = as_user(rootless_user, pkg, xdg, "spec", "--rootless", cwd=bundle)
    assert r.returncode == 0, r.stderr
    with open(os.path.join(bundle, "config.json")) as f:
        config = json.load(f)
    config["process"]["terminal"] = False
    config["linux"]["resources"] = {"pids": {"limit": 10}}
    with open(os.path.join(bundle, "config.json"), "w") as f:
        json.dump(config, f)
    r = as_user(rootless_user, pkg, xdg, "run", "rl-limits", cwd=bundle)
    assert r.returncode != 0
    assert "linux.resources" in r.stderr and "rootless" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not os.path.exists(os.path.join(xdg, "keel-runtime", "rl-limits"))
