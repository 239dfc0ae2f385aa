"""`keel` image commands end to end: a real registry, a private --root per test, podman's shapes."""

import json
import os
import subprocess
import sys

import pytest

from registry_fixtures import skopeo_push


def keel(root, *args, input=None, env=None):
    argv = [sys.executable, "-m", "keel.cli.main", "--root", str(root), "--runroot", f"{root}.run",
            *map(str, args)]
    e = dict(os.environ, **(env or {}))
    return subprocess.run(argv, capture_output=True, text=True, input=input, timeout=120, env=e)


@pytest.fixture
def pushed(registry, oci_busybox):
    """busybox pushed by skopeo to the registry under a unique repository."""
    repo = f"{registry.host}/cli/busybox-{os.urandom(3).hex()}"
    skopeo_push(oci_busybox, f"{repo}:1.0")
    return repo


def test_pull_images_inspect_tag_rmi(tmp_path, pushed):
    root = tmp_path / "store"
    r = keel(root, "pull", "--tls-verify=false", f"{pushed}:1.0")
    assert r.returncode == 0, r.stderr
    image_id = r.stdout.strip().splitlines()[-1]
    assert len(image_id) == 64

    r = keel(root, "images", "--format", "json")
    assert r.returncode == 0, r.stderr
    [img] = json.loads(r.stdout)
    assert img["Id"] == image_id and img["RepoTags"] == [f"{pushed}:1.0"]
    assert img["RepoDigests"][0].startswith(f"{pushed}@sha256:")

    r = keel(root, "images")
    header, row = r.stdout.splitlines()
    assert header.split()[:4] == ["REPOSITORY", "TAG", "IMAGE", "ID"]
    assert row.split()[:3] == [pushed, "1.0", image_id[:12]]

    assert keel(root, "tag", image_id[:12], "localhost/mine:v2").returncode == 0
    r = keel(root, "inspect", "localhost/mine:v2")
    [info] = json.loads(r.stdout)
    assert info["Id"] == image_id
    assert sorted(info["RepoTags"]) == sorted([f"{pushed}:1.0", "localhost/mine:v2"])
    assert info["RootFS"]["Type"] == "layers" and len(info["RootFS"]["Layers"]) == 1
    assert info["Os"] == "linux" and info["Architecture"] == "amd64"

    r = keel(root, "history", "--format", "json", image_id)
    assert r.returncode == 0 and json.loads(r.stdout)[0]["id"] == image_id

    r = keel(root, "rmi", "localhost/mine:v2")
    assert r.returncode == 0 and "Untagged: localhost/mine:v2" in r.stdout
    r = keel(root, "rmi", f"{pushed}:1.0")
    assert r.returncode == 0 and f"Deleted: {image_id}" in r.stdout
    assert json.loads(keel(root, "images", "--format", "json").stdout) == []
    r = keel(root, "image", "prune", "-a")
    assert r.returncode == 0, r.stderr
    assert os.listdir(root / "blobs" / "sha256") == []


def test_push_pulls_back(tmp_path, registry, pushed):
    root = tmp_path / "store"
    assert keel(root, "pull", "-q", "--tls-verify=false", f"{pushed}:1.0").returncode == 0
    dest = f"{registry.host}/cli/copied-{os.urandom(3).hex()}:x"
    r = keel(root, "push", "--tls-verify=false", f"{pushed}:1.0", dest)
    assert r.returncode == 0, r.stderr
    other = tmp_path / "other"
    r = keel(other, "pull", "--tls-verify=false", dest)
    assert r.returncode == 0, r.stderr
    a = json.loads(keel(root, "images", "--format", "json").stdout)[0]
    b = json.loads(keel(other, "images", "--format", "json").stdout)[0]
    assert a["Id"] == b["Id"] and a["Digest"] == b["Digest"]


def test_save_load_round_trip(tmp_path, pushed):
    root = tmp_path / "store"
    assert keel(root, "pull", "-q", "--tls-verify=false", f"{pushed}:1.0").returncode == 0
    for fmt in ("docker-archive", "oci-archive"):
        out = tmp_path / f"img-{fmt}.tar"
        r = keel(root, "save", "--format", fmt, "-o", out, f"{pushed}:1.0")
        assert r.returncode == 0, r.stderr
        other = tmp_path / f"load-{fmt}"
        r = keel(other, "load", "-i", out)
        assert r.returncode == 0, r.stderr
        assert "Loaded image" in r.stdout
        assert json.loads(keel(other, "images", "--format", "json").stdout)[0]["RepoTags"] == [f"{pushed}:1.0"]


