"""``server ... max_conns=N``: a peer with N requests in flight (any worker's, counted in the
upstream's zone) is skipped; with no other peer the request gets nginx's 502 (no live
upstreams)."""

from __future__ import annotations

import socketserver
import threading

import pytest

from ngxsim.core.process import build_application

CONF = """
load_module worker_events;
load_module upstreams;
http {
    worker_events_zone bus;
    upstream one { server 127.0.0.1:%d max_conns=1; }
    upstream two { server 127.0.0.1:%d max_conns=1 weight=10; server 127.0.0.1:%d; }
    server {
        listen 127.0.0.1:8080;
        location /one/ { proxy_pass http://one; }
        location /two/ { proxy_pass http://two; }
    }
}
"""


class HeldBackend(socketserver.ThreadingTCPServer):
    """Answers each request, but only once ``release`` is set: a request stays in flight."""

    daemon_threads = True

    def __init__(self, name: str):
        super().__init__(("127.0.0.1", 0), _Held)
        self.name, self.port = name, self.server_address[1]
        self.release = threading.Event()
        self.arrived = threading.Semaphore(0)
        self.thread = threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def stop(self):
        self.release.set()
        self.shutdown()
        self.server_close()
        self.thread.join(2)


class _Held(socketserver.StreamRequestHandler):
    def handle(self):
        self.connection.settimeout(10)
        while self.rfile.readline() not in (b"\r\n", b""):
            pass
        self.server.arrived.release()
        self.server.release.wait(10)
        body = self.server.name.encode()
        self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))


@pytest.fixture
def setup(tmp_path):
    held, other, free = HeldBackend("held"), HeldBackend("other"), HeldBackend("free")
    free.release.set()
    conf = tmp_path / "n.conf"
    conf.write_text(CONF % (held.port, held.port, free.port))
    application = build_application(str(conf), role="standalone")
    yield application, held, free
    held.stop()
    other.stop()
    free.stop()
    application.runtime.close()


def _get(app, path, out):
    r = app.test_client().get(path)
    out.append((r.status_code, r.data))
    r.close()


def test_a_peer_at_max_conns_is_skipped(setup):
    app, held, free = setup
    first: list = []
    waiting = [threading.Thread(target=_get, args=(app, path, first)) for path in ("/one/a", "/two/a")]
    try:
        for thread in waiting:
            thread.start()
            assert held.arrived.acquire(timeout=10)  # one request in flight to the held peer of each group
        lone: list = []
        _get(app, "/one/b", lone)
        assert lone[0][0] == 502  # its only peer is at max_conns=1: no live upstreams
        other: list = []
        _get(app, "/two/b", other)
        # weight=10 would pick the held peer again: at max_conns=1 it is skipped
        assert other == [(200, b"free")]
    finally:
        held.release.set()
        for thread in waiting:
            thread.join(10)
    assert first == [(200, b"held")] * 2
    after: list = []
    _get(app, "/one/d", after)  # no longer in flight: the peer takes requests again
    assert after == [(200, b"held")]
