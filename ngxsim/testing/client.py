"""An HTTP client for tests that also says which worker process served each request.

The request is sent in two steps: everything but the blank line that ends its head, then —
once a worker has accepted the connection and so holds its socket — the rest. Between the two
the serving worker is found by its socket (see ``procs``), without any header in the config,
and the request is still unserved: so a test can also *hold* one connection on every worker
and only then let them all complete (``Server.each_worker``), instead of sending requests until
the kernel happened to hand one to each.

Standard library only (``http.client`` parses the answer).
"""

from __future__ import annotations

import http.client
import json as jsonlib
import select
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.message import Message
from urllib.parse import urlencode

from . import procs


@dataclass
class Response:
    status_code: int
    reason: str
    headers: Message          # case-insensitive: r.headers["content-type"]
    content: bytes
    worker_pid: int | None    # the worker that served it (None when not looked up)
    url: str

    @property
    def text(self) -> str:
        return self.content.decode(self.headers.get_content_charset() or "utf-8", "replace")

    def json(self):
        return jsonlib.loads(self.content)

    def __repr__(self) -> str:
        return f"<Response {self.status_code} {self.url} worker {self.worker_pid}>"


class PendingRequest:
    """A request whose head is sent, except for its final blank line: the server has not
    started on it. ``worker_pid`` is the worker that accepted it (once ``accepted()``)."""

    def __init__(self, port: int, method: str, path: str, *, params: dict | None = None, data=None, json=None,
                 headers: dict | None = None, timeout: float = 10.0, host: str = "127.0.0.1"):
        if params:
            path += ("&" if "?" in path else "?") + urlencode(params)
        hdrs = {"Host": f"{host}:{port}", "Accept-Encoding": "identity", "Connection": "close"}
        if json is not None:
            data = jsonlib.dumps(json).encode()
            hdrs["Content-Type"] = "application/json"
        elif isinstance(data, dict):
            data = urlencode(data).encode()
            hdrs["Content-Type"] = "application/x-www-form-urlencoded"
        elif isinstance(data, str):
            data = data.encode()
        self.chunks = None
        if data is not None and not isinstance(data, (bytes, bytearray)):
            self.chunks, data = data, None  # an iterable of bytes: sent chunked, as it comes
            hdrs["Transfer-Encoding"] = "chunked"
        for name, value in (headers or {}).items():
            for known in [k for k in hdrs if k.lower() == name.lower()]:
                del hdrs[known]
            hdrs[name] = value
        self.body = data or b""
        if self.chunks is None and (self.body or method in ("POST", "PUT", "PATCH")):
            hdrs["Content-Length"] = str(len(self.body))
        self.method, self.url, self.timeout = method, f"http://{host}:{port}{path}", timeout
        self.server = (host, port)
        head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items())
        self.sock = socket.create_connection(self.server, timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.sendall(head.encode("latin-1"))
        self.worker_pid: int | None = None

    def accepted(self, workers: Callable[[], list[int]], timeout: float | None = None) -> int:
        """Wait (bounded) until one of ``workers()`` holds this connection; returns its pid.
        Raises ``ConnectionError`` if the server closed the connection first (a worker that
        took it died, or was on its way out)."""
        timeout = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        pids, refreshed, pause = workers(), time.monotonic(), 0.0005
        while True:
            # looked up again each time: a worker that took it and died leaves no holder
            inode = procs.socket_inode(self.server, self.sock.getsockname())
            if inode is not None:
                pid = procs.owner(inode, pids)
                if pid is not None:
                    self.worker_pid = pid
                    return pid
            elif self._closed_by_server():
                self.close()
                raise ConnectionError(f"the server closed the connection to {self.url} before a worker took the request")
            now = time.monotonic()
            if now > deadline:
                self.close()
                raise AssertionError(f"no worker of {pids} accepted a connection to {self.url} within {timeout:.1f}s")
            if now - refreshed > 0.2:  # a worker may have been born (respawn) since
                pids, refreshed = workers(), now
            time.sleep(pause)
            pause = min(pause * 2, 0.01)  # every worker busy: look less often

    def _closed_by_server(self) -> bool:
        if not select.select([self.sock], [], [], 0)[0]:
            return False
        try:
            return self.sock.recv(1, socket.MSG_PEEK) == b""  # readable: this does not block
        except OSError:
            return True  # reset

    def finish(self) -> Response:
        """Send the rest of the request and read the answer."""
        try:
            try:
                self._send_rest()
            except OSError:
                pass  # the server may answer (413, 400) and close before the body is all sent
            raw = http.client.HTTPResponse(self.sock, method=self.method)
            raw.begin()
            content = raw.read()
            return Response(raw.status, raw.reason, raw.msg, content, self.worker_pid, self.url)
        finally:
            self.close()

    def _send_rest(self) -> None:
        self.sock.sendall(b"\r\n" + self.body)
        if self.chunks is not None:
            for chunk in self.chunks:
                if chunk:
                    self.sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            self.sock.sendall(b"0\r\n\r\n")

    def close(self) -> None:
        """Give up on the request: the worker sees a connection closed before its request ended."""
        self.sock.close()


def request(port: int, method: str, path: str, workers: Callable[[], list[int]] | None = None, **kw) -> Response:
    """One request to 127.0.0.1:``port``; with ``workers`` (a callable giving the candidate
    pids), the answer's ``worker_pid`` says which of them served it."""
    pending = PendingRequest(port, method, path, **kw)
    try:
        if workers is not None:
            pending.accepted(workers)
    except BaseException:
        pending.close()
        raise
    return pending.finish()
