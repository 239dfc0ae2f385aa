"""A registry client speaking the OCI distribution spec (the Docker Registry HTTP API v2).

Pull: the manifest is negotiated (OCI index and manifest, Docker manifest list and schema2
manifest), an index is resolved to one platform, and the config and layers stream into
the store's ingests, several at a time, each verified against its digest before it becomes
a blob. A dropped connection resumes with `Range: bytes=<offset>-`, and so does a rerun of an
interrupted pull (the store keeps the partial ingest). 5xx, 429 and connection errors are
retried with exponential backoff (Retry-After honoured). A manifest pulled by digest must hash
to that digest; one pulled by tag is recorded under the digest of the bytes received (and
must agree with the registry's Docker-Content-Digest when it sends one).

Push: each blob is checked with HEAD, mounted from another repository of the same registry
when one is known to hold it, else uploaded whole (POST, PUT ?digest=) or in chunks (PATCH
with Content-Range, then PUT); the manifest is put with its own media type, byte for byte
as stored, so the pushed image has the digest it had here.

Auth: anonymous, basic, and bearer tokens from the realm a 401's WWW-Authenticate names
(fetched anonymously or with basic credentials; with an identity token, an OAuth2 refresh-token
grant POSTed to the realm, as containers/image does), cached per scope until their expires_in
runs out, the request retried once.

Transport: keel.image.transport (http.client, keep-alive per host). https, verified against
the system CAs plus `ca_dir/<host[:port]>/*.crt` (and a `*.cert`/`*.key` client pair there);
`insecure=True` (a registry marked insecure, or --tls-verify=false) tries https without
verification and falls back to plain http.

Every failure is a RegistryError (or DigestMismatch) of one lowercase line naming the
registry, repository, tag or digest.
"""

from __future__ import annotations

import contextlib
import email.utils
import glob
import json
import os
import re
import ssl
import threading
import time
import urllib.parse

from keel.image import digest as _digest
from keel.image import platform as _platform
from keel.image import transport as _http
from keel.image.errors import DigestMismatch, ImageError, RegistryError
from keel.image.mediatypes import (DOCKER_LIST, DOCKER_MANIFEST, DOCKER_SCHEMA1, INDEX_TYPES,
                                   MANIFEST_TYPES, OCI_INDEX, OCI_MANIFEST)
from keel.image.progress import Progress

ACCEPT = ", ".join((OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST))
MAX_MANIFEST_BYTES = 4 << 20
MAX_CONFIG_BYTES = 16 << 20
MAX_ERROR_BODY = 64 << 10
RETRY_STATUSES = (429, 500, 502, 503, 504)
DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"
DEFAULT_PARALLEL = 3
DEFAULT_CHUNK = 1 << 20            # read/write granularity
USER_AGENT = "keel/0.1.0"
IDENTITY_TOKEN_USER = "<token>"    # = keel.image.auth.IDENTITY_TOKEN_USER (docker's marker)
OAUTH_CLIENT_ID = "keel"
DEFAULT_TOKEN_LIFETIME = 60        # seconds, when the token server does not say (distribution spec)

_AUTH_PARAM = re.compile(r'\s*([A-Za-z][A-Za-z0-9_-]*)\s*=\s*("(?:[^"\\]|\\.)*"|[^,\s]*)\s*,?')


# -- small helpers ---------------------------------------------------------------

def _one_line(text: str, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit] + "..."


def _media_type(content_type: str | None) -> str:
    return (content_type or "").split(";")[0].strip().lower()


def parse_www_authenticate(header: str) -> list[tuple[str, dict]]:
    """[("bearer", {"realm": .., "service": .., "scope": ..}), ("basic", {...})]."""
    out = []
    rest = header or ""
    while rest.strip():
        m = re.match(r"\s*([A-Za-z][A-Za-z0-9_-]*)\s*", rest)
        if not m:
            break
        scheme = m.group(1).lower()
        rest = rest[m.end():]
        params = {}
        while True:
            pm = _AUTH_PARAM.match(rest)
            if not pm:
                break
            value = pm.group(2)
            if value.startswith('"'):
                value = re.sub(r"\\(.)", r"\1", value[1:-1])
            params[pm.group(1).lower()] = value
            rest = rest[pm.end():]
        out.append((scheme, params))
        rest = rest.lstrip(", ")
    return out


def select_platform(manifests: list[dict], platform: str, what: str) -> dict:
    """The descriptor of `manifests` (an index's) that runs on `platform`."""
    found = _platform.matches(manifests, platform)
    if found:
        return found[0]
    offered = _platform.available(manifests)
    raise RegistryError(f"no image for platform {platform} in {what}: available: "
                        + (", ".join(offered) if offered else "none"))


def _json_object(data: bytes, what: str, kind: str) -> dict:
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise RegistryError(f"{what}: invalid {kind}: not json") from None
    if not isinstance(doc, dict):
        raise RegistryError(f"{what}: invalid {kind}: not a json object")
    return doc


def platform_mismatch(config: bytes, platform: str, what: str) -> str | None:
    """keel.image.platform.mismatch of a config's bytes (RegistryError when not json)."""
    return _platform.mismatch(_json_object(config, what, "image config"), platform)


def _check_descriptor(d, where: str) -> dict:
    if not isinstance(d, dict):
        raise RegistryError(f"{where}: descriptor is not an object")
    if not _digest.is_valid(d.get("digest")):
        raise RegistryError(f"{where}: invalid digest {d.get('digest')!r}")
    size = d.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise RegistryError(f"{where}: {d['digest']}: invalid size {size!r}")
    return d


