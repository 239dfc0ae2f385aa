"""keel.image.auth and the client's auth: anonymous, basic (htpasswd) and bearer tokens against
the real docker-registry, and the containers-auth.json file that podman/skopeo share."""

import base64
import json
import os
import stat

import pytest

from keel.image import auth, reference
from keel.image.errors import RegistryError
from keel.image.registry import RegistryClient

from registry_fixtures import (make_image, registry_basic, registry_token, skopeo,  # noqa: F401
                               skopeo_push, store_image)


def client(host, **kw):
    kw.setdefault("backoff", 0.01)
    kw.setdefault("credentials", False)
    return RegistryClient(host, insecure=True, **kw)


@pytest.fixture(scope="module")
def basic_image(registry_basic, oci_busybox):
    return skopeo_push(oci_busybox, f"{registry_basic.host}/keel/private:1", registry_basic.creds)


@pytest.fixture(scope="module")
def token_image(registry_token, tmp_path_factory):
    """A small image pushed by keel itself through token auth."""
    from keel.image.store import Store

    store = Store(str(tmp_path_factory.mktemp("token-src")))
    image = make_image([{"a": b"token 1\n"}, {"b": b"token 2\n"}, {"c": b"token 3\n"}])
    img = store_image(store, image)
    name = f"{registry_token.host}/keel/tok:1"
    with client(registry_token.host, credentials=registry_token.credentials) as c:
        assert c.push(store, img, reference.parse(name)) == image["manifest_digest"]
    store.close()
    return name, image


# -- basic -------------------------------------------------------------------------------

def test_basic_auth_pull(registry_basic, basic_image, store):
    with client(registry_basic.host, credentials=registry_basic.credentials) as c:
        img = c.pull(store, reference.parse(basic_image))
    store.verify_image(img)


def test_basic_auth_anonymous_is_refused(registry_basic, basic_image, store):
    with client(registry_basic.host) as c, pytest.raises(RegistryError) as e:
        c.pull(store, reference.parse(basic_image))
    assert str(e.value).startswith(f"unauthorized: {basic_image}: authentication required")
    assert e.value.status == 401
    assert store.images() == []


def test_basic_auth_wrong_password(registry_basic, basic_image, store):
    with client(registry_basic.host, credentials=("keel", "wrong")) as c, \
            pytest.raises(RegistryError) as e:
        c.pull(store, reference.parse(basic_image))
    assert str(e.value).startswith(f"unauthorized: {basic_image}: credentials rejected")


def test_basic_auth_push_and_skopeo_reads_it(registry_basic, store):
    image = make_image([{"basic": b"pushed through basic auth\n"}])
    img = store_image(store, image)
    dest = f"{registry_basic.host}/keel/basic-push:1"
    with client(registry_basic.host, credentials=registry_basic.credentials) as c:
        c.push(store, img, reference.parse(dest))
    raw = skopeo("inspect", "--raw", "--tls-verify=false", "--creds", registry_basic.creds,
                 f"docker://{dest}").encode()
    assert raw == image["manifest"]


# -- bearer tokens -------------------------------------------------------------------------

def test_token_auth_pull_fetches_one_token_per_scope(registry_token, token_image, store):
    name, image = token_image
    ts = registry_token.token_server
    n = len(ts.requests)
    with client(registry_token.host, credentials=registry_token.credentials) as c:
        img = c.pull(store, reference.parse(name), parallel=3)
        assert img.manifest_digest == image["manifest_digest"]
        c.pull(store, reference.parse(name))           # cached: no new token
    new = ts.requests[n:]
    assert len(new) == 1
    user, scopes, ok = new[0]
    assert user == "keel" and ok and "repository:keel/tok:pull" in scopes


def test_token_auth_anonymous_gets_no_access(registry_token, token_image, store):
    name, _ = token_image
    with client(registry_token.host) as c, pytest.raises(RegistryError) as e:
        c.pull(store, reference.parse(name))
    assert str(e.value).startswith(f"unauthorized: {name}: authentication required")
    assert registry_token.token_server.requests[-1][0] is None


