"""proxy_cache_lock under gunicorn with several workers and a real slow backend: of the requests
that miss one key at once, one goes to the backend, the others wait (in every worker) and are
answered from what it stored; past proxy_cache_lock_timeout a waiting request goes to the
backend itself and its answer is not stored."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

WORKERS = 3
CONF = """
load_module worker_events;
load_module upstreams;
load_module cache_purge;
http {
    worker_events_zone bus;
    proxy_cache_path {tmp}/cache keys_zone=locks:1m;
    upstream backend { server {backend}; }
    server {
        listen 127.0.0.1:{port};
        location /locked/ {
            proxy_pass http://backend;
            proxy_cache locks;
            proxy_cache_valid 200 10m;
            proxy_cache_lock on;
            add_header X-Cache-Status $upstream_cache_status always;
        }
        location /short/ {
            proxy_pass http://backend;
            proxy_cache locks;
            proxy_cache_valid 200 10m;
            proxy_cache_lock on;
            proxy_cache_lock_timeout 200ms;
            add_header X-Cache-Status $upstream_cache_status always;
        }
        location /upd/ {
            proxy_pass http://backend;
            proxy_cache locks;
            proxy_cache_valid 200 1s;
            proxy_cache_use_stale updating;
            add_header X-Cache-Status $upstream_cache_status always;
        }
        location /internal/worker-events { worker_events_api; worker_events_zone bus; worker_events_channel ops; }
    }
}
"""


def together(ngxsim_server, ngxsim_backend, path: str, n: int, delay: float, expired: bool = False):
    """``n`` requests for ``path`` at once, the backend answering it after ``delay`` (``expired``:
    once the answer "old" was stored and has expired): (the server, the answers, how many
    requests the backend received)."""
    backend = ngxsim_backend()
    server = ngxsim_server(CONF, workers=WORKERS, placeholders={"backend": backend.address},
                           ready_path="/internal/worker-events")
    if expired:
        backend.respond(path, body="old")
        assert server.get(path).content == b"old"
        time.sleep(2.1)  # proxy_cache_valid 200 1s
    backend.respond(path, body="filled", delay=delay)
    with ThreadPoolExecutor(n) as pool:
        answers = list(pool.map(lambda _: server.get(path), range(n)))
    if not expired:
        assert [r.content for r in answers] == [b"filled"] * n
    return server, sorted((r.headers["X-Cache-Status"], r.content) for r in answers) if expired else \
        sorted(r.headers["X-Cache-Status"] for r in answers), len(backend.requests_for(path))


def test_one_request_fills_the_cache_the_others_wait_for_it(ngxsim_server, ngxsim_backend):
    _, statuses, fetched = together(ngxsim_server, ngxsim_backend, "/locked/a", 6, delay=1.0)
    assert (statuses, fetched) == (["HIT"] * 5 + ["MISS"], 1)


def test_past_the_lock_timeout_a_request_goes_to_the_backend_and_stores_nothing(ngxsim_server, ngxsim_backend):
    server, statuses, fetched = together(ngxsim_server, ngxsim_backend, "/short/a", 3, delay=1.5)
    assert (statuses, fetched) == (["MISS"] * 3, 3)
    assert server.get("/short/a").headers["X-Cache-Status"] == "HIT"  # the lock holder's answer was stored


def test_use_stale_updating_answers_the_expired_entry_while_one_request_refreshes_it(ngxsim_server, ngxsim_backend):
    server, answers, fetched = together(ngxsim_server, ngxsim_backend, "/upd/a", 4, delay=1.0, expired=True)
    assert (answers, fetched) == ([("EXPIRED", b"filled")] + [("UPDATING", b"old")] * 3, 2)
    assert server.get("/upd/a").content == b"filled"
