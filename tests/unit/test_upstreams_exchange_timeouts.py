"""``connections.exchange`` sends the request and reads the first bytes of the answer with the
socket blocking and the kernel bounding each call (``SO_RCVTIMEO``/``SO_SNDTIMEO``: no poll
before every call); a call that times out is the ``TimeoutError`` CPython's own timeout raises,
so the proxy still writes nginx's line. Real loopback connections to a peer that does not
answer, does not read, or answers in parts."""

from __future__ import annotations

import socket
import threading

import pytest

from ngxsim_plugins.upstreams.connections import Whole, connect, exchange
from ngxsim_plugins.upstreams.proxy import READING_HEADER, describe_failure

TIMED_OUT = "upstream timed out (110: Connection timed out) while reading response header from upstream"
HEAD = b"GET / HTTP/1.1\r\nHost: backend\r\n\r\n"
WHOLE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
CHUNKED = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"


@pytest.fixture
def peer():
    """A loopback listener; ``peer(handle)`` serves one connection with ``handle(sock)`` on a thread."""
    listener = socket.create_server(("127.0.0.1", 0))
    done = threading.Event()
    threads, links = [], []

    def serve(handle):
        def run():
            conn, _ = listener.accept()
            with conn:
                handle(conn)
                done.wait(10)
        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        threads.append(thread)
        link = connect("127.0.0.1", listener.getsockname()[1], 5)
        links.append(link)
        return link

    yield serve
    done.set()
    for link in links:
        link.close()
    for thread in threads:
        thread.join(10)
    listener.close()


def _read_request(conn: socket.socket) -> None:
    data = b""
    while not data.endswith(b"\r\n\r\n"):
        data += conn.recv(65536)


def test_no_answer_within_the_read_timeout_is_nginxs_timeout(peer):
    link = peer(_read_request)
    with pytest.raises(TimeoutError) as caught:
        exchange(link, HEAD, b"", "GET", 0.2)
    assert describe_failure(caught.value, READING_HEADER) == (TIMED_OUT, "timeout")


def test_a_request_the_peer_does_not_read_is_a_timeout_too(peer):
    link = peer(lambda conn: None)  # never reads: the socket buffers fill and the send stalls
    link.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    with pytest.raises(TimeoutError) as caught:
        exchange(link, HEAD, b"x" * (32 * 1024 * 1024), "POST", 0.2)
    assert describe_failure(caught.value, READING_HEADER) == (TIMED_OUT, "timeout")


def test_a_streamed_answer_reads_on_with_cpythons_timeout_and_the_next_exchange_blocks_again(peer):
    def answer_twice(conn):
        _read_request(conn)
        conn.sendall(CHUNKED[:20])  # the first read cannot hold it whole: it streams
        conn.sendall(CHUNKED[20:])
        _read_request(conn)
        conn.sendall(WHOLE)

    link = peer(answer_twice)
    streamed = exchange(link, HEAD, b"", "GET", 5)
    assert streamed.__class__ is not Whole and link.sock.gettimeout() == 5  # what http.client's reader expects
    assert streamed.read() == b"ok"
    answer = exchange(link, HEAD, b"", "GET", 5)
    assert answer.__class__ is Whole and answer.body == b"ok"
    assert link.sock.gettimeout() is None  # blocking, the kernel's timeouts set
    assert link.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, 16) != bytes(16)
