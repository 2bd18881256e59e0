"""A real HTTP/1.1 keep-alive backend on loopback, in the test process, for modules that proxy or probe.

It records every request (with the pid of the process that sent it, so a test can tell which
ngxsim worker forwarded it) and can be told, while it runs, to answer other content or another
status, to delay, to close connections without answering, to stop and start again on the same
port, and to flip its health endpoint::

    backend = Backend(name="a").start()
    backend.respond(body="v2")                   # every path now answers "v2"
    backend.respond("/me", body=lambda r: r.headers["Cookie"])   # computed per request
    backend.respond("/x", headers=[("Cache-Control", "public"), ("Cache-Control", "max-age=9")])
    backend.respond("/slow", delay=3)            # one path answers after 3 s
    backend.respond(status=502)                  # every other path answers 502
    backend.respond(action="close")              # read the request, close without answering
    backend.set_healthy(False)                   # GET /health answers 503 {"status":"down"}
    backend.stop(); backend.start()              # same port
    backend.requests[-1].worker_pid, backend.hits, backend.wait_hits(3, path="/health")
    backend.stop()                               # joins every thread it started

Standard library only (``http.server``), so the pytest plugin needs nothing beyond ngxsim.
"""

from __future__ import annotations

import errno
import json
import socket
import struct
import threading
import time
from dataclasses import dataclass
from email.message import Message
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Callable
from urllib.parse import parse_qsl, urlsplit

from .procs import peer_pid

ANSWER, CLOSE, RESET = "answer", "close", "reset"
_ACTIONS = (ANSWER, CLOSE, RESET)


@dataclass(frozen=True)
class Reply:
    """What the backend answers. ``body=None`` answers ``"<name> <path>\\n"``; a dict or list
    is sent as JSON; a callable is called with each :class:`Request` and answers what it
    returns (bytes or text). ``headers`` are sent in order, a name repeated as given. ``action="close"`` reads the request and closes the connection without
    answering (a FIN); ``"reset"`` does the same with a TCP reset."""

    body: "bytes | Callable[[Request], bytes | str] | None" = None
    status: int = 200
    headers: tuple[tuple[str, str], ...] = ()
    delay: float = 0.0
    action: str = ANSWER


@dataclass(frozen=True)
class Request:
    """One request the backend received."""

    method: str
    path: str                 # without the query string
    query: str                # raw, without the "?"
    headers: Message          # case-insensitive: headers["x-forwarded-for"]
    body: bytes
    version: str              # "HTTP/1.1"
    worker_pid: int | None    # the process whose socket sent it (None if it could not be found)
    connection: int           # sequence number of the TCP connection it came on (keep-alive reuse)
    peer_port: int
    time: float               # time.time() when it was read

    @property
    def args(self) -> dict[str, str]:
        """The query arguments (the last value of a repeated one)."""
        return dict(parse_qsl(self.query, keep_blank_values=True))

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


