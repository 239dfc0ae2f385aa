"""keel.image.registry: pull and push against the real docker-registry (images pushed there by
skopeo and by keel, read back by skopeo), and against a lying registry for the failure cases."""

import io
import json
import os
import time

import pytest

from keel.image.errors import DigestMismatch, RegistryError
from keel.image.progress import PlainProgress, QuietProgress, RichProgress, make_progress
from keel.image.platform import parse as parse_platform
from keel.image.registry import (DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST,
                                 parse_www_authenticate, select_platform)
from keel.image.store import Store

from registry_fixtures import (RecordingTransport, client, lying_registry, make_image, make_index,  # noqa: F401
                               ref, registry, sha256, skopeo, skopeo_push, skopeo_raw, store_image)


def assert_clean(store, *digests):
    """Nothing of a failed pull is visible: no image, none of the digests as blobs."""
    assert store.images() == []
    for d in digests:
        assert not store.has_blob(d), d


def partials(store):
    return [n for n in os.listdir(os.path.join(store.root, "ingest")) if n.endswith(".partial")]


# -- pulls from the real registry ---------------------------------------------------------

@pytest.fixture(scope="module")
def busybox_ref(registry, oci_busybox):
    """keel/busybox:1.0 in the plain registry, pushed by skopeo from an OCI layout."""
    return skopeo_push(oci_busybox, f"{registry.host}/keel/busybox:1.0")


def test_pull_oci_image_pushed_by_skopeo(registry, busybox_ref, store):
    raw = skopeo_raw(busybox_ref)
    with client(registry.host) as c:
        img = c.pull(store, ref(busybox_ref))
    assert img.manifest_digest == sha256(raw)
    assert store.read_blob(img.manifest_digest) == raw
    assert img.names == [busybox_ref]
    assert img.media_type == OCI_MANIFEST
    manifest = json.loads(raw)
    assert img.id == manifest["config"]["digest"]
    assert [la.digest for la in img.layers] == [d["digest"] for d in manifest["layers"]]
    store.verify_image(img)
    assert store.get(busybox_ref).id == img.id
    assert partials(store) == []


def test_pull_again_skips_blobs_already_stored(registry, busybox_ref, store):
    t = RecordingTransport()
    with client(registry.host, on_request=t) as c:
        c.pull(store, ref(busybox_ref))
        n = len(t.methods("GET", "/blobs/"))
        assert n == 2
        c.pull(store, ref(busybox_ref))
    assert len(t.methods("GET", "/blobs/")) == n


def test_pull_by_digest_verifies_and_finds_it(registry, busybox_ref, store):
    d = sha256(skopeo_raw(busybox_ref))
    by_digest = f"{registry.host}/keel/busybox@{d}"
    with client(registry.host) as c:
        img = c.pull(store, ref(by_digest))
    assert img.manifest_digest == d
    assert store.get(d).id == img.id


def test_pull_docker_schema2_image(registry, oci_busybox, store):
    dest = skopeo_push(oci_busybox, f"{registry.host}/keel/busybox-v2s2:1", None, "--format", "v2s2")
    raw = skopeo_raw(dest)
    with client(registry.host) as c:
        img = c.pull(store, ref(dest))
    assert img.media_type == DOCKER_MANIFEST
    assert img.manifest_digest == sha256(raw)
    store.verify_image(img)


