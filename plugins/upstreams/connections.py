"""Connections to the peers: one per try, kept for the next request only as nginx's
``ngx_http_upstream_keepalive_module`` keeps them.

A connection is kept (per worker, per upstream) when the upstream says ``keepalive N``, the
request went as HTTP/1.1 without ``Connection: close`` (``proxy_http_version 1.1;`` and
``proxy_set_header Connection "";``), the answer did not close it and its body was read to the
end; at most N idle ones per worker (the oldest is closed for a newer one, as nginx's cache
does), none idle longer than ``keepalive_timeout``, none reused after ``keepalive_requests``
requests or ``keepalive_time``. Without ``keepalive`` (and always for ``proxy_pass`` to an
address) each request has its own connection, closed after the answer, as in nginx.

The request goes out as ngxsim writes it (no HTTP client adds a header); the answer's status
line is read by ``http.client``, its header lines as nginx reads them (``Header``), and it is
handed on as a urllib3 response (its framing: chunked, length, until the close). An answer
whose first bytes are no status line is an HTTP/0.9 one (version ``HTTP_09``): all its bytes
are the body, to the close.
"""

from __future__ import annotations

import errno
import io
import re
import select
import socket
import struct
import threading
import time
from collections import deque
from http.client import CONTINUE, BadStatusLine, HTTPException, LineTooLong, RemoteDisconnected, UnknownProtocol
from http.client import HTTPResponse as ClientResponse
from typing import Callable

from urllib3 import HTTPHeaderDict, HTTPResponse
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError

from ngxsim import ClientGone


class Link:
    """One connection to a peer, with what nginx's keepalive limits count."""

    __slots__ = ("sock", "host", "port", "requests", "born", "idle_since", "kernel_timeout", "poller")

    def __init__(self, sock: socket.socket, host: str, port: int):
        self.sock, self.host, self.port = sock, host, port
        self.requests = 0
        self.born = time.monotonic()
        self.idle_since = 0.0
        # (SO_SNDTIMEO, SO_RCVTIMEO or None: the same) while the socket is blocking (exchange)
        self.kernel_timeout: tuple[float, float | None] | None = None
        self.poller = None  # made on the first readable() check of a kept connection

    def use_kernel_timeout(self, timeout: float, recv: float | None = None) -> None:
        """Blocking calls bounded by the kernel (``SO_SNDTIMEO`` ``timeout``, ``SO_RCVTIMEO``
        ``recv``, else ``timeout`` too): CPython's own timeout polls the socket before every send
        and recv, a system call each; a timed-out call then fails with EAGAIN (``exchange`` says
        ``TimeoutError``, as CPython would)."""
        sock = self.sock
        sock.setblocking(True)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, _timeval(timeout))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _timeval(timeout if recv is None else recv))
        self.kernel_timeout = (timeout, recv)

    def use_python_timeout(self, timeout: float) -> None:
        """CPython's timeout (a non-blocking socket): what http.client's reader and the body's
        waits expect (a blocking socket's EAGAIN would read as "no data yet" there)."""
        self.sock.settimeout(timeout)
        self.kernel_timeout = None

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def connect(host: str, port: int, timeout: float) -> Link:
    """A new connection (``proxy_connect_timeout``); failures as urllib3 names them, so a
    refused or timed-out connect is told from a failure after the request was sent."""
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except TimeoutError as exc:
        raise ConnectTimeoutError(None, f"connect to {host}:{port} timed out") from exc
    except OSError as exc:
        raise NewConnectionError(None, f"connect to {host}:{port} failed: {exc}") from exc
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return Link(sock, host, port)


# while an answer's head is awaited, how often ``exchange`` looks whether the client has gone
WATCH = 1.0


