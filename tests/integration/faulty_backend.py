"""A backend on loopback that misbehaves on purpose, chosen by the request's path: it writes raw
bytes on a raw socket, where an ordinary HTTP server cannot (a reset or a close in the middle of a
body, a stall, a trickle, broken chunked framing, invalid headers).

Every connection is served by one thread and closed after one answer. The backend records how
each trickle ended (the proxy dropped the connection, or the trickle ran out) and joins every
thread at ``stop()``.
"""

from __future__ import annotations

import socket
import struct
import threading
import time

HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n"
BODY = b"0123456789" * 10  # what a complete answer carries: 100 bytes
PART = BODY[:10]           # what a broken one sends before it fails

# path -> (bytes to send, what to do then: "close", "reset", "stall", or "done")
SCRIPTS: dict[str, tuple[bytes, str]] = {
    "/ok": (HEAD + b"Content-Length: 100\r\n\r\n" + BODY, "done"),
    "/ok-chunked": (HEAD + b"Transfer-Encoding: chunked\r\n\r\n64\r\n" + BODY + b"\r\n0\r\n\r\n", "done"),
    "/body-reset": (HEAD + b"Content-Length: 100\r\n\r\n" + PART, "reset"),
    "/body-close": (HEAD + b"Content-Length: 100\r\n\r\n" + PART, "close"),
    "/body-stall": (HEAD + b"Content-Length: 100\r\n\r\n" + PART, "stall"),
    "/head-only-reset": (HEAD + b"Content-Length: 100\r\n\r\n", "reset"),
    "/chunked-stall": (HEAD + b"Transfer-Encoding: chunked\r\n\r\na\r\n" + PART + b"\r\n", "stall"),
    "/chunked-invalid": (HEAD + b"Transfer-Encoding: chunked\r\n\r\na\r\n" + PART + b"\r\nzz\r\n", "stall"),
    "/chunked-truncated": (HEAD + b"Transfer-Encoding: chunked\r\n\r\na\r\n" + PART + b"\r\n", "close"),
    "/chunked-mid-chunk": (HEAD + b"Transfer-Encoding: chunked\r\n\r\n64\r\n" + PART, "close"),
    "/cl-letters": (HEAD + b"Content-Length: abc\r\n\r\n" + BODY, "done"),
    "/cl-arabic": (HEAD + "Content-Length: ١٢\r\n\r\n".encode() + BODY, "done"),
    "/cl-negative": (HEAD + b"Content-Length: -1\r\n\r\n" + BODY, "done"),
    "/cl-and-chunked": (HEAD + b"Content-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n64\r\n" + BODY
                        + b"\r\n0\r\n\r\n", "done"),
    "/header-space": (b"HTTP/1.1 200 OK\r\nBad Header Line\r\nContent-Length: 100\r\n\r\n" + BODY, "done"),
    "/header-token": (b"HTTP/1.1 200 OK\r\nX-No-Colon\r\nContent-Length: 100\r\n\r\n" + BODY, "done"),
    "/header-reset": (b"HTTP/1.1 200 OK\r\nContent-Ty", "reset"),
    "/status-close": (b"HTTP/1.1 200 OK", "close"),
    "/header-close": (b"HTTP/1.1 200 OK\r\nContent-Ty", "close"),
    "/blank-close": (HEAD, "close"),
    "/trickle": (HEAD + b"Content-Length: 100000\r\n\r\n", "trickle"),
    "/head-stall": (b"", "stall"),  # nothing of an answer
}
TRICKLE_EVERY = 0.3


class FaultyBackend:
    def __init__(self, stall: float = 30.0):
        self.stall = stall  # how long "stall" and "trickle" go on at most (stop() ends them at once)
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self.trickles_ended: list[tuple[str, int]] = []  # (how, bytes sent) per finished trickle
        self.requests: list[str] = []
        self._accepter = threading.Thread(target=self._accept, name=f"faulty-backend-{self.port}", daemon=True)
        self._accepter.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _accept(self) -> None:
        self._sock.settimeout(0.1)
        while not self._stopping.is_set():
            try:
                conn, _ = self._sock.accept()
            except (TimeoutError, OSError):
                continue
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            with self._lock:
                self._threads = [t for t in self._threads if t.is_alive()] + [thread]
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            data = b""
            try:
                while b"\r\n\r\n" not in data:
                    part = conn.recv(65536)
                    if not part:
                        return
                    data += part
            except OSError:
                return
            path = data.split(b" ", 2)[1].decode("latin-1").split("?")[0]
            with self._lock:
                self.requests.append(path)
            payload, then = SCRIPTS.get(path, SCRIPTS["/ok"])
            try:
                conn.sendall(payload)
                if then == "trickle":
                    self._trickle(conn, path)
                elif then == "stall":
                    self._stopping.wait(self.stall)
                elif then == "reset":
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                elif then == "done":
                    conn.shutdown(socket.SHUT_WR)
                    conn.settimeout(2)
                    while conn.recv(65536):  # until the proxy closes its end (or 2 s)
                        pass
            except OSError:
                pass

    def _trickle(self, conn: socket.socket, path: str) -> None:
        """One byte every TRICKLE_EVERY seconds: well inside proxy_read_timeout, so only the
        proxy noticing that its client left ends it early."""
        sent, how = 0, "ran out"
        deadline = time.monotonic() + self.stall
        try:
            while time.monotonic() < deadline and not self._stopping.wait(TRICKLE_EVERY):
                conn.sendall(b"x")
                sent += 1
        except OSError:
            how = "dropped by the proxy"
        with self._lock:
            self.trickles_ended.append((how, sent))

    def stop(self) -> None:
        self._stopping.set()
        self._accepter.join(5)
        self._sock.close()
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(5)
        left = [t for t in threads if t.is_alive()]
        assert not left, f"faulty backend: {len(left)} threads still running after stop"
