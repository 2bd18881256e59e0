"""An upstream's answer whose first bytes are no status line as nginx reads one
(``ngx_http_parse_status_line``) is an HTTP/0.9 answer: every byte is the body, to the close
(plugins/upstreams/connections.py ``Answer``). Bytes that can still begin a status line are not:
there the close cuts the status line short."""

from __future__ import annotations

import socket
from http.client import HTTPException

import pytest

from ngxsim_plugins.upstreams.connections import HTTP_09, Answer


def answer_to(sent: bytes) -> Answer:
    ours, theirs = socket.socketpair()
    try:
        theirs.sendall(sent)
        theirs.shutdown(socket.SHUT_WR)
        answer = Answer(ours, method="GET")
        answer.begin()
        return answer
    finally:
        ours.close()  # the answer's reader keeps the connection open until it is closed
        theirs.close()


@pytest.mark.parametrize("sent", [
    b"just bytes\n", b"just bytes", b"<html>\r\n", b"http/1.1 200 OK\r\n\r\n", b"HTTP/2 200\r\n\r\n",
    b"HTTP/1.1 200OK\r\n\r\n", b"HTTP/1.1 2000\r\n\r\n", b"HTTP/1.1\r\n\r\n", b"HTTP/0.9 200 OK\r\n\r\n",
    b"HTTP/1.1 200 OK\rX\r\n\r\n",
])
def test_no_status_line_is_http09(sent):
    answer = answer_to(sent)
    assert (answer.version, answer.status, answer.msg.items(), answer.will_close) == (HTTP_09, 200, [], True)
    assert answer.read() == sent
    answer.close()


@pytest.mark.parametrize(("sent", "status", "reason"), [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", 200, "OK"),
    (b"HTTP/1.0 404 Not Found\n\n", 404, "Not Found"),
    (b"HTTP/1.1  302 \r\nLocation: /x\r\n\r\n", 302, ""),
])
def test_a_status_line_is_read_as_before(sent, status, reason):
    answer = answer_to(sent)
    assert (answer.version, answer.status, answer.reason) == (11 if b"/1.1" in sent else 10, status, reason)
    answer.close()


@pytest.mark.parametrize("sent", [b"H", b"HTT", b"HTTP/1.", b"HTTP/1.1 2", b"HTTP/1.1 200 OK", b"HTTP/1.1 200 OK\r\nX-A",
                                  b"HTTP/1.1 200 OK\r\nX-A: 1\r\n"])
def test_a_status_line_cut_by_the_close_is_no_answer(sent):
    with pytest.raises(HTTPException):  # the proxy's 502 (nginx: the header did not arrive)
        answer_to(sent).close()
