"""keel.image.digest: parsing, hashing, streaming verification."""

import hashlib

import pytest

from keel.image import digest
from keel.image.errors import DigestMismatch, ImageError

EMPTY256 = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
EMPTY512 = "sha512:" + hashlib.sha512(b"").hexdigest()


def test_parse_valid():
    assert digest.parse(EMPTY256) == ("sha256", EMPTY256[7:])
    assert digest.parse(EMPTY512) == ("sha512", EMPTY512[7:])
    assert digest.ALGORITHMS == ("sha256", "sha512")


@pytest.mark.parametrize("bad, why", [
    ("", "expected algorithm:hex"),
    ("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", "expected algorithm:hex"),
    ("sha256:" + "a" * 63, "64 lowercase hex"),
    ("sha256:" + "a" * 65, "64 lowercase hex"),
    ("sha256:" + "A" * 64, "64 lowercase hex"),
    ("sha256:" + "g" * 64, "64 lowercase hex"),
    ("sha512:" + "a" * 64, "128 lowercase hex"),
    ("md5:d41d8cd98f00b204e9800998ecf8427e", "unsupported algorithm 'md5'"),
    ("sha384:" + "a" * 96, "unsupported algorithm"),
])
def test_parse_invalid_names_the_digest(bad, why):
    with pytest.raises(ImageError) as e:
        digest.parse(bad)
    msg = str(e.value)
    assert why in msg and repr(bad) in msg and "\n" not in msg
    assert msg[0].islower()
    assert not digest.is_valid(bad)


def test_of_bytes():
    assert digest.of_bytes(b"") == EMPTY256
    assert digest.of_bytes(b"", "sha512") == EMPTY512
    assert digest.of_bytes(b"abc") == "sha256:" + hashlib.sha256(b"abc").hexdigest()
    with pytest.raises(ImageError):
        digest.of_bytes(b"", "md5")


def test_verifier_ok_and_running_digest():
    data = b"hello world\n" * 1000
    expected = digest.of_bytes(data)
    v = digest.Verifier(expected, size=len(data))
    v.update(data[:5])
    assert v.digest == digest.of_bytes(data[:5]) and not v.ok()
    v.update(data[5:])
    assert v.ok() and v.digest == expected
    v.check()


def test_verifier_size_and_digest_mismatch():
    data = b"payload"
    d = digest.of_bytes(data)
    v = digest.Verifier(d, size=len(data) + 1)
    v.update(data)
    assert not v.ok()
    with pytest.raises(DigestMismatch, match=r"^blob sha256:[0-9a-f]{64}: size mismatch: expected 8 bytes, got 7$"):
        v.check()
    v = digest.Verifier(d)
    v.update(b"tampered")
    with pytest.raises(DigestMismatch) as e:
        v.check()
    assert str(e.value) == f"blob {d}: digest mismatch: got {digest.of_bytes(b'tampered')}"


def test_verifier_sha512():
    d = digest.of_bytes(b"x", "sha512")
    v = digest.Verifier(d)
    v.update(b"x")
    assert v.ok()


def test_verifier_rejects_malformed_expected():
    with pytest.raises(ImageError, match="invalid digest"):
        digest.Verifier("sha256:abc")
