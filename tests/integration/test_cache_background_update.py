"""proxy_cache_background_update under real gunicorn with several workers, for each of ngxsim's
worker classes, and a real loopback backend that holds the refresh: the client gets the expired
copy (STALE) while the refresh is still at the backend, one refresh per key at a time (the others
UPDATING), then every worker's memory level has the new copy. Also proxy_pass with variables'
answer for a name nginx would need a resolver for (its error line), on the same servers.
(tests/integration/test_proxy_differential.py compares the same sequences with real nginx.)"""

from __future__ import annotations

import threading
import time

import pytest

from ngxsim.testing import start_server, wait_for

WORKERS = 3
CONF = """
load_module worker_events;
load_module upstreams;
load_module cache_purge;
http {
    worker_events_zone bus;
    proxy_cache_path {cache} keys_zone=bg:1m;
    upstream origin { server {backend}; }
    server {
        listen 127.0.0.1:{port};
        server_name bg.test;
        add_header X-Cache $upstream_cache_status always;
        location = /ready { return 200 "ready\\n"; }
        location / {
            proxy_pass http://origin;
            proxy_cache bg;
            proxy_cache_valid 200 1s;
            proxy_cache_use_stale updating;
            proxy_cache_background_update on;
        }
        location /var/ { proxy_pass http://$arg_to; }
        location /static-name/ { proxy_pass http://localhost:{backend_port}; }
    }
}
"""
FRESH = {"Cache-Control": "max-age=3600"}
CLASSES = ["ngxsim.worker.Worker", "ngxsim.worker.SyncWorker", "ngxsim.worker.GThreadWorker"]


@pytest.fixture(scope="module")
def backend():
    from ngxsim.testing import Backend

    be = Backend(name="origin").start()
    yield be
    be.stop()


@pytest.fixture(scope="module", params=CLASSES, ids=[c.rsplit(".", 1)[1] for c in CLASSES])
def server(request, backend, tmp_path_factory):
    folder = tmp_path_factory.mktemp("background-update")
    srv = start_server(folder, CONF, workers=WORKERS, worker_class=request.param, ready_path="/ready",
                       placeholders={"backend": backend.address, "cache": folder / "cache",
                                     "backend_port": backend.port})
    yield srv
    srv.stop()


def expire(server, backend, path: str) -> None:
    """A stored v1 of ``path`` that has expired (max-age=1, in nginx's whole seconds). The
    refreshed copies are fresh for an hour (``refresh``), so no later look finds them expired."""
    backend.respond(path, body="v1", headers={"Cache-Control": "max-age=1"})
    r = server.get(path)
    assert (r.status_code, r.headers["X-Cache"], r.text) == (200, "MISS", "v1")
    time.sleep(2.1)


def test_stale_at_once_one_refresh_then_every_worker_has_the_new_copy(server, backend):
    path = f"/bg/{server.port}"
    expire(server, backend, path)
    held = 4.0  # the backend holds the refresh this long: longer than everything below until the wait
    backend.respond(path, body="v2", delay=held, headers=FRESH)
    before = len(backend.requests_for(path))
    r = server.get(path)
    # the client has its whole answer, the old copy, while the refresh waits at the backend
    assert (r.status_code, r.headers["X-Cache"], r.text) == (200, "STALE", "v1")
    backend.wait_hits(before + 1, path=path, timeout=5)
    # meanwhile every worker answers the old copy, UPDATING, and starts no refresh of its own
    during = server.each_worker(path)
    assert {(a.headers["X-Cache"], a.text) for a in during.values()} == {("UPDATING", "v1")}
    assert len(during) == WORKERS
    assert len(backend.requests_for(path)) == before + 1
    # once stored, every worker's memory level has the new copy (a refresh reaches them all)
    wait_for(lambda: server.get(path).headers["X-Cache"] != "UPDATING", held + 10, what="the refresh to be stored")
    after = server.each_worker(path)
    assert {(a.headers["X-Cache"], a.text) for a in after.values()} == {("HIT", "v2")}
    assert len(backend.requests_for(path)) == before + 1
    assert "Traceback" not in server.output()


