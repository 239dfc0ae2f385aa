"""keel.image.registries: containers-registries.conf (v2 and v1), short names, mirrors, insecure
registries and TLS with a certs.d CA dir, the last ones against the real docker-registry."""

import pytest

from keel.image import reference, registries
from keel.image.errors import DigestMismatch, ReferenceError_, RegistryError
from keel.image.registries import RegistriesConfError
from keel.image.registry import RegistryClient, pull_image, push_image

from registry_fixtures import (lying_registry, make_image, registry, registry_tls,  # noqa: F401
                               skopeo_push, skopeo_raw, store_image)

CONF = """
unqualified-search-registries = ["registry.example.com", "docker.io"]
short-name-mode = "permissive"

[aliases]
"fedora" = "registry.fedoraproject.org/fedora"

[[registry]]
prefix = "example.com/foo"
location = "internal.example.net/mirror/foo"
insecure = true

[[registry.mirror]]
location = "mirror-1.example.net/foo"

[[registry.mirror]]
location = "mirror-2.example.net/foo"
pull-from-mirror = "digest-only"
insecure = true

[[registry]]
location = "blocked.example.com"
blocked = true

[[registry]]
prefix = "*.wild.example.com"
insecure = true
"""

DIGEST = "sha256:" + "a" * 64


def names(refs):
    return [str(r) for r in refs]


def test_parse_v2():
    conf = registries.loads(CONF)
    assert conf.unqualified_search_registries == ["registry.example.com", "docker.io"]
    assert conf.short_name_mode == "permissive"
    assert conf.aliases == {"fedora": "registry.fedoraproject.org/fedora"}
    e = conf.find("example.com/foo/bar")
    assert (e.prefix, e.location, e.insecure, e.blocked) == ("example.com/foo",
                                                            "internal.example.net/mirror/foo", True, False)
    assert [(m.location, m.pull_from_mirror, m.insecure) for m in e.mirrors] == [
        ("mirror-1.example.net/foo", "all", False), ("mirror-2.example.net/foo", "digest-only", True)]
    assert conf.find("example.com/foobar") is None        # prefixes match at a path boundary
    assert conf.find("x.wild.example.com/a").insecure
    assert conf.is_insecure("x.wild.example.com") and not conf.is_insecure("example.org")


def test_resolve_short_names():
    conf = registries.loads(CONF)
    assert names(conf.resolve("busybox")) == ["registry.example.com/busybox:latest",
                                              "docker.io/library/busybox:latest"]
    assert names(conf.resolve("fedora:39")) == ["registry.fedoraproject.org/fedora:39"]
    assert names(conf.resolve("quay.io/a/b:1")) == ["quay.io/a/b:1"]
    assert names(conf.resolve("localhost/a")) == ["localhost/a:latest"]
    assert names(conf.resolve(f"user/app@{DIGEST}")) == [f"registry.example.com/user/app@{DIGEST}",
                                                        f"docker.io/user/app@{DIGEST}"]
    # nothing configured: docker's habit, docker.io
    assert names(registries.RegistriesConf().resolve("busybox")) == ["docker.io/library/busybox:latest"]
    with pytest.raises(ReferenceError_, match="invalid reference 'Busy'"):
        registries.RegistriesConf().resolve("Busy")


def test_enforcing_refuses_an_ambiguous_short_name():
    conf = registries.loads(CONF.replace('"permissive"', '"enforcing"'))
    with pytest.raises(ReferenceError_, match="short name 'busybox' is ambiguous: it could be at "
                                              "registry.example.com, docker.io"):
        conf.resolve("busybox")
    assert names(conf.resolve("fedora")) == ["registry.fedoraproject.org/fedora:latest"]


def test_sources_mirrors_then_location():
    conf = registries.loads(CONF)
    by_tag = conf.sources(reference.parse("example.com/foo/bar:1"))
    assert [(s.registry, s.repository, s.insecure, s.mirror) for s in by_tag] == [
        ("mirror-1.example.net", "foo/bar", False, True),
        ("internal.example.net", "mirror/foo/bar", True, False)]
    by_digest = conf.sources(reference.parse(f"example.com/foo/bar@{DIGEST}"))
    assert [s.registry for s in by_digest] == ["mirror-1.example.net", "mirror-2.example.net",
                                               "internal.example.net"]
    plain = conf.sources(reference.parse("quay.io/a/b"))
    assert [(s.registry, s.repository, s.insecure) for s in plain] == [("quay.io", "a/b", False)]
    with pytest.raises(RegistryError, match="^registry blocked by registries.conf: "
                                                  "blocked.example.com/x$"):
        conf.sources(reference.parse("blocked.example.com/x"))