@pytest.fixture(scope="module")
def multiarch_ref(registry, tmp_path_factory):
    """An OCI index of linux/amd64 and linux/arm64/v8 pushed by `skopeo copy --all`."""
    amd = make_image([{"arch": b"amd64\n"}])
    arm = make_image([{"arch": b"arm64\n"}], architecture="arm64", variant="v8")
    idx = make_index([amd, arm], ["linux/amd64", "linux/arm64/v8"])
    lay = tmp_path_factory.mktemp("multiarch")
    (lay / "blobs" / "sha256").mkdir(parents=True)
    for img in (amd, arm):
        for d, data in list(img["blobs"].items()) + [(img["manifest_digest"], img["manifest"])]:
            (lay / "blobs" / "sha256" / d[7:]).write_bytes(data)
    (lay / "blobs" / "sha256" / sha256(idx)[7:]).write_bytes(idx)
    (lay / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": OCI_INDEX, "digest": sha256(idx), "size": len(idx),
         "annotations": {"org.opencontainers.image.ref.name": "multi"}}]}))
    (lay / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    dest = skopeo_push(str(lay), f"{registry.host}/keel/multi:1", None, "--all", ref="multi")
    assert skopeo_raw(dest) == idx
    return dest, amd, arm


@pytest.mark.parametrize("platform,which", [("linux/amd64", 1), ("linux/arm64", 2),
                                            ("linux/arm64/v8", 2), ("linux/aarch64", 2)])
def test_pull_index_selects_platform(registry, multiarch_ref, store, platform, which):
    dest, amd, arm = multiarch_ref
    want = (amd, arm)[which - 1]
    with client(registry.host) as c:
        img = c.pull(store, ref(dest), platform=platform)
    assert img.manifest_digest == want["manifest_digest"]
    assert img.id == want["config_digest"]
    assert img.names == [dest]


def test_pull_index_without_the_platform_lists_available(registry, multiarch_ref, store):
    dest, _, _ = multiarch_ref
    with client(registry.host) as c, pytest.raises(RegistryError) as e:
        c.pull(store, ref(dest), platform="linux/s390x")
    assert str(e.value) == (f"no image for platform linux/s390x in {dest}: "
                            "available: linux/amd64, linux/arm64/v8")
    with client(registry.host) as c, pytest.raises(RegistryError, match="linux/arm/v6"):
        c.pull(store, ref(dest), platform="linux/arm64/v7".replace("arm64/v7", "arm/v6"))
    assert_clean(store)


def test_manifest_unknown(registry, busybox_ref, store):
    with client(registry.host) as c:
        with pytest.raises(RegistryError) as e:
            c.pull(store, ref(f"{registry.host}/keel/busybox:nope"))
        assert str(e.value) == f"manifest unknown: {registry.host}/keel/busybox:nope"
        assert e.value.status == 404
        with pytest.raises(RegistryError, match=f"^manifest unknown: {registry.host}/no/such:latest$"):
            c.pull(store, ref(f"{registry.host}/no/such"))
    assert_clean(store)


# -- push --------------------------------------------------------------------------------

def test_push_reads_back_byte_identical_with_skopeo(registry, store, tmp_path):
    image = make_image([{"a.txt": b"first layer\n"}, {"b.txt": b"second layer\n" * 1000}])
    img = store_image(store, image, names=["localhost/keel/local:1"])
    dest = f"{registry.host}/keel/pushed:1"
    t = RecordingTransport()
    with client(registry.host, on_request=t) as c:
        d = c.push(store, img, ref(dest))
    assert d == image["manifest_digest"]
    assert skopeo_raw(dest) == image["manifest"]
    # HEAD first, then a monolithic upload per blob (POST + PUT ?digest=), then the manifest
    assert len(t.methods("HEAD", "/blobs/")) == 3
    assert len(t.methods("POST", "/blobs/uploads/")) == 3
    puts = t.methods("PUT", "/blobs/uploads/")
    assert sorted(p[2]["digest"] for p in puts) == sorted(image["blobs"])
    assert t.methods("PATCH") == []
    (m,) = t.methods("PUT", "/manifests/")
    assert m[3]["content-type"] == OCI_MANIFEST
    # skopeo copies it out into an OCI layout: every blob byte-identical
    out = tmp_path / "out"
    skopeo("copy", "--quiet", "--src-tls-verify=false", f"docker://{dest}", f"oci:{out}:x")
    for dgst, data in list(image["blobs"].items()) + [(d, image["manifest"])]:
        assert (out / "blobs" / "sha256" / dgst[7:]).read_bytes() == data
    # and keel pulls it back to the same image
    other = Store(str(tmp_path / "other"))
    with client(registry.host) as c:
        back = c.pull(other, ref(dest))
    assert (back.id, back.manifest_digest) == (img.id, img.manifest_digest)


def test_push_docker_manifest_keeps_its_media_type(registry, store):
    image = make_image([{"d.txt": b"docker\n"}], media_type=DOCKER_MANIFEST)
    img = store_image(store, image)
    dest = f"{registry.host}/keel/pushed-docker:1"
    with client(registry.host) as c:
        assert c.push(store, img, ref(dest)) == image["manifest_digest"]
    raw = skopeo_raw(dest)
    assert raw == image["manifest"]
    out = json.loads(skopeo("inspect", "--tls-verify=false", f"docker://{dest}"))
    assert out["Digest"] == image["manifest_digest"]


def test_push_chunked_upload(registry, busybox_ref, store, tmp_path):
    with client(registry.host) as c:
        img = c.pull(store, ref(busybox_ref))
    layer = img.layers[0]
    assert layer.size > 3 * 65536
    t = RecordingTransport()
    dest = f"{registry.host}/keel/chunked:1"
    with client(registry.host, on_request=t, chunk_size=65536) as c:
        c.push(store, img, ref(dest), mount=False)
    patches = t.methods("PATCH", "/blobs/uploads/")
    ranges = [p[3]["content-range"] for p in patches]
    assert ranges[0] == "0-65535" and ranges[1] == "65536-131071"
    assert len(patches) == -(-layer.size // 65536)
    out = tmp_path / "out"
    skopeo("copy", "--quiet", "--src-tls-verify=false", f"docker://{dest}", f"oci:{out}:x")
    assert (out / "blobs" / "sha256" / layer.digest[7:]).read_bytes() == store.read_blob(layer.digest)
    assert skopeo_raw(dest) == store.read_blob(img.manifest_digest)


def test_push_again_only_heads(registry, store):
    image = make_image([{"again.txt": b"again\n"}])
    img = store_image(store, image)
    dest = ref(f"{registry.host}/keel/again:1")
    with client(registry.host) as c:
        c.push(store, img, dest)
    t = RecordingTransport()
    out = io.StringIO()
    with client(registry.host, on_request=t) as c:
        c.push(store, img, dest.with_tag("2"), progress=PlainProgress(out))
    assert t.methods("POST") == [] and t.methods("PATCH") == []
    assert len(t.methods("HEAD")) == 2
    assert out.getvalue().count("skipped: already exists") == 2
    assert skopeo_raw(str(dest.with_tag("2"))) == image["manifest"]


def test_push_mounts_from_another_repository(registry, store):
    image = make_image([{"m.txt": b"mount me\n" * 100}])
    img = store_image(store, image)
    src = f"{registry.host}/keel/mount-src:1"
    with client(registry.host) as c:
        c.push(store, img, ref(src))
    store.tag(img.id, src)                  # the image is now known in keel/mount-src
    img = store.get(img.id)
    t = RecordingTransport()
    out = io.StringIO()
    with client(registry.host, on_request=t) as c:
        c.push(store, img, ref(f"{registry.host}/keel/mount-dst:1"), progress=PlainProgress(out))
    posts = t.methods("POST", "/keel/mount-dst/blobs/uploads/")
    assert len(posts) == 2
    assert all(p[2].get("from") == "keel/mount-src" and p[2].get("mount") for p in posts)
    assert t.methods("PUT", "/blobs/uploads/") == []
    assert "mounted from keel/mount-src" in out.getvalue()
    assert skopeo_raw(f"{registry.host}/keel/mount-dst:1") == image["manifest"]
    skopeo("inspect", "--tls-verify=false", f"docker://{registry.host}/keel/mount-dst:1")


def test_push_then_pull_manifest_list(registry, store, tmp_path):
    """A Docker manifest list keel puts together from two schema2 images, resolved on pull."""
    amd = make_image([{"p": b"amd\n"}], media_type=DOCKER_MANIFEST)
    arm = make_image([{"p": b"arm\n"}], architecture="arm", variant="v7", media_type=DOCKER_MANIFEST)
    with client(registry.host) as c:
        for image in (amd, arm):
            c.push(store, store_image(store, image), ref(f"{registry.host}/keel/list@{image['manifest_digest']}"))
        lst = make_index([amd, arm], ["linux/amd64", "linux/arm/v7"], media_type=DOCKER_LIST)
        c.put_manifest("keel/list", "1", lst, DOCKER_LIST)
    assert skopeo_raw(f"{registry.host}/keel/list:1") == lst
    other = Store(str(tmp_path / "other"))
    with client(registry.host) as c:
        img = c.pull(other, ref(f"{registry.host}/keel/list:1"), platform="linux/arm")
    assert img.manifest_digest == arm["manifest_digest"]
    assert img.media_type == DOCKER_MANIFEST


# -- parallel downloads and progress ------------------------------------------------------

def test_parallel_downloads_are_bounded(lying_registry, store):
    image = make_image([{f"f{i}": os.urandom(2000)} for i in range(4)])
    lying_registry.add_image("p/q", "1", image)
    lying_registry.blob_delay = 0.1
    with client(lying_registry.host) as c:
        c.pull(store, ref(f"{lying_registry.host}/p/q:1"), parallel=3)
    assert lying_registry.max_active_blobs == 3
    lying_registry.max_active_blobs = 0
    with client(lying_registry.host) as c:
        c.pull(Store(store.root + "-2"), ref(f"{lying_registry.host}/p/q:1"), parallel=1)
    assert lying_registry.max_active_blobs == 1


def test_plain_progress_lines(lying_registry, store):
    image = make_image()
    lying_registry.add_image("p/q", "1", image)
    out = io.StringIO()
    with client(lying_registry.host) as c:
        c.pull(store, ref(f"{lying_registry.host}/p/q:1"), progress=make_progress(stream=out))
    text = out.getvalue()
    for d in image["blobs"]:
        kind = "config" if d == image["config_digest"] else "blob"
        assert f"Copying {kind} {d[7:19]}\n" in text
        assert f"Copying {kind} {d[7:19]} done " in text
    assert f"Writing manifest {image['manifest_digest']}" in text
    assert "\x1b" not in text


def test_make_progress_picks_the_display():
    assert isinstance(make_progress(quiet=True), QuietProgress)
    assert isinstance(make_progress(stream=io.StringIO()), PlainProgress)
    out = io.StringIO()
    p = make_progress(stream=out, tty=True)
    assert isinstance(p, RichProgress)
    p.add("k", 1000, "Copying blob abc")
    p.advance("k", 500)
    p.finish("k")
    p.close()
    assert "Copying blob abc done" in out.getvalue()


def test_quiet_pull_prints_nothing(lying_registry, store, capsys):
    lying_registry.add_image("p/q", "1", make_image())
    with client(lying_registry.host) as c:
        c.pull(store, ref(f"{lying_registry.host}/p/q:1"), progress=make_progress(quiet=True))
    assert capsys.readouterr().out == ""


# -- a registry that lies ------------------------------------------------------------------

@pytest.fixture
def lying(lying_registry):
    image = make_image([{"big.bin": os.urandom(300_000)}])
    lying_registry.add_image("a/b", "tag", image)
    return lying_registry, image, f"{lying_registry.host}/a/b:tag"


def layer_of(image):
    return image["layer_digests"][0]


def test_blob_that_does_not_match_its_digest(lying, store):
    reg, image, name = lying
    d = layer_of(image)
    bad = bytearray(image["blobs"][d])
    bad[1000] ^= 0xFF
    reg.corrupt[d] = bytes(bad)
    with client(reg.host) as c, pytest.raises(DigestMismatch) as e:
        c.pull(store, ref(name))
    msg = str(e.value)
    assert msg.startswith(f"{reg.host}/a/b: blob {d}: digest mismatch: got sha256:")
    assert "\n" not in msg
    assert_clean(store, d, image["manifest_digest"])
    assert f"sha256-{d[7:]}.partial" not in partials(store)


def test_blob_longer_than_its_descriptor(lying, store):
    reg, image, name = lying
    d = layer_of(image)
    reg.corrupt[d] = image["blobs"][d] + b"trailing garbage"
    with client(reg.host) as c, pytest.raises(DigestMismatch, match=f"blob {d}: size mismatch"):
        c.pull(store, ref(name))
    assert_clean(store, d)
    assert f"sha256-{d[7:]}.partial" not in partials(store)


def test_connection_dropped_mid_blob_resumes_with_range(lying, store):
    reg, image, name = lying
    d = layer_of(image)
    reg.truncate[d] = 2
    reg.truncate_at = 100_000
    with client(reg.host) as c:
        img = c.pull(store, ref(name))
    store.verify_image(img)
    gets = reg.blob_gets(d)
    assert [h.get("Range") for h in gets] == [None, "bytes=100000-", "bytes=200000-"]


def test_registry_ignoring_range_still_gives_the_right_blob(lying, store):
    reg, image, name = lying
    d = layer_of(image)
    reg.truncate[d] = 1
    reg.ignore_range = True
    with client(reg.host) as c:
        img = c.pull(store, ref(name))
    store.verify_image(img)
    assert len(reg.blob_gets(d)) == 2


def test_truncated_blob_fails_then_a_rerun_resumes_the_partial(lying, store):
    reg, image, name = lying
    d = layer_of(image)
    size = len(image["blobs"][d])
    reg.short_body[d] = 120_000             # a "complete" response that is too short
    with client(reg.host, retries=2) as c, pytest.raises(RegistryError) as e:
        c.pull(store, ref(name))
    assert str(e.value) == (f"{reg.host}/a/b@{d}: truncated after 120000 of {size} bytes: "
                            "the registry has nothing past byte 120000 (http 416)")
    assert store.images() == [] and not store.has_blob(d)
    assert partials(store) == [f"sha256-{d[7:]}.partial"]
    # the registry is fixed; a rerun (a new Store on the same root, as a new process) resumes
    del reg.short_body[d]
    n = len(reg.blob_gets(d))
    rerun = Store(store.root)
    with client(reg.host) as c:
        img = c.pull(rerun, ref(name))
    rerun.verify_image(img)
    assert [h.get("Range") for h in reg.blob_gets(d)[n:]] == ["bytes=120000-"]
    assert partials(rerun) == []


def test_resumed_partial_that_was_bad_is_fetched_again(lying, store):
    reg, image, name = lying
    d = layer_of(image)
    bad = bytearray(image["blobs"][d])
    bad[10] ^= 0xFF
    reg.corrupt[d] = bytes(bad)
    reg.short_body[d] = 50_000
    with client(reg.host, retries=0) as c, pytest.raises(RegistryError, match="truncated"):
        c.pull(store, ref(name))
    reg.corrupt.clear()
    reg.short_body.clear()
    with client(reg.host) as c:
        img = c.pull(store, ref(name))
    store.verify_image(img)
    assert [h.get("Range") for h in reg.blob_gets(d)][-2:] == ["bytes=50000-", None]


def test_5xx_then_success_is_retried(lying, store):
    reg, image, name = lying
    reg.fail[r"/manifests/"] = [500, 502]
    reg.fail[r"/blobs/"] = [503, 500]
    with client(reg.host) as c:
        img = c.pull(store, ref(name))
    store.verify_image(img)


def test_429_honours_retry_after(lying, store):
    reg, image, name = lying
    reg.fail[r"/manifests/"] = [429]
    reg.retry_after = "1"
    t0 = time.monotonic()
    with client(reg.host, backoff=0.001) as c:
        c.pull(store, ref(name))
    assert time.monotonic() - t0 >= 1.0


def test_5xx_forever_gives_up(lying, store):
    reg, image, name = lying
    reg.fail[r"/manifests/"] = [500] * 10
    with client(reg.host, retries=2) as c, pytest.raises(RegistryError) as e:
        c.pull(store, ref(name))
    assert str(e.value) == (f"registry error: {name}: {reg.host} answered http 500 (try again)")
    assert e.value.status == 500
    assert len([r for r in reg.requests if "/manifests/" in r[1]]) == 3


def test_401_403_and_blob_404(lying, store):
    reg, image, name = lying
    reg.fail[r"/manifests/"] = [403]
    with client(reg.host) as c, pytest.raises(RegistryError) as e:
        c.pull(store, ref(name))
    assert str(e.value) == f"denied: {name} (try again)" and e.value.status == 403
    reg.fail[r"/manifests/"] = [401]
    with client(reg.host) as c, pytest.raises(RegistryError) as e:
        c.pull(store, ref(name))
    assert str(e.value) == f"unauthorized: {name}: authentication required (try again)"
    d = layer_of(image)
    del reg.blobs[d]
    with client(reg.host) as c, pytest.raises(RegistryError) as e:
        c.pull(store, ref(name))
    assert str(e.value) == f"blob unknown: {reg.host}/a/b@{d}"
    assert_clean(store, d)


def test_html_instead_of_a_manifest(lying, store):
    reg, image, name = lying
    reg.html = True
    with client(reg.host) as c, pytest.raises(RegistryError) as e:
        c.pull(store, ref(name))
    assert str(e.value) == (f"{name}: registry returned html, not a manifest "
                            "(content-type text/html)")
    assert_clean(store, *image["blobs"])


@pytest.mark.parametrize("body,content_type,message", [
    (b"{this is not json", OCI_MANIFEST, "invalid manifest: not json"),
    (b'["a list"]', OCI_MANIFEST, "invalid manifest: not a json object"),
    (b'{"schemaVersion": 2, "mediaType": "%s", "config": {}}' % OCI_MANIFEST.encode(), OCI_MANIFEST,
     "config: invalid digest None"),
    (b'{"schemaVersion": 2}', "application/x-whatever", "unexpected content-type 'application/x-whatever'"),
    (b'{"schemaVersion": 1, "fsLayers": []}', "application/json", "docker schema1 manifests are not supported"),
    (b'{"schemaVersion": 2, "mediaType": "%s", "manifests": []}' % OCI_INDEX.encode(), OCI_MANIFEST,
     "manifest says mediaType application/vnd.oci.image.index.v1+json but was served as"),
])
def test_garbage_manifests(lying_registry, store, body, content_type, message):
    lying_registry.add_manifest("a/b", "t", body, content_type)
    name = f"{lying_registry.host}/a/b:t"
    with client(lying_registry.host) as c, pytest.raises(RegistryError) as e:
        c.pull(store, ref(name))
    assert str(e.value).startswith(f"{name}: ")
    assert message in str(e.value)
    assert_clean(store)


def test_manifest_digest_mismatch_when_pulled_by_digest(lying, store):
    reg, image, name = lying
    d = image["manifest_digest"]
    other = make_image([{"evil": b"evil\n"}])
    reg.blobs.update(other["blobs"])
    reg.add_manifest("a/b", d, other["manifest"], OCI_MANIFEST)
    with client(reg.host) as c, pytest.raises(DigestMismatch) as e:
        c.pull(store, ref(f"{reg.host}/a/b@{d}"))
    assert str(e.value) == (f"manifest {d} from {reg.host}/a/b: digest mismatch: "
                            f"got {other['manifest_digest']}")
    assert_clean(store, *other["blobs"], other["manifest_digest"])


def test_index_entry_whose_manifest_does_not_match(lying_registry, store):
    amd = make_image([{"x": b"amd\n"}])
    evil = make_image([{"x": b"evil\n"}])
    lying_registry.blobs.update(evil["blobs"])
    lying_registry.add_manifest("a/b", amd["manifest_digest"], evil["manifest"], OCI_MANIFEST)
    lying_registry.add_manifest("a/b", "t", make_index([amd], ["linux/amd64"]), OCI_INDEX)
    with client(lying_registry.host) as c, pytest.raises(DigestMismatch, match="digest mismatch"):
        c.pull(store, ref(f"{lying_registry.host}/a/b:t"))
    assert_clean(store, *evil["blobs"])


def test_tag_whose_docker_content_digest_lies(lying, store):
    reg, image, name = lying
    reg.wrong_digest_header = True
    with client(reg.host) as c, pytest.raises(DigestMismatch) as e:
        c.pull(store, ref(name))
    assert str(e.value).startswith(f"manifest {name}: digest mismatch: registry says sha256:")
    assert_clean(store)


def test_tag_records_the_digest_received(lying, store):
    reg, image, name = lying
    with client(reg.host) as c:
        img = c.pull(store, ref(name))
    assert img.manifest_digest == image["manifest_digest"]
    assert store.read_blob(img.manifest_digest) == image["manifest"]


def test_failed_pull_leaves_previous_images_intact(lying, store):
    reg, image, name = lying
    with client(reg.host) as c:
        first = c.pull(store, ref(name))
    second = make_image([{"big.bin": os.urandom(1000)}, {"more": b"x"}])
    reg.add_image("a/c", "tag", second)
    d = second["layer_digests"][1]
    reg.corrupt[d] = bytes(b ^ 1 for b in second["blobs"][d])
    with client(reg.host) as c, pytest.raises(DigestMismatch):
        c.pull(store, ref(f"{reg.host}/a/c:tag"))
    assert [i.id for i in store.images()] == [first.id]
    store.verify_image(first)
    assert not store.has_blob(second["layer_digests"][1])


def test_docker_manifest_list_with_attestations(lying_registry, store):
    amd = make_image([{"x": b"amd\n"}], media_type=DOCKER_MANIFEST)
    arm = make_image([{"x": b"arm\n"}], architecture="arm64", media_type=DOCKER_MANIFEST)
    att = make_image([{"x": b"att\n"}])
    for i in (amd, arm, att):
        lying_registry.add_image("a/b", None, i)
    lst = make_index([att, amd, arm], ["unknown/unknown", "linux/amd64", "linux/arm64"],
                     media_type=DOCKER_LIST)
    lying_registry.add_manifest("a/b", "t", lst, DOCKER_LIST)
    with client(lying_registry.host) as c:
        img = c.pull(store, ref(f"{lying_registry.host}/a/b:t"), platform="linux/arm64/v8")
        assert img.manifest_digest == arm["manifest_digest"]
        with pytest.raises(RegistryError, match="available: linux/amd64, linux/arm64$"):
            c.pull(store, ref(f"{lying_registry.host}/a/b:t"), platform="windows/amd64")


def test_unreachable_registry(store):
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with client(f"127.0.0.1:{port}", retries=1) as c, pytest.raises(RegistryError) as e:
        c.pull(store, ref(f"127.0.0.1:{port}/a/b:t"))
    assert str(e.value).startswith(f"127.0.0.1:{port}/a/b:t: cannot connect to 127.0.0.1:{port}: ")


# -- pure functions ------------------------------------------------------------------------

def test_parse_www_authenticate():
    h = ('Bearer realm="https://auth.example.com/token",service="registry.example.com",'
         'scope="repository:a/b:pull,push", Basic realm="x"')
    assert parse_www_authenticate(h) == [
        ("bearer", {"realm": "https://auth.example.com/token", "service": "registry.example.com",
                    "scope": "repository:a/b:pull,push"}),
        ("basic", {"realm": "x"})]
    assert parse_www_authenticate('Basic realm="Registry Realm"') == [("basic", {"realm": "Registry Realm"})]
    assert parse_www_authenticate("") == []


def test_platforms():
    assert parse_platform("linux/amd64") == ("linux", "amd64", None)
    assert parse_platform("linux/x86_64") == ("linux", "amd64", None)
    assert parse_platform("linux/armhf") == ("linux", "arm", "v7")
    with pytest.raises(Exception, match="invalid platform 'linux'"):
        parse_platform("linux")
    ms = [{"digest": "a", "platform": {"os": "linux", "architecture": "arm", "variant": "v6"}},
          {"digest": "b", "platform": {"os": "linux", "architecture": "arm", "variant": "v7"}},
          {"digest": "c", "platform": {"os": "linux", "architecture": "amd64", "variant": "v3"}}]
    assert select_platform(ms, "linux/arm", "x")["digest"] == "b"
    assert select_platform(ms, "linux/arm/v6", "x")["digest"] == "a"
    assert select_platform(ms, "linux/amd64", "x")["digest"] == "c"
