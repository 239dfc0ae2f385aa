"""Registries for the keel.image tests: the real Debian `docker-registry` (CNCF distribution)
on 127.0.0.1, a token server for it, and a small "lying registry" that misbehaves on purpose.

Fixtures (import the ones a test file uses: `from registry_fixtures import registry, ...`):

  registry         session: docker-registry without auth            -> Registry
  registry_basic   session: docker-registry with htpasswd basic auth (user "keel", "s3cret")
  registry_token   session: docker-registry with token auth; its TokenServer (same users)
                   is registry_token.token_server
  registry_tls     session: docker-registry without auth over TLS; registry_tls.certs_dir is a
                   certs.d root holding <host:port>/ca.crt
  lying_registry   function: a LyingRegistry (http.server in a thread)

Each registry has its own storage dir and runs as its own process, stopped by pid at
teardown. Helpers: skopeo(*args) runs skopeo with an accept-anything policy and a private
auth file; skopeo_push(layout_dir, dest, creds=None, *extra) copies oci:DIR:latest to
docker://dest; make_image(...) builds an image in memory for the lying registry.
"""

import base64
import datetime
import gzip
import hashlib
import http.server
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tarfile
import tempfile
import threading
import time
import uuid

import pytest

USERS = {"keel": "s3cret"}
REGISTRY_BIN = shutil.which("docker-registry") or "/usr/bin/docker-registry"
SKOPEO_BIN = shutil.which("skopeo") or "/usr/bin/skopeo"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"

needs_registry = pytest.mark.skipif(not os.path.exists(REGISTRY_BIN),
                                    reason="docker-registry not installed (apt-get install docker-registry)")
needs_skopeo = pytest.mark.skipif(not os.path.exists(SKOPEO_BIN),
                                  reason="skopeo not installed (apt-get install skopeo)")


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- certificates and keys ----------------------------------------------------------------