def test_token_auth_wrong_password(registry_token, token_image, store):
    name, _ = token_image
    with client(registry_token.host, credentials=("keel", "nope")) as c, \
            pytest.raises(RegistryError) as e:
        c.pull(store, reference.parse(name))
    assert str(e.value) == (f"unauthorized: {name}: token server "
                            f"{registry_token.token_server.realm} refused the credentials")
    assert e.value.status == 401


def test_token_expired_is_fetched_again(registry_token, token_image, store):
    name, _ = token_image
    with client(registry_token.host, credentials=registry_token.credentials) as c:
        c.get_manifest("keel/tok", "1")
        # as if the registry revoked it: a 401 with the cached token gets a new one
        c._tokens = {k: ("bogus.token.value", exp) for k, (_, exp) in c._tokens.items()}
        data, *_ = c.get_manifest("keel/tok", "1")
    assert data == token_image[1]["manifest"]


def test_cross_repository_mount_with_a_token(registry_token, token_image, store):
    """The mount needs pull on the source repository too: one token for both scopes."""
    from registry_fixtures import RecordingTransport

    name, image = token_image
    img = store_image(store, image, names=[name])
    ts = registry_token.token_server
    n = len(ts.requests)
    t = RecordingTransport()
    dest = reference.parse(f"{registry_token.host}/keel/tok-mounted:1")
    with client(registry_token.host, credentials=registry_token.credentials, on_request=t) as c:
        c.push(store, img, dest)
    mounts = [r for r in t.methods("POST", "/blobs/uploads/") if r[2].get("from") == "keel/tok"]
    assert {r[2]["mount"] for r in mounts} == set(image["blobs"])     # config + 3 layers
    assert t.methods("PUT", "/blobs/uploads/") == []
    scopes = {s for (_, ss, _) in ts.requests[n:] for s in ss}
    assert {"repository:keel/tok-mounted:pull,push", "repository:keel/tok:pull"} <= scopes
    raw = skopeo("inspect", "--raw", "--tls-verify=false", "--creds", registry_token.creds,
                 f"docker://{dest}").encode()
    assert raw == image["manifest"]


def test_skopeo_pulls_what_keel_pushed_with_a_token(registry_token, token_image, tmp_path):
    name, image = token_image
    raw = skopeo("inspect", "--raw", "--tls-verify=false", "--creds", registry_token.creds,
                 f"docker://{name}").encode()
    assert raw == image["manifest"]


# -- login, logout, the auth file -----------------------------------------------------------

def test_login_writes_a_0600_auth_file_podman_and_skopeo_read(registry_basic, basic_image, tmp_path):
    authfile = str(tmp_path / "dir" / "auth.json")
    path = auth.login(registry_basic.host, "keel", "s3cret", authfile, insecure=True)
    assert path == authfile
    assert stat.S_IMODE(os.stat(authfile).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(authfile)).st_mode) == 0o700
    data = json.load(open(authfile))
    assert data == {"auths": {registry_basic.host: {"auth": base64.b64encode(b"keel:s3cret").decode()}}}
    # skopeo uses the file keel wrote
    skopeo("inspect", "--raw", "--tls-verify=false", "--authfile", authfile, f"docker://{basic_image}")
    # and keel's client finds the credentials in it
    assert auth.get_credentials(registry_basic.host, authfile) == ("keel", "s3cret")
    with RegistryClient(registry_basic.host, insecure=True, authfile=authfile) as c:
        c.get_manifest("keel/private", "1")


def test_login_refused_writes_nothing(registry_basic, tmp_path):
    authfile = str(tmp_path / "auth.json")
    with pytest.raises(RegistryError) as e:
        auth.login(registry_basic.host, "keel", "wrong", authfile, insecure=True)
    assert str(e.value).startswith(f"unauthorized: {registry_basic.host}: credentials rejected")
    assert not os.path.exists(authfile)


