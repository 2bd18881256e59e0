"""proxy_cache_lock under gunicorn with several workers and a real slow backend: of the requests
that miss one key at once, one goes to the backend, the others wait (in every worker) and are
answered from what it stored; past proxy_cache_lock_timeout a waiting request goes to the
backend itself and its answer is not stored."""

from __future__ import annotations

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
        location /internal/worker-events { worker_events_api; worker_events_zone bus; worker_events_channel ops; }
    }
}
"""


def together(server, path: str, n: int) -> list:
    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(lambda _: server.get(path), range(n)))


def test_one_request_fills_the_cache_the_others_wait_for_it(ngxsim_server, ngxsim_backend):
    backend = ngxsim_backend(name="slow")
    backend.respond("/locked/a", body="filled", delay=1.0)
    server = ngxsim_server(CONF, workers=WORKERS, placeholders={"backend": backend.address},
                           ready_path="/internal/worker-events")
    answers = together(server, "/locked/a", 6)
    assert [r.content for r in answers] == [b"filled"] * 6
    assert sorted(r.headers["X-Cache-Status"] for r in answers) == ["HIT"] * 5 + ["MISS"]
    assert len(backend.requests_for("/locked/a")) == 1


def test_past_the_lock_timeout_a_request_goes_to_the_backend_and_stores_nothing(ngxsim_server, ngxsim_backend):
    backend = ngxsim_backend(name="slower")
    backend.respond("/short/a", body="late", delay=1.5)
    server = ngxsim_server(CONF, workers=WORKERS, placeholders={"backend": backend.address},
                           ready_path="/internal/worker-events")
    answers = together(server, "/short/a", 3)
    assert [r.content for r in answers] == [b"late"] * 3
    assert [r.headers["X-Cache-Status"] for r in answers] == ["MISS"] * 3
    assert len(backend.requests_for("/short/a")) == 3
    assert server.get("/short/a").headers["X-Cache-Status"] == "HIT"  # the lock holder's answer was stored
