"""--platform against what an image says it is: a single-arch manifest's config (os,
architecture, variant) must match a platform that was asked for, and is refused before any
layer is fetched; without --platform a foreign image is pulled with podman's warning."""

import io
import json
import os
import subprocess
import sys

import pytest

from keel.image.errors import RegistryError
from keel.image.progress import make_progress
from keel.image.platform import host as host_platform
from keel.image.registry import platform_mismatch
from keel.image.store import Store

from registry_fixtures import client, lying_registry, make_image, make_index, ref, sha256  # noqa: F401


def assert_nothing_stored(store):
    assert store.images() == []
    assert store.blobs() == []
    assert [n for n in os.listdir(os.path.join(store.root, "ingest")) if n.endswith(".partial")] == []


def layer_gets(reg, image):
    return [p for (m, p, _) in reg.requests if m == "GET" and any(p.endswith(d) for d in image["layer_digests"])]


def test_single_arch_image_for_another_platform_is_refused(lying_registry, store):
    image = make_image([{"arm.bin": b"arm64 only\n"}], architecture="arm64", variant="v8")
    lying_registry.add_image("a/arm", "1", image)
    name = f"{lying_registry.host}/a/arm:1"
    with client(lying_registry.host) as c, pytest.raises(RegistryError) as e:
        c.pull(store, ref(name), platform="linux/amd64")
    assert str(e.value) == (f"{name}: image platform linux/arm64/v8 does not match the requested "
                            "platform linux/amd64")
    assert_nothing_stored(store)
    assert layer_gets(lying_registry, image) == []          # refused before any layer
    with client(lying_registry.host) as c:
        img = c.pull(store, ref(name), platform="linux/arm64")
        assert img.platform == "linux/arm64/v8"
        assert c.pull(Store(store.root + "-b"), ref(name), platform="linux/aarch64/v8").id == img.id


def test_without_platform_a_foreign_image_is_pulled_with_a_warning(lying_registry, store):
    other = "arm64" if host_platform() != "linux/arm64" else "amd64"
    image = make_image([{"f": b"foreign\n"}], architecture=other)
    lying_registry.add_image("a/foreign", "1", image)
    out = io.StringIO()
    with client(lying_registry.host) as c:
        img = c.pull(store, ref(f"{lying_registry.host}/a/foreign:1"), progress=make_progress(stream=out))
    store.verify_image(img)
    assert (f"WARNING: image platform (linux/{other}) does not "
            f"match the expected platform ({host_platform()})") in out.getvalue()


def test_variants(lying_registry, store):
    image = make_image([{"v6": b"armv6\n"}], architecture="arm", variant="v6")
    lying_registry.add_image("a/armv6", "1", image)
    name = f"{lying_registry.host}/a/armv6:1"
    with client(lying_registry.host) as c:
        with pytest.raises(RegistryError, match="image platform linux/arm/v6 does not match the "
                                                "requested platform linux/arm/v7$"):
            c.pull(store, ref(name), platform="linux/arm/v7")
        with pytest.raises(RegistryError, match="image platform linux/arm/v6 does not match"):
            c.pull(store, ref(name), platform="linux/armhf")         # armhf is arm/v7
        assert_nothing_stored(store)
        # no variant asked: any variant of that architecture
        assert c.pull(store, ref(name), platform="linux/arm").platform == "linux/arm/v6"
        assert c.pull(Store(store.root + "-b"), ref(name), platform="linux/arm/v6").platform == "linux/arm/v6"


def test_pure_function_cases():
    cfg = lambda **kw: json.dumps(kw).encode()                       # noqa: E731
    assert platform_mismatch(cfg(os="linux", architecture="amd64"), "linux/amd64", "x") is None
    assert platform_mismatch(cfg(os="linux", architecture="x86_64"), "linux/amd64", "x") is None
    assert platform_mismatch(cfg(os="windows", architecture="amd64"), "linux/amd64", "x") == "windows/amd64"
    assert platform_mismatch(cfg(os="linux", architecture="arm64"), "linux/arm64/v8", "x") is None
    assert platform_mismatch(cfg(os="linux", architecture="arm64", variant="v9"), "linux/arm64/v8", "x") \
        == "linux/arm64/v9"
    assert platform_mismatch(cfg(os="linux", architecture="arm64", variant="v9"), "linux/arm64", "x") is None
    # a config that names no platform matches anything (stated rule)
    assert platform_mismatch(cfg(), "linux/s390x", "x") is None
    assert platform_mismatch(cfg(architecture="amd64"), "linux/amd64", "x") is None
    with pytest.raises(RegistryError, match="^x: invalid image config: not json$"):
        platform_mismatch(b"<html>", "linux/amd64", "x")
    with pytest.raises(RegistryError, match="not a json object"):
        platform_mismatch(b"[]", "linux/amd64", "x")
    assert host_platform().startswith("linux/")
    if os.uname().machine == "x86_64":
        assert host_platform() == "linux/amd64"


