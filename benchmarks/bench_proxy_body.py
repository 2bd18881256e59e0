"""The proxy's per-response work on the body, in-process, without HTTP around it: the response
path of ``proxy_pass`` (the header checks, the body generator that watches the client) against
the one it replaced (urllib3's ``stream(65536)``), on real keep-alive loopback connections to a
raw backend in this process.

    python benchmarks/bench_proxy_body.py [--responses N] [--rounds R]

Only the part after the backend's header was read is timed (the request and urllib3's header
parsing are the same on both sides). Rounds alternate; the best round of each is shown, with
the writes (pieces) each body went out in.
"""

from __future__ import annotations

import argparse
import socket
import threading
import time

import urllib3

from common import table
from ngxsim_plugins.upstreams import proxy

SIZES = (61, 256 * 1024)


class Backend:
    """Answers every request on a keep-alive connection with ``body`` (Content-Length)."""

    def __init__(self, body: bytes):
        self.answer = (b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n"
                       % len(body) + body)
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            data = b""
            while True:
                while b"\r\n\r\n" not in data:
                    part = conn.recv(65536)
                    if not part:
                        return
                    data += part
                data = data.partition(b"\r\n\r\n")[2]
                conn.sendall(self.answer)

    def close(self) -> None:
        self.sock.close()


class NoClient:
    """A request context without a client socket: nothing to watch (a body that arrives whole
    never waits anyway)."""

    environ: dict = {}


def now_path(resp) -> int:
    proxy._invalid_header(resp)
    body = proxy._Body(NoClient(), resp, True, lambda: None, lambda complete: resp.release_conn(), "http://backend/",
                       5.0)
    pieces = sum(1 for _ in body)
    body.close()
    return pieces


def before_path(resp) -> int:
    pieces = sum(1 for _ in resp.stream(65536, decode_content=False))
    resp.release_conn()
    return pieces


def one_round(pool, path, responses: int) -> tuple[float, int]:
    total, pieces = 0.0, 0
    for _ in range(responses):
        resp = pool.urlopen("GET", "/", preload_content=False, release_conn=False, retries=False)
        began = time.perf_counter()
        pieces = path(resp)
        total += time.perf_counter() - began
    return total / responses * 1e6, pieces


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--responses", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    rows = []
    for size in SIZES:
        backend = Backend(b"x" * size)
        pool = urllib3.HTTPConnectionPool("127.0.0.1", backend.port, maxsize=1)
        best: dict[str, tuple[float, int]] = {}
        try:
            for _ in range(args.rounds):
                for name, path in (("now", now_path), ("before", before_path)):
                    us, pieces = one_round(pool, path, args.responses)
                    if name not in best or us < best[name][0]:
                        best[name] = (us, pieces)
        finally:
            pool.close()
            backend.close()
        (now_us, now_pieces), (before_us, before_pieces) = best["now"], best["before"]
        rows.append([f"{size:,} bytes", f"{before_us:.1f}", before_pieces, f"{now_us:.1f}", now_pieces,
                     f"{now_us - before_us:+.1f}"])
    print(table(f"The proxy's response path after the header, best of {args.rounds} rounds x {args.responses} "
                f"responses (us per response)",
                ["body", "before: urllib3 stream(65536) us", "pieces", "now: proxy _Body us", "pieces", "added us"],
                rows))


if __name__ == "__main__":
    main()