def exchange(link: Link, head: bytes, body: bytes, method: str, read_timeout: float,
             gone: Callable[[], bool] | None = None) -> HTTPResponse | Whole:
    """Send the request (head and body in one write) and read the answer: a ``Whole`` when the
    first read holds all of a plain answer (``whole``), else its status line and header as a
    urllib3 response, the body left to read (the first read's bytes, or its error, come first).
    The send and the first read are blocking calls bounded by the kernel (``Link.use_kernel_timeout``);
    what reads on does so with CPython's timeout.

    ``gone``: whether the client has left. While nothing of the answer came, it is asked every
    WATCH seconds (the first read waits that long at a time, no poll on the way of an answer that
    comes sooner): a client that left ends the wait with ``ClientGone``, as nginx drops the
    upstream request of a client that closed its connection."""
    link.requests += 1
    sock = link.sock
    watch = WATCH if gone is not None and read_timeout > WATCH else None
    if link.kernel_timeout != (read_timeout, watch):
        link.use_kernel_timeout(read_timeout, watch)
    try:
        sock.sendall(head + body if body else head)
    except BlockingIOError as exc:  # SO_SNDTIMEO passed: what CPython's own timeout raises
        raise TimeoutError("timed out") from exc
    deadline = None
    while True:
        try:
            first: bytes | OSError = sock.recv(READ_SIZE)
        except BlockingIOError:  # SO_RCVTIMEO passed: raised where http.client would have met it
            if watch is not None:
                now = time.monotonic()
                deadline = deadline or now - watch + read_timeout
                if gone():
                    raise ClientGone(errno.ECONNABORTED, "the client closed the connection") from None
                if now < deadline:
                    if deadline - now < watch:  # the last slice: up to proxy_read_timeout exactly
                        link.use_kernel_timeout(read_timeout, deadline - now)
                    continue
            first = TimeoutError("timed out")
        except OSError as exc:  # (at its first read)
            first = exc
        else:
            answer = whole(first, method)
            if answer is not None:
                return answer
        break
    link.use_python_timeout(read_timeout)
    raw = Answer(_Prefetched(sock, first), method=method)
    raw.begin()
    return HTTPResponse(body=raw, headers=HTTPHeaderDict(raw.msg.items()), status=raw.status, version=raw.version,
                        reason=raw.reason, preload_content=False, decode_content=False, original_response=raw,
                        enforce_content_length=True, request_method=method)


_TIMEVAL = struct.Struct("@ll")  # struct timeval: seconds, microseconds