def test_concurrent_requests_start_one_refresh(server, backend):
    path = f"/one/{server.port}"
    expire(server, backend, path)
    backend.respond(path, body="v2", delay=2.0, headers=FRESH)
    before = len(backend.requests_for(path))
    answers: list = []
    lock = threading.Lock()
    start = threading.Barrier(8)

    def ask():
        start.wait(5)
        got = server.get(path)
        with lock:
            answers.append((got.headers["X-Cache"], got.text))

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    # one request finds it expired and starts the refresh (STALE), the others find it updating
    assert sorted(answers) == [("STALE", "v1")] + [("UPDATING", "v1")] * 7
    wait_for(lambda: server.get(path).headers["X-Cache"] == "HIT", 10, what="the refresh to be stored")
    assert len(backend.requests_for(path)) == before + 1


def test_a_name_without_an_upstream_needs_a_resolver_nginx_says(server, backend):
    start = len(server.output())
    r = server.get("/var/x?to=nosuch.test")
    assert r.status_code == 502
    wait_for(lambda: "no resolver defined to resolve nosuch.test" in server.output()[start:], 5,
             what="the error line")
    line = next(l for l in server.output()[start:].splitlines() if "no resolver defined" in l)
    assert line.endswith('no resolver defined to resolve nosuch.test, client: 127.0.0.1, server: bg.test, '
                         'request: "GET /var/x?to=nosuch.test HTTP/1.1", host: "127.0.0.1:%d"' % server.port), line
    # an upstream group by its name, the request's URI as sent
    backend.respond("/var/y", body="from the group")
    r = server.get("/var/y?to=origin")
    assert (r.status_code, r.text) == (200, "from the group")
    assert backend.requests_for("/var/y")[-1].query == "to=origin"
    # a name and port a static proxy_pass names (nginx's implicit upstream): that address; the
    # same name on another port needs a resolver
    r = server.get(f"/var/y?to=localhost:{backend.port}")
    assert (r.status_code, r.text) == (200, "from the group")
    assert server.get("/var/y?to=localhost").status_code == 502


def test_a_stopping_worker_finishes_its_refresh_first(backend, tmp_path):
    """A graceful stop while a refresh is held at the backend: the worker waits for it (no
    "[alert] ... abandoned"), and the refreshed copy is on disk for the next start."""
    cache = tmp_path / "cache"

    def start():
        return start_server(tmp_path, CONF, workers=1, worker_class="ngxsim.worker.Worker", ready_path="/ready",
                            placeholders={"backend": backend.address, "cache": cache,
                                          "backend_port": backend.port})

    server = start()
    try:
        path = "/stop/refresh"
        expire(server, backend, path)
        backend.respond(path, body="v2", delay=2.0, headers=FRESH)
        before = len(backend.requests_for(path))
        assert server.get(path).headers["X-Cache"] == "STALE"
        backend.wait_hits(before + 1, path=path, timeout=5)
    finally:
        server.stop()  # SIGTERM while the refresh waits at the backend
    assert "abandoned" not in server.output() and "Traceback" not in server.output()
    again = start()
    try:
        r = again.get(path)
        assert (r.headers["X-Cache"], r.text) == ("HIT", "v2")
    finally:
        again.stop()


@pytest.mark.parametrize("worker_class", ["ngxsim.worker.Worker", "ngxsim.worker.GThreadWorker"])
def test_a_stopping_worker_waits_for_its_refresh_only_as_long_as_its_graceful_timeout(backend, tmp_path,
                                                                                      worker_class):
    """gunicorn's master kills a worker ``graceful_timeout`` after telling it to stop: the
    worker waits for a refresh held at the backend only as long as that leaves, then names what
    it abandons (``[alert]``), instead of being killed in the middle of a fixed 10 s wait with
    nothing said."""
    server = start_server(tmp_path, CONF, workers=1, worker_class=worker_class, ready_path="/ready",
                          graceful_timeout=2,
                          placeholders={"backend": backend.address, "cache": tmp_path / "cache",
                                        "backend_port": backend.port})
    path = f"/stop/held-{worker_class.rsplit('.', 1)[1]}"
    try:
        expire(server, backend, path)
        backend.respond(path, body="v2", delay=8.0, headers=FRESH)  # past the graceful timeout
        before = len(backend.requests_for(path))
        assert server.get(path).headers["X-Cache"] == "STALE"
        backend.wait_hits(before + 1, path=path, timeout=5)
    finally:
        server.stop()  # SIGTERM: gunicorn's graceful stop, 2 s before the master's SIGKILL
    alerts = [line for line in server.output().splitlines() if "[alert]" in line]
    assert len(alerts) == 1 and alerts[0].endswith(
        f'the worker exits with 1 background work(s) still running, abandoned: '
        f'"proxy_cache_background_update "http://origin{path}""'), alerts
