"""Credential helpers (docker's credential-helper protocol), identity tokens (OAuth2
refresh-token grant at the token realm) and registry tokens cached per scope until they
expire, against the real docker-registry with basic and token auth. The helper is a small
script each test writes: `docker-credential-keeltest` on a PATH of the test's own."""

import base64
import json
import os
import sys
import time

import pytest

from keel.image import auth, reference
from keel.image.auth import CredentialHelperError
from keel.image.errors import RegistryError
from keel.image.registry import RegistryClient, pull_image
from keel.image.registries import RegistriesConf

from registry_fixtures import (RecordingTransport, make_image, registry_basic, registry_token,  # noqa: F401
                               skopeo_push, store_image)

HELPER = r'''#!{python}
"""docker-credential-keeltest: a credential helper for keel's tests. Secrets live in
$KEEL_HELPER_DIR/store.json; every call is logged to $KEEL_HELPER_DIR/calls.json;
$KEEL_HELPER_MODE changes the behaviour: ok, garbage, fail, notjson-object, numbers, hang."""
import json, os, sys
d = os.environ["KEEL_HELPER_DIR"]
mode = os.environ.get("KEEL_HELPER_MODE", "ok")
action = sys.argv[1]
data = sys.stdin.read()
store_path = os.path.join(d, "store.json")
calls_path = os.path.join(d, "calls.json")
calls = json.load(open(calls_path)) if os.path.exists(calls_path) else []
calls.append([action, data])
json.dump(calls, open(calls_path, "w"))
store = json.load(open(store_path)) if os.path.exists(store_path) else {{}}
if mode == "garbage":
    print("<html>login page</html>"); sys.exit(0)
if mode == "fail":
    print("keychain is locked"); sys.exit(3)
if mode == "notjson-object":
    print("[1, 2]"); sys.exit(0)
if mode == "hang":
    import time; time.sleep(30)
if mode == "numbers":
    print(json.dumps({{"ServerURL": data, "Username": 1, "Secret": 2}})); sys.exit(0)
if action == "get":
    if data not in store:
        print("credentials not found in native keychain"); sys.exit(1)
    print(json.dumps({{"ServerURL": data, **store[data]}}))
elif action == "store":
    doc = json.loads(data)
    store[doc["ServerURL"]] = {{"Username": doc["Username"], "Secret": doc["Secret"]}}
    json.dump(store, open(store_path, "w"))
elif action == "erase":
    if data not in store:
        print("credentials not found in native keychain"); sys.exit(1)
    del store[data]
    json.dump(store, open(store_path, "w"))
else:
    print("unknown action"); sys.exit(1)
'''


class Helper:
    def __init__(self, directory):
        self.dir = str(directory)

    def put(self, server, user, secret):
        path = os.path.join(self.dir, "store.json")
        store = json.load(open(path)) if os.path.exists(path) else {}
        store[server] = {"Username": user, "Secret": secret}
        json.dump(store, open(path, "w"))

    def stored(self):
        path = os.path.join(self.dir, "store.json")
        return json.load(open(path)) if os.path.exists(path) else {}

    def calls(self):
        path = os.path.join(self.dir, "calls.json")
        return json.load(open(path)) if os.path.exists(path) else []


@pytest.fixture
def helper(tmp_path, monkeypatch):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    exe = bindir / "docker-credential-keeltest"
    exe.write_text(HELPER.format(python=sys.executable))
    exe.chmod(0o755)
    state = tmp_path / "helper"
    state.mkdir()
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    monkeypatch.setenv("KEEL_HELPER_DIR", str(state))
    monkeypatch.delenv("KEEL_HELPER_MODE", raising=False)
    return Helper(state)


def write_authfile(path, doc):
    with open(path, "w") as f:
        json.dump(doc, f)
    return str(path)


def client(host, **kw):
    kw.setdefault("backoff", 0.01)
    return RegistryClient(host, insecure=True, **kw)


@pytest.fixture(scope="module")
def basic_image(registry_basic, oci_busybox):
    return skopeo_push(oci_busybox, f"{registry_basic.host}/keel/helper:1", registry_basic.creds)


