"""A backend that closes a kept-alive connection instead of answering its next request (the idle
close racing a new request): the proxy tries again on a new connection, and the peer is not
counted as failed."""

from __future__ import annotations

import socket
import threading

import pytest

from ngxsim.core.process import build_application

CONF = """
load_module worker_events;
load_module upstreams;
http {
    worker_events_zone bus;
    upstream one { server 127.0.0.1:%d max_fails=1 fail_timeout=30s; server 127.0.0.1:9 down; keepalive 2; }
    server {
        listen 127.0.0.1:8080;
        location / { proxy_pass http://one; proxy_http_version 1.1; proxy_set_header Connection ""; }
        location /api/ { upstreams_api; }
    }
}
"""


class ClosingOnReuse:
    """Answers the first request of each connection (keep-alive), then reads the second and
    closes without a word."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self._stop = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        self.sock.settimeout(0.2)
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            threading.Thread(target=self._conn, args=(conn,), daemon=True).start()

    @staticmethod
    def _read_request(conn) -> bool:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(4096)
            if not chunk:
                return False
            data += chunk
        return True

    def _conn(self, conn):
        with conn:
            conn.settimeout(5)
            if self._read_request(conn):
                conn.sendall(b"HTTP/1.1 200 Fine Thanks\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok")
                self._read_request(conn)  # the reuse: close without answering

    def stop(self):
        self._stop = True
        self.thread.join(2)
        self.sock.close()


@pytest.fixture
def app(tmp_path):
    backend = ClosingOnReuse()
    conf = tmp_path / "n.conf"
    conf.write_text(CONF % backend.port)
    application = build_application(str(conf), role="standalone")
    yield application.test_client(), backend
    application.runtime.close()
    backend.stop()


def test_a_kept_alive_connection_closed_by_the_backend_is_retried_not_counted(app):
    client, backend = app
    for _ in range(5):
        r = client.get("/x")
        assert (r.status, r.data) == ("200 Fine Thanks", b"ok")  # the backend's status line, as nginx passes it
        r.close()
    # (a second server, down: a lone server never counts a failure, as in nginx)
    # each reuse was refused (the kept connection was taken: the close came after the request),
    # each retry took a new connection
    assert backend.connections >= 5
    peer = client.get("/api/one/servers").get_json()[0]
    assert peer["fails"] == 0 and peer["state"] == "up"
