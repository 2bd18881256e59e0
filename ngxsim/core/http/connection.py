"""The client's connection under a response that streams: has the client gone, and cutting the
connection in the middle of an answer.

A handler that streams a body it does not have yet (a proxy passing on a backend's answer as it
arrives) needs both, as nginx's upstream code does:

- the client may leave while the body is still coming. nginx notices it (``epoll`` reports the
  client's end of the connection) and drops the upstream request; a thread here would otherwise
  stay on a slow backend as long as the backend likes. :func:`wait_readable` waits for the
  backend's next bytes while watching the client (and raises :class:`ClientGone` when it leaves);
  :func:`client_gone` looks, without waiting, whether the client has closed (or reset) its end. A
  failed write to the client ends the body too (the server stops iterating it and closes it).
- the body may fail after the status and headers went out. nginx then sends what it has and
  closes the connection: the client sees a short ``Content-Length`` or no last chunk, a truncated
  answer, never a complete-looking one. :func:`cut_connection` ends the connection;
  :class:`ResponseCut` raised from the body then stops the server's writing quietly (gunicorn
  treats it as a client that went away: no traceback, no answer written after it), and tells any
  wrapper of the body (a cache keeping a copy) that the body did not end.
"""

from __future__ import annotations

import errno
import select
import socket
import time

from .logs import error_context, log
from .responses import error_page


class ResponseCut(ConnectionResetError):
    """Raised from a response body (after :func:`cut_connection`) that cannot go on: the server
    stops writing, logs nothing, and closes the body; wrappers of the body see it did not end.

    A ``ConnectionResetError`` because that is what every gunicorn worker class treats as a client
    that went away (a debug line, the connection closed), which is what the client sees."""

    def __init__(self, why: str = "response cut"):
        super().__init__(errno.ECONNRESET, why)


class ClientGone(ConnectionAbortedError):
    """The client closed (or reset) its end of the connection while the answer was being made
    (:func:`wait_readable`)."""


def _socket(ctx):
    return ctx.environ.get("gunicorn.socket")


def wait_readable(ctx, sock, timeout: float) -> bool:
    """Wait until ``sock`` (a backend's connection) has bytes to read or is closed by its peer
    (True), or ``timeout`` seconds pass (False), watching the client meanwhile: raises
    :class:`ClientGone` as soon as the client closes (or resets) its end, as nginx's event loop
    reports it. Bytes the client sends ahead (a pipelined request) are left for the server.

    Only the socket's own state is looked at: call it when nothing of ``sock`` is buffered above
    the socket (after a read that emptied the reader's buffer)."""
    client = _socket(ctx)
    poller = select.poll()  # not select(): a descriptor may be above FD_SETSIZE
    poller.register(sock, select.POLLIN | select.POLLPRI)
    gone = select.POLLRDHUP | select.POLLHUP | select.POLLERR | select.POLLNVAL
    if client is not None:
        poller.register(client, select.POLLIN | select.POLLRDHUP)
    client_fd = client.fileno() if client is not None else -1
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        try:
            events = poller.poll(left * 1000)
        except InterruptedError:  # pragma: no cover - PEP 475 retries, kept for clarity
            continue
        for fd, mask in events:
            if fd != client_fd:
                return True
            if mask & gone:
                raise ClientGone(errno.ECONNABORTED, "the client closed the connection")
            poller.unregister(client)  # a pipelined request: the client is still there
            client_fd = -1
        if not events:
            return False


def client_gone(ctx) -> bool:
    """Has the client closed (or reset) its end of the connection? Never waits.

    Bytes the client sent ahead (a pipelined request) mean it is still there. A client that
    shut down only its sending side counts as closed, as in nginx (``epoll`` reports it the same
    way). False when there is no socket to look at (a test client, TLS)."""
    sock = _socket(ctx)
    if sock is None:
        return False
    try:
        poller = select.poll()  # not select(): a descriptor may be above FD_SETSIZE
        poller.register(sock, select.POLLIN)
        if not poller.poll(0):
            return False
        # readable: the peek cannot wait (a socket with a timeout would wait for it otherwise)
        return not sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except (BlockingIOError, InterruptedError, ValueError):  # nothing after all; TLS: no peeking
        return False
    except OSError:  # reset, or the socket is gone already
        return True


CLIENT_CLOSED = 499  # nginx's NGX_HTTP_CLIENT_CLOSED_REQUEST: the client left before its answer


def client_closed(ctx, why: str = "client prematurely closed connection", upstream: str | None = None):
    """nginx's end of a request whose client closed its connection before the answer (it left
    during a wait, or while a backend was still to answer): ``why`` in the error log at ``info``
    (with the request's context, and ``upstream`` as ``error_context`` takes it), nothing written
    to the connection, which is ended, and 499 in the access log and the log phase. Return it as
    the handler's answer."""
    log.info("%s%s", why, error_context(ctx, upstream))
    response = error_page(CLIENT_CLOSED)
    response.ngxsim_close = True  # the core ends the connection: nothing is written to it
    return response


def cut_connection(ctx) -> None:
    """End the client's connection now (both directions): what was written still reaches the
    client, nothing more does. nginx's ``return 444``, and the end of an answer whose body failed
    (raise :class:`ResponseCut` from the body after it). No-op without a socket (a test client)."""
    sock = _socket(ctx)
    if sock is None:
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