@pytest.fixture(scope="module")
def token_image(registry_token, tmp_path_factory):
    from keel.image.store import Store

    store = Store(str(tmp_path_factory.mktemp("cred-src")))
    image = make_image([{"id": b"identity token layer\n"}])
    img = store_image(store, image)
    name = f"{registry_token.host}/keel/idtok:1"
    with client(registry_token.host, credentials=registry_token.credentials) as c:
        c.push(store, img, reference.parse(name))
    store.close()
    return name, image


# -- credential helpers --------------------------------------------------------------------

def test_cred_helpers_entry_is_asked_and_its_credentials_pull(registry_basic, basic_image, helper,
                                                               tmp_path, store):
    helper.put(registry_basic.host, "keel", "s3cret")
    authfile = write_authfile(tmp_path / "config.json",
                              {"auths": {}, "credHelpers": {registry_basic.host: "keeltest"}})
    assert auth.get_credentials(registry_basic.host, authfile) == ("keel", "s3cret")
    assert helper.calls()[-1] == ["get", registry_basic.host]
    img = pull_image(store, basic_image, tls_verify=False, authfile=authfile, conf=RegistriesConf(),
                     certs_dirs=())
    store.verify_image(img)


def test_helper_wins_over_an_inline_entry_and_creds_store_serves_the_rest(helper, tmp_path):
    helper.put("a.example:5000", "from-helper", "1")
    helper.put("b.example", "from-store", "2")
    helper.put(auth.DOCKER_HUB_SERVER_URL, "hub-user", "3")
    inline = base64.b64encode(b"inline:0").decode()
    authfile = write_authfile(tmp_path / "config.json", {
        "auths": {"a.example:5000": {"auth": inline}, "c.example": {"auth": inline}},
        "credHelpers": {"a.example:5000": "keeltest"}, "credsStore": "keeltest"})
    assert auth.get_credentials("a.example:5000", authfile) == ("from-helper", "1")
    assert auth.get_credentials("b.example", authfile) == ("from-store", "2")
    # Docker Hub is asked for under docker's own key
    assert auth.get_credentials("docker.io", authfile) == ("hub-user", "3")
    assert helper.calls()[-1] == ["get", "https://index.docker.io/v1/"]
    # the store has nothing for c.example: the inline entry answers
    assert auth.get_credentials("c.example", authfile) == ("inline", "0")
    assert auth.get_credentials("d.example", authfile) is None


def test_missing_helper_is_a_clear_error(tmp_path, monkeypatch, store):
    monkeypatch.setenv("PATH", str(tmp_path))         # nothing there
    authfile = write_authfile(tmp_path / "config.json", {"credHelpers": {"x.example": "nope"}})
    with pytest.raises(CredentialHelperError) as e:
        auth.get_credentials("x.example", authfile)
    assert str(e.value) == "credential helper docker-credential-nope: not found in $PATH"
    with pytest.raises(CredentialHelperError, match="not found in"):
        pull_image(store, "x.example/a/b:1", authfile=authfile, conf=RegistriesConf(), certs_dirs=())
    assert store.images() == []


@pytest.mark.parametrize("mode,message", [
    ("garbage", "credential helper docker-credential-keeltest get x.example: invalid answer "
                "(not json): '<html>login page</html>'"),
    ("fail", "credential helper docker-credential-keeltest get: exit status 3: keychain is locked"),
    ("notjson-object", "credential helper docker-credential-keeltest get: invalid answer: "
                       "not a json object"),
    ("numbers", "credential helper docker-credential-keeltest get: invalid answer: Username "
                "and Secret must be strings"),
])
def test_bad_helper_output(helper, tmp_path, monkeypatch, mode, message):
    monkeypatch.setenv("KEEL_HELPER_MODE", mode)
    authfile = write_authfile(tmp_path / "config.json", {"credHelpers": {"x.example": "keeltest"}})
    with pytest.raises(CredentialHelperError) as e:
        auth.get_credentials("x.example", authfile)
    assert str(e.value) == message
    assert "\n" not in str(e.value)


