"""HTTP/1.1 for the registry client, on the standard library's http.client.

Why not httpx: `keel pull` is a short-lived process, and importing httpx and building its first
client cost 90-130 ms of every pull here, against 8-12 ms for http.client and ssl (bench/README.md);
a registry needs none of what httpx adds (HTTP/2, async, cookies).

What a registry client needs, and this gives: idle connections kept per (scheme, host, port) and
reused by the next request of any thread (keep-alive; a connection the server closed while idle
is replaced once, transparently, for a request whose body can be sent again); redirects followed
(blob GETs are redirected to storage backends; Authorization is dropped when the host changes);
proxies from HTTPS_PROXY/HTTP_PROXY and NO_PROXY as Go (and so podman) reads them; separate connect
and read timeouts; every failure below HTTP as one TransportError (ConnectError, Timeout).
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import socket
import threading
import urllib.parse

MAX_REDIRECTS = 10
MAX_DRAIN = 64 << 10               # a body this small is read to keep its connection
REDIRECT_STATUSES = (301, 302, 303, 307, 308)


class TransportError(Exception):
    """The request failed below HTTP: connect, TLS, reset, a body cut short."""


class ConnectError(TransportError):
    pass


class Timeout(TransportError):
    pass


def with_params(url: str, params) -> str:
    """`url` with query parameters (a dict or a list of pairs) appended to any it has."""
    if not params:
        return url
    items = params.items() if isinstance(params, dict) else params
    q = urllib.parse.urlencode([(k, v) for k, v in items if v is not None])
    return url + ("&" if "?" in url else "?") + q if q else url


def basic_auth(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def _env(name: str) -> str:
    return os.environ.get(name.lower()) or os.environ.get(name.upper()) or ""


def _no_proxy(host: str, port: int) -> bool:
    for entry in (e.strip().lower() for e in _env("no_proxy").split(",")):
        if not entry:
            continue
        if entry == "*":
            return True
        name, _, eport = entry.rpartition(":") if entry.count(":") == 1 else (entry, "", "")
        if eport and eport != str(port):
            continue
        if name.startswith("."):                # subdomains only
            if host.endswith(name):
                return True
        elif host == name or host.endswith("." + name):
            return True
    return False


def proxy_for(scheme: str, host: str, port: int) -> urllib.parse.SplitResult | None:
    """The proxy the environment names for this origin, or None. Go's rules, which podman
    and skopeo follow: HTTPS_PROXY for https, HTTP_PROXY for http (not under CGI, where a
    request header could set it), either spelling; NO_PROXY names hosts, "host:port" or
    ".domain" (subdomains only), or "*"; loopback hosts are never proxied."""
    if host in ("localhost", "127.0.0.1", "::1") or host.startswith("127."):
        return None
    if scheme == "http" and os.environ.get("REQUEST_METHOD"):
        return None
    value = _env(f"{scheme}_proxy")
    if not value or _no_proxy(host.lower(), port):
        return None
    if "://" not in value:
        value = "http://" + value
    p = urllib.parse.urlsplit(value)
    if p.scheme not in ("http", "https") or not p.hostname:
        raise TransportError(f"proxy {value!r} from the environment is not an http(s) url")
    return p


class _ConnectTimeout:
    """Connect (and TLS handshake) with connect_timeout, then read with timeout."""
    connect_timeout = None

    def connect(self):
        read_timeout = self.timeout
        self.timeout = self.connect_timeout or read_timeout
        try:
            super().connect()
        finally:
            self.timeout = read_timeout
        self.sock.settimeout(read_timeout)


class _HTTPConnection(_ConnectTimeout, http.client.HTTPConnection):
    pass


class _HTTPSConnection(_ConnectTimeout, http.client.HTTPSConnection):
    pass


class Response:
    """A response whose body has not been read yet. Read it with iter_bytes(), read() or
    json(); close() returns the connection to its pool when the body was read to the end."""

    def __init__(self, session, key, conn, raw: http.client.HTTPResponse, url: str, method: str):
        self._session, self._key, self._conn, self._raw = session, key, conn, raw
        self.status_code = raw.status
        self.headers = raw.msg              # case-insensitive .get()
        self.url = url
        self.method = method
        self._broken = False                # the body failed half-way: never reuse the connection

    def iter_bytes(self, chunk_size: int = 1 << 20):
        """The body in chunks of up to chunk_size bytes; TransportError if it is cut short."""
        raw, got = self._raw, 0
        self._broken = True                 # until the body ends where it should
        try:
            while True:
                b = raw.read(chunk_size)
                if not b:
                    # http.client's read(n) returns b"" at an early EOF instead of raising
                    if raw.length:
                        raise TransportError(f"connection closed after {got} bytes, {raw.length} "
                                             "short of the announced length")
                    self._broken = False
                    return
                got += len(b)
                yield b
        except http.client.IncompleteRead as e:
            raise TransportError(f"connection closed after {got + len(e.partial)} bytes, "
                                 f"{e.expected} short of the announced length") from None
        except (OSError, http.client.HTTPException) as e:
            raise _translate(e) from None

    def read(self, limit: int | None = None) -> bytes:
        out = bytearray()
        for b in self.iter_bytes(1 << 16):
            out += b
            if limit is not None and len(out) > limit:
                break
        return bytes(out)

    def json(self, limit: int = 4 << 20):
        return json.loads(self.read(limit))

    def close(self) -> None:
        raw, self._raw = self._raw, None
        if raw is None:
            return
        reusable = not raw.will_close and not self._broken
        if reusable and not raw.isclosed():
            length = raw.length
            if length is not None and length <= MAX_DRAIN:
                try:
                    raw.read()
                except (OSError, http.client.HTTPException):
                    reusable = False
            else:
                reusable = False
        if reusable and raw.isclosed():
            self._session._release(self._key, self._conn)
        else:
            raw.close()
            self._conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _translate(e: BaseException) -> TransportError:
    if isinstance(e, TransportError):
        return e
    if isinstance(e, (socket.timeout, TimeoutError)):
        return Timeout("timed out")
    text = str(e) or type(e).__name__
    if isinstance(e, http.client.RemoteDisconnected):
        text = "server closed the connection without a response"
    elif isinstance(e, OSError) and e.strerror:
        text = e.strerror
    return TransportError(text)


class Session:
    """Connections to any number of origins, shared by threads.

    ssl_context: used for https (verification and client certificates are the caller's choice).
    on_request: called as on_request(method, url, headers) before each request is sent
    (redirects included); tests record traffic with it.
    """

    def __init__(self, ssl_context=None, *, timeout: float = 60.0, connect_timeout: float = 15.0,
                 headers: dict | None = None, on_request=None, max_idle_per_host: int = 8):
        self.ssl_context = ssl_context
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.headers = dict(headers or {})
        self.on_request = on_request
        self.max_idle_per_host = max_idle_per_host
        self._idle: dict[tuple, list] = {}
        self._lock = threading.Lock()
        self._closed = False

    # -- connections ------------------------------------------------------------
    def _new_connection(self, scheme, host, port, timeout):
        proxy = proxy_for(scheme, host, port)
        if proxy is not None and proxy.scheme != "http":
            raise TransportError(f"proxy {proxy.geturl()}: only http:// proxies are supported")
        if proxy is None:
            cls = _HTTPSConnection if scheme == "https" else _HTTPConnection
            conn = cls(host, port, timeout=timeout,
                       **({"context": self._context()} if scheme == "https" else {}))
            conn.proxy_headers, conn.absolute_form = {}, False
        else:
            auth = {}
            if proxy.username:
                auth["Proxy-Authorization"] = basic_auth(urllib.parse.unquote(proxy.username),
                                                         urllib.parse.unquote(proxy.password or ""))
            if scheme == "https":           # CONNECT tunnel, TLS to the origin through it
                conn = _HTTPSConnection(proxy.hostname, proxy.port or 80, timeout=timeout,
                                        context=self._context())
                conn.set_tunnel(host, port, headers=auth or None)
                conn.proxy_headers, conn.absolute_form = {}, False
            else:                           # plain http: absolute-form request to the proxy
                conn = _HTTPConnection(proxy.hostname, proxy.port or 80, timeout=timeout)
                conn.proxy_headers, conn.absolute_form = auth, True
        conn.connect_timeout = min(self.connect_timeout, timeout)
        return conn

    def _context(self):
        if self.ssl_context is None:
            import ssl
            self.ssl_context = ssl.create_default_context()
        return self.ssl_context

    def _acquire(self, key, timeout):
        with self._lock:
            idle = self._idle.get(key)
            if idle:
                conn = idle.pop()
                conn.timeout = timeout
                if conn.sock is not None:
                    conn.sock.settimeout(timeout)
                return conn, True
        return self._new_connection(*key, timeout), False

    def _release(self, key, conn):
        with self._lock:
            idle = self._idle.setdefault(key, [])
            if self._closed or len(idle) >= self.max_idle_per_host:
                conn.close()
            else:
                idle.append(conn)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            conns = [c for idle in self._idle.values() for c in idle]
            self._idle.clear()
        for c in conns:
            c.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- requests ---------------------------------------------------------------
    def request(self, method: str, url: str, *, headers: dict | None = None, body=None,
                params=None, timeout: float | None = None, follow_redirects: bool = True) -> Response:
        """Send one request (following redirects); the caller closes the Response.
        body: None, bytes, or an iterable of bytes (then headers must carry Content-Length)."""
        url = with_params(url, params)
        hdrs = {**self.headers, **(headers or {})}
        timeout = self.timeout if timeout is None else timeout
        for _ in range(MAX_REDIRECTS + 1):
            resp = self._send(method, url, hdrs, body, timeout)
            if not follow_redirects or resp.status_code not in REDIRECT_STATUSES:
                return resp
            location = resp.headers.get("Location")
            if not location:
                return resp                 # nothing to follow: the caller sees the 3xx
            resp.close()
            new = urllib.parse.urljoin(url, location)
            old_p, new_p = urllib.parse.urlsplit(url), urllib.parse.urlsplit(new)
            if new_p.scheme not in ("http", "https"):
                raise TransportError(f"redirect to {new_p.scheme or 'a relative'} url {location!r}")
            if (old_p.scheme, old_p.netloc) != (new_p.scheme, new_p.netloc):
                # credentials are for the registry, not for its storage backend
                hdrs = {k: v for k, v in hdrs.items() if k.lower() != "authorization"}
            if resp.status_code == 303 or (resp.status_code in (301, 302) and method not in ("GET", "HEAD")):
                method, body = ("HEAD" if method == "HEAD" else "GET"), None
                hdrs = {k: v for k, v in hdrs.items()
                        if k.lower() not in ("content-length", "content-type")}
            elif body is not None and not isinstance(body, (bytes, bytearray)):
                raise TransportError(f"http {resp.status_code} redirect of a streamed {method} body")
            url = new
        raise TransportError(f"more than {MAX_REDIRECTS} redirects")

    def _send(self, method, url, headers, body, timeout) -> Response:
        p = urllib.parse.urlsplit(url)
        if p.scheme not in ("http", "https") or not p.hostname:
            raise TransportError(f"not an http(s) url: {url!r}")
        try:
            port = p.port or (443 if p.scheme == "https" else 80)
        except ValueError:
            raise TransportError(f"invalid port in {url!r}") from None
        key = (p.scheme, p.hostname, port)
        target = (p.path or "/") + (f"?{p.query}" if p.query else "")
        h = dict(headers)
        h.setdefault("Host", p.netloc.rpartition("@")[2])
        if body is None and method in ("POST", "PUT", "PATCH"):
            h.setdefault("Content-Length", "0")
        replayable = body is None or isinstance(body, (bytes, bytearray))
        if self.on_request is not None:
            self.on_request(method, url, h)
        if isinstance(body, (bytes, bytearray)):
            h.setdefault("Content-Length", str(len(body)))
        while True:
            conn, reused = self._acquire(key, timeout)
            if not reused:
                try:
                    conn.connect()
                except (OSError, http.client.HTTPException) as e:
                    conn.close()
                    raise ConnectError(str(_translate(e))) from None
            if conn.absolute_form:
                target = url
                h.update(conn.proxy_headers)
            try:
                conn.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
                for k, v in h.items():
                    conn.putheader(k, v)
                if replayable:
                    conn.endheaders(body)
                else:
                    conn.endheaders()
                    for chunk in body:
                        if chunk:
                            conn.send(chunk)
                raw = conn.getresponse()
            except (OSError, http.client.HTTPException) as e:
                conn.close()
                stale = isinstance(e, (http.client.RemoteDisconnected, ConnectionResetError,
                                       BrokenPipeError, ConnectionAbortedError))
                if reused and stale and replayable:
                    continue                  # the server dropped an idle connection: once more
                raise _translate(e) from None
            except BaseException:
                conn.close()
                raise
            return Response(self, key, conn, raw, url, method)
