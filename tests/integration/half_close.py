"""Send hand-made request bytes, optionally shutting down the sending side afterwards (a client
that stops sending mid-body), and read one answer. ngxsim.testing.raw_request cannot half-close."""

from __future__ import annotations

import socket


def send(port: int, data: bytes, half_close: bool = False, timeout: float = 10) -> tuple[int, bytes, bytes]:
    """(status, header block, body) of the answer to ``data`` sent as is to 127.0.0.1:``port``."""
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
