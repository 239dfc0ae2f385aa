"""keel.image.transport: keep-alive, redirects, proxies, timeouts and broken bodies, against
http.server instances on 127.0.0.1 run by the tests, and a full pull from the real
docker-registry through an HTTP proxy (plain and CONNECT)."""

import http.server
import select
import socket
import socketserver
import threading
import urllib.parse

import pytest

from keel.image import reference, transport
from keel.image.registry import RegistryClient

from registry_fixtures import registry, skopeo_push  # noqa: F401


class _Server:
    """A threaded http.server on 127.0.0.1 whose handler is `handle(h)` (h: the
    BaseHTTPRequestHandler); counts connections and records (method, path, headers)."""

    def __init__(self, handle):
        outer = self
        self.requests = []
        self.connections = 0

        class H(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self):
                super().setup()
                outer.connections += 1

            def log_message(self, *a):
                pass

            def _any(self):
                outer.requests.append((self.command, self.path, dict(self.headers)))
                n = int(self.headers.get("Content-Length") or 0)
                self.body = self.rfile.read(n) if n else b""
                handle(self)

            do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = _any

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def _reply(h, status=200, body=b"ok", headers=()):
    h.send_response(status)
    for k, v in headers:
        h.send_header(k, v)
    h.send_header("Content-Length", str(len(body)))
    h.end_headers()
    if h.command != "HEAD":
        h.wfile.write(body)


@pytest.fixture
def server():
    made = []

    def make(handle):
        s = _Server(handle)
        made.append(s)
        return s
    yield make
    for s in made:
        s.stop()


def test_keep_alive_reuses_one_connection(server):
    s = server(lambda h: _reply(h, body=b"x" * 1000))
    with transport.Session() as sess:
        for _ in range(5):
            with sess.request("GET", s.url + "/a") as r:
                assert r.status_code == 200 and r.read() == b"x" * 1000
        r = sess.request("HEAD", s.url + "/a")      # no body to read: still reusable
        r.close()
    assert s.connections == 1
    assert len(s.requests) == 6


def test_unread_large_body_closes_its_connection_instead_of_reusing_it(server):
    s = server(lambda h: _reply(h, body=b"y" * (1 << 20)))
    with transport.Session() as sess:
        sess.request("GET", s.url + "/big").close()         # not read
        with sess.request("GET", s.url + "/big") as r:
            assert len(r.read()) == 1 << 20
    assert s.connections == 2


def test_server_closing_an_idle_connection_is_retried_once_on_a_new_one(server):
    calls = []

    def handle(h):
        calls.append(1)
        _reply(h, body=b"ok")
        if len(calls) == 1:
            h.close_connection = True      # drops the keep-alive connection after answering
            h.wfile.flush()
            h.connection.shutdown(socket.SHUT_RDWR)
    s = server(handle)
    with transport.Session() as sess:
        for _ in range(2):
            with sess.request("GET", s.url + "/x") as r:
                assert r.read() == b"ok"
    assert s.connections == 2 and len(calls) == 2


def test_redirect_to_another_host_drops_authorization(server):
    storage = server(lambda h: _reply(h, body=b"blob"))
    # localhost vs 127.0.0.1: another origin for the client, the same machine
    target = f"http://localhost:{storage.port}/data?sig=1"
    reg = server(lambda h: _reply(h, 307, b"", [("Location", target)]))
    with transport.Session() as sess:
        with sess.request("GET", reg.url + "/v2/a/blobs/x", headers={"Authorization": "Bearer t"}) as r:
            assert r.status_code == 200 and r.read() == b"blob"
            assert r.url == target
    assert reg.requests[0][2].get("Authorization") == "Bearer t"
    assert "Authorization" not in storage.requests[0][2]
    assert storage.requests[0][1] == "/data?sig=1"


def test_redirect_on_the_same_host_keeps_authorization_and_303_turns_post_into_get(server):
    def handle(h):
        if h.path == "/start":
            _reply(h, 303, b"", [("Location", "/next")])
        else:
            _reply(h, body=h.command.encode())
    s = server(handle)
    with transport.Session() as sess, \
            sess.request("POST", s.url + "/start", body=b"data", headers={"Authorization": "Basic x"}) as r:
        assert r.read() == b"GET"
    assert [(m, p) for m, p, _ in s.requests] == [("POST", "/start"), ("GET", "/next")]
    assert s.requests[1][2].get("Authorization") == "Basic x"