def test_bad_helper_names_in_the_file(tmp_path):
    authfile = write_authfile(tmp_path / "a.json", {"credHelpers": {"x.example": "../../bin/sh"}})
    with pytest.raises(auth.AuthFileError, match=r"credHelpers.x.example: invalid helper name '../../bin/sh'"):
        auth.get_credentials("x.example", authfile)
    authfile = write_authfile(tmp_path / "b.json", {"credsStore": 7})
    with pytest.raises(auth.AuthFileError, match="credsStore: invalid helper name 7"):
        auth.get_credentials("x.example", authfile)
    authfile = write_authfile(tmp_path / "c.json", {"credHelpers": []})
    with pytest.raises(auth.AuthFileError, match='"credHelpers" is not an object'):
        auth.get_credentials("x.example", authfile)


def test_login_and_logout_go_through_the_helper(registry_basic, helper, tmp_path):
    stale = base64.b64encode(b"old:old").decode()
    authfile = write_authfile(tmp_path / "config.json",
                              {"auths": {registry_basic.host: {"auth": stale}},
                               "credHelpers": {registry_basic.host: "keeltest"}})
    where = auth.login(registry_basic.host, "keel", "s3cret", authfile, insecure=True)
    assert where == "docker-credential-keeltest"
    assert helper.stored() == {registry_basic.host: {"Username": "keel", "Secret": "s3cret"}}
    doc = json.load(open(authfile))
    assert doc["auths"] == {} and doc["credHelpers"] == {registry_basic.host: "keeltest"}
    assert auth.get_credentials(registry_basic.host, authfile) == ("keel", "s3cret")
    assert auth.logout(registry_basic.host, authfile) == ["docker-credential-keeltest"]
    assert helper.stored() == {}
    assert [c[0] for c in helper.calls()] == ["store", "get", "erase"]
    with pytest.raises(RegistryError, match=f"^not logged in to {registry_basic.host}"):
        auth.logout(registry_basic.host, authfile)


def test_login_refused_stores_nothing_in_the_helper(registry_basic, helper, tmp_path):
    authfile = write_authfile(tmp_path / "config.json", {"credsStore": "keeltest"})
    with pytest.raises(RegistryError, match="credentials rejected"):
        auth.login(registry_basic.host, "keel", "wrong", authfile, insecure=True)
    assert helper.stored() == {} and helper.calls() == []


# -- identity tokens -------------------------------------------------------------------------

def test_identity_token_in_the_auth_file_is_traded_at_the_realm(registry_token, token_image, tmp_path,
                                                                store):
    name, image = token_image
    ts = registry_token.token_server
    ts.refresh_tokens["refresh-abc"] = "keel"
    authfile = write_authfile(tmp_path / "auth.json",
                              {"auths": {registry_token.host: {"auth": "", "identitytoken": "refresh-abc"}}})
    assert auth.get_credentials(registry_token.host, authfile) == (auth.IDENTITY_TOKEN_USER, "refresh-abc")
    n_get, n_post = len(ts.requests), len(ts.grants)
    img = pull_image(store, name, tls_verify=False, authfile=authfile, conf=RegistriesConf(), certs_dirs=())
    assert img.manifest_digest == image["manifest_digest"]
    assert len(ts.requests) == n_get            # no GET with basic credentials
    (form,) = ts.grants[n_post:]
    assert form["grant_type"] == "refresh_token" and form["refresh_token"] == "refresh-abc"
    assert form["client_id"] == "keel" and form["service"] == ts.service
    assert "repository:keel/idtok:pull" in form["scope"].split()


def test_identity_token_from_a_helper(registry_token, token_image, helper, tmp_path, store):
    name, image = token_image
    registry_token.token_server.refresh_tokens["refresh-from-helper"] = "keel"
    helper.put(registry_token.host, auth.IDENTITY_TOKEN_USER, "refresh-from-helper")
    authfile = write_authfile(tmp_path / "config.json", {"credsStore": "keeltest"})
    img = pull_image(store, name, tls_verify=False, authfile=authfile, conf=RegistriesConf(), certs_dirs=())
    assert img.manifest_digest == image["manifest_digest"]
    assert registry_token.token_server.grants[-1]["refresh_token"] == "refresh-from-helper"


def test_identity_token_refused(registry_token, token_image, store):
    name, _ = token_image
    with client(registry_token.host, credentials=(auth.IDENTITY_TOKEN_USER, "revoked")) as c, \
            pytest.raises(RegistryError) as e:
        c.pull(store, reference.parse(name))
    assert str(e.value) == (f"unauthorized: {name}: token server "
                            f"{registry_token.token_server.realm} refused the identity token")
    assert e.value.status == 401
    assert store.images() == []


