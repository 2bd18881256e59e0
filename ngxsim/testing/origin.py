"""A recording origin: what a proxy sent, byte for byte, and answers scripted down to the bytes.

:class:`Backend` answers like a well-behaved HTTP/1.1 server and records what
``http.server`` parsed. A proxy's fidelity needs more: the request line as written (``HTTP/1.0``
or ``HTTP/1.1``), every header line in its order and case, repeated ones apart, the body as it
came (chunks undone), and answers a well-behaved server never sends (a header line without a
colon, no status line, ``Content-Length`` beside chunked). ``RecordingOrigin`` reads requests
off the socket itself::

    origin = RecordingOrigin().start()
    origin.answer("/page", headers=[("Cache-Control", "max-age=60")])   # body: "origin /page #1\\n", #2, ...
    origin.answer("/odd", raw=b"HTTP/1.1 200 OK\\r\\nNoColon\\r\\n\\r\\nx")  # sent as is, then closed
    ...                                                                  # a proxy sends requests
    got = origin.received[-1]
    got.request_line, got.headers, got.body        # "GET /page HTTP/1.0", [("Host", "up"), ...], b""
    origin.stop()

Each answer's default body names the path and counts the requests for it (``#1``, ``#2``), so a
client can tell an answer from the origin from a cached copy. A request is answered on the
connection it came on; the connection stays open for the next one unless the request said
``Connection: close``, was HTTP/1.0 without ``keep-alive``, or the answer closes it. Standard
library only; every read is bounded.
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass, field

from .backend import shutdown_all

READ_TIMEOUT = 30.0
HEAD_MAX = 64 * 1024


@dataclass(frozen=True)
class Received:
    """One request as the origin read it."""

    request_line: str                      # "GET /a?x=1 HTTP/1.0"
    headers: list[tuple[str, str]]         # in order, names as written, repeated ones apart
    body: bytes                            # chunked bodies unchunked
    chunked: bool
    connection: int                        # sequence number of the TCP connection it came on

    def _part(self, index: int) -> str:
        parts = self.request_line.split(" ")
        return parts[index] if len(parts) > index else ""

    @property
    def method(self) -> str:
        return self._part(0)

    @property
    def target(self) -> str:
        return self._part(1)

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    @property
    def version(self) -> str:
        return self._part(2)

    def header(self, name: str) -> str | None:
        """The first value of ``name`` (case-insensitive), None when absent."""
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)

    def comparable(self, *ports: int) -> dict:
        """The request line, the header set (names as written, sorted; repeated ones kept) and
        the body, with each of ``ports`` written as ``{port}`` (two proxies in front of two
        origins compare equal when they sent the same)."""

        def norm(text: str) -> str:
            for port in ports:
                text = text.replace(str(port), "{port}")
            return text

        return {"request_line": norm(self.request_line),
                "headers": sorted((k, norm(v)) for k, v in self.headers),
                "body": self.body, "chunked": self.chunked}


@dataclass(frozen=True)
class Answer:
    """What the origin answers a path with. ``body=None``: ``"NAME PATH #N\\n"`` (N counts the
    requests for the path). ``raw``: these bytes exactly, then the connection is closed.
    ``close``: close the connection after the answer (with ``Connection: close``). ``split``:
    send the bytes before that index (as a slice's), then, SPLIT_PAUSE later, the rest, so that
    a proxy reads the answer in two parts."""

    status: int = 200
    reason: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes | None = None
    raw: bytes | None = None
    close: bool = False
    split: int | None = None


_REASONS = {200: "OK", 204: "No Content", 301: "Moved Permanently", 302: "Found", 304: "Not Modified",
            404: "Not Found", 500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable"}


@dataclass
class RecordingOrigin:
    """A threaded origin on 127.0.0.1 that records every request raw. Thread-safe."""

    name: str = "origin"
    received: list[Received] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        self._lock = threading.Condition()
        self._answers: dict[str | None, Answer] = {}
        self._counts: dict[str, int] = {}
        self._listener: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self._conns: set[socket.socket] = set()
        self._connections = 0
        self.port = 0

    # -- scripting -----------------------------------------------------------------------------

    def answer(self, path: str | None = None, status: int = 200, headers=(), body: bytes | str | None = None,
               reason: str = "", raw: bytes | None = None, close: bool = False, split: int | None = None) -> None:
        """Answer ``path`` (exact, without query; None: every path without its own) like this."""
        if isinstance(body, str):
            body = body.encode()
        with self._lock:
            self._answers[path] = Answer(status, reason, tuple(headers), body, raw, close, split)

    def reset(self) -> None:
        """Forget what was received and the per-path counts (the answers stay)."""
        with self._lock:
            self.received.clear()
            self._counts.clear()

    def wait_received(self, count: int, timeout: float = 10.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        with self._lock:
            while len(self.received) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{self.name}: {len(self.received)} of {count} requests within {timeout}s")
                self._lock.wait(left)
            return list(self.received)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def connections(self) -> int:
        return self._connections

    # -- running -------------------------------------------------------------------------------

    def start(self) -> RecordingOrigin:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(128)
        self.port = listener.getsockname()[1]
        self._listener = listener
        self._spawn(self._accept_loop, listener)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop listening, close every connection, join every thread."""
        listener, self._listener = self._listener, None
        if listener is None:
            return
        try:
            listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        listener.close()
        with self._lock:
            conns = list(self._conns)
        shutdown_all(conns)
        deadline = time.monotonic() + timeout
        for thread in list(self._threads):
            thread.join(max(0.0, deadline - time.monotonic()))
        left = [t.name for t in self._threads if t.is_alive()]
        if left:
            raise AssertionError(f"{self.name}: threads still running {timeout}s after stop: {left}")

    def __enter__(self) -> RecordingOrigin:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _spawn(self, target, *args) -> None:
        thread = threading.Thread(target=target, args=args, name=f"ngxsim-origin-{self.port}", daemon=True)
        self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        thread.start()

    def _accept_loop(self, listener: socket.socket) -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with self._lock:
                self._connections += 1
                self._conns.add(conn)
                number = self._connections
            self._spawn(self._serve, conn, number)

    def _serve(self, conn: socket.socket, number: int) -> None:
        conn.settimeout(READ_TIMEOUT)
        reader = _Reader(conn)
        try:
            while self._listener is not None:
                request = reader.request(number)
                if request is None:
                    return
                answer, count = self._record(request)
                if not self._send(conn, request, answer, count):
                    return
        except (OSError, ValueError):
            return
        finally:
            with self._lock:
                self._conns.discard(conn)
            conn.close()

    def _record(self, request: Received) -> tuple[Answer, int]:
        with self._lock:
            self.received.append(request)
            self._counts[request.path] = count = self._counts.get(request.path, 0) + 1
            self._lock.notify_all()
            return self._answers.get(request.path) or self._answers.get(None) or Answer(), count

    def _send(self, conn: socket.socket, request: Received, answer: Answer, count: int) -> bool:
        """Send the answer; False when the connection is to be closed."""
        if answer.raw is not None:
            _send_split(conn, answer.raw, answer.split)
            return False
        body = answer.body if answer.body is not None else f"{self.name} {request.path} #{count}\n".encode()
        keep = _keeps_alive(request) and not answer.close
        names = {k.lower() for k, _ in answer.headers}
        head = [f"HTTP/1.1 {answer.status} {answer.reason or _REASONS.get(answer.status, 'Unknown')}"]
        head += [f"{k}: {v}" for k, v in answer.headers]
        if "content-type" not in names:
            head.append("Content-Type: text/plain")
        if "content-length" not in names and "transfer-encoding" not in names:
            head.append(f"Content-Length: {len(body)}")
        if not keep:
            head.append("Connection: close")
        no_body = request.method == "HEAD" or answer.status in (204, 304)
        _send_split(conn, ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + (b"" if no_body else body), answer.split)
        return keep


SPLIT_PAUSE = 0.2  # seconds between the two parts of a split answer


def _send_split(conn: socket.socket, data: bytes, split: int | None) -> None:
    if split is not None and data[:split] and data[split:]:
        conn.sendall(data[:split])
        time.sleep(SPLIT_PAUSE)
        data = data[split:]
    conn.sendall(data)


def _keeps_alive(request: Received) -> bool:
    tokens = {t.strip().lower() for k, v in request.headers if k.lower() == "connection" for t in v.split(",")}
    if request.version == "HTTP/1.0":
        return "keep-alive" in tokens
    return "close" not in tokens


class _Reader:
    """Requests off one connection: the head to its empty line, then the body."""

    def __init__(self, conn: socket.socket):
        self.conn = conn
        self.buf = b""

    def _more(self) -> bool:
        data = self.conn.recv(65536)
        self.buf += data
        return bool(data)

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            if not self._more():
                raise ValueError("connection closed inside a line")
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def _exactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not self._more():
                raise ValueError("connection closed inside a body")
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def request(self, number: int) -> Received | None:
        while b"\r\n\r\n" not in self.buf:
            if len(self.buf) > HEAD_MAX or not self._more():
                return None  # closed between requests (or a head too large to be a proxy's)
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = [(k, v.strip()) for k, _, v in (line.partition(":") for line in lines[1:])]
        received = Received(lines[0], headers, b"", False, number)
        chunked = (received.header("Transfer-Encoding") or "").lower() == "chunked"
        if chunked:
            body = b""
            while True:
                size = int(self._line().split(b";")[0].strip(), 16)
                if size == 0:
                    while self._line():
                        pass  # trailers
                    break
                body += self._exactly(size)
                self._exactly(2)
        else:
            body = self._exactly(int(received.header("Content-Length") or 0))
        return Received(lines[0], headers, body, chunked, number)