def parse_manifest(data: bytes, content_type: str | None, what: str) -> tuple[dict, str]:
    """(parsed manifest, media type) of bytes a registry sent; RegistryError when it is
    not a manifest (HTML, garbage, the wrong shape)."""
    ct = _media_type(content_type)
    if ct.startswith("text/html") or data.lstrip()[:1] == b"<":
        raise RegistryError(f"{what}: registry returned html, not a manifest "
                            f"(content-type {ct or 'none'})")
    if ct in DOCKER_SCHEMA1:
        raise RegistryError(f"{what}: docker schema1 manifests are not supported")
    if ct and ct not in MANIFEST_TYPES + INDEX_TYPES and ct not in ("application/json",
                                                                    "application/octet-stream"):
        raise RegistryError(f"{what}: unexpected content-type {ct!r} for a manifest")
    doc = _json_object(data, what, "manifest")
    if doc.get("schemaVersion") == 1:
        raise RegistryError(f"{what}: docker schema1 manifests are not supported")
    if doc.get("schemaVersion") != 2:
        raise RegistryError(f"{what}: invalid manifest: schemaVersion {doc.get('schemaVersion')!r}")
    mt = doc.get("mediaType")
    if mt is not None and not isinstance(mt, str):
        raise RegistryError(f"{what}: invalid manifest: mediaType is not a string")
    if mt and ct in MANIFEST_TYPES + INDEX_TYPES and mt != ct:
        raise RegistryError(f"{what}: manifest says mediaType {mt} but was served as {ct}")
    media_type = mt or (ct if ct in MANIFEST_TYPES + INDEX_TYPES else None)
    if media_type is None:
        media_type = OCI_INDEX if "manifests" in doc else OCI_MANIFEST
    if media_type in INDEX_TYPES:
        ms = doc.get("manifests")
        if not isinstance(ms, list):
            raise RegistryError(f"{what}: invalid index: manifests is not a list")
        for i, d in enumerate(ms):
            _check_descriptor(d, f"{what}: manifests[{i}]")
    elif media_type in MANIFEST_TYPES:
        _check_descriptor(doc.get("config"), f"{what}: config")
        layers = doc.get("layers")
        if not isinstance(layers, list):
            raise RegistryError(f"{what}: invalid manifest: layers is not a list")
        for i, d in enumerate(layers):
            _check_descriptor(d, f"{what}: layers[{i}]")
    else:
        raise RegistryError(f"{what}: unsupported manifest media type {media_type!r}")
    return doc, media_type


def _retry_after(resp) -> float | None:
    v = resp.headers.get("Retry-After")
    if not v:
        return None
    v = v.strip()
    if v.isdigit():
        return float(v)
    try:
        when = email.utils.parsedate_to_datetime(v)
        return max(0.0, when.timestamp() - time.time())
    except (TypeError, ValueError, IndexError):
        return None


