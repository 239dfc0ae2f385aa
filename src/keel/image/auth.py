"""Registry credentials: the containers-auth.json(5) / docker config.json file.

The file is {"auths": {"<registry>[/<namespace>...]": {"auth": base64("user:password")}}},
written atomically with mode 0600 in a 0700 directory, so podman, skopeo, buildah
and docker read what `keel login` writes and the other way round. Keys keel does not
use ("HttpHeaders" ...) are kept as they are.

Credential helpers (docker's credential-helper protocol): `"credHelpers": {"<registry>":
"<name>"}` names a helper per registry, `"credsStore": "<name>"` one for all the others;
keel runs `docker-credential-<name> get|store|erase` with the server address on stdin (JSON
{"ServerURL","Username","Secret"} for store and from get). Lookup order per file, as docker's:
credHelpers, then credsStore, then the inline "auths" entry. login and logout go through the
helper the written file names for that registry.

Identity tokens: an "identitytoken" in an auths entry, or a helper answering Username
"<token>", is an OAuth2 refresh token: credentials come back as (IDENTITY_TOKEN_USER, token),
and the registry client trades it at the token realm (grant_type=refresh_token) instead of
sending basic credentials.

Where it lives (podman's rules): the `authfile` argument, else $REGISTRY_AUTH_FILE,
else ${XDG_RUNTIME_DIR}/containers/auth.json (/run/containers/0/auth.json for
root, /run/user/<uid>/containers/auth.json when XDG_RUNTIME_DIR is unset).
Reading without an explicit file also falls back, in order, to
$HOME/.config/containers/auth.json and $HOME/.docker/config.json.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import shutil
import tempfile

from keel.image.errors import ImageError, RegistryError

DOCKER_HUB = "docker.io"
_HUB_ALIASES = ("index.docker.io", "registry-1.docker.io", "registry.hub.docker.com")
DOCKER_HUB_SERVER_URL = "https://index.docker.io/v1/"    # the key docker's helpers use for it
IDENTITY_TOKEN_USER = "<token>"
HELPER_TIMEOUT = 60.0


class AuthFileError(ImageError):
    """An auth file that cannot be read or written (names the file)."""


class CredentialHelperError(ImageError):
    """A docker-credential-<name> helper that is missing, fails or answers nonsense.
    not_found: the helper said it holds no credentials for that server."""

    def __init__(self, message: str, not_found: bool = False):
        super().__init__(message)
        self.not_found = not_found


def default_authfile() -> str:
    """Where `keel login` writes when no authfile is given (podman's default)."""
    env = os.environ.get("REGISTRY_AUTH_FILE")
    if env:
        return env
    uid = os.getuid()
    if uid == 0:
        return "/run/containers/0/auth.json"
    runtime = os.environ.get("XDG_RUNTIME_DIR") or f"/run/user/{uid}"
    return os.path.join(runtime, "containers", "auth.json")


def _read_paths(authfile):
    if authfile:
        return [authfile]
    home = os.path.expanduser("~")
    return [default_authfile(),
            os.path.join(home, ".config", "containers", "auth.json"),
            os.path.join(os.environ.get("DOCKER_CONFIG") or os.path.join(home, ".docker"), "config.json")]


def normalize_registry(key: str) -> str:
    """The registry part of an auth.json key: scheme and /v1/ path dropped, the
    Docker Hub spellings folded into "docker.io" ("https://index.docker.io/v1/" ->
    "docker.io"); a key naming a namespace ("quay.io/org") keeps its path."""
    k = key.strip()
    for scheme in ("https://", "http://"):
        if k.startswith(scheme):
            k = k[len(scheme):]
            k = k.split("/", 1)[0] if "/v1" in k or "/v2" in k else k
            break
    k = k.rstrip("/")
    host, sep, rest = k.partition("/")
    if host in _HUB_ALIASES:
        host = DOCKER_HUB
    return host + sep + rest


def load(authfile: str | None = None) -> dict:
    """The parsed auth file ({} when it does not exist)."""
    path = authfile or default_authfile()
    return _load(path)


def _load(path: str) -> dict:
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return {}
    except OSError as e:
        raise AuthFileError(f"auth file {path}: {e.strerror}") from None
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise AuthFileError(f"auth file {path}: not valid json") from None
    if not isinstance(data, dict) or not isinstance(data.get("auths", {}), dict):
        raise AuthFileError(f"auth file {path}: \"auths\" is not an object")
    return data


def _decode(entry, path, key):
    if not isinstance(entry, dict):
        raise AuthFileError(f"auth file {path}: auths.{key}: not an object")
    token = entry.get("identitytoken")
    if token:
        if not isinstance(token, str):
            raise AuthFileError(f"auth file {path}: auths.{key}.identitytoken: not a string")
        return IDENTITY_TOKEN_USER, token
    if entry.get("auth"):
        try:
            text = base64.b64decode(entry["auth"], validate=True).decode()
        except (binascii.Error, UnicodeDecodeError, TypeError):
            raise AuthFileError(f"auth file {path}: auths.{key}.auth: not base64 of user:password") from None
        user, sep, password = text.partition(":")
        if not sep:
            raise AuthFileError(f"auth file {path}: auths.{key}.auth: not base64 of user:password")
        return user, password
    if entry.get("username") and "password" in entry:       # older docker configs
        return entry["username"], entry["password"]
    return None


# -- credential helpers ------------------------------------------------------------

def server_url(registry: str) -> str:
    """What a credential helper is asked about for `registry` (docker's key for Docker Hub)."""
    return DOCKER_HUB_SERVER_URL if normalize_registry(registry) == DOCKER_HUB else registry


def helper_for(data: dict, registry: str, path: str) -> str | None:
    """The helper name the parsed auth file assigns to `registry` (credHelpers, then
    credsStore), or None."""
    helpers = data.get("credHelpers", {})
    if not isinstance(helpers, dict):
        raise AuthFileError(f"auth file {path}: \"credHelpers\" is not an object")
    want = normalize_registry(registry)
    for key, name in helpers.items():
        if normalize_registry(key) == want:
            if not isinstance(name, str) or not name or "/" in name:
                raise AuthFileError(f"auth file {path}: credHelpers.{key}: invalid helper name {name!r}")
            return name
    store = data.get("credsStore")
    if store is not None and (not isinstance(store, str) or "/" in store):
        raise AuthFileError(f"auth file {path}: credsStore: invalid helper name {store!r}")
    return store or None


def _one_line(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."


def run_helper(name: str, action: str, stdin: str) -> str:
    """Run `docker-credential-<name> <action>` with `stdin`; its stdout, or
    CredentialHelperError naming the helper and what went wrong."""
    import subprocess

    prog = f"docker-credential-{name}"
    exe = shutil.which(prog)
    if exe is None:
        raise CredentialHelperError(f"credential helper {prog}: not found in $PATH")
    try:
        p = subprocess.run([exe, action], input=stdin.encode(), capture_output=True,
                           timeout=HELPER_TIMEOUT, close_fds=True)
    except subprocess.TimeoutExpired:
        raise CredentialHelperError(f"credential helper {prog} {action}: no answer within "
                                    f"{HELPER_TIMEOUT:.0f} s") from None
    except OSError as e:
        raise CredentialHelperError(f"credential helper {prog}: {e.strerror or e}") from None
    out = p.stdout.decode(errors="replace")
    if p.returncode != 0:
        why = _one_line(out.strip() or p.stderr.decode(errors="replace").strip()) or "no message"
        raise CredentialHelperError(f"credential helper {prog} {action}: exit status "
                                    f"{p.returncode}: {why}", not_found="credentials not found" in why.lower())
    return out


def helper_get(name: str, registry: str) -> tuple[str, str] | None:
    """Credentials a helper holds for `registry`, or None when it has none."""
    prog = f"docker-credential-{name}"
    try:
        out = run_helper(name, "get", server_url(registry))
    except CredentialHelperError as e:
        if e.not_found:
            return None
        raise
    try:
        doc = json.loads(out)
    except ValueError:
        raise CredentialHelperError(f"credential helper {prog} get {server_url(registry)}: "
                                    f"invalid answer (not json): {_one_line(out, 80)!r}") from None
    if not isinstance(doc, dict):
        raise CredentialHelperError(f"credential helper {prog} get: invalid answer: not a json object")
    user, secret = doc.get("Username", ""), doc.get("Secret", "")
    if not isinstance(user, str) or not isinstance(secret, str):
        raise CredentialHelperError(f"credential helper {prog} get: invalid answer: "
                                    "Username and Secret must be strings")
    if not secret:
        return None
    return user, secret


# -- lookups -----------------------------------------------------------------------

def get_credentials(registry: str, authfile: str | None = None,
                    repository: str | None = None) -> tuple[str, str] | None:
    """(user, password) for `registry` (and, when given, the most specific
    "registry/namespace" key that `repository` falls under), or None. An identity
    token comes back as (IDENTITY_TOKEN_USER, token)."""
    want = normalize_registry(registry)
    full = f"{want}/{repository}" if repository else want
    for path in _read_paths(authfile):
        data = _load(path)
        helper = helper_for(data, want, path)
        if helper is not None:
            creds = helper_get(helper, want)
            if creds is not None:
                return creds
        auths = data.get("auths", {})
        best, best_len = None, -1
        for key, entry in auths.items():
            k = normalize_registry(key)
            if k == full or full.startswith(k + "/") or k == want:
                if len(k) > best_len:
                    best, best_len = (key, entry), len(k)
        if best is not None:
            creds = _decode(best[1], path, best[0])
            if creds is not None:
                return creds
        if authfile:
            break
    return None


def _write(path: str, data: dict) -> None:
    d = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(d, mode=0o700, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".auth.json.", dir=d)
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump(data, f, indent="\t")
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            os.rename(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
    except OSError as e:
        raise AuthFileError(f"auth file {path}: {e.strerror}") from None


def set_credentials(registry: str, user: str, password: str, authfile: str | None = None) -> str:
    """Store credentials for `registry`: in the credential helper the auth file names for
    it, else inline in the file; returns where they went (the file, or the helper's name)."""
    if not user:
        raise AuthFileError("login: empty user name")
    path = authfile or default_authfile()
    data = _load(path)
    key = normalize_registry(registry)
    helper = helper_for(data, key, path)
    auths = data.setdefault("auths", {})
    stale = [k for k in auths if normalize_registry(k) == key]
    if helper is not None:
        run_helper(helper, "store", json.dumps({"ServerURL": server_url(key), "Username": user,
                                                "Secret": password}))
        if stale:                       # no second, older copy left in the file
            for k in stale:
                del auths[k]
            _write(path, data)
        return f"docker-credential-{helper}"
    for k in stale:
        del auths[k]
    auths[key] = {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}
    _write(path, data)
    return path


def login(registry: str, user: str, password: str, authfile: str | None = None, *,
          insecure: bool = False, ca_dir: str | None = None, on_request=None, timeout=30.0) -> str:
    """Check the credentials against the registry's /v2/ (basic or token auth),
    then store them; returns the auth file path. RegistryError if refused."""
    from keel.image.registry import RegistryClient

    client = RegistryClient(registry, insecure=insecure, ca_dir=ca_dir,
                            credentials=(user, password), on_request=on_request, timeout=timeout)
    try:
        client.check_login()
    finally:
        client.close()
    return set_credentials(registry, user, password, authfile)


def logout(registry: str | None = None, authfile: str | None = None, all: bool = False) -> list[str]:
    """Remove the credentials of `registry` (or of every registry with all=True);
    returns the keys removed. Logging out of a registry one is not logged in to
    is an error, as with podman."""
    if not all and not registry:
        raise AuthFileError("logout: name a registry or use all")
    path = authfile or default_authfile()
    data = _load(path)
    auths = data.get("auths", {})
    if all:
        removed = list(auths)
        data["auths"] = {}
        for key, name in (data.get("credHelpers") or {}).items():
            if not isinstance(name, str) or shutil.which(f"docker-credential-{name}") is None:
                continue                # nothing keel could have stored there
            try:
                run_helper(name, "erase", server_url(normalize_registry(key)))
                removed.append(f"docker-credential-{name}:{key}")
            except CredentialHelperError as e:
                if not e.not_found:
                    raise
    else:
        key = normalize_registry(registry)
        removed = [k for k in auths if normalize_registry(k) == key]
        helper = helper_for(data, key, path)
        if helper is not None:
            try:
                run_helper(helper, "erase", server_url(key))
                removed.append(f"docker-credential-{helper}")
            except CredentialHelperError as e:
                if not e.not_found:
                    raise
        if not removed:
            raise RegistryError(f"not logged in to {key} (auth file {path})")
        for k in removed:
            auths.pop(k, None)
    if removed or os.path.exists(path):
        _write(path, data)
    return removed
