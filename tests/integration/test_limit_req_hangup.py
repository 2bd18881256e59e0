"""A client that hangs up while limit_req delays its request (a ``Delay``: no thread held) is
noticed as nginx's ``ngx_http_test_reading`` notices it: the request ends with 499 in the access
log, nothing of it runs after the delay (no upstream request), no answer is written. Under
ngxsim's worker the hang-up ends the wait at once; under a server whose thread waits, when the
delay is over."""

from __future__ import annotations

import re
import socket

import pytest

from ngxsim.testing import wait_for

CONF = """
load_module worker_events;
load_module upstreams;
load_module limit_req;
worker_processes 1;
error_log stderr info;
http {
    worker_events_zone bus;
    limit_req_zone $binary_remote_addr zone=one:64k rate={rate};
    server {
        listen 127.0.0.1:{port};
        location / { return 200 "ready\\n"; }
        location /d/ { limit_req zone=one burst=5; proxy_pass http://{backend}; access_log {tmp}/access.log; }
    }
}
"""


def logged(server, path: str, status: int) -> bool:
    log = server.conf.parent / "access.log"
    text = log.read_text() if log.exists() else ""
    return re.search(rf'"GET {re.escape(path)} HTTP/1.1" {status} ', text) is not None


@pytest.mark.parametrize("mode, worker_class, rate, wait", [
    ("ngxsim", None, "1r/m", 10),     # a 60 s delay: the hang-up must end it, not the timer
    ("gunicorn", "gthread", "30r/m", 10),  # a 2 s delay a thread waits out, then sees the hang-up
])
def test_a_client_that_hangs_up_during_the_delay_gets_499_and_reaches_no_backend(
        ngxsim_server, ngxsim_backend, mode, worker_class, rate, wait):
    backend = ngxsim_backend()
    backend.respond(body="ok")
    server = ngxsim_server(CONF, mode=mode, worker_class=worker_class,
                           placeholders={"backend": backend.address, "rate": rate})
    assert server.get("/d/first").status_code == 200  # the bucket's first: no delay
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"GET /d/second HTTP/1.1\r\nHost: localhost\r\n\r\n")
        wait_for(lambda: server.logged("warn", "delaying request"), 10, what="the request to be delayed")
    wait_for(lambda: logged(server, "/d/second", 499), wait, what="499 for the request whose client left")
    assert server.logged("info", "client prematurely closed connection")
    assert backend.requests_for("/d/second") == []
    assert server.get("/").status_code == 200


def test_a_request_sent_ahead_during_the_delay_is_no_hang_up(ngxsim_server, ngxsim_backend):
    backend = ngxsim_backend()
    backend.respond(body="ok")
    server = ngxsim_server(CONF, placeholders={"backend": backend.address, "rate": "30r/m"}, mode="ngxsim")
    assert server.get("/d/first").status_code == 200
    with socket.create_connection(("127.0.0.1", server.port), timeout=15) as sock:
        sock.sendall(b"GET /d/second HTTP/1.1\r\nHost: localhost\r\n\r\n")
        wait_for(lambda: server.logged("warn", "delaying request"), 10, what="the request to be delayed")
        sock.sendall(b"GET /d/third HTTP/1.1\r\nHost: localhost\r\n\r\n")  # pipelined, during the delay
        got = b""
        while b"\r\n\r\nok" not in got:  # the delayed request's answer (Content-Length: 2)
            data = sock.recv(65536)
            assert data, f"the connection closed after {got!r}"
            got += data
    assert got.startswith(b"HTTP/1.1 200 ")
    assert [r.path for r in backend.requests_for()][1] == "/d/second"
    wait_for(lambda: logged(server, "/d/second", 200), 10, what="the delayed request logged as served")
    assert not logged(server, "/d/second", 499)
