"""One health probe: ``GET uri`` to a peer over a new HTTP/1.1 connection (urllib3), within
``timeout`` for the whole exchange (connect, send, status line, headers, and the body when a
``match`` looks at it), judged by the ``match`` block or, without one, by a 2xx/3xx status.

A new connection per probe, as NGINX Plus does by default: a probe also checks that the peer
still accepts connections, and a keep-alive connection left over from the last probe cannot hide
a peer that stopped listening.
"""

from __future__ import annotations

import http.client
import socket
import threading
import time

from urllib3.connection import HTTPConnection
from urllib3.exceptions import (
    NewConnectionError, ProtocolError, TimeoutError as Urllib3Timeout,
)

from .machine import ProbeResult
from .match import MAX_BODY, Match, default_check

USER_AGENT = "ngxsim-healthcheck"
_CHUNK = 16 * 1024
_REASON_MAX = 96  # bytes the zone keeps of a failure reason


def probe(host: str, port: int, uri: str, host_header: str, timeout: float, match: Match | None = None) -> ProbeResult:
    """Probe ``host:port``; never raises for anything the network or the peer does."""
    began = time.monotonic()
    status = 0
    conn = HTTPConnection(host, port, timeout=timeout)
    # socket timeouts bound each wait, not the whole: a peer that trickles its answer a byte at
    # a time would pass every one of them. At the deadline the watchdog shuts the socket down.
    watchdog = _Watchdog(timeout)
    try:
        conn.connect()
        watchdog.arm(conn.sock)
        conn.request("GET", uri, headers={"Host": host_header, "User-Agent": USER_AGENT, "Accept": "*/*",
                                          "Connection": "close"}, preload_content=False)
        response = conn.getresponse()
        status = response.status
        headers = list(response.headers.iteritems())
        body = b""
        if match is not None and match.reads_body:
            while len(body) < MAX_BODY:
                chunk = response.read1(min(_CHUNK, MAX_BODY - len(body)))
                if not chunk:
                    break
                body += chunk
    except Exception as exc:  # noqa: BLE001 - every failure of the exchange is a failed probe
        reason = "timed out" if watchdog.fired else _reason(exc)
        return ProbeResult(False, time.monotonic() - began, status, reason)
    finally:
        watchdog.cancel()
        conn.close()
    duration = time.monotonic() - began
    if duration > timeout or watchdog.fired:
        return ProbeResult(False, duration, status, "timed out")
    if match is None:
        why = default_check(status)
    else:
        why = match.check(status, headers, body.decode("utf-8", "replace"))
    return ProbeResult(why is None, duration, status, _clip(why or ""))


class _Watchdog:
    """Shuts a probe's socket down when its time is up (a timer thread per probe; probes are
    few: one per peer per interval)."""

    def __init__(self, timeout: float):
        self.deadline = time.monotonic() + timeout
        self.fired = False
        self._timer: threading.Timer | None = None

    def arm(self, sock: socket.socket) -> None:
        def fire() -> None:
            self.fired = True
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

        self._timer = threading.Timer(max(self.deadline - time.monotonic(), 0.0), fire)
        self._timer.daemon = True
        self._timer.start()

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer.join()  # a firing timer finishes before the connection is closed


def _reason(exc: BaseException) -> str:
    """A short, stable description of why an exchange failed."""
    chain = []
    while exc is not None and exc not in chain:
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    # the causes first: urllib3's NewConnectionError is a ConnectTimeoutError even for a refusal,
    # and http.client's RemoteDisconnected is a ConnectionResetError
    for kind, text in ((ConnectionRefusedError, "connection refused"),
                       (http.client.RemoteDisconnected, "connection closed without a response"),
                       (http.client.IncompleteRead, "connection closed in the body"),
                       (ConnectionResetError, "connection reset")):
        if any(isinstance(e, kind) for e in chain):
            return text
    if any(isinstance(e, (socket.timeout, TimeoutError, Urllib3Timeout)) for e in chain):
        return "timed out"
    exc = chain[0]
    if isinstance(exc, http.client.HTTPException):
        return _clip(f"invalid response: {exc!s}".strip())
    if isinstance(exc, (NewConnectionError, ProtocolError)):
        return _clip(f"connection failed: {exc}")
    return _clip(f"{type(exc).__name__}: {exc}")


def _clip(text: str) -> str:
    data = text.encode("utf-8")
    if len(data) <= _REASON_MAX:
        return text
    return data[: _REASON_MAX - 3].decode("utf-8", "ignore") + "..."
