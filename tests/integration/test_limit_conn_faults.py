"""limit_conn's counts under faults, with real gunicorn workers and a real backend: the requests
of a SIGKILLed worker stop counting, and a record counting requests in progress is never evicted
(a full stripe refuses a new key as nginx's full slab does)."""

from __future__ import annotations

import socket
import zlib
from contextlib import ExitStack

from ngxsim import SharedTable
from ngxsim.testing import wait_for

CONF = """
load_module worker_events;
load_module upstreams;
load_module limit_conn;
worker_processes 2;
worker_threads 16;
http {
    worker_events_zone bus;
    limit_conn_zone $binary_remote_addr zone=addr:1m;
    limit_conn_zone $arg_k zone=small:32k;
    server {
        listen 127.0.0.1:{port};
        location / { return 200 "ready\\n"; }
        location /addr/ { limit_conn addr 2; proxy_pass http://{backend}; }
        location /small/ { limit_conn small 1; proxy_pass http://{backend}; }
    }
}
"""
HOLD = 4.0  # how long the backend holds a request: the requests counted in meanwhile


def hold(stack: ExitStack, port: int, path: str) -> socket.socket:
    """Send a request and leave it in progress (its answer is not read)."""
    sock = stack.enter_context(socket.create_connection(("127.0.0.1", port), timeout=10))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
    return sock


def test_the_requests_of_a_killed_worker_stop_counting(ngxsim_server, ngxsim_backend):
    backend = ngxsim_backend()
    backend.respond("/addr/slow", body="slow", delay=HOLD)
    backend.respond("/addr/fast", body="fast")
    server = ngxsim_server(CONF, mode="ngxsim", placeholders={"backend": backend.address})
    with ExitStack() as stack:
        for _ in range(2):
            hold(stack, server.port, "/addr/slow")
        backend.wait_hits(2, "/addr/slow")
        assert server.get("/addr/fast").status_code == 503  # the key's 2 are in progress
        for pid in backend.worker_pids("/addr/slow"):  # the workers holding them die (kill -9)
            server.kill_worker(pid)
        assert server.get("/addr/fast").status_code == 200  # their requests are not in progress
        assert server.get("/addr/fast").status_code == 200


def stripe_keys(table: SharedTable, stripe: int, count: int) -> list[str]:
    """``count`` keys that SharedTable puts into ``stripe`` (a CRC-32 of the key)."""
    keys, i = [], 0
    while len(keys) < count:
        if zlib.crc32(f"k{i}".encode()) % table.stripes == stripe:
            keys.append(f"k{i}")
        i += 1
    return keys


def test_a_key_in_progress_is_never_evicted_and_a_full_stripe_refuses_a_new_key(ngxsim_server, ngxsim_backend):
    from ngxsim_plugins.limit_conn import RECORD_SIZE

    backend = ngxsim_backend()
    backend.respond(body="ok")
    server = ngxsim_server(CONF, mode="ngxsim", placeholders={"backend": backend.address})
    with server.attached_zone("small") as zone:
        table = SharedTable(zone, 64, RECORD_SIZE)
    *held, extra = stripe_keys(table, 0, table.slots + 1)
    for key in held:
        backend.respond(f"/small/{key}", body="slow", delay=HOLD)
    with ExitStack() as stack:
        for key in held:  # the stripe's every record counts a request in progress
            hold(stack, server.port, f"/small/{key}?k={key}")
        backend.wait_hits(len(held))
        assert server.get(f"/small/x?k={extra}").status_code == 503  # nothing can be evicted for it
        assert server.logged("crit", 'ngx_slab_alloc() failed: no memory in limit_conn_zone "small"')
        assert server.get(f"/small/x?k={held[0]}").status_code == 503  # its count was kept: at the limit
        assert server.get(f"/small/x?k={stripe_keys(table, 1, 1)[0]}").status_code == 200  # other stripes have room
        wait_for(lambda: server.get(f"/small/x?k={extra}").status_code == 200, HOLD + 10,
                 what="the held requests to end and free their records")
