"""The proxy's read of an answer that one recv holds whole (``connections.whole``), against the
streaming read (http.client's status line, ``read_header``, urllib3's framing) that reads every
other answer: the same status, reason, header lines, body and keep-alive decision, or None (the
streaming read then reads it, from the bytes already received). Over real socket pairs."""

from __future__ import annotations

import socket
import time
from http.client import RemoteDisconnected

import pytest
from urllib3 import HTTPHeaderDict, HTTPResponse

from ngxsim_plugins.upstreams.connections import Answer, Link, Whole, _Prefetched, exchange, whole

BODY = b"a fixed small body\n"
OK = b"HTTP/1.1 200 OK\r\nServer: origin\r\nContent-Type: text/plain\r\nContent-Length: 19\r\n\r\n" + BODY

# answers read whole: (raw bytes, method)
WHOLE = {
    "plain": OK,
    "no-reason": b"HTTP/1.1 404\r\nContent-Length: 0\r\n\r\n",
    "reason-spaces": b"HTTP/1.1 503  Busy  now \r\nContent-Length: 19\r\n\r\n" + BODY,
    "no-header-lines": b"HTTP/1.1 200 OK\r\n\r\n",  # no length: not whole (below); with one line:
    "value-spaces": b"HTTP/1.1 200 OK\r\nX-A:  a  b \t\r\nX-B:\r\nX-C:\t\r\nContent-Length: 19\r\n\r\n" + BODY,
    "repeated": b"HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\nContent-Length: 19\r\n\r\n" + BODY,
    "latin-1": b"HTTP/1.1 200 Caf\xe9\r\nX-Name: caf\xe9\r\nContent-Length: 19\r\n\r\n" + BODY,
    "close": b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 19\r\n\r\n" + BODY,
    "keep-alive": b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nContent-Length: 19\r\n\r\n" + BODY,
    "close-second": b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nConnection: close\r\nContent-Length: 19\r\n\r\n"
                    + BODY,
    "zeros-length": b"HTTP/1.1 200 OK\r\nContent-Length: 0019\r\n\r\n" + BODY,
    "length-spaces": b"HTTP/1.1 200 OK\r\nContent-Length:   19  \r\n\r\n" + BODY,
    "crlf-in-body": b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\n\r\n\r\n\n\r\r\n",
}
# answers the streaming read reads: (raw bytes, method)
STREAMED = {
    "chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n13\r\n" + BODY + b"\r\n0\r\n\r\n",
    "length-and-chunked": b"HTTP/1.1 200 OK\r\nContent-Length: 19\r\nTransfer-Encoding: chunked\r\n\r\n13\r\n" + BODY
                          + b"\r\n0\r\n\r\n",
    "no-length": b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n" + BODY,
    "short-body": OK[:-1],
    "long-body": OK + b"x",
    "two-lengths": b"HTTP/1.1 200 OK\r\nContent-Length: 19\r\nContent-Length: 19\r\n\r\n" + BODY,
    "bad-length": b"HTTP/1.1 200 OK\r\nContent-Length: -19\r\n\r\n" + BODY,
    "arabic-length": "HTTP/1.1 200 OK\r\nContent-Length: ١٩\r\n\r\n".encode() + BODY,
    "space-in-name": b"HTTP/1.1 200 OK\r\nBad Name: x\r\nContent-Length: 19\r\n\r\n" + BODY,
    "no-colon": b"HTTP/1.1 200 OK\r\nX-No-Colon\r\nContent-Length: 19\r\n\r\n" + BODY,
    "empty-name": b"HTTP/1.1 200 OK\r\n: x\r\nContent-Length: 19\r\n\r\n" + BODY,
    "bare-lf": b"HTTP/1.1 200 OK\r\nX-A: 1\nContent-Length: 19\r\n\r\n" + BODY,
    "bare-cr": b"HTTP/1.1 200 OK\r\nX-A: 1\r\r\nContent-Length: 19\r\n\r\n" + BODY,
    "lf-only": b"HTTP/1.1 200 OK\nContent-Length: 19\n\n" + BODY,
    "continue": b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 19\r\n\r\n" + BODY,
    "204": b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n",
    "304": b"HTTP/1.1 304 Not Modified\r\nContent-Length: 19\r\n\r\n",
    "http-1.0": b"HTTP/1.0 200 OK\r\nContent-Length: 19\r\n\r\n" + BODY,
    "tab-after-status": b"HTTP/1.1 200\tOK\r\nContent-Length: 19\r\n\r\n" + BODY,
    "status-999": b"HTTP/1.1 999 Odd\r\nContent-Length: 19\r\n\r\n" + BODY,
    "many-lines": b"HTTP/1.1 200 OK\r\n" + b"X-A: 1\r\n" * 101 + b"Content-Length: 19\r\n\r\n" + BODY,
    "no-header-end": b"HTTP/1.1 200 OK\r\nContent-Length: 19\r\n",
}
WHOLE.pop("no-header-lines")