def test_redirect_loop_and_bad_location_are_transport_errors(server):
    s = server(lambda h: _reply(h, 302, b"", [("Location", "/loop")]))
    with transport.Session() as sess, pytest.raises(transport.TransportError, match="more than 10 redirects"):
        sess.request("GET", s.url + "/loop")
    f = server(lambda h: _reply(h, 302, b"", [("Location", "file:///etc/passwd")]))
    with transport.Session() as sess, pytest.raises(transport.TransportError, match="redirect to file url"):
        sess.request("GET", f.url + "/x")


def test_body_shorter_than_content_length_is_a_transport_error(server):
    def handle(h):
        h.send_response(200)
        h.send_header("Content-Length", "100000")
        h.end_headers()
        h.wfile.write(b"z" * 1000)
        h.close_connection = True
    s = server(handle)
    with transport.Session() as sess:
        with sess.request("GET", s.url + "/short") as r:
            with pytest.raises(transport.TransportError, match="connection closed after 1000 bytes, 99000 short"):
                list(r.iter_bytes())
        assert sess._idle.get(("http", "127.0.0.1", s.port), []) == []   # not pooled


def test_read_timeout_and_connect_refused(server):
    gate = threading.Event()

    def slow(h):
        gate.wait(5)
        _reply(h)
    s = server(slow)
    try:
        with transport.Session(timeout=0.3) as sess, pytest.raises(transport.Timeout):
            sess.request("GET", s.url + "/slow")
    finally:
        gate.set()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with transport.Session() as sess, pytest.raises(transport.ConnectError, match="refused"):
        sess.request("GET", f"http://127.0.0.1:{port}/")


def test_streamed_body_with_content_length(server):
    s = server(lambda h: _reply(h, 201, h.body))
    chunks = [b"a" * 10, b"", b"b" * 5]
    with transport.Session() as sess, sess.request("PUT", s.url + "/up", body=iter(chunks),
                                                   headers={"Content-Length": "15"}) as r:
        assert r.status_code == 201 and r.read() == b"a" * 10 + b"b" * 5


def test_with_params_and_urls():
    assert transport.with_params("http://h/p", {"a": "1", "b": None}) == "http://h/p?a=1"
    assert transport.with_params("http://h/p?_state=x", [("digest", "sha256:ab")]) == \
        "http://h/p?_state=x&digest=sha256%3Aab"
    with transport.Session() as sess, pytest.raises(transport.TransportError, match="not an http"):
        sess.request("GET", "ftp://h/x")


def test_proxy_rules(monkeypatch):
    for k in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY",
              "no_proxy", "NO_PROXY", "REQUEST_METHOD"):
        monkeypatch.delenv(k, raising=False)
    assert transport.proxy_for("https", "quay.io", 443) is None
    monkeypatch.setenv("HTTPS_PROXY", "proxy.example:3128")
    assert transport.proxy_for("https", "quay.io", 443).netloc == "proxy.example:3128"
    assert transport.proxy_for("http", "quay.io", 80) is None       # HTTPS_PROXY is for https
    monkeypatch.setenv("HTTP_PROXY", "http://plain.example:8080")
    assert transport.proxy_for("http", "quay.io", 80).netloc == "plain.example:8080"
    monkeypatch.setenv("REQUEST_METHOD", "GET")                      # under CGI: not trusted
    assert transport.proxy_for("http", "quay.io", 80) is None
    monkeypatch.delenv("REQUEST_METHOD")
    monkeypatch.setenv("https_proxy", "lower.example:1")             # lower case first
    assert transport.proxy_for("https", "quay.io", 443).netloc == "lower.example:1"
    assert transport.proxy_for("https", "127.0.0.1", 5000) is None   # loopback: never (as Go)
    assert transport.proxy_for("https", "localhost", 5000) is None
    monkeypatch.setenv("NO_PROXY", "example.com, .corp,registry.local:5000")
    assert transport.proxy_for("https", "a.example.com", 443) is None
    assert transport.proxy_for("https", "example.com", 443) is None
    assert transport.proxy_for("https", "x.corp", 443) is None
    assert transport.proxy_for("https", "corp", 443) is not None      # ".corp": subdomains only
    assert transport.proxy_for("https", "registry.local", 5000) is None
    assert transport.proxy_for("https", "registry.local", 5001) is not None
    assert transport.proxy_for("https", "notexample.com", 443) is not None
    monkeypatch.setenv("NO_PROXY", "*")
    assert transport.proxy_for("https", "quay.io", 443) is None
    monkeypatch.setenv("NO_PROXY", "")
    monkeypatch.setenv("https_proxy", "socks5://p:1080")
    with pytest.raises(transport.TransportError, match="not an http"):
        transport.proxy_for("https", "quay.io", 443)


