"""Raw HTTP/1.x on a socket: send any bytes (a malformed request line too) and read one answer.

For what an ordinary client refuses to send or hides: a connection closed without an answer
(nginx's ``444``), the reason phrase as written, a target such as ``*`` or ``/%zz``::

    answer = raw_request(server.port, b"GET /%zz HTTP/1.1\r\nHost: a\r\n\r\n")
    assert (answer.status, answer.reason) == (400, "Bad Request")

Standard library only; every read is bounded by ``timeout``.
"""

from __future__ import annotations

import re
import socket
import time
from dataclasses import dataclass, field

# headers the two servers add of their own accord and that a config does not decide
SERVER_OWN = {"server", "date", "connection", "content-length", "keep-alive", "transfer-encoding", "etag",
              "last-modified", "accept-ranges"}


@dataclass
class RawAnswer:
    """What came back for one raw request: ``status`` None means the connection was closed
    without an answer (nginx's 444); ``0`` an HTTP/0.9 answer (no status line, no headers: the
    bytes to the close are the body), as nginx relays an origin's answer without a status line."""

    status: int | None
    reason: str = ""
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None

    def comparable(self, port: int) -> dict:
        """The parts a config decides, with the server's own port written as ``{port}``."""

        def norm(value):
            if value is None:
                return None
            if isinstance(value, bytes):
                return value.replace(str(port).encode(), b"{port}")
            return value.replace(str(port), "{port}")

        added = sorted((k.lower(), norm(v)) for k, v in self.headers if k.lower() not in SERVER_OWN
                       and k.lower() not in ("location", "content-type"))
        return {"status": self.status, "reason": self.reason, "location": norm(self.header("Location")),
                "content-type": self.header("Content-Type"), "headers": added, "body": norm(self.body)}


def raw_request(port: int, data: bytes, timeout: float = 5.0, wait_close: bool = False) -> RawAnswer:
    """Send ``data`` as is and read one answer (by Content-Length, chunks, or to the close); an
    interim ``100 Continue`` is skipped. ``wait_close``: then wait for the server to close the
    connection (a request with ``Connection: close``): it has finished the request, e.g. stored
    the answer in a cache, which may happen after the last byte was sent."""
    deadline = time.monotonic() + timeout
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        answer = _read_answer(sock, data, deadline)
        while wait_close and answer.status and _recv(sock, deadline):
            pass
        return answer


_STATUS_LINE = re.compile(r"HTTP/1\.[01] (\d{3})(?: (.*))?")
# what can begin a status line whose end has not come yet
_STATUS_LINE_START = re.compile(r"H(?:T(?:T(?:P(?:/(?:1(?:\.(?:[01](?: (?:\d(?:\d(?:\d(?: .*)?)?)?)?)?)?)?)?)?)?)?)?")


def _may_be_status_line(buf: bytes) -> bool:
    """Do the answer's first bytes (its first line, or what came of it) make or begin a status
    line? Anything else is an HTTP/0.9 answer (an origin's ``HTTP/1.1 abc`` relayed by nginx)."""
    line, end, _ = buf.partition(b"\r\n")
    text = line.decode("latin-1")
    return (_STATUS_LINE if end else _STATUS_LINE_START).fullmatch(text) is not None


def _read_answer(sock: socket.socket, data: bytes, deadline: float) -> RawAnswer:
    """One answer off ``sock`` (see ``raw_request``)."""
    buf = b""
    while True:
        while b"\r\n\r\n" not in buf:
            chunk = _recv(sock, deadline)
            if not chunk:
                if not buf:
                    return RawAnswer(None)
                if not _may_be_status_line(buf):
                    return RawAnswer(0, "", [], buf)  # HTTP/0.9
                raise AssertionError(f"connection closed inside the response head: {buf!r}")
            buf += chunk
            if not _may_be_status_line(buf):
                while chunk := _recv(sock, deadline):
                    buf += chunk
                return RawAnswer(0, "", [], buf)  # HTTP/0.9
        head, _, rest = buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        m = _STATUS_LINE.fullmatch(lines[0])
        status, reason = int(m.group(1)), m.group(2) or ""
        if status != 100:
            break
        buf = rest  # "100 Continue" is not the answer: the final one follows
    headers = [tuple(part.strip() for part in line.split(":", 1)) for line in lines[1:]]
    answer = RawAnswer(status, reason, headers)
    method = data.split(b" ", 1)[0]
    if method == b"HEAD" or status in (204, 304) or 100 <= status < 200:
        return answer
    length = answer.header("Content-Length")
    if length is not None:
        while len(rest) < int(length):
            chunk = _recv(sock, deadline)
            if not chunk:
                break
            rest += chunk
        answer.body = rest[: int(length)]
    elif (answer.header("Transfer-Encoding") or "").lower() == "chunked":
        answer.body = _dechunk(sock, rest, deadline)
    else:
        while chunk := _recv(sock, deadline):
            rest += chunk
        answer.body = rest
    return answer


def _recv(sock: socket.socket, deadline: float) -> bytes:
    left = deadline - time.monotonic()
    if left <= 0:
        raise AssertionError("timed out reading the answer")
    sock.settimeout(left)
    try:
        return sock.recv(65536)
    except ConnectionResetError:
        return b""


def _dechunk(sock: socket.socket, rest: bytes, deadline: float) -> bytes:
    body = b""
    while True:
        while b"\r\n" not in rest:
            rest += _recv(sock, deadline)
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        while len(rest) < size + 2:
            chunk = _recv(sock, deadline)
            if not chunk:
                raise AssertionError("connection closed inside a chunk")
            rest += chunk
        if size == 0:
            return body
        body += rest[:size]
        rest = rest[size + 2 :]