def streamed_read(data: bytes, method: str = "GET"):
    """What the streaming read makes of ``data`` (already received, the peer then closed):
    (status, reason, header lines, body, will_close)."""
    a, b = socket.socketpair()
    try:
        b.close()
        raw = Answer(_Prefetched(a, data), method=method)
        raw.begin()
        resp = HTTPResponse(body=raw, headers=HTTPHeaderDict(raw.msg.items()), status=raw.status, version=raw.version,
                            reason=raw.reason, preload_content=False, decode_content=False, original_response=raw,
                            enforce_content_length=True, request_method=method)
        body = resp.read(decode_content=False)
        return raw.status, raw.reason, list(resp.headers.iteritems()), body, raw.will_close, raw.msg.size
    finally:
        a.close()


@pytest.mark.parametrize("name", list(WHOLE))
def test_an_answer_read_whole_is_read_as_the_streaming_read_reads_it(name):
    data = WHOLE[name]
    answer = whole(data, "GET")
    assert isinstance(answer, Whole)
    got = (answer.status, answer.reason, answer.headers, answer.body, answer.will_close, answer.size)
    assert got == streamed_read(data)


@pytest.mark.parametrize("name", list(STREAMED))
def test_any_other_answer_is_left_to_the_streaming_read(name):
    assert whole(STREAMED[name], "GET") is None


def test_a_head_answer_is_left_to_the_streaming_read():
    assert whole(OK, "HEAD") is None  # its Content-Length announces a body it does not carry
    assert whole(OK, "GET") is not None


def _pair_link():
    proxy_end, origin_end = socket.socketpair()
    return Link(proxy_end, "127.0.0.1", 1), origin_end


def test_exchange_reads_an_answer_all_in_one_recv_whole():
    link, origin = _pair_link()
    try:
        origin.sendall(OK)  # all there before the request goes: the first recv holds it
        answer = exchange(link, b"GET / HTTP/1.1\r\nHost: o\r\n\r\n", b"", "GET", 5)
        assert isinstance(answer, Whole) and answer.body == BODY
        assert origin.recv(1000) == b"GET / HTTP/1.1\r\nHost: o\r\n\r\n"
    finally:
        link.close()
        origin.close()


def test_exchange_streams_an_answer_whose_body_is_not_all_there_from_the_bytes_already_read():
    link, origin = _pair_link()
    try:
        origin.sendall(OK[:-5])  # the header and part of the body
        answer = exchange(link, b"GET / HTTP/1.1\r\nHost: o\r\n\r\n", b"", "GET", 5)
        assert isinstance(answer, HTTPResponse) and answer.status == 200
        assert answer.headers["Server"] == "origin"
        origin.sendall(OK[-5:])
        assert answer.read(decode_content=False) == BODY
        assert answer._original_response.isclosed()  # read to its end: the link may be kept
    finally:
        link.close()
        origin.close()


def test_exchange_reports_a_failed_first_read_as_the_streaming_read_did():
    link, origin = _pair_link()
    try:
        origin.shutdown(socket.SHUT_WR)  # the peer closed its side before answering
        with pytest.raises(RemoteDisconnected):
            exchange(link, b"GET / HTTP/1.1\r\n\r\n", b"", "GET", 5)
    finally:
        link.close()
        origin.close()


def test_exchange_reports_a_timeout_of_the_first_read_once():
    link, origin = _pair_link()
    try:
        with pytest.raises(TimeoutError):
            exchange(link, b"GET / HTTP/1.1\r\n\r\n", b"", "GET", 0.05)
    finally:
        link.close()
        origin.close()


def test_exchange_asks_every_watch_whether_the_client_left_and_times_out_at_the_read_timeout(monkeypatch):
    from ngxsim_plugins.upstreams import connections

    monkeypatch.setattr(connections, "WATCH", 0.1)
    link, origin = _pair_link()
    asked = []
    try:
        began = time.monotonic()
        with pytest.raises(TimeoutError):  # the origin never answers: proxy_read_timeout, not the first watch
            exchange(link, b"GET / HTTP/1.1\r\n\r\n", b"", "GET", 0.35, lambda: asked.append(1) and False)
        # asked at each watch (0.1, 0.2, 0.3 s) and as the wait ends; the timeout is the read's, not a watch's
        assert len(asked) >= 3 and time.monotonic() - began >= 0.3, (len(asked), time.monotonic() - began)
    finally:
        link.close()
        origin.close()


def test_exchange_ends_with_client_gone_when_the_client_left_meanwhile(monkeypatch):
    from ngxsim import ClientGone
    from ngxsim_plugins.upstreams import connections

    monkeypatch.setattr(connections, "WATCH", 0.05)
    link, origin = _pair_link()
    asked = []
    try:
        with pytest.raises(ClientGone):
            exchange(link, b"GET / HTTP/1.1\r\n\r\n", b"", "GET", 60, lambda: asked.append(1) or len(asked) == 2)
        assert len(asked) == 2
        origin.sendall(OK)  # what comes after is another exchange's: the link is closed by the caller
    finally:
        link.close()
        origin.close()
