"""Pull failure paths end to end: a resumed pull whose connection drops again, a resumed
partial that turns out bad, and a full disk (ENOSPC) under the store while blobs stream in;
each leaves the store as it was (earlier images intact, no partial that could be served)."""

import os
import subprocess
import sys

import pytest

from keel.image.errors import DigestMismatch, ImageError, RegistryError
from keel.image.store import Store

from registry_fixtures import client, lying_registry, make_image, ref  # noqa: F401
from test_store import tiny_tmpfs  # noqa: F401


def partials(store):
    return sorted(n for n in os.listdir(os.path.join(store.root, "ingest")) if n.endswith(".partial"))


@pytest.fixture
def big(lying_registry):
    image = make_image([{"big.bin": os.urandom(400_000)}])
    lying_registry.add_image("a/big", "1", image)
    return image, image["layer_digests"][0], f"{lying_registry.host}/a/big:1"


def test_resumed_pull_whose_connection_drops_again(lying_registry, big, store):
    image, d, name = big
    size = len(image["blobs"][d])
    lying_registry.short_body[d] = 120_000                 # first run: ends early for good
    with client(lying_registry.host, retries=1) as c, pytest.raises(RegistryError, match="truncated after 120000"):
        c.pull(store, ref(name))
    assert partials(store) == [f"sha256-{d[7:]}.partial"]
    del lying_registry.short_body[d]
    # second run resumes, and its connection drops twice more: each time it resumes again
    lying_registry.truncate[d] = 2
    lying_registry.truncate_at = 50_000
    n = len(lying_registry.blob_gets(d))
    rerun = Store(store.root)
    with client(lying_registry.host) as c:
        img = c.pull(rerun, ref(name))
    rerun.verify_image(img)
    assert [h.get("Range") for h in lying_registry.blob_gets(d)[n:]] == [
        "bytes=120000-", "bytes=170000-", "bytes=220000-"]
    assert partials(rerun) == [] and size > 220_000


def test_resumed_partial_then_corrupt_tail_is_fetched_whole_once(lying_registry, big, store):
    image, d, name = big
    lying_registry.short_body[d] = 100_000
    with client(lying_registry.host, retries=0) as c, pytest.raises(RegistryError):
        c.pull(store, ref(name))
    del lying_registry.short_body[d]
    bad = bytearray(image["blobs"][d])
    bad[300_000] ^= 0xFF                                   # the tail the resume fetches is bad
    lying_registry.corrupt[d] = bytes(bad)
    n = len(lying_registry.blob_gets(d))
    with client(lying_registry.host) as c, pytest.raises(DigestMismatch, match=f"blob {d}: digest mismatch"):
        c.pull(store, ref(name))
    # the resume failed verification: one fresh download from 0, which is bad too
    assert [h.get("Range") for h in lying_registry.blob_gets(d)[n:]] == ["bytes=100000-", None]
    assert partials(store) == [] and not store.has_blob(d) and store.images() == []


def test_enospc_while_pulling_keeps_the_store_intact(lying_registry, tiny_tmpfs, tmp_path):
    small = make_image([{"small.txt": b"fits\n"}])
    lying_registry.add_image("a/small", "1", small)
    large = make_image([{"noise.bin": os.urandom(2 << 20)}])      # does not fit in 1 MiB
    lying_registry.add_image("a/large", "1", large)
    store = Store(os.path.join(tiny_tmpfs, "store"))
    try:
        with client(lying_registry.host) as c:
            kept = c.pull(store, ref(f"{lying_registry.host}/a/small:1"))
            blobs_before = sorted(store.blobs())
            with pytest.raises(ImageError) as e:
                c.pull(store, ref(f"{lying_registry.host}/a/large:1"))
        d = large["layer_digests"][0]
        assert not isinstance(e.value, DigestMismatch)
        assert str(e.value) == (f"blob {d}: no space left on device writing "
                                f"{store.root}/ingest/sha256-{d[7:]}.partial")
        assert partials(store) == [] and not store.has_blob(d)
        assert [i.id for i in store.images()] == [kept.id]
        store.verify_image(kept)
        # only the failed image's small config may have landed, verified and unreferenced: gc
        assert set(store.blobs()) - set(blobs_before) <= {large["config_digest"]}
        store.gc()
        assert sorted(store.blobs()) == blobs_before
        # and the CLI says it in one line, exit 125
        r = subprocess.run([sys.executable, "-m", "keel.cli.main", "--root", store.root, "--runroot",
                            str(tmp_path / "run"), "pull", "-q", "--tls-verify=false",
                            f"{lying_registry.host}/a/large:1"], capture_output=True, text=True, timeout=60)
        assert r.returncode == 125
        assert r.stderr.strip() == f"Error: {e.value}"
        assert [i.id for i in store.images()] == [kept.id] and partials(store) == []
    finally:
        store.close()


def test_interrupted_pull_leaves_nothing_half_done_and_a_rerun_finishes(lying_registry, big, tmp_path):
    """^C while layers stream in (the registry holding each blob back for 3 s): exit 130, no
    image, no blob that was not verified; the rerun completes."""
    import signal
    import time

    image, d, name = big
    lying_registry.blob_delay = 3.0
    root = tmp_path / "root"
    argv = [sys.executable, "-m", "keel.cli.main", "--root", str(root), "--runroot", str(tmp_path / "run"),
            "pull", "-q", "--tls-verify=false", name]
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not lying_registry.blob_gets(d) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert lying_registry.blob_gets(d), "the pull never asked for the layer"
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 130 and err.strip().splitlines()[-1] == "Error: interrupted"
    with Store(str(root)) as store:
        assert store.images() == [] and not store.has_blob(d)
    lying_registry.blob_delay = 0
    r = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    with Store(str(root)) as store:
        img = store.get(name)
        store.verify_image(img)
        assert partials(store) == []
