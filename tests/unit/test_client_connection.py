"""The core's plumbing for handlers that stream (ngxsim.wait_readable, client_gone, cut_connection)
and nginx's error-log context (ngxsim.error_context), on real sockets."""

from __future__ import annotations

import socket
import threading

import pytest

from ngxsim import ClientGone, client_gone, cut_connection, error_context, wait_readable
from ngxsim.core.http.context import RequestContext


def make_ctx(client: socket.socket | None = None, **environ) -> RequestContext:
    env = {"REQUEST_METHOD": "GET", "RAW_URI": "/x?key=s3cret&a=1", "QUERY_STRING": "key=s3cret&a=1",
           "SERVER_PROTOCOL": "HTTP/1.1", "REMOTE_ADDR": "127.0.0.1", **environ}
    if client is not None:
        env["gunicorn.socket"] = client
    ctx = RequestContext(env, None, None)
    ctx.secret_args = frozenset({"key"})
    return ctx


@pytest.fixture
def pairs():
    made = []

    def pair():
        a, b = socket.socketpair()
        made.extend((a, b))
        return a, b

    yield pair
    for sock in made:
        sock.close()


def test_error_context_is_nginxs_with_secrets_masked():
    ctx = make_ctx(HTTP_HOST="example.test", HTTP_REFERER="http://r.test/")
    assert error_context(ctx, "http://127.0.0.1:9001/x?key=s3cret") == (
        ', client: 127.0.0.1, server: , request: "GET /x?key=***&a=1 HTTP/1.1", '
        'upstream: "http://127.0.0.1:9001/x?key=***", host: "example.test", referrer: "http://r.test/"')
    # no upstream, no Host, no Referer: those parts are left out, as nginx leaves them out
    assert error_context(make_ctx()) == ', client: 127.0.0.1, server: , request: "GET /x?key=***&a=1 HTTP/1.1"'


def test_client_gone_sees_a_close_a_reset_but_not_a_pipelined_request(pairs):
    server_side, client = pairs()
    ctx = make_ctx(server_side)
    assert not client_gone(ctx)
    client.sendall(b"GET /next HTTP/1.1\r\n")  # a pipelined request: still there, and left unread
    assert not client_gone(ctx)
    assert server_side.recv(100) == b"GET /next HTTP/1.1\r\n"
    client.shutdown(socket.SHUT_WR)
    assert client_gone(ctx)
    assert not client_gone(make_ctx())  # no socket (a test client): never gone


def test_client_gone_never_waits_on_a_socket_with_a_timeout(pairs):
    server_side, _client = pairs()
    server_side.settimeout(30)  # ngxsim's worker reads bodies with a timeout on the socket
    assert not client_gone(make_ctx(server_side))


def test_wait_readable_returns_when_the_backend_sends_or_the_timeout_passes(pairs):
    backend_side, backend = pairs()
    server_side, client = pairs()
    ctx = make_ctx(server_side)
    assert wait_readable(ctx, backend_side, 0.05) is False
    client.sendall(b"pipelined")  # ignored: the client is still there
    threading.Timer(0.1, backend.sendall, (b"x",)).start()
    assert wait_readable(ctx, backend_side, 10) is True


def test_wait_readable_raises_client_gone_when_the_client_leaves_meanwhile(pairs):
    backend_side, _backend = pairs()
    server_side, client = pairs()
    threading.Timer(0.1, client.close).start()
    with pytest.raises(ClientGone):
        wait_readable(make_ctx(server_side), backend_side, 10)


def test_cut_connection_ends_both_directions(pairs):
    server_side, client = pairs()
    server_side.sendall(b"partial")
    cut_connection(make_ctx(server_side))
    assert client.recv(100) == b"partial" and client.recv(100) == b""  # what was sent, then the end
    with pytest.raises(OSError):
        server_side.sendall(b"more")
    cut_connection(make_ctx())  # no socket: nothing to do