def make_cert(common_name: str, *, ip: str | None = None, ca: tuple | None = None, is_ca=False):
    """(key, cert) with cryptography: self-signed when ca is None, else signed by ca=(key, cert)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    import ipaddress

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    issuer_key, issuer_name = (key, name) if ca is None else (ca[0], ca[1].subject)
    b = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer_name)
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - datetime.timedelta(hours=1))
         .not_valid_after(now + datetime.timedelta(days=2))
         .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True))
    if ip:
        b = b.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]),
                            critical=False)
    cert = b.sign(issuer_key, hashes.SHA256())
    return key, cert


def pem_cert(cert) -> bytes:
    from cryptography.hazmat.primitives import serialization
    return cert.public_bytes(serialization.Encoding.PEM)


def pem_key(key) -> bytes:
    from cryptography.hazmat.primitives import serialization
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def sign_jwt_es256(key, cert, claims: dict) -> str:
    """A compact JWS (ES256) whose header carries the signing cert in x5c, as distribution's
    token auth wants it (the cert is in the registry's rootcertbundle)."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

    der = cert.public_bytes(serialization.Encoding.DER)
    header = {"typ": "JWT", "alg": "ES256", "x5c": [base64.b64encode(der).decode()]}
    signing_input = (_b64url(json.dumps(header, separators=(",", ":")).encode()) + "."
                     + _b64url(json.dumps(claims, separators=(",", ":")).encode()))
    r, s = decode_dss_signature(key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
    return signing_input + "." + _b64url(r.to_bytes(32, "big") + s.to_bytes(32, "big"))


# -- the token server ---------------------------------------------------------------------

class TokenServer:
    """Issues registry bearer tokens: GET /token?service=..&scope=.. with basic auth.

    Valid credentials get every action they ask for; anonymous requests get `anonymous`
    actions (default: none) ; wrong credentials get 401. `requests` records
    (user or None, [scopes], ok) of each GET token request.

    POST /token is the OAuth2 form (grant_type=refresh_token with a refresh token from
    `refresh_tokens` {token: user}, client_id required); `grants` records the form of each.
    `expires_in` is what each token response says (default 300)."""

    def __init__(self, service="keel-test-registry", issuer="keel-test-issuer", users=None,
                 anonymous=()):
        self.service, self.issuer = service, issuer
        self.users = dict(USERS if users is None else users)
        self.anonymous = tuple(anonymous)
        self.key, self.cert = make_cert("keel test token issuer", is_ca=True)
        self.requests = []
        self.grants = []
        self.refresh_tokens = {}
        self.expires_in = 300
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                from urllib.parse import parse_qs, urlparse

                u = urlparse(self.path)
                if u.path != "/token":
                    self.send_error(404)
                    return
                q = parse_qs(u.query)
                scopes = [s for v in q.get("scope", []) for s in v.split(" ") if s]
                user = None
                auth = self.headers.get("Authorization", "")
                if auth.startswith("Basic "):
                    try:
                        user, _, pw = base64.b64decode(auth[6:]).decode().partition(":")
                    except ValueError:
                        user, pw = "?", None
                    if server.users.get(user) != pw:
                        server.requests.append((user, scopes, False))
                        body = b'{"details":"invalid credentials"}'
                        self.send_response(401)
                        self.send_header("Content-Type", "application/json")
                        self.send_header("Content-Length", str(len(body)))
                        self.end_headers()
                        self.wfile.write(body)
                        return
                server.requests.append((user, scopes, True))
                token = server.issue(user, scopes)
                self._json(200, {"token": token, "access_token": token, "expires_in": server.expires_in})

            def do_POST(self):
                from urllib.parse import parse_qs

                n = int(self.headers.get("Content-Length") or 0)
                form = {k: v[0] for k, v in parse_qs(self.rfile.read(n).decode()).items()}
                server.grants.append(form)
                if self.path != "/token":
                    self._json(404, {"error": "not_found"})
                    return
                user = server.refresh_tokens.get(form.get("refresh_token"))
                if form.get("grant_type") != "refresh_token" or not form.get("client_id"):
                    self._json(400, {"error": "unsupported_grant_type"})
                    return
                if user is None:
                    self._json(400, {"error": "invalid_grant"})
                    return
                scopes = [s for s in form.get("scope", "").split(" ") if s]
                token = server.issue(user, scopes)
                self._json(200, {"access_token": token, "expires_in": server.expires_in,
                                 "scope": form.get("scope", "")})

            def _json(self, status, doc):
                body = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = _server(Handler)
        self.port = self.httpd.server_address[1]
        self.realm = f"http://127.0.0.1:{self.port}/token"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()

    def issue(self, user, scopes) -> str:
        access = []
        for s in scopes:
            parts = s.split(":")
            if len(parts) < 3:
                continue
            typ, name, actions = parts[0], ":".join(parts[1:-1]), parts[-1].split(",")
            if user is None:
                actions = [a for a in actions if a in self.anonymous]
            if actions:
                access.append({"type": typ, "name": name, "actions": actions})
        now = int(time.time())
        claims = {"iss": self.issuer, "sub": user or "", "aud": self.service, "exp": now + 300,
                  "nbf": now - 10, "iat": now, "jti": uuid.uuid4().hex, "access": access}
        return sign_jwt_es256(self.key, self.cert, claims)

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


# -- the real registry --------------------------------------------------------------------

class Registry:
    """A docker-registry process. host is "127.0.0.1:PORT"."""

    def __init__(self, workdir, *, auth=None, tls=False, users=None):
        self.workdir = str(workdir)
        os.makedirs(self.workdir, exist_ok=True)
        self.storage = os.path.join(self.workdir, "storage")
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.users = dict(USERS if users is None else users)
        self.token_server = None
        self.certs_dir = None
        self.scheme = "https" if tls else "http"
        config = {
            "version": "0.1",
            "log": {"level": "error", "accesslog": {"disabled": True}},
            "storage": {"filesystem": {"rootdirectory": self.storage}, "delete": {"enabled": True},
                        "maintenance": {"uploadpurging": {"enabled": False}}},
            "http": {"addr": self.host, "secret": uuid.uuid4().hex},
        }
        if auth == "htpasswd":
            path = os.path.join(self.workdir, "htpasswd")
            with open(path, "w") as f:
                for u, p in self.users.items():
                    f.write(f"{u}:{_bcrypt(p)}\n")
            config["auth"] = {"htpasswd": {"realm": "keel-test", "path": path}}
        elif auth == "token":
            self.token_server = TokenServer(users=self.users)
            bundle = os.path.join(self.workdir, "token-ca.pem")
            with open(bundle, "wb") as f:
                f.write(pem_cert(self.token_server.cert))
            config["auth"] = {"token": {"realm": self.token_server.realm,
                                        "service": self.token_server.service,
                                        "issuer": self.token_server.issuer,
                                        "rootcertbundle": bundle}}
        if tls:
            ca = make_cert("keel test ca", is_ca=True)
            key, cert = make_cert("127.0.0.1", ip="127.0.0.1", ca=ca)
            crt_path = os.path.join(self.workdir, "server.crt")
            key_path = os.path.join(self.workdir, "server.key")
            with open(crt_path, "wb") as f:
                f.write(pem_cert(cert))
            with open(key_path, "wb") as f:
                f.write(pem_key(key))
            self.certs_dir = os.path.join(self.workdir, "certs.d")
            os.makedirs(os.path.join(self.certs_dir, self.host))
            with open(os.path.join(self.certs_dir, self.host, "ca.crt"), "wb") as f:
                f.write(pem_cert(ca[1]))
            config["http"]["tls"] = {"certificate": crt_path, "key": key_path}
        self.config_path = os.path.join(self.workdir, "config.yml")
        with open(self.config_path, "w") as f:
            json.dump(config, f, indent=1)        # YAML is a superset of JSON
        self.log_path = os.path.join(self.workdir, "registry.log")
        self.proc = None
        self.start()

    def start(self):
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen([REGISTRY_BIN, "serve", self.config_path], stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True, preexec_fn=_die_with_parent)
        finally:
            log.close()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"docker-registry exited {self.proc.returncode}: {self.log()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"docker-registry did not listen on {self.host}: {self.log()}")

    def log(self) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()[-2000:]
        except OSError:
            return ""

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        if self.token_server is not None:
            self.token_server.stop()
            self.token_server = None

    @property
    def creds(self) -> str:
        u, p = next(iter(self.users.items()))
        return f"{u}:{p}"

    @property
    def credentials(self) -> tuple:
        return next(iter(self.users.items()))


def _die_with_parent():
    """In the child before exec: SIGTERM when the test process dies (a killed pytest
    must not leave registries behind)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGTERM, 0, 0, 0)          # PR_SET_PDEATHSIG


def _bcrypt(password: str) -> str:
    try:
        import bcrypt
        return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=5)).decode()
    except ImportError:
        out = subprocess.run(["htpasswd", "-nbB", "-C", "5", "x", password], check=True,
                             capture_output=True, text=True).stdout
        return out.strip().split(":", 1)[1]


def _server(handler):
    """A threading HTTP server on a free 127.0.0.1 port whose close never waits for its
    handler threads (a client that keeps a connection open cannot hang a teardown)."""
    handler.timeout = 10
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    httpd.block_on_close = False
    return httpd


def _registry_fixture(tmp_path_factory, **kw):
    if not os.path.exists(REGISTRY_BIN):
        pytest.skip("docker-registry not installed (apt-get install docker-registry)")
    r = Registry(tmp_path_factory.mktemp("registry"), **kw)
    return r


@pytest.fixture(scope="session")
def registry(tmp_path_factory):
    r = _registry_fixture(tmp_path_factory)
    yield r
    r.stop()


@pytest.fixture(scope="session")
def registry_basic(tmp_path_factory):
    r = _registry_fixture(tmp_path_factory, auth="htpasswd")
    yield r
    r.stop()


@pytest.fixture(scope="session")
def registry_token(tmp_path_factory):
    r = _registry_fixture(tmp_path_factory, auth="token")
    yield r
    r.stop()


@pytest.fixture(scope="session")
def registry_tls(tmp_path_factory):
    r = _registry_fixture(tmp_path_factory, tls=True)
    yield r
    r.stop()


# -- skopeo -------------------------------------------------------------------------------

def skopeo(*args, timeout=60) -> str:
    """Run skopeo with an accept-anything policy and an empty private auth file."""
    if not os.path.exists(SKOPEO_BIN):
        pytest.skip("skopeo not installed (apt-get install skopeo)")
    with tempfile.TemporaryDirectory(prefix="keel-skopeo-") as d:
        authfile = os.path.join(d, "auth.json")
        with open(authfile, "w") as f:
            f.write('{"auths": {}}')
        env = dict(os.environ, REGISTRY_AUTH_FILE=authfile, HOME=d, XDG_RUNTIME_DIR=d,
                   CONTAINERS_REGISTRIES_CONF=os.path.join(d, "registries.conf"))
        open(env["CONTAINERS_REGISTRIES_CONF"], "w").close()
        p = subprocess.run([SKOPEO_BIN, "--insecure-policy", *args], capture_output=True, text=True,
                           timeout=timeout, env=env, stdin=subprocess.DEVNULL)
    if p.returncode != 0:
        raise AssertionError(f"skopeo {' '.join(args)} failed ({p.returncode}): {p.stderr.strip()}")
    return p.stdout


def skopeo_push(layout_dir: str, dest: str, creds: str | None = None, *extra, ref="latest") -> str:
    """skopeo copy oci:DIR:ref docker://dest (plain http); returns dest."""
    args = ["copy", "--quiet", "--dest-tls-verify=false", *extra]
    if creds:
        args += ["--dest-creds", creds]
    skopeo(*args, f"oci:{layout_dir}:{ref}", f"docker://{dest}")
    return dest


def skopeo_raw(ref: str, creds: str | None = None) -> bytes:
    args = ["inspect", "--raw", "--tls-verify=false"]
    if creds:
        args += ["--creds", creds]
    return skopeo(*args, f"docker://{ref}").encode()


# -- images built in memory ---------------------------------------------------------------

def tar_bytes(files: dict) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 1700000000
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def make_image(layers=None, *, architecture="amd64", variant=None, media_type=OCI_MANIFEST,
               config_changes=None):
    """An image as bytes: {"manifest", "manifest_digest", "media_type", "config_digest",
    "layer_digests", "blobs": {digest: bytes}} (layers: list of {name: bytes} dicts).
    config_changes: keys to set in the config (None as a value removes the key)."""
    if layers is None:
        layers = [{"hello.txt": b"hello from keel\n"}]
    docker = media_type != OCI_MANIFEST
    blobs, descs, diff_ids = {}, [], []
    for files in layers:
        tar = tar_bytes(files)
        gz = gzip.compress(tar, mtime=0)
        diff_ids.append(sha256(tar))
        blobs[sha256(gz)] = gz
        descs.append({"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip" if docker
                      else OCI_LAYER_GZIP, "digest": sha256(gz), "size": len(gz)})
    cfg = {"created": "2023-11-14T22:13:20Z", "architecture": architecture, "os": "linux",
           "config": {"Cmd": ["/bin/sh"]}, "rootfs": {"type": "layers", "diff_ids": diff_ids}}
    if variant:
        cfg["variant"] = variant
    for k, v in (config_changes or {}).items():
        if v is None:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    cfg_bytes = json.dumps(cfg, sort_keys=True).encode()
    blobs[sha256(cfg_bytes)] = cfg_bytes
    manifest = {"schemaVersion": 2, "mediaType": media_type,
                "config": {"mediaType": "application/vnd.docker.container.image.v1+json" if docker
                           else OCI_CONFIG, "digest": sha256(cfg_bytes), "size": len(cfg_bytes)},
                "layers": descs}
    m = json.dumps(manifest, indent=2).encode()
    return {"manifest": m, "manifest_digest": sha256(m), "media_type": media_type,
            "config_digest": sha256(cfg_bytes), "layer_digests": [d["digest"] for d in descs],
            "blobs": blobs}


def make_index(images: list, platforms: list, media_type=OCI_INDEX) -> bytes:
    """An index (or Docker manifest list) of `images` (make_image results) for `platforms`
    ("linux/amd64", "linux/arm64/v8", "unknown/unknown")."""
    ms = []
    for img, plat in zip(images, platforms):
        parts = plat.split("/")
        p = {"os": parts[0], "architecture": parts[1]}
        if len(parts) > 2:
            p["variant"] = parts[2]
        ms.append({"mediaType": img["media_type"], "digest": img["manifest_digest"],
                   "size": len(img["manifest"]), "platform": p})
    return json.dumps({"schemaVersion": 2, "mediaType": media_type, "manifests": ms}, indent=2).encode()


# -- the lying registry -------------------------------------------------------------------

class LyingRegistry:
    """An OCI distribution server (read side) in a thread that lies when told to.

    add_image(repo, tag, image) / add_manifest(repo, ref, bytes, media_type) / blobs[digest].
    Lies, set as attributes:
      fail[path_regex] = [status, ...]   answer these statuses first (then serve); a 429 or 503
                                         carries Retry-After: retry_after (default "0")
      truncate[digest] = n               the next n GETs of the blob send the full
                                         Content-Length but only truncate_at bytes, then close
      corrupt[digest] = bytes            serve these bytes for the blob
      short_body[digest] = n             the registry's copy of the blob is its first n bytes
                                         (complete-looking short responses; 416 past n)
      html = True                        every manifest is an HTML page (200, text/html)
      ignore_range = True                answer Range requests with 200 and the whole blob
      wrong_digest_header = True         Docker-Content-Digest names another digest
      blob_delay = seconds               each blob GET waits first (max_active_blobs records
                                         how many were served at once)
    requests: (method, path, headers dict) of every request received.
    """

    def __init__(self):
        self.manifests = {}       # (repo, ref) -> (bytes, media type)
        self.blobs = {}
        self.fail = {}
        self.truncate = {}
        self.truncate_at = None
        self.corrupt = {}
        self.short_body = {}
        self.html = False
        self.ignore_range = False
        self.wrong_digest_header = False
        self.retry_after = "0"
        self.blob_delay = 0.0
        self.max_active_blobs = 0
        self._active = 0
        self.requests = []
        self._lock = threading.Lock()
        reg = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def handle(self):
                # a TLS probe (client hello) gets the connection closed, as a plain-http
                # server that cannot speak TLS would
                try:
                    first = self.request.recv(1, socket.MSG_PEEK)
                except OSError:
                    return
                if first in (b"", b"\x16"):
                    return
                super().handle()

            def do_HEAD(self):
                self._serve(head=True)

            def do_GET(self):
                self._serve(head=False)

            def _send(self, status, body=b"", headers=None, head=False):
                self.send_response(status)
                h = {"Content-Length": str(len(body))}
                h.update(headers or {})
                for k, v in h.items():
                    self.send_header(k, v)
                self.end_headers()
                if not head and body:
                    self.wfile.write(body)

            def _error(self, status, code, message):
                body = json.dumps({"errors": [{"code": code, "message": message}]}).encode()
                self._send(status, body, {"Content-Type": "application/json"})

            def _serve(self, head):
                path = self.path.split("?")[0]
                with reg._lock:
                    reg.requests.append((self.command, path, dict(self.headers.items())))
                    for pattern, statuses in reg.fail.items():
                        if statuses and re.search(pattern, path):
                            status = statuses.pop(0)
                            break
                    else:
                        status = None
                if status is not None:
                    h = {"Content-Type": "application/json"}
                    if status in (429, 503):
                        h["Retry-After"] = reg.retry_after
                    body = json.dumps({"errors": [{"code": "UNAVAILABLE",
                                                   "message": "try again"}]}).encode()
                    self._send(status, body, h, head)
                    return
                if path == "/v2/" or path == "/v2":
                    self._send(200, b"{}", {"Content-Type": "application/json"}, head)
                    return
                m = re.fullmatch(r"/v2/(.+)/(manifests|blobs)/([^/]+)", path)
                if not m:
                    self._error(404, "NOT_FOUND", "not found")
                    return
                repo, kind, ref = m.groups()
                if kind == "manifests":
                    self._manifest(repo, ref, head)
                else:
                    self._blob(ref, head)

            def _manifest(self, repo, ref, head):
                entry = reg.manifests.get((repo, ref))
                if entry is None:
                    self._error(404, "MANIFEST_UNKNOWN", "manifest unknown")
                    return
                data, mt = entry
                if reg.html:
                    page = b"<!DOCTYPE html><html><body><h1>Welcome to our login portal</h1></body></html>"
                    self._send(200, page, {"Content-Type": "text/html; charset=utf-8"}, head)
                    return
                d = sha256(data)
                if reg.wrong_digest_header:
                    d = sha256(data + b" ")
                self._send(200, data, {"Content-Type": mt, "Docker-Content-Digest": d}, head)

            def _blob(self, d, head):
                with reg._lock:
                    reg._active += 1
                    reg.max_active_blobs = max(reg.max_active_blobs, reg._active)
                try:
                    if reg.blob_delay:
                        time.sleep(reg.blob_delay)
                    self._blob_body(d, head)
                finally:
                    with reg._lock:
                        reg._active -= 1

            def _blob_body(self, d, head):
                data = reg.corrupt.get(d, reg.blobs.get(d))
                if data is not None and d in reg.short_body:
                    data = data[:reg.short_body[d]]
                if data is None:
                    self._error(404, "BLOB_UNKNOWN", "blob unknown to registry")
                    return
                start = 0
                rng = self.headers.get("Range")
                if rng and not reg.ignore_range:
                    m = re.fullmatch(r"bytes=(\d+)-", rng.strip())
                    start = int(m.group(1)) if m else 0
                    if start >= len(data):
                        self._send(416, b"", {"Content-Range": f"bytes */{len(data)}"}, head)
                        return
                body = data[start:]
                status = 206 if start else 200
                headers = {"Content-Type": "application/octet-stream", "Docker-Content-Digest": d}
                if start:
                    headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
                with reg._lock:
                    cut = reg.truncate.get(d, 0) > 0
                    if cut:
                        reg.truncate[d] -= 1
                if cut and not head:
                    n = reg.truncate_at if reg.truncate_at is not None else len(body) // 2
                    self.send_response(status)
                    self.send_header("Content-Length", str(len(body)))
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(body[:n])
                    self.wfile.flush()
                    self.close_connection = True
                    try:
                        self.request.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                    return
                self._send(status, body, headers, head)

        self.httpd = _server(Handler)
        self.port = self.httpd.server_address[1]
        self.host = f"127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()

    def add_image(self, repo: str, tag: str | None, image: dict) -> dict:
        self.blobs.update(image["blobs"])
        self.add_manifest(repo, image["manifest_digest"], image["manifest"], image["media_type"])
        if tag:
            self.add_manifest(repo, tag, image["manifest"], image["media_type"])
        return image

    def add_manifest(self, repo, ref, data: bytes, media_type: str):
        self.manifests[(repo, ref)] = (data, media_type)

    def blob_gets(self, d: str) -> list:
        """Headers of each GET of blob `d`."""
        return [h for (m, p, h) in self.requests if m == "GET" and p.endswith("/blobs/" + d)]

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def lying_registry():
    r = LyingRegistry()
    yield r
    r.stop()


# -- recording what keel sends --------------------------------------------------------------

class RecordingTransport:
    """An on_request hook for RegistryClient that records (method, path, query params,
    headers with lower-case names) of each request keel sends."""

    def __init__(self):
        self.requests = []

    def __call__(self, method, url, headers):
        import urllib.parse
        p = urllib.parse.urlsplit(url)
        self.requests.append((method, p.path, dict(urllib.parse.parse_qsl(p.query)),
                              {k.lower(): v for k, v in headers.items()}))

    def methods(self, method, path_part=""):
        return [r for r in self.requests if r[0] == method and path_part in r[1]]


def client(host, **kw):
    """A RegistryClient for the test registries: insecure (http), anonymous unless told,
    short backoff."""
    from keel.image.registry import RegistryClient

    kw.setdefault("credentials", False)
    kw.setdefault("backoff", 0.01)
    return RegistryClient(host, insecure=True, **kw)


def ref(s):
    from keel.image import reference

    return reference.parse(s)


def store_image(store, image: dict, names=()):
    """Put a make_image() image into a keel Store (blobs + record); returns the Image."""
    for d, data in image["blobs"].items():
        store.write_blob(data, expected=d)
    store.write_blob(image["manifest"], expected=image["manifest_digest"])
    return store.add_image(image["manifest_digest"], names=list(names))
