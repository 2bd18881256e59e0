"""The test kit's RecordingOrigin records requests raw and answers scripted bytes; raw_request
reads an HTTP/0.9 answer and skips an interim 100 Continue."""

from __future__ import annotations

import socket
import threading

import pytest

from ngxsim.testing import RecordingOrigin, raw_request


def send(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(data)
        out = b""
        while chunk := sock.recv(65536):
            out += chunk
        return out


def test_records_the_request_line_every_header_apart_and_the_unchunked_body():
    with RecordingOrigin() as origin:
        answer = send(origin.port, b"POST /a?x=1 HTTP/1.0\r\nHost: h\r\nX-M: 1\r\nx-m: 2\r\n"
                                   b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
        got = origin.received[0]
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and answer.endswith(b"origin /a #1\n")
    assert b"Connection: close" in answer  # HTTP/1.0 without keep-alive
    assert got.request_line == "POST /a?x=1 HTTP/1.0" and (got.method, got.path, got.version) == ("POST", "/a", "HTTP/1.0")
    assert got.headers == [("Host", "h"), ("X-M", "1"), ("x-m", "2"), ("Transfer-Encoding", "chunked")]
    assert (got.body, got.chunked) == (b"abcde", True)
    assert got.comparable(origin.port)["headers"] == [("Host", "h"), ("Transfer-Encoding", "chunked"), ("X-M", "1"),
                                                      ("x-m", "2")]


def test_keeps_the_connection_counts_per_path_and_answers_what_it_is_told():
    with RecordingOrigin() as origin:
        origin.answer("/odd", raw=b"HTTP/1.1 200 OK\r\nNoColon\r\n\r\nx")
        origin.answer("/gone", status=503, headers=[("Retry-After", "1")])
        two = send(origin.port, b"GET /p HTTP/1.1\r\nHost: h\r\n\r\nGET /p HTTP/1.1\r\nHost: h\r\n"
                                b"Connection: close\r\n\r\n")
        odd = send(origin.port, b"GET /odd HTTP/1.1\r\nHost: h\r\n\r\n")
        gone = send(origin.port, b"HEAD /gone HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        assert [r.connection for r in origin.received] == [1, 1, 2, 3]
    assert b"origin /p #1\n" in two and two.endswith(b"origin /p #2\n")
    assert odd == b"HTTP/1.1 200 OK\r\nNoColon\r\n\r\nx"
    assert gone.startswith(b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\n") and gone.endswith(b"\r\n\r\n")


def test_raw_request_reads_an_http09_answer_and_skips_100_continue():
    with RecordingOrigin() as origin:
        origin.answer("/09", raw=b"just bytes\n")
        origin.answer("/continue", raw=b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok")
        origin.answer("/bad", raw=b"HTTP/1.1 abc\r\n\r\n")  # no status: nginx relays it as HTTP/0.9
        origin.answer("/bad-closed", raw=b"HTTP/1.1 abc")
        old = raw_request(origin.port, b"GET /09 HTTP/1.1\r\nHost: h\r\n\r\n")
        bad = raw_request(origin.port, b"GET /bad HTTP/1.1\r\nHost: h\r\n\r\n")
        bad_closed = raw_request(origin.port, b"GET /bad-closed HTTP/1.1\r\nHost: h\r\n\r\n")
        final = raw_request(origin.port, b"GET /continue HTTP/1.1\r\nHost: h\r\n\r\n")
    assert (old.status, old.headers, old.body) == (0, [], b"just bytes\n")
    assert (bad.status, bad.body, bad_closed.status, bad_closed.body) == (0, b"HTTP/1.1 abc\r\n\r\n", 0, b"HTTP/1.1 abc")
    assert (final.status, final.reason, final.body) == (201, "Created", b"ok")


def test_raw_request_waits_for_the_close_when_asked():
    """``wait_close``: raw_request returns once the server closed the connection (it finished
    the request), not as soon as the body is in."""
    listener = socket.create_server(("127.0.0.1", 0))
    go_on, closed = threading.Event(), threading.Event()

    def serve():
        for _ in range(2):
            conn, _ = listener.accept()
            with conn:
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                go_on.wait(0.5)  # the first client sets it once it has its answer
                closed.set()
            go_on.clear()

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        port = listener.getsockname()[1]
        early = raw_request(port, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        assert early.body == b"ok" and not closed.is_set()
        go_on.set()
        thread_done = closed.wait(5)
        closed.clear()
        late = raw_request(port, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n", wait_close=True)
        assert thread_done and late.body == b"ok" and closed.is_set()
    finally:
        thread.join(5)
        listener.close()


def test_raw_request_refuses_a_status_line_cut_by_the_close():
    """A front that closes inside its own status line sent no answer: that is no HTTP/0.9 one."""
    with RecordingOrigin() as origin:
        origin.answer("/cut", raw=b"HTTP/1.1 200 OK")
        with pytest.raises(AssertionError, match="closed inside the response head"):
            raw_request(origin.port, b"GET /cut HTTP/1.1\r\nHost: h\r\n\r\n")
