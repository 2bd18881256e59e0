"""What goes over the wire under real gunicorn, read off a raw socket: nginx's status lines,
``return 444`` closing the connection, and requests no ordinary client would send."""

from __future__ import annotations

import pytest

from ngxsim.testing import raw_request, start_server

CONF = """
http {
    server {
        listen 127.0.0.1:{port};
        location / { return 200 "ok $uri\\n"; }
        location /close { return 444; }
        location /moved { return 301 /there; }
        location /teapot { return 418; }
    }
}
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = start_server(tmp_path_factory.mktemp("raw"), CONF, workers=1)
    yield srv
    srv.stop()


def get(target: str, host: str | None = "raw.test", version: str = "HTTP/1.1") -> bytes:
    head = f"GET {target} {version}\r\n" + (f"Host: {host}\r\n" if host is not None else "")
    return (head + "Connection: close\r\n\r\n").encode()


def test_444_closes_the_connection_without_an_answer(server):
    answer = raw_request(server.port, get("/close"))
    assert answer.status is None and answer.body == b""
    assert raw_request(server.port, get("/")).status == 200  # the worker goes on serving


def test_status_lines_carry_nginx_phrases(server):
    moved = raw_request(server.port, get("/moved"))
    assert (moved.status, moved.reason) == (301, "Moved Permanently")
    assert moved.header("Location") == f"http://raw.test:{server.port}/there"
    teapot = raw_request(server.port, get("/teapot"))
    assert (teapot.status, teapot.reason, teapot.body) == (418, "", b"")


@pytest.mark.parametrize("target", ["/%zz", "/../x", "/a%00"])
def test_targets_nginx_refuses_get_its_400_page(server, target):
    answer = raw_request(server.port, get(target))
    assert (answer.status, answer.reason) == (400, "Bad Request")
    assert b"<center><h1>400 Bad Request</h1></center>" in answer.body


def test_host_rules(server):
    assert raw_request(server.port, get("/", host=None)).status == 400
    assert raw_request(server.port, get("/", host=None, version="HTTP/1.0")).body == b"ok /\n"
    assert raw_request(server.port, get("/caf%C3%A9")).body == "ok /café\n".encode()