def _unverified_context():
    """TLS without certificate checks: a registry marked insecure, or --tls-verify=false."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class _Stopped(Exception):
    """Another download of the same pull failed: stop this one (keeping its partial)."""


def _parallel(fn, items, workers: int, name: str, stop: threading.Event | None = None) -> None:
    """fn(item) for each item on up to `workers` threads (plain threads: concurrent.futures
    costs ~10 ms of imports per `keel pull`). The first error is re-raised once every thread
    has ended; with `stop`, it is set on that error (and on ^C) so the others stop early."""
    items = list(items)
    if workers <= 1 or len(items) <= 1:
        for item in items:
            fn(item)
        return
    todo = items[::-1]
    errors = []
    lock = threading.Lock()

    def work():
        while True:
            with lock:
                if not todo:
                    return
                item = todo.pop()
            try:
                fn(item)
            except _Stopped:
                pass
            except BaseException as e:
                with lock:
                    errors.append(e)
                if stop is not None:
                    stop.set()

    threads = [threading.Thread(target=work, name=f"{name}-{i}", daemon=True)
               for i in range(min(workers, len(items)))]
    for t in threads:
        t.start()
    try:
        for t in threads:
            t.join()
    except BaseException:
        # ^C: do not wait for downloads blocked in a read; each stops at its next chunk and
        # keeps its partial for a rerun (the threads are daemons: a process exit ends them)
        if stop is not None:
            stop.set()
        raise
    if errors:
        raise errors[0]


# -- the client ------------------------------------------------------------------

class RegistryClient:
    """One registry ("localhost:5000", "quay.io", "docker.io"), any of its repositories.

    credentials: (user, password), or (IDENTITY_TOKEN_USER, refresh token); None looks them
    up in `authfile` (auth.get_credentials, podman's default file when None); False means
    anonymous without lookup.
    on_request: called as on_request(method, url, headers) before each request (tests record
    traffic with it).
    retries: attempts after the first for 5xx/429/connection errors; backoff: first delay
    in seconds, doubled each time up to max_backoff (Retry-After wins, capped at max_retry_after).
    chunk_size: pushes of blobs larger than this are chunked (PATCH); None: always monolithic.
    """

    def __init__(self, registry: str, *, insecure: bool = False, ca_dir: str | None = None,
                 credentials=None, retries: int = 4, on_request=None, authfile: str | None = None,
                 timeout: float = 60.0, backoff: float = 0.5, max_backoff: float = 8.0,
                 max_retry_after: float = 60.0, chunk_size: int | None = 64 << 20):
        if not registry or "/" in registry:
            raise RegistryError(f"invalid registry {registry!r}: expected host[:port]")
        self.registry = registry
        self.host = DOCKER_HUB_API if registry == DOCKER_HUB else registry
        self.insecure = insecure
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.max_retry_after = max_retry_after
        self.chunk_size = chunk_size
        if credentials is None:
            from keel.image import auth
            credentials = auth.get_credentials(registry, authfile)
        self.credentials = tuple(credentials) if credentials else None
        self._scheme = None if insecure else "https"
        self._tokens: dict[frozenset, tuple] = {}    # scope atoms -> (bearer token, expiry)
        self._token_lock = threading.Lock()
        self._bearer = None                            # (realm, service) of the last challenge
        self._basic = False
        self._lock = threading.Lock()
        verify = _unverified_context() if insecure else self._ssl_context(ca_dir)
        self._client = _http.Session(verify, timeout=timeout, connect_timeout=min(timeout, 15.0),
                                     headers={"User-Agent": USER_AGENT}, on_request=on_request)

    # -- setup ------------------------------------------------------------------
    def _ssl_context(self, ca_dir):
        ctx = ssl.create_default_context()
        if ca_dir:
            d = os.path.join(ca_dir, self.host)
            try:
                for crt in sorted(glob.glob(os.path.join(d, "*.crt"))):
                    ctx.load_verify_locations(cafile=crt)
                for cert in sorted(glob.glob(os.path.join(d, "*.cert"))):
                    key = cert[:-len(".cert")] + ".key"
                    if not os.path.exists(key):
                        raise RegistryError(f"{self.registry}: client certificate {cert} has no {key}")
                    ctx.load_cert_chain(cert, key)
            except (ssl.SSLError, OSError) as e:
                raise RegistryError(f"{self.registry}: certificates in {d}: {e}") from None
        return ctx

    def close(self) -> None:
        self._client.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _base(self) -> str:
        if self._scheme is None:
            with self._lock:
                if self._scheme is None:
                    self._scheme = self._probe_scheme()
        return f"{self._scheme}://{self.host}"

    def _probe_scheme(self) -> str:
        """For an insecure registry: https (unverified) if it speaks TLS, else http."""
        try:
            r = self._client.request("GET", f"https://{self.host}/v2/", timeout=5.0)
            r.close()
            return "https"
        except _http.TransportError:
            return "http"

    # -- auth -------------------------------------------------------------------
    @staticmethod
    def scope(repository: str, actions: str = "pull") -> str:
        return f"repository:{repository}:{actions}"

    @staticmethod
    def _atoms(scope: str | None) -> frozenset:
        """"repository:a/b:pull,push" -> {"repository:a/b:pull", "repository:a/b:push"}."""
        out = set()
        for s in (scope or "").split():
            head, sep, actions = s.rpartition(":")
            if not sep:
                continue
            out.update(f"{head}:{a}" for a in actions.split(",") if a)
        return frozenset(out)

    @property
    def _identity_token(self) -> str | None:
        if self.credentials and self.credentials[0] == IDENTITY_TOKEN_USER:
            return self.credentials[1]
        return None

    def _cached_token(self, atoms: frozenset) -> str | None:
        """A token for at least these scope atoms that has not expired."""
        now = time.monotonic()
        hit = self._tokens.get(atoms)
        if hit is not None and hit[1] > now:
            return hit[0]
        for have, (tok, expires) in list(self._tokens.items()):
            if atoms <= have and expires > now:
                return tok
        return None

    def _auth_header(self, scope: str | None, what: str) -> str | None:
        atoms = self._atoms(scope)
        tok = self._cached_token(atoms)
        if tok is None and self._bearer is not None and atoms:
            # the registry asked for bearer tokens before: get this scope's (or a fresh one
            # for an expired token) now rather than after one more 401
            with self._token_lock:
                tok = self._cached_token(atoms)
                if tok is None:
                    tok = self._new_token(atoms, *self._bearer, scope.split(), what)
        if tok:
            return f"Bearer {tok}"
        if self._basic and self.credentials and not self._identity_token:
            user, password = self.credentials
            return _http.basic_auth(user, password)
        return None

    def _authenticate(self, header: str | None, scope: str | None, what: str,
                      sent: str | None = None) -> bool:
        """Act on a 401's challenge; True when the request is worth retrying. `sent` is the
        Authorization the refused request carried: a token another thread fetched since
        then is reused instead of fetching one more."""
        for scheme, params in parse_www_authenticate(header or ""):
            if scheme == "bearer" and params.get("realm"):
                scopes = []
                for s in ((scope or "") + " " + params.get("scope", "")).split():
                    if s not in scopes:
                        scopes.append(s)
                atoms = self._atoms(scope)
                with self._token_lock:
                    cur = self._cached_token(atoms)
                    if cur and f"Bearer {cur}" != sent:
                        return True
                    self._new_token(atoms, params["realm"], params.get("service"), scopes, what)
                    self._bearer = (params["realm"], params.get("service"))
                return True
            if scheme == "basic":
                if not self.credentials or self._identity_token:
                    return False
                self._basic = True
                return True
        return False

    def _new_token(self, atoms, realm, service, scopes, what) -> str:
        token, lifetime = self._fetch_token(realm, service, scopes, what)
        self._tokens[atoms] = (token, time.monotonic() + lifetime)
        return token

    def _fetch_token(self, realm: str, service: str | None, scopes: list[str],
                     what: str) -> tuple[str, float]:
        """(token, lifetime in seconds) from the realm: GET with basic credentials (or
        none), or with an identity token the OAuth2 refresh-token grant (POST)."""
        if urllib.parse.urlsplit(realm).scheme not in ("http", "https"):
            raise RegistryError(f"{what}: token realm {realm!r} is not an http(s) url")
        identity = self._identity_token
        if identity:
            method, params = "POST", None
            form = [("grant_type", "refresh_token"), ("refresh_token", identity),
                    ("client_id", OAUTH_CLIENT_ID)]
            form += [("service", service)] if service else []
            form += [("scope", " ".join(scopes))] if scopes else []
            body = urllib.parse.urlencode(form).encode()
            headers = {"Content-Type": "application/x-www-form-urlencoded"}
        else:
            method, body = "GET", None
            params = [("service", service)] if service else []
            params += [("scope", s) for s in scopes]
            headers = {"Authorization": _http.basic_auth(*self.credentials)} if self.credentials else {}
        attempt = 0
        while True:
            try:
                resp = self._client.request(method, realm, params=params, headers=headers, body=body)
            except _http.TransportError as e:
                if attempt < self.retries:
                    self._sleep(attempt, None)
                    attempt += 1
                    continue
                raise RegistryError(f"{what}: token server {realm}: {_one_line(e) or type(e).__name__}") from None
            if resp.status_code in RETRY_STATUSES and attempt < self.retries:
                ra = _retry_after(resp)
                resp.close()
                self._sleep(attempt, ra)
                attempt += 1
                continue
            break
        try:
            status = resp.status_code
            refused = (401, 403) + ((400,) if identity else ())   # OAuth2: invalid_grant is a 400
            if status in refused:
                raise RegistryError(f"unauthorized: {what}: token server {realm} refused "
                                    + ("the identity token" if identity else
                                       "the credentials" if self.credentials else "anonymous access"),
                                    status=401 if status == 400 else status)
            if status != 200:
                raise RegistryError(f"{what}: token server {realm} answered http {status}",
                                    status=status)
            try:
                doc = resp.json()
                token = doc.get("token") or doc.get("access_token")
                lifetime = doc.get("expires_in", DEFAULT_TOKEN_LIFETIME)
            except (ValueError, AttributeError):
                token, lifetime = None, None
        finally:
            resp.close()
        if not isinstance(token, str) or not token:
            raise RegistryError(f"{what}: token server {realm} sent no token")
        if not isinstance(lifetime, (int, float)) or isinstance(lifetime, bool) or lifetime <= 0:
            lifetime = DEFAULT_TOKEN_LIFETIME
        return token, float(lifetime)

    def check_login(self) -> None:
        """GET /v2/ with the credentials (basic or via the token realm); RegistryError if refused."""
        what = self.registry
        resp = self._request("GET", "/v2/", what=what, kind="login", ok=(200,))
        resp.close()

    # -- requests ---------------------------------------------------------------
    def _sleep(self, attempt: int, retry_after: float | None) -> None:
        if retry_after is not None:
            delay = min(retry_after, self.max_retry_after)
        else:
            delay = min(self.backoff * (2 ** attempt), self.max_backoff)
        time.sleep(delay)

    def _url(self, path_or_url: str) -> str:
        if path_or_url.startswith(("http://", "https://")):
            return path_or_url
        base = self._base()
        return urllib.parse.urljoin(base + "/", path_or_url) if not path_or_url.startswith("/") \
            else base + path_or_url

    def _request(self, method: str, path: str, *, what: str, kind: str = "", scope: str | None = None,
                 headers: dict | None = None, body=None, params=None,
                 ok=(200,), allow=(), retries: int | None = None):
        """Send with auth and retries; returns a response whose status is in ok+allow
        (the caller closes it), or raises RegistryError for anything else."""
        retries = self.retries if retries is None else retries
        url = self._url(path)
        attempt = 0
        authed = False
        while True:
            h = dict(headers or {})
            a = self._auth_header(scope, what)
            if a:
                h["Authorization"] = a
            content = body() if callable(body) else body
            try:
                resp = self._client.request(method, url, headers=h, body=content, params=params)
            except _http.TransportError as e:
                if attempt < retries:
                    self._sleep(attempt, None)
                    attempt += 1
                    continue
                raise RegistryError(f"{what}: {self._transport_message(e)}") from None
            status = resp.status_code
            if status == 401 and not authed:
                challenge = resp.headers.get("WWW-Authenticate")
                if self._authenticate(challenge, scope, what, h.get("Authorization")):
                    resp.close()
                    authed = True
                    continue
            if status in RETRY_STATUSES and attempt < retries:
                ra = _retry_after(resp)
                resp.close()
                self._sleep(attempt, ra)
                attempt += 1
                continue
            if status in ok or status in allow:
                return resp
            try:
                err = self._status_error(resp, what, kind)
            finally:
                resp.close()
            raise err

    def _transport_message(self, e: Exception) -> str:
        text = _one_line(str(e)) or type(e).__name__
        if isinstance(e, _http.ConnectError):
            return f"cannot connect to {self.registry}: {text}"
        if isinstance(e, _http.Timeout):
            return f"timed out talking to {self.registry}"
        return f"connection to {self.registry} failed: {text}"

    def _status_error(self, resp, what: str, kind: str) -> RegistryError:
        status = resp.status_code
        detail = ""
        code = ""
        try:
            doc = json.loads(resp.read(MAX_ERROR_BODY))
            e0 = (doc.get("errors") or [{}])[0]
            code = str(e0.get("code", "")).upper()
            detail = _one_line(e0.get("message", ""), 120)
        except Exception:
            pass
        suffix = f" ({detail})" if detail else ""
        if status == 401:
            why = "credentials rejected" if self.credentials else "authentication required"
            msg = f"unauthorized: {what}: {why}{suffix}"
        elif status == 403:
            msg = f"denied: {what}{suffix}"
        elif status == 404 and kind == "manifest":
            msg = f"manifest unknown: {what}"
        elif status == 404 and kind == "blob":
            msg = f"blob unknown: {what}"
        elif status == 404:
            msg = f"not found: {what}" + (f" ({code.lower().replace('_', ' ')})" if code else "")
        elif status == 429:
            msg = f"too many requests: {what}: registry {self.registry} still refused after " \
                  f"{self.retries} retries"
        elif status >= 500:
            msg = f"registry error: {what}: {self.registry} answered http {status}{suffix}"
        else:
            msg = f"{what}: {self.registry} answered http {status}{suffix}"
        return RegistryError(msg, status=status)

    # -- reading ----------------------------------------------------------------
    def _name(self, repository: str, reference: str | None = None) -> str:
        s = f"{self.registry}/{repository}"
        if reference:
            s += ("@" if ":" in reference else ":") + reference
        return s

    def get_manifest(self, repository: str, reference: str, expected: str | None = None,
                     accept: str = ACCEPT) -> tuple[bytes, str, str, dict]:
        """(bytes, media type, digest, parsed) of a manifest or index by tag or digest.

        By digest (or with `expected`), the bytes must hash to it (DigestMismatch).
        By tag, the digest is that of the bytes received, and must equal the registry's
        Docker-Content-Digest when that header is there."""
        if ":" in reference and expected is None:
            expected = reference
        what = self._name(repository, reference)
        resp = self._request("GET", f"/v2/{repository}/manifests/{reference}", what=what,
                             kind="manifest", scope=self.scope(repository),
                             headers={"Accept": accept})
        try:
            cl = resp.headers.get("Content-Length")
            if cl and cl.isdigit() and int(cl) > MAX_MANIFEST_BYTES:
                raise RegistryError(f"{what}: manifest of {cl} bytes is larger than "
                                    f"{MAX_MANIFEST_BYTES}")
            data = b""
            try:
                for chunk in resp.iter_bytes():
                    data += chunk
                    if len(data) > MAX_MANIFEST_BYTES:
                        raise RegistryError(f"{what}: manifest larger than {MAX_MANIFEST_BYTES} bytes")
            except _http.TransportError as e:
                raise RegistryError(f"{what}: {self._transport_message(e)}") from None
            content_type = resp.headers.get("Content-Type")
            header_digest = resp.headers.get("Docker-Content-Digest")
        finally:
            resp.close()
        if expected is not None:
            alg, _ = _digest.parse(expected)
            got = _digest.of_bytes(data, alg)
            if got != expected:
                raise DigestMismatch(f"manifest {expected} from {self._name(repository)}: "
                                     f"digest mismatch: got {got}")
        doc, media_type = parse_manifest(data, content_type, what)
        if expected is None:
            alg = "sha256"
            if header_digest and _digest.is_valid(header_digest):
                alg = _digest.parse(header_digest)[0]
            got = _digest.of_bytes(data, alg)
            if header_digest and header_digest != got:
                raise DigestMismatch(f"manifest {what}: digest mismatch: registry says "
                                     f"{header_digest}, content is {got}")
            expected = got
        return data, media_type, expected, doc

    def list_tags(self, repository: str) -> list[str]:
        what = self._name(repository)
        resp = self._request("GET", f"/v2/{repository}/tags/list", what=what, kind="repository",
                             scope=self.scope(repository))
        try:
            tags = resp.json().get("tags") or []
        except (ValueError, AttributeError):
            raise RegistryError(f"{what}: invalid tag list: not json") from None
        finally:
            resp.close()
        return list(tags)

    def blob_exists(self, repository: str, d: str, actions: str = "pull") -> bool:
        resp = self._request("HEAD", f"/v2/{repository}/blobs/{d}", what=f"{self._name(repository)}@{d}",
                             kind="blob", scope=self.scope(repository, actions), ok=(200,), allow=(404,))
        resp.close()
        return resp.status_code == 200

    def fetch_blob(self, store, repository: str, desc: dict, progress: Progress | None = None,
                   stop: threading.Event | None = None, kind: str = "blob") -> str:
        """Stream one blob into store.ingest(), verified; resumes partials with Range."""
        progress = progress or Progress()
        d, size = desc["digest"], desc.get("size")
        key = d
        label = f"Copying {kind} {d.split(':', 1)[1][:12]}"
        if stop is not None and stop.is_set():
            raise _Stopped()
        progress.add(key, size, label)
        if store.has_blob(d):
            progress.finish(key, "skipped: already exists")
            return d
        fresh_retry = True
        while True:
            try:
                self._fetch_into(store, repository, d, size, key, progress, stop)
            except DigestMismatch as e:
                if getattr(e, "_resumed", False) and fresh_retry:
                    # the partial left by an earlier run was bad: try once more from 0
                    fresh_retry = False
                    progress.reset(key, 0)
                    continue
                progress.finish(key, "failed")
                raise DigestMismatch(f"{self._name(repository)}: {e}") from None
            except BaseException:
                progress.finish(key, "failed")
                raise
            progress.finish(key, "done")
            return d

    def _fetch_into(self, store, repository, d, size, key, progress, stop):
        what = f"{self._name(repository)}@{d}"
        with store.ingest(d, size) as ing:
            if getattr(ing, "exists", False):       # another writer finished it meanwhile
                ing.commit()
                return
            pos = ing.offset                       # bytes in the partial
            resumed = pos > 0
            progress.reset(key, pos)
            try:
                failures = 0
                while size is None or pos < size:
                    if stop is not None and stop.is_set():
                        raise _Stopped()
                    offset = pos
                    headers = {"Accept-Encoding": "identity"}
                    if offset:
                        headers["Range"] = f"bytes={offset}-"
                    resp = self._request("GET", f"/v2/{repository}/blobs/{d}", what=what, kind="blob",
                                         scope=self.scope(repository), headers=headers,
                                         ok=(200, 206), allow=(416,))
                    before = pos
                    error = None
                    try:
                        if resp.status_code == 416:      # the registry's copy ends before `size`
                            raise RegistryError(f"{what}: truncated after {pos} of {size} bytes: "
                                                f"the registry has nothing past byte {pos} (http 416)",
                                                status=416)
                        skip = 0
                        if offset and resp.status_code == 206:
                            m = re.match(r"bytes\s+(\d+)-", resp.headers.get("Content-Range", ""))
                            start = int(m.group(1)) if m else -1
                            if start < 0 or start > offset:
                                raise RegistryError(f"{what}: bad content-range "
                                                    f"{resp.headers.get('Content-Range')!r} for offset {offset}")
                            skip = offset - start
                        elif offset:
                            skip = offset          # the registry ignored Range: skip what we have
                        for chunk in resp.iter_bytes(DEFAULT_CHUNK):
                            if stop is not None and stop.is_set():
                                raise _Stopped()
                            if skip:
                                n = min(skip, len(chunk))
                                chunk, skip = chunk[n:], skip - n
                                if not chunk:
                                    continue
                            ing.write(chunk)      # DigestMismatch (partial discarded) if too long
                            pos += len(chunk)
                            progress.advance(key, len(chunk))
                        if size is None:
                            break
                    except _http.TransportError as e:
                        error = e
                    finally:
                        resp.close()
                    if size is not None and pos >= size:
                        break
                    # a dropped connection or a short body: resume from where we are
                    failures = 0 if pos > before else failures + 1
                    if failures > self.retries:
                        why = self._transport_message(error) if error else "body ended early"
                        raise RegistryError(f"{what}: truncated after {pos} of {size} bytes: {why}")
                    if failures:
                        self._sleep(failures - 1, None)
            except _Stopped:
                if pos == 0:
                    ing.abort()                    # nothing worth keeping for a resume
                raise
            try:
                ing.commit(sync_dir=False)         # pull() syncs the blob dirs once
            except DigestMismatch as e:
                e._resumed = resumed
                raise

    def pull(self, store, ref, platform: str | None = None, progress: Progress | None = None,
             parallel: int = DEFAULT_PARALLEL, names=None):
        """Pull `ref` (a Reference; its repository is read from this client's registry)
        into `store`; returns the Image. names: the names to record (default: the
        reference itself when it has a tag).

        platform: picks the entry of an index; and the image's config must name it (os,
        architecture, variant when both say one), else RegistryError before any layer is
        fetched. None: this host's platform, and a single image for another platform is
        pulled with a warning (podman's and docker's behaviour without --platform)."""
        progress = progress or Progress()
        strict = platform is not None
        platform = platform or _platform.host()
        _platform.parse(platform)                   # a bad --platform fails before any request
        repo = ref.repository
        reference = ref.digest or ref.tag or "latest"
        what = self._name(repo, reference)
        data, media_type, mdigest, doc = self.get_manifest(repo, reference, expected=ref.digest)
        if media_type in INDEX_TYPES:
            desc = select_platform(doc["manifests"], platform, what)
            data, media_type, mdigest, doc = self.get_manifest(repo, desc["digest"], expected=desc["digest"])
            if media_type not in MANIFEST_TYPES:
                raise RegistryError(f"{what}: platform {platform} entry {desc['digest']} is a "
                                    f"{media_type}, not an image manifest")
        cdesc = doc["config"]
        descs, seen = [], {cdesc["digest"]}
        for dsc in doc["layers"]:
            if dsc["digest"] not in seen:
                seen.add(dsc["digest"])
                descs.append(dsc)
        if names is None:
            names = [str(ref)] if ref.tag else []
        progress.message(f"Pulling {what}")
        config = self._get_config(store, repo, cdesc, progress)
        other = platform_mismatch(config, platform, f"{what}: config {cdesc['digest']}")
        if other and strict:
            raise RegistryError(f"{what}: image platform {other} does not match the requested "
                                f"platform {platform}")
        if other:
            progress.message(f"WARNING: image platform ({other}) does not match the expected "
                             f"platform ({platform})")
        lease = getattr(store, "lease", None)
        with (lease() if callable(lease) else contextlib.nullcontext()):
            if not store.has_blob(cdesc["digest"]):
                store.write_blob(config, expected=cdesc["digest"], sync_dir=False)
            self._fetch_all(store, repo, descs, progress, parallel)
            if not store.has_blob(mdigest):
                store.write_blob(data, expected=mdigest, sync_dir=False)
            store.sync_blob_dirs()
            progress.message(f"Writing manifest {mdigest}")
            return store.add_image(mdigest, names=list(names))

    def _get_config(self, store, repo: str, desc: dict, progress: Progress) -> bytes:
        """The image config's bytes, verified, held in memory (from the store when it is
        there): the platform is checked before anything is written."""
        d, size = desc["digest"], desc["size"]
        key, label = f"config:{d}", f"Copying config {d.split(':', 1)[1][:12]}"
        progress.add(key, size, label)
        if store.has_blob(d):
            progress.finish(key, "skipped: already exists")
            return store.read_blob(d)
        what = f"{self._name(repo)}@{d}"
        if size > MAX_CONFIG_BYTES:
            progress.finish(key, "failed")
            raise RegistryError(f"{what}: config of {size} bytes is larger than {MAX_CONFIG_BYTES}")
        attempt = 0
        try:
            while True:
                resp = self._request("GET", f"/v2/{repo}/blobs/{d}", what=what, kind="blob",
                                     scope=self.scope(repo), headers={"Accept-Encoding": "identity"})
                try:
                    data = resp.read(size)
                    break
                except _http.TransportError as e:
                    if attempt >= self.retries:
                        raise RegistryError(f"{what}: {self._transport_message(e)}") from None
                finally:
                    resp.close()
                self._sleep(attempt, None)
                attempt += 1
            v = _digest.Verifier(d, size)
            v.update(data)
            try:
                v.check()
            except DigestMismatch as e:
                raise DigestMismatch(f"{self._name(repo)}: {e}") from None
        except BaseException:
            progress.finish(key, "failed")
            raise
        progress.advance(key, size)
        progress.finish(key, "done")
        return data

    def _fetch_all(self, store, repo, descs, progress, parallel):
        stop = threading.Event()
        _parallel(lambda dsc: self.fetch_blob(store, repo, dsc, progress, stop),
                   descs, parallel, "keel-pull", stop)

    # -- writing ----------------------------------------------------------------
    def _upload_url(self, location: str, params: dict | None = None) -> str:
        return _http.with_params(self._url(location), params)

    def mount_blob(self, repository: str, d: str, from_repository: str) -> str | None:
        """Cross-repository mount. None when mounted, else the upload location the
        registry opened instead (the blob is not readable from there)."""
        scope = f"{self.scope(repository, 'pull,push')} {self.scope(from_repository, 'pull')}"
        what = f"{self._name(repository)}@{d}"
        resp = self._request("POST", f"/v2/{repository}/blobs/uploads/", what=what, kind="upload",
                             scope=scope, params={"mount": d, "from": from_repository},
                             ok=(201, 202), retries=0)
        resp.close()
        if resp.status_code == 201:
            return None
        loc = resp.headers.get("Location")
        if not loc:
            raise RegistryError(f"{what}: upload started without a location")
        return loc

    def upload_blob(self, repository: str, d: str, size: int, opener, *, location: str | None = None,
                    chunk_size: int | None = None, on_bytes=None) -> None:
        """Upload a blob read from `opener()` (a binary file object): monolithic when it
        fits in chunk_size (default self.chunk_size), else PATCH chunks + PUT."""
        scope = self.scope(repository, "pull,push")
        what = f"{self._name(repository)}@{d}"
        chunk_size = self.chunk_size if chunk_size is None else chunk_size
        if location is None:
            resp = self._request("POST", f"/v2/{repository}/blobs/uploads/", what=what, kind="upload",
                                 scope=scope, ok=(202,), retries=self.retries)
            resp.close()
            location = resp.headers.get("Location")
            if not location:
                raise RegistryError(f"{what}: upload started without a location")
        if not chunk_size or size <= chunk_size:
            def body():
                def gen():
                    with opener() as f:
                        while True:
                            b = f.read(DEFAULT_CHUNK)
                            if not b:
                                break
                            if on_bytes:
                                on_bytes(len(b))
                            yield b
                return gen()

            resp = self._request("PUT", self._upload_url(location, {"digest": d}), what=what,
                                 kind="upload", scope=scope, body=body, ok=(201,), retries=0,
                                 headers={"Content-Type": "application/octet-stream",
                                          "Content-Length": str(size)})
            resp.close()
            return
        offset = 0
        with opener() as f:
            while offset < size:
                b = f.read(chunk_size)
                if not b:
                    raise RegistryError(f"{what}: local blob shorter than {size} bytes")
                resp = self._request("PATCH", self._upload_url(location), what=what, kind="upload",
                                     scope=scope, body=b, ok=(202,), retries=0,
                                     headers={"Content-Type": "application/octet-stream",
                                              "Content-Range": f"{offset}-{offset + len(b) - 1}",
                                              "Content-Length": str(len(b))})
                resp.close()
                location = resp.headers.get("Location") or location
                offset += len(b)
                if on_bytes:
                    on_bytes(len(b))
        resp = self._request("PUT", self._upload_url(location, {"digest": d}), what=what, kind="upload",
                             scope=scope, body=b"", ok=(201,), retries=0,
                             headers={"Content-Length": "0"})
        resp.close()

    def put_manifest(self, repository: str, reference: str, data: bytes, media_type: str) -> str:
        """PUT a manifest (bytes as given) under a tag or its digest; returns its digest."""
        d = _digest.of_bytes(data)
        what = self._name(repository, reference)
        resp = self._request("PUT", f"/v2/{repository}/manifests/{reference}", what=what,
                             kind="manifest-put", scope=self.scope(repository, "pull,push"),
                             body=data, ok=(201, 200), headers={"Content-Type": media_type})
        resp.close()
        said = resp.headers.get("Docker-Content-Digest")
        if said and said != d and said.split(":")[0] == "sha256":
            raise DigestMismatch(f"manifest {what}: registry stored it as {said}, expected {d}")
        return d

    def push_blob(self, store, repository: str, desc: dict, progress: Progress | None = None,
                  mount_from=(), kind: str = "blob") -> str:
        """Make one stored blob present in `repository`: "exists", "mounted" or "uploaded"."""
        progress = progress or Progress()
        d, size = desc["digest"], desc["size"]
        key = f"push:{repository}:{d}"
        progress.add(key, size, f"Copying {kind} {d.split(':', 1)[1][:12]}")
        try:
            if self.blob_exists(repository, d, actions="pull,push"):
                progress.finish(key, "skipped: already exists")
                return "exists"
            location = None
            for src in mount_from:
                if src == repository:
                    continue
                try:
                    location = self.mount_blob(repository, d, src)
                except RegistryError:
                    continue
                if location is None:
                    progress.finish(key, f"mounted from {src}")
                    return "mounted"
                break
            attempt = 0
            while True:
                progress.reset(key, 0)
                try:
                    self.upload_blob(repository, d, size, lambda: store.open_blob(d), location=location,
                                     on_bytes=lambda n: progress.advance(key, n))
                    break
                except RegistryError as e:
                    retryable = e.status is None or e.status in RETRY_STATUSES
                    if not retryable or attempt >= self.retries:
                        raise
                    self._sleep(attempt, None)
                    attempt += 1
                    location = None
        except BaseException:
            progress.finish(key, "failed")
            raise
        progress.finish(key, "done")
        return "uploaded"

    def push(self, store, image, ref, progress: Progress | None = None, *,
             parallel: int = DEFAULT_PARALLEL, mount_from=(), mount: bool = True) -> str:
        """Push a stored image (an Image, or a name/id for store.get) to `ref` of this
        registry; returns the manifest digest. Blobs missing there are mounted from the
        `mount_from` repositories, or from other repositories of this registry that the
        image is known by (its names, and store.blob_sources() when the store records
        them); mount=False always uploads."""
        progress = progress or Progress()
        if isinstance(image, str):
            image = store.get(image)
        data = store.read_blob(image.manifest_digest)
        what = self._name(ref.repository, ref.tag or ref.digest)
        try:
            doc = json.loads(data)
        except ValueError:
            raise ImageError(f"stored manifest {image.manifest_digest} is not json") from None
        media_type = doc.get("mediaType") or getattr(image, "media_type", None) or OCI_MANIFEST
        candidates = list(mount_from)
        for n in (getattr(image, "names", None) or ()) if mount else ():
            reg, _, rest = str(n).partition("/")
            repo = re.split(r"[:@]", rest, maxsplit=1)[0]
            if reg == self.registry and repo and repo != ref.repository and repo not in candidates:
                candidates.append(repo)
        descs, seen = [], set()
        for dsc in list(doc.get("layers") or []) + [doc["config"]]:
            if dsc["digest"] not in seen:
                seen.add(dsc["digest"])
                descs.append(dsc)

        def one(dsc):
            srcs = list(candidates)
            sources = getattr(store, "blob_sources", None) if mount else None
            if callable(sources):
                for reg, repo in sources(dsc["digest"]) or ():
                    if reg == self.registry and repo not in srcs:
                        srcs.append(repo)
            kind = "config" if dsc["digest"] == doc["config"]["digest"] else "blob"
            return self.push_blob(store, ref.repository, dsc, progress, mount_from=srcs, kind=kind)

        progress.message(f"Pushing {what}")
        _parallel(one, descs, parallel, "keel-push")
        progress.message(f"Writing manifest {image.manifest_digest}")
        got = self.put_manifest(ref.repository, ref.tag or ref.digest or "latest", data, media_type)
        if got != image.manifest_digest and image.manifest_digest.startswith("sha256:"):
            raise DigestMismatch(f"manifest {image.manifest_digest}: stored bytes hash to {got}")
        return got


# -- the whole pull and push, with registries.conf ----------------------------------

def pull_image(store, name: str, *, platform: str | None = None, progress: Progress | None = None,
               parallel: int = DEFAULT_PARALLEL, tls_verify: bool = True, authfile: str | None = None,
               credentials=None, conf=None, certs_dirs=None, on_request=None, **client_kw):
    """`keel pull NAME`: resolve NAME with registries.conf (aliases, search registries),
    try each candidate at its mirrors and then its location; returns the Image.
    The recorded name is the candidate's, whichever mirror served it."""
    from keel.image import registries as _registries

    if platform is not None:
        _platform.parse(platform)
    conf = conf if conf is not None else _registries.load()
    candidates = conf.resolve(name)
    errors = []
    for ref in candidates:
        sources = conf.sources(ref)
        for src in sources:
            src_ref = _retarget(ref, src.registry, src.repository)
            try:
                with _client_for(src.registry, src.insecure or not tls_verify, authfile, credentials,
                                 certs_dirs, on_request, client_kw) as client:
                    return client.pull(store, src_ref, platform=platform, progress=progress,
                                       parallel=parallel,
                                       names=[str(ref)] if ref.tag else [])
            except DigestMismatch:
                raise
            except RegistryError as e:
                errors.append(e)
                if len(candidates) == 1 and len(sources) == 1:
                    raise
    if len(errors) == 1:
        raise errors[0]
    raise RegistryError(f"pulling {name}: " + "; ".join(str(e) for e in errors),
                        status=errors[-1].status if errors else None)