def _timeval(seconds: float) -> bytes:
    usec = max(1, round(seconds * 1e6))  # 0 would be no timeout at all
    return _TIMEVAL.pack(usec // 1000000, usec % 1000000)


HTTP_09 = 9  # an answer's version (http.client's number) when it had no status line
# nginx's status line (ngx_http_parse_status_line): a whole one (without its LF), and what can
# begin one when its end has not arrived yet
_STATUS_LINE = re.compile(rb"HTTP/[1-9][0-9]?\.[0-9]+ +[0-9]{3}(?:[ .][^\r]*)?\r?")
_STATUS_LINE_START = re.compile(rb"(?:H(?:T(?:T(?:P(?:/(?:[1-9][0-9]?(?:\.(?:[0-9]+(?: +(?:[0-9]{0,2}|[0-9]{3}"
                                rb"(?:[ .][^\r]*)?\r?))?)?)?)?)?)?)?)?)?")


READ_SIZE = 65536  # the first read of an answer


class Whole:
    """An answer read whole by one recv: its status line, header lines (as sent, the values'
    spaces stripped) and body."""

    __slots__ = ("status", "reason", "headers", "body", "will_close", "size")
    chunked = False

    def __init__(self, status: int, reason: str, headers: list[tuple[str, str]], body: bytes, will_close: bool,
                 size: int):
        self.status, self.reason, self.headers, self.body = status, reason, headers, body
        self.will_close = will_close
        self.size = size  # the header lines' bytes, the blank line too (as Header.size)


# header lines nginx takes as they are: NAME (no space nor control character) ":" value, each
# ended by CRLF (no bare CR or LF anywhere)
_PLAIN_LINES = re.compile("(?:[^\x00-\x20\x7f:]+:[^\r\n]*\r\n)*")


def whole(data: bytes, method: str) -> Whole | None:
    """The answer in ``data`` when it is all there and plain — HTTP/1.1, a 2xx-5xx status but
    204 and 304, CRLF line ends, valid header lines only (at most MAX_LINES), one valid
    Content-Length, no Transfer-Encoding, the body of exactly that length, not a HEAD's — read
    as ``Answer`` and ``read_header`` would read it; None for anything else (the streaming
    path reads it, with all its checks and faults)."""
    end = data.find(b"\r\n\r\n")
    if end < 0 or method == "HEAD" or not data.startswith(b"HTTP/1.1 "):
        return None
    text = data[:end + 2].decode("latin-1")
    line_end = text.find("\r\n")
    status = text[:line_end]
    code = status[9:12]
    if not ("200" <= code <= "599" and code.isdigit()) or code in ("204", "304") or \
            (line_end > 12 and status[12] != " ") or "\n" in status or "\r" in status:
        return None
    lines = text[line_end + 2:]
    if _PLAIN_LINES.fullmatch(lines) is None:
        return None
    split = lines.split("\r\n")
    if len(split) > MAX_LINES + 1:  # the last is the empty rest after the last CRLF
        return None
    headers = []
    length = None
    connection = None
    for line in split[:-1]:
        name, _, value = line.partition(":")
        value = value.strip(" \t")
        headers.append((name, value))
        low = name.lower()
        if low == "content-length":
            if length is not None or not (value.isascii() and value.isdigit()) or len(value) > 18:
                return None
            length = int(value)
        elif low == "transfer-encoding":
            return None
        elif low == "connection" and connection is None:
            connection = value
    body = data[end + 4:]
    if length != len(body):
        return None
    return Whole(int(code), status[13:].strip(), headers, body,
                 connection is not None and "close" in connection.lower(), end + 4 - line_end - 2)


class _Prefetched(io.RawIOBase):
    """The connection as http.client reads it, after a first read was done: its bytes (or its
    error) come first, then the socket's (``makefile`` gives http.client the reader)."""

    def __init__(self, sock: socket.socket, first: bytes | OSError):
        self._raw = sock.makefile("rb", buffering=0)  # a SocketIO, counted by the socket as makefile's
        self._sock = sock
        self._first: bytes | OSError | None = first

    def makefile(self, mode: str):
        return io.BufferedReader(self)

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        first = self._first
        if first is None:
            return self._raw.readinto(b)
        if isinstance(first, OSError):
            self._first = None
            raise first
        n = min(len(b), len(first))
        b[:n] = first[:n]
        self._first = first[n:] or None
        return n

    def close(self) -> None:
        if not self.closed:
            self._raw.close()
        super().close()


_BAD_IN_NAME = re.compile("[\x00-\x20\x7f]")
MAX_LINE = 65536  # http.client's: a longer line is "upstream sent too big header"
MAX_LINES = 100


class Header:
    """The answer's header lines, read as nginx's ``ngx_http_parse_header_line`` reads them
    (not as e-mail: that parser stops at a line without a colon and costs a fifth of a proxied
    request): ``NAME: value`` with the value's spaces stripped, a bare ``NAME`` as an empty
    header; a name with a space or a control character in it is invalid (``invalid``: that
    line, the answer is refused). The part of ``email.message.Message`` http.client reads."""

    __slots__ = ("lines", "invalid", "size")

    def __init__(self, lines: list[tuple[str, str]], invalid: str | None, size: int):
        self.lines, self.invalid, self.size = lines, invalid, size  # size: bytes read, the blank line too

    def get(self, name: str, default=None):
        name = name.lower()
        for key, value in self.lines:
            if key.lower() == name:
                return value
        return default

    def get_all(self, name: str, failobj=None):
        name = name.lower()
        found = [value for key, value in self.lines if key.lower() == name]
        return found or failobj

    def items(self) -> list[tuple[str, str]]:
        return self.lines


def read_header(fp) -> Header:
    """The header lines up to the blank line. The peer closing before it (inside a line, or
    between lines) is no answer: nginx's parser still waits for the line's end and meets the
    close (``RemoteDisconnected``: its "upstream prematurely closed connection", a 502)."""
    lines: list[tuple[str, str]] = []
    invalid = None
    size = 0
    while True:
        raw = fp.readline(MAX_LINE + 1)
        size += len(raw)
        if len(raw) > MAX_LINE:
            raise LineTooLong("header line")
        if raw in (b"\r\n", b"\n"):
            return Header(lines, invalid, size)
        if not raw.endswith(b"\n"):
            raise RemoteDisconnected("the peer closed the connection inside the response header")
        if len(lines) >= MAX_LINES:
            raise HTTPException(f"got more than {MAX_LINES} headers")
        if invalid is not None:
            continue
        line = raw.decode("latin-1").rstrip("\r\n")
        name, colon, value = line.partition(":")
        if not name or _BAD_IN_NAME.search(name):
            invalid = line
            continue
        lines.append((name, value.strip(" \t")))


class Answer(ClientResponse):
    """http.client's response with nginx's reading of the header lines (``read_header``)."""

    def begin(self):  # http.client's, but for the header's parser and HTTP/0.9
        if self.headers is not None:
            return
        if self._without_status_line():  # nginx 1.22 relays it as HTTP/0.9: every byte, to the close
            self.code, self.status, self.reason, self.version = 200, 200, "", HTTP_09
            self.headers = self.msg = Header([], None, 0)
            self.chunked, self.chunk_left, self.will_close, self.length = False, None, True, None
            return
        while True:
            version, status, reason = self._read_status()
            if status != CONTINUE:
                break
            read_header(self.fp)  # a 100 Continue's header
        self.code = self.status = status
        self.reason = reason.strip()
        if version in ("HTTP/1.0", "HTTP/0.9"):
            self.version = 10
        elif version.startswith("HTTP/1."):
            self.version = 11
        else:
            raise UnknownProtocol(version)
        self.headers = self.msg = read_header(self.fp)
        encoding = self.headers.get("transfer-encoding")
        self.chunked = bool(encoding) and encoding.lower() == "chunked"
        self.chunk_left = None
        self.will_close = self._check_close()
        self.length = None
        length = self.headers.get("content-length")
        if length and not self.chunked and length.isascii() and length.isdigit():
            self.length = int(length)
        if status in (204, 304) or 100 <= status < 200 or self._method == "HEAD":
            self.length = 0
        if not self.will_close and not self.chunked and self.length is None:
            self.will_close = True

    def _read_status(self):
        """http.client's, but a status line the close cuts short (``HTTP/1.1 200 OK`` and no line
        end) is no answer, as in nginx: its parser waits for the LF and meets the close."""
        raw = self.fp.readline(MAX_LINE + 1)
        if len(raw) > MAX_LINE:
            raise LineTooLong("status line")
        if not raw.endswith(b"\n"):
            raise RemoteDisconnected("the peer closed the connection inside the status line")
        version, _, rest = raw.decode("latin-1").strip().partition(" ")
        status, _, reason = rest.lstrip(" ").partition(" ")
        if not (version.startswith("HTTP/") and status.isascii() and status.isdigit() and len(status) == 3):
            raise BadStatusLine(raw.decode("latin-1"))
        return version, int(status), reason

    def _without_status_line(self) -> bool:
        """Do the answer's first bytes (those at hand, none consumed) fail to be, or begin, a
        status line as nginx reads one? (Nothing at all: the peer closed, http.client says so.)"""
        first = self.fp.peek(1)
        line, end, _ = first.partition(b"\n")
        return bool(first) and not (_STATUS_LINE if end else _STATUS_LINE_START).fullmatch(line)


class KeptConnections:
    """This worker's idle connections of each upstream with ``keepalive`` (threads share it).
    ``counted(upstream, n)``, when given, hears how many an upstream keeps after each change."""

    def __init__(self, counted=None):
        self._idle: dict[str, deque[Link]] = {}
        self._lock = threading.Lock()
        self._counted = counted or (lambda upstream, n: None)

    def take(self, upstream: str, host: str, port: int, timeout: float) -> Link | None:
        """The most recently kept idle connection to ``host:port`` still usable, or None.
        One idle too long, or that the peer closed (or wrote to) meanwhile, is closed."""
        now = time.monotonic()
        dead = []
        found = None
        with self._lock:
            idle = self._idle.get(upstream)
            if not idle:
                return None
            for link in list(reversed(idle)):
                if link.host == host and link.port == port:
                    idle.remove(link)
                    if now - link.idle_since > timeout or _spoilt(link):
                        dead.append(link)
                        continue
                    found = link
                    break
            self._counted(upstream, len(idle))
        for link in dead:
            link.close()
        return found

    def keep(self, upstream: str, link: Link, limit: int, requests: int, lifetime: float) -> None:
        """Keep ``link`` idle for the next request, unless it has served ``requests`` requests
        or lived ``lifetime`` seconds; the oldest idle one goes when ``limit`` are kept."""
        now = time.monotonic()
        if link.requests >= requests or now - link.born > lifetime:
            link.close()
            return
        link.idle_since = now
        with self._lock:
            idle = self._idle.setdefault(upstream, deque())
            idle.append(link)
            oldest = idle.popleft() if len(idle) > limit else None
            self._counted(upstream, len(idle))
        if oldest is not None:
            oldest.close()

    def clear(self) -> None:
        with self._lock:
            links = [link for idle in self._idle.values() for link in idle]
            for upstream in self._idle:
                self._counted(upstream, 0)
            self._idle.clear()
        for link in links:
            link.close()


def _spoilt(link: Link) -> bool:
    """``readable`` for a kept connection, with a poll object made once for it."""
    poller = link.poller
    if poller is None:
        poller = link.poller = select.poll()
        poller.register(link.sock, select.POLLIN)
    return bool(poller.poll(0))


def readable(sock: socket.socket) -> bool:
    """An idle connection with something to read has been closed (or spoilt) by the peer."""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))