def test_image_mount_refuses_rmi_until_unmounted(tmp_path, pushed):
    root = tmp_path / "store"
    assert keel(root, "pull", "-q", "--tls-verify=false", f"{pushed}:1.0").returncode == 0
    r = keel(root, "image", "mount", f"{pushed}:1.0")
    assert r.returncode == 0, r.stderr
    path = r.stdout.strip()
    try:
        assert os.path.exists(os.path.join(path, "bin", "busybox"))
        r = keel(root, "rmi", f"{pushed}:1.0")
        assert r.returncode != 0 and "in use" in r.stderr
    finally:
        r = keel(root, "image", "unmount", f"{pushed}:1.0")
    assert r.returncode == 0, r.stderr
    assert path not in open("/proc/self/mountinfo").read()
    assert keel(root, "rmi", f"{pushed}:1.0").returncode == 0


def test_image_mount_is_counted_unmount_all_and_rmi_force(tmp_path, pushed):
    root = tmp_path / "store"
    assert keel(root, "pull", "-q", "--tls-verify=false", f"{pushed}:1.0").returncode == 0
    image_id = json.loads(keel(root, "images", "--format", "json").stdout)[0]["Id"]
    paths = [keel(root, "image", "mount", f"{pushed}:1.0").stdout.strip() for _ in range(2)]
    path = paths[0]
    try:
        assert paths[1] == path and path in open("/proc/self/mountinfo").read()
        r = keel(root, "image", "mount", "--format", "json")
        [m] = json.loads(r.stdout)
        assert m["Id"] == image_id and m["Mountpoint"] == path and m["MountCount"] == 2
        assert keel(root, "image", "mount").stdout.split() == [f"{pushed}:1.0", path]
        # two mounts, one unmount: still mounted
        r = keel(root, "image", "unmount", f"{pushed}:1.0")
        assert r.returncode == 0 and r.stdout.strip() == image_id
        assert os.path.exists(os.path.join(path, "bin", "busybox"))
        r = keel(root, "rmi", f"{pushed}:1.0")
        assert r.returncode != 0 and "in use (mounted)" in r.stderr
        assert keel(root, "image", "mount", f"{pushed}:1.0").returncode == 0     # count 2 again
        r = keel(root, "image", "unmount", "--all")
        assert r.returncode == 0 and r.stdout.split() == [image_id]
        assert path not in open("/proc/self/mountinfo").read()
        assert keel(root, "image", "mount").stdout == ""
        r = keel(root, "image", "unmount", f"{pushed}:1.0")
        assert r.returncode == 125 and r.stderr.strip() == f"Error: image {image_id[:12]} is not mounted"
        # rmi --force of a mounted image unmounts it
        keel(root, "image", "mount", f"{pushed}:1.0")
        keel(root, "image", "mount", f"{pushed}:1.0")
        r = keel(root, "rmi", "--force", f"{pushed}:1.0")
        assert r.returncode == 0, r.stderr
        assert path not in open("/proc/self/mountinfo").read()
    finally:
        if path and path in open("/proc/self/mountinfo").read():
            subprocess.run(["umount", "-l", path], check=False)
    r = keel(root, "image", "unmount", "--all", f"{pushed}:1.0")
    assert r.returncode == 125 and "cannot be used together" in r.stderr
    r = keel(root, "image", "mount", "nosuchimage")
    assert r.returncode == 125 and "nosuchimage" in r.stderr


def test_login_logout_with_basic_auth(tmp_path, registry_basic, oci_busybox):
    authfile = tmp_path / "auth.json"
    r = keel(tmp_path / "s", "login", "--tls-verify=false", "-u", "keel", "-p", "wrong",
             "--authfile", authfile, registry_basic.host)
    assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1
    assert not authfile.exists()
    r = keel(tmp_path / "s", "login", "--tls-verify=false", "-u", "keel", "--password-stdin",
             "--authfile", authfile, registry_basic.host, input="s3cret\n")
    assert r.returncode == 0, r.stderr
    assert oct(authfile.stat().st_mode & 0o777) == "0o600"
    assert registry_basic.host in json.loads(authfile.read_text())["auths"]
    r = keel(tmp_path / "s", "logout", "--authfile", authfile, registry_basic.host)
    assert r.returncode == 0, r.stderr
    assert json.loads(authfile.read_text())["auths"] == {}


@pytest.mark.parametrize("args, words", [
    (("pull", "--tls-verify=false", "UPPER/case"), "upper"),
    (("inspect", "nosuchimage"), "nosuchimage"),
    (("rmi", "nosuchimage"), "nosuchimage"),
    (("pull", "--tls-verify=maybe", "x"), "tls-verify"),
    (("logout",), "registry"),
])
def test_bad_input_is_one_clear_line(tmp_path, args, words):
    r = keel(tmp_path / "store", *args)
    assert r.returncode != 0
    lines = [line for line in r.stderr.splitlines() if line.strip() and line.strip() != "[]"]
    assert len(lines) == 1 and words.lower() in lines[0].lower(), r.stderr