def test_config_naming_no_platform_is_accepted(lying_registry, store):
    image = make_image([{"n": b"no platform\n"}], config_changes={"os": None, "architecture": None})
    lying_registry.add_image("a/noplat", "1", image)
    with client(lying_registry.host) as c:
        img = c.pull(store, ref(f"{lying_registry.host}/a/noplat:1"), platform="linux/riscv64")
    store.verify_image(img)


def test_corrupt_or_invalid_config_is_refused_before_the_layers(lying_registry, store):
    image = make_image([{"x": b"x\n"}])
    lying_registry.add_image("a/badcfg", "1", image)
    lying_registry.corrupt[image["config_digest"]] = b"not json at all"
    with client(lying_registry.host) as c, pytest.raises(Exception, match="size mismatch"):
        c.pull(store, ref(f"{lying_registry.host}/a/badcfg:1"), platform="linux/amd64")
    assert_nothing_stored(store)
    # a config that hashes right but is not json
    bad = b"<html>not a config</html>"
    m = json.loads(image["manifest"])
    m["config"].update(digest=sha256(bad), size=len(bad))
    mbytes = json.dumps(m).encode()
    lying_registry.blobs[sha256(bad)] = bad
    lying_registry.add_manifest("a/badcfg", "2", mbytes, m["mediaType"])
    name = f"{lying_registry.host}/a/badcfg:2"
    with client(lying_registry.host) as c, pytest.raises(RegistryError) as e:
        c.pull(store, ref(name), platform="linux/amd64")
    assert str(e.value) == f"{name}: config {sha256(bad)}: invalid image config: not json"
    assert_nothing_stored(store)
    assert layer_gets(lying_registry, image) == []


def test_index_entry_whose_config_says_another_platform(lying_registry, store):
    """The index claims arm64 for an amd64 image: the config is believed."""
    amd = make_image([{"amd": b"really amd64\n"}], architecture="amd64")
    lying_registry.add_image("a/liar", None, amd)
    lying_registry.add_manifest("a/liar", "1", make_index([amd], ["linux/arm64"]),
                                "application/vnd.oci.image.index.v1+json")
    with client(lying_registry.host) as c, pytest.raises(RegistryError, match="image platform linux/amd64 "
                                                         "does not match the requested platform linux/arm64"):
        c.pull(store, ref(f"{lying_registry.host}/a/liar:1"), platform="linux/arm64")
    assert_nothing_stored(store)


def test_cli_pull_platform_mismatch(lying_registry, tmp_path):
    image = make_image([{"arm.bin": b"arm64 cli\n"}], architecture="arm64")
    lying_registry.add_image("a/cli", "1", image)
    root = tmp_path / "root"
    r = subprocess.run([sys.executable, "-m", "keel.cli.main", "--root", str(root), "--runroot",
                        str(tmp_path / "run"), "pull", "--tls-verify=false", "--platform", "linux/amd64",
                        f"{lying_registry.host}/a/cli:1"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 125
    assert r.stderr.strip().splitlines()[-1] == (
        f"Error: {lying_registry.host}/a/cli:1: image platform linux/arm64 does not match the "
        "requested platform linux/amd64")
    with Store(str(root)) as s:
        assert_nothing_stored(s)
    r = subprocess.run([sys.executable, "-m", "keel.cli.main", "--root", str(root), "pull",
                        "--tls-verify=false", "--platform", "linux", f"{lying_registry.host}/a/cli:1"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 125
    assert r.stderr.strip() == "Error: invalid platform 'linux': expected os/arch[/variant]"


def test_cli_os_arch_variant_flags(lying_registry, tmp_path):
    image = make_image([{"arm.bin": b"arm v6 cli\n"}], architecture="arm", variant="v6")
    lying_registry.add_image("a/flags", "1", image)
    name = f"{lying_registry.host}/a/flags:1"

    def pull(*flags):
        return subprocess.run([sys.executable, "-m", "keel.cli.main", "--root", str(tmp_path / "root"),
                               "--runroot", str(tmp_path / "run"), "pull", "-q", "--tls-verify=false",
                               *flags, name], capture_output=True, text=True, timeout=60)
    r = pull("--arch", "arm", "--variant", "v7")
    assert r.returncode == 125 and r.stderr.strip() == (
        f"Error: {name}: image platform linux/arm/v6 does not match the requested platform linux/arm/v7")
    r = pull("--arch", "amd64")
    assert r.returncode == 125 and "requested platform linux/amd64" in r.stderr
    r = pull("--platform", "linux/arm", "--arch", "arm")
    assert r.returncode == 125
    assert r.stderr.strip() == "Error: --platform cannot be used with --os, --arch or --variant"
    r = pull("--os", "linux", "--arch", "arm")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == image["config_digest"][7:]