def test_login_with_a_token_registry(registry_token, tmp_path):
    authfile = str(tmp_path / "auth.json")
    auth.login(registry_token.host, "keel", "s3cret", authfile, insecure=True)
    assert auth.get_credentials(registry_token.host, authfile) == ("keel", "s3cret")
    with pytest.raises(RegistryError, match="refused the credentials"):
        auth.login(registry_token.host, "keel", "bad", str(tmp_path / "other.json"), insecure=True)


def test_login_keeps_other_entries_and_logout(tmp_path):
    authfile = str(tmp_path / "auth.json")
    with open(authfile, "w") as f:
        json.dump({"auths": {"quay.io": {"auth": base64.b64encode(b"q:p").decode()},
                             "https://index.docker.io/v1/": {"auth": base64.b64encode(b"d:h").decode()}},
                   "credHelpers": {"gcr.io": "keel-test-absent"}}, f)
    auth.set_credentials("localhost:5000", "u", "p:with:colons", authfile)
    assert auth.get_credentials("localhost:5000", authfile) == ("u", "p:with:colons")
    assert auth.get_credentials("docker.io", authfile) == ("d", "h")
    assert auth.get_credentials("quay.io", authfile) == ("q", "p")
    assert auth.get_credentials("example.com", authfile) is None
    assert json.load(open(authfile))["credHelpers"] == {"gcr.io": "keel-test-absent"}
    assert auth.logout("docker.io", authfile) == ["https://index.docker.io/v1/"]
    assert auth.get_credentials("docker.io", authfile) is None
    with pytest.raises(RegistryError, match="^not logged in to docker.io"):
        auth.logout("docker.io", authfile)
    assert sorted(auth.logout(authfile=authfile, all=True)) == ["localhost:5000", "quay.io"]
    assert json.load(open(authfile))["auths"] == {}


def test_credentials_for_a_namespace_win(tmp_path):
    authfile = str(tmp_path / "auth.json")
    with open(authfile, "w") as f:
        json.dump({"auths": {"quay.io": {"auth": base64.b64encode(b"all:1").decode()},
                             "quay.io/team": {"auth": base64.b64encode(b"team:2").decode()}}}, f)
    assert auth.get_credentials("quay.io", authfile, repository="team/app") == ("team", "2")
    assert auth.get_credentials("quay.io", authfile, repository="other/app") == ("all", "1")


def test_bad_auth_files(tmp_path):
    p = tmp_path / "auth.json"
    p.write_text("{not json")
    with pytest.raises(auth.AuthFileError, match=f"^auth file {p}: not valid json$"):
        auth.get_credentials("x.io", str(p))
    p.write_text('{"auths": {"x.io": {"auth": "!!!"}}}')
    with pytest.raises(auth.AuthFileError, match=r"auths.x.io.auth: not base64 of user:password"):
        auth.get_credentials("x.io", str(p))
    assert auth.get_credentials("x.io", str(tmp_path / "missing.json")) is None


def test_default_authfile(monkeypatch):
    monkeypatch.delenv("REGISTRY_AUTH_FILE", raising=False)
    monkeypatch.setattr(os, "getuid", lambda: 0)
    assert auth.default_authfile() == "/run/containers/0/auth.json"
    monkeypatch.setattr(os, "getuid", lambda: 1000)
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/1000")
    assert auth.default_authfile() == "/run/user/1000/containers/auth.json"
    monkeypatch.setenv("REGISTRY_AUTH_FILE", "/tmp/x.json")
    assert auth.default_authfile() == "/tmp/x.json"


def test_normalize_registry():
    assert auth.normalize_registry("https://index.docker.io/v1/") == "docker.io"
    assert auth.normalize_registry("registry-1.docker.io") == "docker.io"
    assert auth.normalize_registry("http://localhost:5000") == "localhost:5000"
    assert auth.normalize_registry("quay.io/org") == "quay.io/org"