def test_identity_token_is_never_sent_as_basic_credentials(registry_basic, basic_image, store):
    t = RecordingTransport()
    with client(registry_basic.host, credentials=(auth.IDENTITY_TOKEN_USER, "secret-refresh"),
                on_request=t) as c, pytest.raises(RegistryError, match="authentication required"):
        c.get_manifest("keel/helper", "1")
    assert all("authorization" not in h for (_, _, _, h) in t.requests)


# -- registry tokens cached per scope ----------------------------------------------------------

def test_tokens_are_cached_per_scope_until_they_expire(registry_token, token_image, monkeypatch):
    name, _ = token_image
    ts = registry_token.token_server
    monkeypatch.setattr(ts, "expires_in", 1)
    t = RecordingTransport()
    with client(registry_token.host, credentials=registry_token.credentials, on_request=t) as c:
        n = len(ts.requests)
        c.get_manifest("keel/idtok", "1")
        c.get_manifest("keel/idtok", "1")                 # cached for this scope
        assert len(ts.requests) == n + 1
        with pytest.raises(RegistryError, match="manifest unknown"):
            c.get_manifest("keel/other-repo", "1")       # another scope: its own token
        assert len(ts.requests) == n + 2
        assert ts.requests[-1][1] == ["repository:keel/other-repo:pull"]
        # the registry's challenge is known: the new scope's token came before the request
        assert len([r for r in t.requests if "/other-repo/manifests/" in r[1]]) == 1
        time.sleep(1.2)
        before = len(t.requests)
        c.get_manifest("keel/idtok", "1")                 # expired: fetched before the request
        assert len(ts.requests) == n + 3
    sent = [r for r in t.requests[before:] if "/manifests/" in r[1]]
    assert len(sent) == 1 and sent[0][3]["authorization"].startswith("Bearer ")


def test_a_failing_helper_store_leaves_the_file_alone(registry_basic, helper, tmp_path, monkeypatch):
    monkeypatch.setenv("KEEL_HELPER_MODE", "fail")
    stale = base64.b64encode(b"old:old").decode()
    doc = {"auths": {registry_basic.host: {"auth": stale}}, "credsStore": "keeltest"}
    authfile = write_authfile(tmp_path / "config.json", doc)
    with pytest.raises(CredentialHelperError, match="docker-credential-keeltest store: exit status 3: "
                                                    "keychain is locked"):
        auth.set_credentials(registry_basic.host, "keel", "s3cret", authfile)
    assert json.load(open(authfile)) == doc


def test_cli_pull_with_a_broken_helper_is_one_line(helper, tmp_path, monkeypatch):
    import subprocess

    monkeypatch.setenv("KEEL_HELPER_MODE", "garbage")
    authfile = write_authfile(tmp_path / "config.json", {"credHelpers": {"127.0.0.1:1": "keeltest"}})
    r = subprocess.run([sys.executable, "-m", "keel.cli.main", "--root", str(tmp_path / "root"),
                        "--runroot", str(tmp_path / "run"), "pull", "--authfile", authfile,
                        "--tls-verify=false", "127.0.0.1:1/a/b:1"],
                       capture_output=True, text=True, timeout=60, env=dict(os.environ))
    assert r.returncode == 125
    assert r.stderr.strip() == ("Error: credential helper docker-credential-keeltest get 127.0.0.1:1: "
                                "invalid answer (not json): '<html>login page</html>'")


def test_a_helper_that_never_answers_is_given_up_on(helper, tmp_path, monkeypatch):
    monkeypatch.setenv("KEEL_HELPER_MODE", "hang")
    monkeypatch.setattr(auth, "HELPER_TIMEOUT", 1.0)
    authfile = write_authfile(tmp_path / "config.json", {"credHelpers": {"x.example": "keeltest"}})
    with pytest.raises(CredentialHelperError) as e:
        auth.get_credentials("x.example", authfile)
    assert str(e.value) == "credential helper docker-credential-keeltest get: no answer within 1 s"
