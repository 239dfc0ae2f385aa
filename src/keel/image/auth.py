"""Registry credentials: the containers-auth.json(5) / docker config.json file.

The file is {"auths": {"<registry>[/<namespace>...]": {"auth": base64("user:password")}}},
written atomically with mode 0600 in a 0700 directory, so podman, skopeo, buildah
and docker read what `keel login` writes and the other way round. Keys other than
"auths" (docker's "credHelpers", "HttpHeaders" ...) are kept as they are.

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
import tempfile

from keel.image.errors import ImageError, RegistryError

DOCKER_HUB = "docker.io"
_HUB_ALIASES = ("index.docker.io", "registry-1.docker.io", "registry.hub.docker.com")


class AuthFileError(ImageError):
    """An auth file that cannot be read or written (names the file)."""


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


def get_credentials(registry: str, authfile: str | None = None,
                    repository: str | None = None) -> tuple[str, str] | None:
    """(user, password) for `registry` (and, when given, the most specific
    "registry/namespace" key that `repository` falls under), or None."""
    want = normalize_registry(registry)
    full = f"{want}/{repository}" if repository else want
    for path in _read_paths(authfile):
        auths = _load(path).get("auths", {})
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
    """Store credentials for `registry`; returns the path written."""
    if not user:
        raise AuthFileError("login: empty user name")
    path = authfile or default_authfile()
    data = _load(path)
    auths = data.setdefault("auths", {})
    key = normalize_registry(registry)
    for k in [k for k in auths if normalize_registry(k) == key]:
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
    else:
        key = normalize_registry(registry)
        removed = [k for k in auths if normalize_registry(k) == key]
        if not removed:
            raise RegistryError(f"not logged in to {key} (auth file {path})")
        for k in removed:
            del auths[k]
    if removed or os.path.exists(path):
        _write(path, data)
    return removed