class Backend:
    """A threaded HTTP/1.1 server on 127.0.0.1 that records what it gets. Thread-safe."""

    def __init__(self, name: str | None = None, port: int = 0, health_path: str = "/health",
                 keepalive_timeout: float = 60.0):
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._requests: list[Request] = []
        self._replies: dict[str | None, Reply] = {}
        self._healthy = True
        self._port = port
        self._name = name
        self.health_path = health_path
        self.keepalive_timeout = keepalive_timeout
        self._server: _Server | None = None
        self._serve_thread: threading.Thread | None = None
        self._threads: set[threading.Thread] = set()
        self._open: dict[socket.socket, int] = {}   # open connection -> its sequence number
        self._connections = 0
        self._stopping = threading.Event()

    # -- where it is ---------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if not self._port:
            raise RuntimeError("the backend has not been started")
        return self._port

    @property
    def name(self) -> str:
        return self._name or f"backend-{self.port}"

    @property
    def address(self) -> str:
        """``127.0.0.1:PORT``, as an ``upstream``'s ``server`` line wants it."""
        return f"127.0.0.1:{self.port}"

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    @property
    def running(self) -> bool:
        return self._server is not None

    # -- what it answers -----------------------------------------------------------------------

    def respond(self, path: str | None = None, body=None, status: int = 200, headers: dict | None = None,
                delay: float = 0.0, action: str = ANSWER) -> None:
        """Answer ``path`` (exact, without query) — or, with no path, every path without its own
        reply — like this from now on. ``respond()`` alone restores the default answer. A reply
        for ``health_path`` overrides the health state (to make the probe hang or fail)."""
        if action not in _ACTIONS:
            raise ValueError(f"action must be one of {_ACTIONS}, not {action!r}")
        hdrs = list(headers.items() if isinstance(headers, dict) else headers or ())
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
            if not any(name.lower() == "content-type" for name, _ in hdrs):
                hdrs.append(("Content-Type", "application/json"))
        elif isinstance(body, str):
            body = body.encode()
        reply = Reply(body, status, tuple(hdrs), float(delay), action)
        with self._lock:
            self._replies[path] = reply

    def forget(self, path: str) -> None:
        """Drop ``path``'s own reply: it answers like every other path again."""
        with self._lock:
            self._replies.pop(path, None)

    def set_healthy(self, healthy: bool) -> None:
        """``health_path`` answers 200 ``{"status":"up"}`` when healthy, else 503 ``{"status":"down"}``."""
        with self._lock:
            self._healthy = bool(healthy)

    @property
    def healthy(self) -> bool:
        return self._healthy

    # -- what it got ---------------------------------------------------------------------------

    @property
    def requests(self) -> list[Request]:
        """Every request since the start or the last ``reset()``, oldest first (a copy)."""
        with self._lock:
            return list(self._requests)

    @property
    def hits(self) -> int:
        with self._lock:
            return len(self._requests)

    def requests_for(self, path: str | None = None, method: str | None = None) -> list[Request]:
        return [r for r in self.requests if _matches(r, path, method)]

    def worker_pids(self, path: str | None = None) -> set[int]:
        """The pids of the processes that sent requests (for ``path``)."""
        return {r.worker_pid for r in self.requests_for(path) if r.worker_pid is not None}

    @property
    def connections(self) -> int:
        """TCP connections accepted since the start (fewer than requests means keep-alive reuse)."""
        return self._connections

    def reset(self) -> None:
        """Forget the recorded requests (replies and health stay as they are)."""
        with self._lock:
            self._requests.clear()

    def wait_hits(self, count: int, path: str | None = None, method: str | None = None,
                  timeout: float = 10.0) -> list[Request]:
        """Wait until at least ``count`` requests (for ``path``/``method``) were received; returns them."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                got = [r for r in self._requests if _matches(r, path, method)]
                if len(got) >= count:
                    return got
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = [f"{r.method} {r.path}" for r in self._requests[-20:]]
                    raise AssertionError(f"{self.name}: {len(got)} of {count} requests for "
                                         f"{path or 'any path'} within {timeout}s; last received: {seen}")
                self._changed.wait(left)

    # -- running -------------------------------------------------------------------------------

    def start(self) -> Backend:
        """Listen (on the same port as before, after a ``stop()``) and serve in a thread."""
        if self._server is not None:
            return self
        self._stopping = threading.Event()
        server = _bind(self, self._port)
        self._port = server.server_address[1]
        self._server = server
        self._serve_thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                              name=f"ngxsim-backend-{self._port}", daemon=True)
        self._serve_thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop listening, close every connection (requests in a delay get no answer), join the threads."""
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()
        server.shutdown()
        server.server_close()
        self.drop_connections()
        deadline = time.monotonic() + timeout
        with self._lock:
            threads = [self._serve_thread, *self._threads]
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        left = [t.name for t in threads if t.is_alive()]
        if left:
            raise AssertionError(f"{self.name}: threads still running {timeout}s after stop: {left}")

    def drop_connections(self) -> int:
        """Close every open connection now (idle keep-alive ones included); returns how many."""
        with self._lock:
            conns = list(self._open)
        shutdown_all(conns)
        return len(conns)

    def __enter__(self) -> Backend:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<Backend {self._name or ''} 127.0.0.1:{self._port} {'running' if self.running else 'stopped'}>"

    # -- called by the handler threads ---------------------------------------------------------

    def _accepted(self, conn: socket.socket, thread: threading.Thread) -> None:
        with self._lock:
            self._connections += 1
            self._open[conn] = self._connections
            # a thread stays listed until it has ended, so stop() joins it even while it closes
            self._threads = {t for t in self._threads if t.is_alive()}
            self._threads.add(thread)

    def _connection_number(self, conn: socket.socket) -> int:
        with self._lock:
            return self._open.get(conn, 0)

    def _closed(self, conn: socket.socket) -> None:
        with self._lock:
            self._open.pop(conn, None)

    def _record(self, request: Request) -> Reply:
        with self._changed:
            self._requests.append(request)
            self._changed.notify_all()
            if request.path in self._replies:
                return self._replies[request.path]
            if self.health_path and request.path == self.health_path:
                up = self._healthy
                return Reply(json.dumps({"status": "up" if up else "down"}).encode(), 200 if up else 503,
                             (("Content-Type", "application/json"),))
            return self._replies.get(None) or Reply()