def test_keel_file_first_then_system_file_and_dropins(tmp_path):
    keel_conf = tmp_path / "keel" / "registries.conf"
    system = tmp_path / "containers" / "registries.conf"
    system.parent.mkdir()
    system.write_text('unqualified-search-registries = ["system.example.com"]\n')
    (tmp_path / "containers" / "registries.conf.d").mkdir()
    (tmp_path / "containers" / "registries.conf.d" / "10-aliases.conf").write_text(
        '[aliases]\n"app" = "quay.io/team/app"\n')
    (tmp_path / "containers" / "registries.conf.d" / "20-more.conf").write_text(
        'short-name-mode = "disabled"\n')
    paths = [str(keel_conf), str(system)]
    conf = registries.load(paths)
    assert conf.unqualified_search_registries == ["system.example.com"]
    assert conf.aliases == {"app": "quay.io/team/app"}
    assert conf.short_name_mode == "disabled"
    keel_conf.parent.mkdir()
    keel_conf.write_text('unqualified-search-registries = ["keel.example.com"]\n')
    conf = registries.load(paths)
    assert conf.unqualified_search_registries == ["keel.example.com"]
    assert conf.aliases == {} and conf.paths == [str(keel_conf)]
    assert registries.load([str(tmp_path / "none")]).registries == []


def test_v1_format():
    conf = registries.loads("""
[registries.search]
registries = ["docker.io", "quay.io"]
[registries.insecure]
registries = ["localhost:5000"]
[registries.block]
registries = ["evil.example.com"]
""")
    assert conf.unqualified_search_registries == ["docker.io", "quay.io"]
    assert conf.is_insecure("localhost:5000")
    assert conf.is_blocked(reference.parse("evil.example.com/x"))


@pytest.mark.parametrize("text,message", [
    ("unqualified-search-registries = [", "invalid toml"),
    ("unqualified-search-registries = 3", "unqualified-search-registries: not a list of strings"),
    ('short-name-mode = "loose"', "short-name-mode: 'loose' is not one of enforcing, permissive, disabled"),
    ('[[registry]]\nlocation = "a.io"\ninsecure = "yes"', "registry[0]: insecure: not a boolean"),
    ('[[registry]]\ninsecure = true', "registry[0]: needs a prefix or a location"),
    ('[aliases]\n"x" = "notqualified"', "aliases.x: 'notqualified' is not fully qualified"),
    ('[[registry]]\nlocation = "a.io"\n[[registry.mirror]]\nlocation = "b.io"\npull-from-mirror = "x"',
     "registry[0].mirror[0]: pull-from-mirror: 'x' is not one of all, digest-only, tag-only"),
])
def test_bad_conf_names_file_and_field(tmp_path, text, message):
    p = tmp_path / "registries.conf"
    p.write_text(text)
    with pytest.raises(RegistriesConfError) as e:
        registries.load([str(p)])
    assert str(e.value).startswith(f"{p}: ")
    assert message in str(e.value)


# -- against real registries --------------------------------------------------------------

@pytest.fixture(scope="module")
def small_image(registry):
    return make_image([{"mirror.txt": b"served by the mirror\n"}])


def test_pull_through_a_mirror_records_the_original_name(registry, lying_registry, store, small_image,
                                                         tmp_path):
    # the image is only at the mirror (the real registry); the location (a lying registry)
    # has nothing
    with RegistryClient(registry.host, insecure=True, credentials=False) as c:
        c.push(store, store_image(store, small_image), reference.parse(f"{registry.host}/mirror/app:1"))
    store.remove(small_image["config_digest"], force=True)
    conf = registries.loads(f"""
[[registry]]
prefix = "{lying_registry.host}/app"
location = "{lying_registry.host}/app"
insecure = true
[[registry.mirror]]
location = "{registry.host}/mirror/app"
insecure = true
""")
    img = pull_image(store, f"{lying_registry.host}/app:1", conf=conf, credentials=False)
    assert img.names == [f"{lying_registry.host}/app:1"]
    assert img.manifest_digest == small_image["manifest_digest"]
    assert not [r for r in lying_registry.requests if "/manifests/" in r[1]]