def push_image(store, image, dest: str, *, progress: Progress | None = None,
               parallel: int = DEFAULT_PARALLEL, tls_verify: bool = True, authfile: str | None = None,
               credentials=None, conf=None, certs_dirs=None, on_request=None, **client_kw) -> str:
    """`keel push IMAGE DEST`: returns the manifest digest."""
    from keel.image import reference, registries as _registries

    conf = conf if conf is not None else _registries.load()
    ref = reference.parse(dest)
    if conf.is_blocked(ref):
        raise RegistryError(f"registry blocked by registries.conf: {ref.name}")
    entry = conf.find(ref.name)
    insecure = (entry is not None and entry.insecure) or not tls_verify
    with _client_for(ref.registry, insecure, authfile, credentials, certs_dirs, on_request,
                     client_kw) as client:
        return client.push(store, image, ref, progress=progress, parallel=parallel)


def _retarget(ref, registry, repository):
    from keel.image.reference import Reference

    return Reference(registry, repository, ref.tag, ref.digest)


def _client_for(registry, insecure, authfile, credentials, certs_dirs, on_request, client_kw):
    from keel.image import registries as _registries

    dirs = _registries.CERTS_DIRS if certs_dirs is None else certs_dirs
    ca_dir = _registries.certs_dir_for(registry, dirs)
    return RegistryClient(registry, insecure=insecure, ca_dir=ca_dir, credentials=credentials,
                          authfile=authfile, on_request=on_request, **client_kw)