def shutdown_all(conns) -> None:
    """Shut both directions of each socket down (its reader thread then sees the end)."""
    for conn in conns:
        try:
            conn.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def _matches(r: Request, path: str | None, method: str | None) -> bool:
    return (path is None or r.path == path) and (method is None or r.method == method)


class _Server(HTTPServer):
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, backend: Backend, port: int):
        self.backend = backend
        super().__init__(("127.0.0.1", port), _Handler)

    def process_request(self, request, client_address):
        # one thread per connection, tracked by the backend so stop() can join them all
        thread = threading.Thread(target=self._serve_connection, args=(request, client_address),
                                  name=f"ngxsim-backend-{self.server_address[1]}-conn", daemon=True)
        self.backend._accepted(request, thread)
        thread.start()

    def _serve_connection(self, request, client_address):
        try:
            self.finish_request(request, client_address)
        except Exception:
            pass  # a client that went away mid-request is not the backend's problem
        finally:
            self.backend._closed(request)
            self.shutdown_request(request)


def _bind(backend: Backend, port: int) -> _Server:
    # after a stop(), the port may still be held for a moment (or briefly be some client's
    # source port): retry for a bounded time rather than fail or move to another port
    deadline = time.monotonic() + 5.0
    while True:
        try:
            return _Server(backend, port)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE or not port or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def setup(self):
        super().setup()
        backend = self.server.backend
        self.timeout = backend.keepalive_timeout
        self.connection.settimeout(backend.keepalive_timeout)
        self.conn_number = backend._connection_number(self.connection)
        # found once per connection while the peer's socket certainly still exists
        self.peer_pid = peer_pid(self.client_address, self.server.server_address)

    def log_message(self, format, *args):
        pass  # the records are the log; stderr noise would bury pytest's output

    def _serve(self):
        backend = self.server.backend
        url = urlsplit(self.path)
        body = self._read_body()
        if body is None:
            self.close_connection = True
            return
        request = Request(self.command, url.path, url.query, self.headers, body, self.request_version,
                          self.peer_pid, self.conn_number, self.client_address[1], time.time())
        reply = backend._record(request)
        if reply.delay and backend._stopping.wait(reply.delay):
            self.close_connection = True  # stopped while delaying: no answer, like a dead backend
            return
        if reply.action != ANSWER:
            if reply.action == RESET:
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            return
        content = reply.body(request) if callable(reply.body) else reply.body
        content = content.encode() if isinstance(content, str) else content
        content = content if content is not None else f"{backend.name} {url.path}\n".encode()
        self.send_response(reply.status)
        headers = [(k, v) for k, v in reply.headers if k.lower() != "content-length"]
        given = {k.lower() for k, _ in headers}
        if "content-type" not in given:
            headers.append(("Content-Type", "text/plain; charset=utf-8"))
        headers.append(("Content-Length", str(len(content))))
        if "x-backend" not in given:
            headers.append(("X-Backend", backend.name))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(content)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _serve

    def _read_body(self) -> bytes | None:
        """The request body (Content-Length or chunked); None if the client broke off."""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            parts = []
            while True:
                line = self.rfile.readline(65537)
                if not line:
                    return None
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(parts)
                chunk = self.rfile.read(size + 2)
                if len(chunk) < size + 2:
                    return None
                parts.append(chunk[:size])
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        return body if len(body) == length else None
