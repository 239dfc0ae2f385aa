"""keel.image.reference: docker/distribution grammar, docker's normalisation."""

import pytest

from keel.image import reference
from keel.image.errors import ImageError, ReferenceError_

D = "sha256:" + "ab" * 32
D512 = "sha512:" + "cd" * 64


@pytest.mark.parametrize("s, registry, repository, tag, dig, full, familiar", [
    ("busybox", "docker.io", "library/busybox", "latest", None,
     "docker.io/library/busybox:latest", "busybox:latest"),
    ("busybox:1.36", "docker.io", "library/busybox", "1.36", None,
     "docker.io/library/busybox:1.36", "busybox:1.36"),
    ("library/busybox", "docker.io", "library/busybox", "latest", None,
     "docker.io/library/busybox:latest", "busybox:latest"),
    ("docker.io/busybox", "docker.io", "library/busybox", "latest", None,
     "docker.io/library/busybox:latest", "busybox:latest"),
    ("index.docker.io/library/busybox:1", "docker.io", "library/busybox", "1", None,
     "docker.io/library/busybox:1", "busybox:1"),
    ("user/app:v1", "docker.io", "user/app", "v1", None, "docker.io/user/app:v1", "user/app:v1"),
    ("localhost/app", "localhost", "app", "latest", None, "localhost/app:latest", "localhost/app:latest"),
    ("localhost:5000/a/b:tag", "localhost:5000", "a/b", "tag", None,
     "localhost:5000/a/b:tag", "localhost:5000/a/b:tag"),
    ("quay.io/podman/stable", "quay.io", "podman/stable", "latest", None,
     "quay.io/podman/stable:latest", "quay.io/podman/stable:latest"),
    ("127.0.0.1:5000/x", "127.0.0.1:5000", "x", "latest", None, "127.0.0.1:5000/x:latest", None),
    ("[::1]:5000/x:y", "[::1]:5000", "x", "y", None, "[::1]:5000/x:y", None),
    ("Registry/app", "Registry", "app", "latest", None, "Registry/app:latest", None),
    ("example.com/a__b/c-d.e/f--g:1.0_rc-1", "example.com", "a__b/c-d.e/f--g", "1.0_rc-1", None, None, None),
    (f"busybox@{D}", "docker.io", "library/busybox", None, D,
     f"docker.io/library/busybox@{D}", f"busybox@{D}"),
    (f"a/b:t@{D}", "docker.io", "a/b", "t", D, f"docker.io/a/b:t@{D}", f"a/b:t@{D}"),
    (f"localhost:5000/a@{D512}", "localhost:5000", "a", None, D512, f"localhost:5000/a@{D512}", None),
    ("localhost:5000", "docker.io", "library/localhost", "5000", None,
     "docker.io/library/localhost:5000", "localhost:5000"),
    ("a" * 40 + ":" + "T" * 128, "docker.io", "library/" + "a" * 40, "T" * 128, None, None, None),
])
def test_parse(s, registry, repository, tag, dig, full, familiar):
    ref = reference.parse(s)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (registry, repository, tag, dig)
    if full:
        assert str(ref) == full
        assert reference.parse(full) == ref       # canonical form is a fixed point
    if familiar:
        assert ref.familiar() == familiar


@pytest.mark.parametrize("s, why", [
    ("", "empty"),
    ("Busybox", "repository name must be lowercase"),
    ("docker.io/Library/busybox", "repository name must be lowercase"),
    ("busybox:bad tag", "whitespace"),
    (" busybox", "whitespace"),
    ("busybox:-x", "invalid tag '-x'"),
    ("busybox:", "invalid tag ''"),
    ("busybox:" + "t" * 129, "invalid tag"),
    ("busybox:a/b", "invalid registry 'busybox:a'"),
    ("busybox@sha256:abc", "64 lowercase hex"),
    (f"busybox@{D.upper()}", "invalid digest"),
    ("busybox@md5:d41d8cd98f00b204e9800998ecf8427e", "unsupported algorithm"),
    (f"a@{D}@{D}", "more than one '@'"),
    ("a//b", "invalid repository name"),
    ("-a", "invalid repository name"),
    ("a_", "invalid repository name"),
    ("a..b", "invalid repository name"),
    ("a___b", "invalid repository name"),
    ("/a", "invalid repository name"),
    ("a/", "invalid repository name"),
    (":tag", "empty name"),
    ("bad_host.com/a", "invalid registry"),
    ("host:port/a", "invalid registry"),
    ("ab" * 32, "64 hex"),
    ("a/" * 127 + "ab", "longer than 255"),
])
def test_parse_malformed(s, why):
    with pytest.raises(ReferenceError_) as e:
        reference.parse(s)
    msg = str(e.value)
    assert isinstance(e.value, ImageError)
    assert why in msg, msg
    assert msg.startswith(f"invalid reference {s!r}") or msg.startswith("invalid reference")
    assert "\n" not in msg


def test_name_length_limit_is_255():
    name = "a/" * 126 + "abc"          # 255 characters
    assert len(name) == 255
    reference.parse(name)


def test_default_registry_and_library_are_configurable():
    ref = reference.parse("busybox", default_registry="quay.io")
    assert str(ref) == "quay.io/busybox:latest"
    assert str(reference.parse("busybox", normalize_library=False)) == "docker.io/busybox:latest"
    assert str(reference.parse("docker.io/busybox", normalize_library=False)) == "docker.io/busybox:latest"
    # a qualified name is never re-qualified
    assert str(reference.parse("localhost/busybox", default_registry="quay.io")) == "localhost/busybox:latest"


def test_short_names():
    assert reference.parse("busybox").short
    assert reference.parse("user/app").short
    assert not reference.parse("docker.io/library/busybox").short
    assert not reference.parse("localhost/app").short
    assert reference.is_short_name("busybox") and reference.is_short_name(f"user/app@{D}")
    assert not reference.is_short_name("quay.io/a/b") and not reference.is_short_name("localhost/x")


def test_with_tag_and_digest():
    ref = reference.parse(f"quay.io/a/b:1@{D}")
    assert str(ref.with_tag("2")) == "quay.io/a/b:2"
    assert str(reference.parse("quay.io/a/b").with_digest(D)) == f"quay.io/a/b:latest@{D}"
    with pytest.raises(ReferenceError_, match="invalid tag"):
        ref.with_tag("no spaces")
    with pytest.raises(ReferenceError_, match="invalid digest"):
        ref.with_digest("sha256:1234")


def test_equality_and_hash():
    assert reference.parse("busybox") == reference.parse("docker.io/library/busybox:latest")
    assert len({reference.parse("busybox"), reference.parse("index.docker.io/busybox")}) == 1
    assert reference.try_parse("Bad") is None
