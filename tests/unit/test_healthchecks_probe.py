"""The prober against real loopback backends: what passes, what fails, and why."""

from __future__ import annotations

import socket
import struct
import threading

import pytest

from ngxsim.testing import free_port
from ngxsim_plugins.healthchecks.match import MAX_BODY, Match, parse_body, parse_header, parse_status
from ngxsim_plugins.healthchecks.probe import USER_AGENT, probe

UP_MATCH = Match("ok", (parse_status(["200-399"]),), (parse_header(["Content-Type", "~", "json"]),),
                 (parse_body(["~", '"status": *"up"']),))


@pytest.fixture
def backend(ngxsim_backend):
    return ngxsim_backend(name="a")


def check(backend, timeout=0.5, match=None, uri="/health", port=None):
    return probe("127.0.0.1", port or backend.port, uri, "backend", timeout, match)


def test_a_healthy_backend_passes_and_the_probe_is_a_plain_get(backend):
    result = check(backend, match=UP_MATCH)
    assert result.ok and result.status == 200 and result.reason == ""
    assert 0 < result.duration < 0.5
    req = backend.requests_for("/health")[-1]
    assert (req.method, req.path, req.version) == ("GET", "/health", "HTTP/1.1")
    assert req.headers["Host"] == "backend" and req.headers["User-Agent"] == USER_AGENT
    assert req.headers["Connection"] == "close"


def test_each_probe_opens_a_new_connection(backend):
    for _ in range(3):
        assert check(backend).ok
    assert backend.connections == 3


def test_an_unhealthy_answer_fails_with_its_status(backend):
    backend.set_healthy(False)
    result = check(backend)
    assert not result.ok and result.status == 503 and result.reason == "status 503"
    result = check(backend, match=UP_MATCH)
    assert not result.ok and result.reason == "status 503"


def test_without_match_any_2xx_or_3xx_passes(backend):
    backend.respond("/health", status=302, headers={"Location": "/elsewhere"})
    assert check(backend).ok
    backend.respond("/health", status=404)
    assert check(backend).reason == "status 404"


def test_match_looks_at_headers_and_body(backend):
    backend.respond("/health", body={"status": "up"}, headers={"Content-Type": "text/plain"})
    assert check(backend, match=UP_MATCH).reason == 'header Content-Type "text/plain" fails ~ "json"'
    backend.respond("/health", body={"status": "starting"})
    assert check(backend, match=UP_MATCH).reason == 'body does not match "\"status\": *\"up\""'
    backend.respond("/health", body={"status": "up"})
    assert check(backend, match=UP_MATCH).ok


def test_only_the_first_256k_of_the_body_are_looked_at(backend):
    tail = Match("tail", body=(parse_body(["~", "TAIL"]),))
    backend.respond("/health", body="x" * (MAX_BODY - 4) + "TAIL")
    assert check(backend, match=tail).ok
    backend.respond("/health", body="x" * MAX_BODY + "TAIL")
    assert check(backend, match=tail).reason == 'body does not match "TAIL"'


def test_a_slow_answer_fails_as_timed_out_within_the_timeout(backend):
    backend.respond("/health", delay=2)
    result = check(backend, timeout=0.2)
    assert not result.ok and result.reason == "timed out" and result.status == 0
    assert 0.2 <= result.duration < 1.0


@pytest.fixture
def raw_server():
    """serve(answer) -> port: a one-connection TCP server that reads the request and hands the
    connection to ``answer(conn, stop)``; stopped and joined at teardown."""
    made = []

    def serve(answer):
        server = socket.socket()
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        stop = threading.Event()

        def run():
            conn, _ = server.accept()
            try:
                conn.recv(65536)
                answer(conn, stop)
            finally:
                conn.close()

        thread = threading.Thread(target=run)
        thread.start()
        made.append((server, stop, thread))
        return server.getsockname()[1]

    yield serve
    for server, stop, thread in made:
        stop.set()
        thread.join(5)
        server.close()


def trickle(head: bytes, pieces):
    """An answer that sends ``head`` at once, then each piece 50 ms after the last: every read
    is quick, the whole is not."""

    def answer(conn, stop):
        conn.sendall(head)
        for piece in pieces:
            if stop.wait(0.05):
                return
            try:
                conn.sendall(piece)
            except OSError:
                return  # the prober gave up and closed

    return answer


def test_a_body_that_trickles_past_the_timeout_fails(raw_server):
    port = raw_server(trickle(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n",
                              [b"x"] * 100))
    result = probe("127.0.0.1", port, "/", "b", 0.3, Match("m", body=(parse_body(["~", "up"]),)))
    assert not result.ok and result.reason == "timed out"
    assert result.duration < 1.0


def test_headers_that_trickle_past_the_timeout_fail(raw_server):
    port = raw_server(trickle(b"HTTP/1.1 200 OK\r\n", [f"X-H{i}: y\r\n".encode() for i in range(100)]))
    result = probe("127.0.0.1", port, "/", "b", 0.3)
    assert not result.ok and result.reason == "timed out" and result.duration < 1.0


def test_a_garbled_answer_fails(raw_server):
    port = raw_server(lambda conn, stop: conn.sendall(b"NOT HTTP AT ALL\r\n\r\n"))
    result = probe("127.0.0.1", port, "/", "b", 0.5)
    assert not result.ok and result.status == 0 and result.reason == "invalid response: NOT HTTP AT ALL"


def test_a_reset_in_the_middle_of_the_answer_fails_as_reset(raw_server):
    def reset(conn, stop):
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
        stop.wait(0.1)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    result = probe("127.0.0.1", raw_server(reset), "/", "b", 2, Match("m", body=(parse_body(["~", "x"]),)))
    assert not result.ok and result.reason == "connection reset", result


def test_connection_failures_have_their_own_reasons(backend):
    backend.respond("/health", action="close")
    assert check(backend).reason == "connection closed without a response"
    port = free_port()
    result = probe("127.0.0.1", port, "/health", "b", 0.5)
    assert not result.ok and result.reason == "connection refused" and result.duration < 0.5


def test_port_and_uri_choose_what_is_probed(ngxsim_backend, backend):
    other = ngxsim_backend(name="b")
    assert probe("127.0.0.1", other.port, "/ready?full=1", "backend", 0.5).ok
    got = other.requests[-1]
    assert (got.path, got.query) == ("/ready", "full=1")
    assert not backend.requests
