"""Test conveniences over ``ngxsim.testing`` (which starts and stops the real servers)."""

from __future__ import annotations

import socket
from pathlib import Path

import requests

from ngxsim import testing
from ngxsim.testing import Server, children, free_port, instance_files, wait_for  # noqa: F401  (re-exported)

ROOT = Path(__file__).resolve().parent.parent
TEST_MODULES = ROOT / "tests" / "modules"


class HttpServer(Server):
    """A server with requests-based helpers (10 s timeout unless given)."""

    def get(self, path: str, **kw) -> requests.Response:
        kw.setdefault("timeout", 10)
        return requests.get(self.url(path), **kw)

    def post(self, path: str, **kw) -> requests.Response:
        kw.setdefault("timeout", 10)
        return requests.post(self.url(path), **kw)


def start_server(tmp_path: Path, conf_text: str, **kw) -> HttpServer:
    """A real server with the test modules importable."""
    return testing.start_server(tmp_path, conf_text, pythonpath=[TEST_MODULES], server_class=HttpServer, **kw)


def seen_pids(server: Server, path: str, want: int, attempts: int = 800) -> dict[int, requests.Response]:
    """GET ``path`` until ``want`` distinct workers (X-Worker-Pid) answered; returns one
    response per worker."""
    out: dict[int, requests.Response] = {}
    for _ in range(attempts):
        r = server.get(path)
        out.setdefault(int(r.headers["X-Worker-Pid"]), r)
        if len(out) >= want:
            return out
    raise AssertionError(f"only workers {sorted(out)} answered in {attempts} requests")


def raw_request(port: int, data: bytes, half_close: bool = False, timeout: float = 10) -> tuple[int, bytes, bytes]:
    """Send ``data`` as is on a new connection to 127.0.0.1:``port`` (``half_close``: then shut
    down the sending side); returns (status, header block, body) of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        received = b""
        while b"\r\n\r\n" not in received or len(received.partition(b"\r\n\r\n")[2]) < _content_length(received):
            part = sock.recv(65536)
            if not part:
                break
            received += part
    header, _, body = received.partition(b"\r\n\r\n")
    return int(header.split()[1]), header, body


def _content_length(data: bytes) -> int:
    for line in data.partition(b"\r\n\r\n")[0].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0
