"""keel.image.bundle: config.json from an image config, proven by running it.

The runtime tests unpack a busybox image into a container snapshot (keel.image.snapshot),
write the bundle and run it with `keel-runtime run`; the rest check the generated spec and the
user resolution (never reading the host's /etc/passwd through a symlink in the rootfs).
"""

import gzip
import hashlib
import json
import os
import subprocess
import sys

import pytest

from keel.image.bundle import (ANN_EXPOSED_PORTS, DOCKER_CAPS, bundle_spec, make_bundle,
                               read_in_root, resolve_user)
from keel.image.errors import ImageError
from keel.image.snapshot import Snapshotter

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (overlay mounts, containers)")

RUNTIME = os.path.join(os.path.dirname(sys.executable), "keel-runtime")


def add_busybox(store, busybox_tar, config, name="localhost/bb:test"):
    with open(busybox_tar, "rb") as f:
        tar = f.read()
    blob = gzip.compress(tar, compresslevel=1, mtime=0)
    layer = store.write_blob(blob)
    cfg = json.dumps({"architecture": "amd64", "os": "linux", "config": config,
                      "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(tar).hexdigest()]}}).encode()
    manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                      "digest": store.write_blob(cfg), "size": len(cfg)},
                           "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                                       "digest": layer, "size": len(blob)}]}).encode()
    return store.add_image(store.write_blob(manifest), [name])


def mounts_under(path):
    path = os.path.realpath(str(path))
    with open("/proc/self/mountinfo") as f:
        return [ln.split()[4] for ln in f if ln.split()[4] == path or ln.split()[4].startswith(path + "/")]


@pytest.fixture
def env(store, tmp_path, busybox_tar):
    """(run, snap): run(config, key, **make_bundle kwargs) -> (rc, stdout, stderr)."""
    if not os.path.exists(RUNTIME):
        pytest.skip(f"{RUNTIME} missing (pip install -e .)")
    snap = Snapshotter(os.path.join(store.root, "snapshots"))
    state = tmp_path / "runtime-state"
    keys = []

    def run(config, key, **kw):
        img = add_busybox(store, busybox_tar, config, name=f"localhost/bb:{key}")
        rootfs = snap.prepare(key, img, store)
        keys.append(key)
        bundle = make_bundle(img, rootfs, str(tmp_path / f"bundle-{key}"), **kw)
        r = subprocess.run([RUNTIME, "--root", str(state), "run", "-b", bundle, f"keel-img-test-{key}"],
                           capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
        return r.returncode, r.stdout, r.stderr

    yield run, snap
    leftover = [k for k in os.listdir(state)] if state.exists() else []
    for key in keys:
        snap.remove(key)
    assert not leftover, f"runtime state left: {leftover}"
    assert not mounts_under(tmp_path)


@root_only
def test_runs_with_image_env_workdir_and_user(env):
    run, _ = env
    rc, out, err = run({"Env": ["PATH=/bin:/usr/bin", "FOO=from image", "BAR=1"],
                        "Cmd": ["sh", "-c", 'echo "$FOO|$BAR|$PATH|$HOME|$HOSTNAME"; pwd; id -u; id -g; id -G'],
                        "WorkingDir": "/srv/app", "User": "daemon"},
                       "envuser", env={"BAR": "2"}, hostname="boxy")
    assert rc == 0, err
    assert out.splitlines() == ["from image|2|/bin:/usr/bin|/usr/sbin|boxy", "/srv/app", "1", "1", "1"]


@root_only
def test_entrypoint_cmd_and_args_like_docker(env):
    run, _ = env
    config = {"Entrypoint": ["/bin/echo", "ep"], "Cmd": ["default"], "User": "1234:tty"}
    rc, out, err = run(config, "ep1")
    assert (rc, out) == (0, "ep default\n"), err
    rc, out, err = run(config, "ep2", args=["given", "args"])
    assert (rc, out) == (0, "ep given args\n"), err
    rc, out, err = run(config, "ep3", entrypoint=["/bin/sh", "-c", "id -u; id -g"])
    assert (rc, out) == (0, "1234\n5\n"), err


def test_spec_fields_and_annotations(tmp_path):
    def _spec(config, **kw):
        return bundle_spec({"config": config, "os": "linux", "architecture": "amd64"}, str(tmp_path), **kw)

    s = _spec({"Cmd": ["run"], "Env": ["A=1"], "WorkingDir": "rel/dir",
               "ExposedPorts": {"8080/tcp": {}, "53/udp": {}, "443/tcp": {}},
               "Labels": {"maintainer": "me"}, "StopSignal": "SIGQUIT"})
    p = s["process"]
    assert p["args"] == ["run"] and p["terminal"] is False and p["cwd"] == "/rel/dir"
    assert p["env"] == ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "A=1",
                        "HOSTNAME=keel", "HOME=/"]  # PATH added when the image has none
    assert p["user"] == {"uid": 0, "gid": 0}
    assert p["capabilities"]["bounding"] == DOCKER_CAPS and "ambient" not in p["capabilities"]
    assert s["root"] == {"path": str(tmp_path), "readonly": False}
    assert s["hostname"] == "keel"
    a = s["annotations"]
    assert a[ANN_EXPOSED_PORTS] == "53/udp,443/tcp,8080/tcp"
    assert a["maintainer"] == "me" and a["org.opencontainers.image.stopSignal"] == "SIGQUIT"
    # defaults of `keel-runtime spec` are kept: namespaces, masked paths, mounts
    assert {n["type"] for n in s["linux"]["namespaces"]} >= {"pid", "mount", "network", "ipc", "uts"}
    assert "/proc/kcore" in s["linux"]["maskedPaths"]
    assert any(m["destination"] == "/proc" for m in s["mounts"])
    # docker override rules
    assert _spec({"Entrypoint": ["e"], "Cmd": ["c"]})["process"]["args"] == ["e", "c"]
    assert _spec({"Entrypoint": ["e"], "Cmd": ["c"]}, args=["a"])["process"]["args"] == ["e", "a"]
    assert _spec({"Entrypoint": ["e"], "Cmd": ["c"]}, entrypoint=["n"])["process"]["args"] == ["n"]
    assert _spec({"Entrypoint": ["e"], "Cmd": ["c"]}, entrypoint=[""])["process"]["args"] == ["c"]
    assert _spec({"Cmd": ["c"]}, args=[])["process"]["args"] == ["c"]
    with pytest.raises(ImageError, match="no command"):
        _spec({"Env": ["A=1"]})
    with pytest.raises(ImageError, match="config.Cmd: expected a list of strings"):
        _spec({"Cmd": "sh -c x"})
    # terminal on: TERM; explicit PATH from the caller wins
    s = _spec({"Cmd": ["x"]}, terminal=True, env=["PATH=/only"])
    assert "TERM=xterm" in s["process"]["env"] and "PATH=/only" in s["process"]["env"]
    assert s["process"]["terminal"] is True


@pytest.fixture
def fakeroot(tmp_path):
    r = tmp_path / "rootfs"
    (r / "etc").mkdir(parents=True)
    (r / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n"
                                  "daemon:x:1:1:daemon:/usr/sbin:/bin/false\n"
                                  "app:x:1000:1000:app:/home/app:/bin/sh\n"
                                  "# a comment\n\n"
                                  "broken\n")
    (r / "etc/group").write_text("root:x:0:\ntty:x:5:\nwheel:x:10:app,root\naudio:x:29:app\n"
                                 "app:x:1000:\n")
    return r


@pytest.mark.parametrize("user, expected", [
    ("", (0, 0, [10], "/root")),
    ("root", (0, 0, [10], "/root")),
    ("0", (0, 0, [10], "/root")),
    ("app", (1000, 1000, [10, 29], "/home/app")),
    ("1000", (1000, 1000, [10, 29], "/home/app")),
    ("app:tty", (1000, 5, [], "/home/app")),
    ("app:42", (1000, 42, [], "/home/app")),
    ("daemon:wheel", (1, 10, [], "/usr/sbin")),
    ("4242", (4242, 0, [], "/")),
    ("4242:4343", (4242, 4343, [], "/")),
    ("4242:audio", (4242, 29, [], "/")),
])
def test_resolve_user(fakeroot, user, expected):
    assert resolve_user(str(fakeroot), user) == expected


@pytest.mark.parametrize("user, message", [
    ("nobody", "user 'nobody': no user 'nobody' in the image's /etc/passwd"),
    ("app:nogroup", "user 'app:nogroup': no group 'nogroup' in the image's /etc/group"),
])
def test_resolve_user_errors(fakeroot, user, message):
    with pytest.raises(ImageError) as ei:
        resolve_user(str(fakeroot), user)
    assert str(ei.value) == message


def test_passwd_is_never_read_outside_the_rootfs(tmp_path):
    host_names = [ln.split(":")[0] for ln in open("/etc/passwd") if ln.strip() and not ln.startswith("#")]
    outsider = next(n for n in host_names if n not in ("root",))
    for target in ("/etc/passwd", "../../../../../etc/passwd", str(tmp_path / "hostpasswd")):
        r = tmp_path / f"r{abs(hash(target))}"
        (r / "etc").mkdir(parents=True)
        os.symlink(target, r / "etc/passwd")
        (tmp_path / "hostpasswd").write_text(f"{outsider}:x:77:77::/:/bin/sh\n")
        with pytest.raises(ImageError, match="no user"):
            resolve_user(str(r), outsider)
        assert resolve_user(str(r), "12") == (12, 0, [], "/")
    # a symlink that resolves inside the rootfs is followed there
    r = tmp_path / "inside"
    (r / "etc").mkdir(parents=True)
    (r / "data").mkdir()
    (r / "data/pw").write_text("svc:x:55:66::/srv:/bin/sh\n")
    os.symlink("/data/pw", r / "etc/passwd")
    assert resolve_user(str(r), "svc") == (55, 66, [], "/srv")
    # a fifo named passwd is not opened for a blocking read
    r = tmp_path / "fifo"
    (r / "etc").mkdir(parents=True)
    os.mkfifo(r / "etc/passwd")
    assert read_in_root(str(r), "/etc/passwd") is None
    assert resolve_user(str(r), "7:8") == (7, 8, [], "/")


def test_make_bundle_writes_config_and_creates_the_workdir(tmp_path, fakeroot):
    (fakeroot / "home/app").mkdir(parents=True)
    os.symlink("/home/app", fakeroot / "work")
    out = make_bundle({"config": {"Cmd": ["x"], "WorkingDir": "/work/sub", "User": "app"}},
                      str(fakeroot), str(tmp_path / "b"))
    with open(os.path.join(out, "config.json")) as f:
        spec = json.load(f)
    assert spec["process"]["cwd"] == "/work/sub" and spec["process"]["user"]["uid"] == 1000
    assert (fakeroot / "home/app/sub").is_dir()  # the symlink resolved inside the rootfs
    assert not os.path.exists("/home/app/sub")
    os.symlink("/etc/passwd", fakeroot / "file-link")
    with pytest.raises(ImageError, match="is not a directory"):
        make_bundle({"config": {"Cmd": ["x"], "WorkingDir": "/file-link/x"}}, str(fakeroot), str(tmp_path / "c"))