# -- a real pull through a proxy -----------------------------------------------------------

class _Proxy(socketserver.ThreadingTCPServer):
    """A forward proxy for the tests: absolute-form http requests and CONNECT. Every origin
    host is sent to 127.0.0.1 (its port kept), so that a pull of "registry.invalid:PORT/..."
    reaches the local docker-registry only through the proxy."""
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self):
        self.seen = []
        outer = self

        class H(socketserver.StreamRequestHandler):
            rbufsize = 0          # unbuffered: nothing of the tunnelled stream sits in a buffer

            def handle(self):
                while True:
                    line = self.rfile.readline()
                    if not line:
                        return
                    method, target, _ = line.decode().split(" ", 2)
                    headers = []
                    while True:
                        h = self.rfile.readline()
                        if h in (b"\r\n", b""):
                            break
                        headers.append(h)
                    outer.seen.append((method, target, b"".join(headers).decode()))
                    if method == "CONNECT":
                        port = int(target.rsplit(":", 1)[1])
                        up = socket.create_connection(("127.0.0.1", port))
                        self.wfile.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
                        self._pipe(up)
                        return
                    u = urllib.parse.urlsplit(target)
                    up = socket.create_connection(("127.0.0.1", u.port))
                    path = u.path + (f"?{u.query}" if u.query else "")
                    up.sendall(f"{method} {path} HTTP/1.1\r\n".encode()
                               + b"".join(h for h in headers if not h.lower().startswith(b"proxy-"))
                               + b"Connection: close\r\n\r\n")
                    n = 0
                    for h in headers:
                        if h.lower().startswith(b"content-length:"):
                            n = int(h.split(b":")[1])
                    if n:
                        up.sendall(self.rfile.read(n))
                    self._pipe(up)
                    return

            def _pipe(self, up):
                me = self.connection
                try:
                    while True:
                        r, _, _ = select.select([me, up], [], [], 10)
                        if not r:
                            return
                        for s in r:
                            data = s.recv(1 << 16)
                            if not data:
                                return
                            (up if s is me else me).sendall(data)
                finally:
                    up.close()

        super().__init__(("127.0.0.1", 0), H)
        self.port = self.server_address[1]
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def stop(self):
        self.shutdown()
        self.server_close()


@pytest.fixture
def proxy(monkeypatch):
    p = _Proxy()
    for k in ("no_proxy", "NO_PROXY", "HTTP_PROXY", "HTTPS_PROXY", "REQUEST_METHOD"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("http_proxy", f"http://keel:pw@127.0.0.1:{p.port}")
    monkeypatch.setenv("https_proxy", f"http://keel:pw@127.0.0.1:{p.port}")
    yield p
    p.stop()


@pytest.fixture(scope="module")
def busybox_in_registry(registry, oci_busybox):
    return skopeo_push(oci_busybox, f"{registry.host}/keel/proxied:1.0")


def test_pull_through_an_http_proxy(registry, busybox_in_registry, proxy, store):
    name = f"registry.invalid:{registry.port}/keel/proxied:1.0"
    with RegistryClient(f"registry.invalid:{registry.port}", insecure=True, credentials=False) as c:
        img = c.pull(store, reference.parse(name))
    store.verify_image(img)
    methods = [m for m, _, _ in proxy.seen]
    # insecure: https is tried first (a CONNECT tunnel), then plain http through the proxy
    assert methods[0] == "CONNECT" and proxy.seen[0][1] == f"registry.invalid:{registry.port}"
    gets = [t for m, t, _ in proxy.seen if m == "GET"]
    assert f"http://registry.invalid:{registry.port}/v2/keel/proxied/manifests/1.0" in gets
    assert all("Proxy-Authorization: Basic a2VlbDpwdw==" in h for m, _, h in proxy.seen if m == "GET")


def test_no_proxy_bypasses_the_proxy(registry, busybox_in_registry, proxy, store, monkeypatch):
    monkeypatch.setenv("NO_PROXY", "registry.invalid")
    with RegistryClient(f"registry.invalid:{registry.port}", insecure=True, credentials=False,
                        retries=0, timeout=5) as c, pytest.raises(Exception, match="cannot connect"):
        c.pull(store, reference.parse(f"registry.invalid:{registry.port}/keel/proxied:1.0"))
    assert proxy.seen == []


def test_redirect_without_location_is_returned_as_is(server):
    s = server(lambda h: _reply(h, 302, b"moved, but where?"))
    with transport.Session() as sess, sess.request("GET", s.url + "/x") as r:
        assert r.status_code == 302 and r.read() == b"moved, but where?"