def test_mirror_failing_falls_back_to_the_location(registry, lying_registry, store, small_image):
    lying_registry.add_image("app", "1", small_image)
    conf = registries.loads(f"""
[[registry]]
location = "{lying_registry.host}"
insecure = true
[[registry.mirror]]
location = "{registry.host}/nothing-here"
insecure = true
""")
    img = pull_image(store, f"{lying_registry.host}/app:1", conf=conf, credentials=False)
    assert img.manifest_digest == small_image["manifest_digest"]


def test_http_only_for_insecure_registries(registry, store, small_image):
    """A plain-http registry is refused unless registries.conf marks it insecure or
    tls_verify=False."""
    with RegistryClient(registry.host, insecure=True, credentials=False) as c:
        c.push(store, store_image(store, small_image), reference.parse(f"{registry.host}/plain/app:1"))
    name = f"{registry.host}/plain/app:1"
    empty = registries.RegistriesConf()
    with pytest.raises(RegistryError, match=f"^{name}: "):
        pull_image(store, name, conf=empty, credentials=False, retries=0)
    assert pull_image(store, name, conf=empty, credentials=False, tls_verify=False).names == [name]
    conf = registries.loads(f'[[registry]]\nlocation = "{registry.host}"\ninsecure = true\n')
    assert pull_image(store, name, conf=conf, credentials=False).names == [name]


def test_tls_with_a_certs_d_ca(registry_tls, store, small_image, oci_busybox):
    name = skopeo_push(oci_busybox, f"{registry_tls.host}/tls/busybox:1")
    empty = registries.RegistriesConf()
    img = pull_image(store, name, conf=empty, credentials=False, certs_dirs=[registry_tls.certs_dir])
    assert store.read_blob(img.manifest_digest) == skopeo_raw(name)
    store.verify_image(img)
    # without the CA the certificate is not trusted
    with pytest.raises(RegistryError, match="certificate verify failed"):
        pull_image(store, name, conf=empty, credentials=False, certs_dirs=[], retries=0)
    # keel pushes over TLS too
    dest = f"{registry_tls.host}/tls/small:1"
    push_image(store, store_image(store, small_image), dest, conf=empty, credentials=False,
               certs_dirs=[registry_tls.certs_dir])
    assert skopeo_raw(dest) == small_image["manifest"]


def test_blocked_registry_is_refused(store):
    conf = registries.loads('[[registry]]\nlocation = "blocked.example.com"\nblocked = true\n')
    with pytest.raises(RegistryError, match="^registry blocked by registries.conf: blocked.example.com/a"):
        pull_image(store, "blocked.example.com/a:1", conf=conf)
    with pytest.raises(RegistryError, match="^registry blocked by registries.conf: blocked.example.com/a"):
        push_image(store, "x", "blocked.example.com/a:1", conf=conf)


def test_short_name_tries_each_search_registry(registry, lying_registry, store, small_image):
    lying_registry.add_image("team/app", "2", small_image)
    conf = registries.loads(f"""
unqualified-search-registries = ["{registry.host}", "{lying_registry.host}"]
[[registry]]
location = "{registry.host}"
insecure = true
[[registry]]
location = "{lying_registry.host}"
insecure = true
""")
    img = pull_image(store, "team/app:2", conf=conf, credentials=False)
    assert img.names == [f"{lying_registry.host}/team/app:2"]
    with pytest.raises(RegistryError) as e:
        pull_image(store, "team/none:2", conf=conf, credentials=False)
    assert str(e.value) == (f"pulling team/none:2: manifest unknown: {registry.host}/team/none:2; "
                            f"manifest unknown: {lying_registry.host}/team/none:2")


def test_digest_mismatch_is_not_hidden_by_a_fallback(lying_registry, store, small_image):
    lying_registry.add_image("app", "1", small_image)
    lying_registry.wrong_digest_header = True
    conf = registries.loads(f'[[registry]]\nlocation = "{lying_registry.host}"\ninsecure = true\n')
    with pytest.raises(DigestMismatch):
        pull_image(store, f"{lying_registry.host}/app:1", conf=conf, credentials=False)
