"""cache_purge under gunicorn -w 4, proxying through upstreams to a real loopback backend that
counts its hits and whose content the tests change: every worker's memory level is warmed, a
purge through one worker must reach all of them, and no worker may answer with purged content
once the purge has answered."""

from __future__ import annotations

import json
import os
import signal

from ngxsim.testing import procs, wait_for

API = "/api/cache?key=changeme"
WORKERS = 4

CONF = """
load_module worker_events;
load_module upstreams;
load_module cache_purge;
http {
    worker_events_zone bus;
    worker_events_ring_size 16;
    proxy_cache_path {tmp}/cache keys_zone=assets:1m inactive=10m max_size={max_size};
    upstream backend { zone backend 256k; server {backend}; }
    server {
        listen 127.0.0.1:{port};
        location /static/ {
            proxy_pass http://backend;
            proxy_cache assets;
            proxy_cache_valid 200 10m;
            proxy_cache_purge PURGE from 127.0.0.1;
            proxy_cache_bypass $arg_nocache;
            add_header X-Cache-Status $upstream_cache_status always;
        }
        location /fresh/ {
            proxy_pass http://backend;
            proxy_cache assets;
            proxy_cache_valid 200 10m;
            proxy_cache_bypass $http_x_refresh;
            add_header X-Cache-Status $upstream_cache_status always;
        }
        location /api/cache { cache_purge_api assets; cache_purge_key changeme; }
        location /internal/worker-events {
            worker_events_api;
            worker_events_zone bus;
            worker_events_channel ops;
        }
    }
}
"""


def start(ngxsim_server, backend, max_size="100m"):
    return ngxsim_server(CONF, workers=WORKERS, placeholders={"backend": backend.address, "max_size": max_size},
                         ready_path="/internal/worker-events")


def key(path: str) -> str:
    """nginx's default key for a proxy_pass to the group "backend": http://$proxy_host$request_uri (what nginx's cache file says)."""
    return "http://backend" + path


def warm(server, backend, *paths):
    """Every worker answers each path: the first from the backend (MISS), the others from the
    shared level, after which each worker holds the response in its memory level."""
    for path in paths:
        hits = len(backend.requests_for(path))
        first = server.get(path)
        assert first.headers["X-Cache-Status"] == "MISS", path
        answers = server.each_worker(path)
        assert {r.headers["X-Cache-Status"] for r in answers.values()} == {"HIT"}, path
        assert len(backend.requests_for(path)) == hits + 1, f"{path} fetched more than once"
    for pid, r in server.each_worker("/api/cache").items():
        assert r.json()["memory"]["entries"] >= len(paths), f"worker {pid} holds {r.json()['memory']}"


def only_new(server, path, body: bytes, rounds=3) -> list[str]:
    """Every worker answers ``path`` with ``body`` only, ``rounds`` times each; returns the
    cache statuses in order."""
    statuses = []
    for _ in range(rounds):
        for pid, r in server.each_worker(path).items():
            assert r.content == body, f"worker {pid} answered {path} with {r.content!r} ({r.headers['X-Cache-Status']})"
            statuses.append(r.headers["X-Cache-Status"])
    return statuses


def purge(server, body):
    return server.post(API, json=body)


def test_purges_reach_every_workers_memory_and_nothing_stale_is_served(ngxsim_server, ngxsim_backend):
    backend = ngxsim_backend(name="origin")
    single, dir_a, dir_b, tag_1, tag_2 = "/static/k.css", "/static/dir/a", "/static/dir/b", "/static/t1", "/static/t2"
    backend.respond(single, body="v1")
    backend.respond(tag_1, body="t1-v1", headers={"Cache-Tag": "assets css"})
    backend.respond(tag_2, body="t2-v1", headers={"Surrogate-Key": "assets"})
    many = [f"/static/batch/file-{i:02d}.css" for i in range(30)]
    server = start(ngxsim_server, backend)
    warm(server, backend, single, dir_a, dir_b, tag_1, tag_2, *many[:3])
    for path in many[3:]:  # the rest in the shared level only
        assert server.get(path).status_code == 200
    events = server.events()
    mark = events.newest()

    # by key: then one MISS (the first request anywhere) and HITs, as nginx would answer
    backend.respond(single, body="v2")
    r = purge(server, {"key": key(single)})
    assert (r.status_code, r.json()["purged"], r.json()["type"]) == (200, 1, "purged")
    statuses = only_new(server, single, b"v2")
    assert statuses[0] == "MISS" and set(statuses[1:]) == {"HIT"}

    # by prefix (NGINX Plus' trailing *)
    backend.respond(body="new")  # every path without its own reply
    r = purge(server, {"key": key("/static/dir/*")})
    assert (r.status_code, r.json()["purged"], r.json()["type"]) == (200, 2, "purge_batch")
    only_new(server, dir_a, b"new")
    only_new(server, dir_b, b"new")

    # by tag (Cache-Tag and Surrogate-Key)
    backend.respond(tag_1, body="t1-v2", headers={"Cache-Tag": "assets css"})
    backend.respond(tag_2, body="t2-v2", headers={"Surrogate-Key": "assets"})
    r = purge(server, {"tag": "assets"})
    assert (r.status_code, r.json()["purged"], r.json()["type"]) == (200, 2, "purged")
    only_new(server, tag_1, b"t1-v2")
    only_new(server, tag_2, b"t2-v2")

    # a batch of keys too large for one event: stored in the shared level, named by its id
    r = purge(server, {"keys": [key(p) for p in many]})
    assert (r.status_code, r.json()["purged"], r.json()["type"]) == (200, 30, "purge_batch")
    batch_generation = r.json()["generation"]
    for path in many[:4]:
        only_new(server, path, b"new", rounds=1)

    got = events.read(since=mark, channel="cache.invalidate")
    assert [(e["type"], e["payload"]) for e in got[:3]] == [
        ("purged", f"key:{key(single)}"),
        ("purge_batch", json.dumps({"prefix": key("/static/dir/")}, separators=(",", ":"))),
        ("purged", "tag:assets"),
    ]
    batch = json.loads(got[3]["payload"])
    assert (got[3]["type"], got[3]["generation"], len(got)) == ("purge_batch", batch_generation, 4)
    assert (set(batch), batch["count"], batch["zone"]) == ({"batch", "count", "zone"}, 30, "assets")
    events.wait_delivered(batch_generation)


def test_purge_method_404_publishes_nothing_and_uncacheable_responses(ngxsim_server, ngxsim_backend):
    backend = ngxsim_backend()
    backend.respond("/static/ns", body="ns", headers={"Cache-Control": "no-store"})
    backend.respond("/static/pv", body="pv", headers={"Cache-Control": "private, max-age=600"})
    backend.respond("/static/ck", body="ck", headers={"Set-Cookie": "session=42"})
    backend.respond("/static/exp", body="e1", headers={"Cache-Control": "max-age=1"})
    server = start(ngxsim_server, backend)

    for path in ("/static/ns", "/static/pv", "/static/ck"):
        answers = server.spray(path, 3 * WORKERS)
        assert {r.headers["X-Cache-Status"] for r in answers} == {"MISS"}
        assert len({r.worker_pid for r in answers}) == WORKERS
        assert len(backend.requests_for(path)) == len(answers)  # every one went to the backend

    # nginx's sequences: MISS, HIT...; BYPASS goes to the backend; EXPIRED once stale
    assert [server.get("/static/exp").headers["X-Cache-Status"] for _ in range(3)] == ["MISS", "HIT", "HIT"]
    assert server.get("/static/exp?nocache=1").headers["X-Cache-Status"] == "BYPASS"
    backend.respond("/static/exp", body="e2", headers={"Cache-Control": "max-age=600"})
    wait_for(lambda: server.get("/static/exp").headers["X-Cache-Status"] == "EXPIRED", timeout=5, interval=0.2,
             what="the entry to go stale")
    assert set(only_new(server, "/static/exp", b"e2", rounds=1)) == {"HIT"}

    # PURGE as ngx_cache_purge answers it; a purge that matches nothing publishes nothing
    events = server.events()
    mark = events.newest()
    r = server.request("PURGE", "/static/exp")
    assert r.status_code == 200 and b"Successful purge" in r.content
    assert server.request("PURGE", "/static/exp").status_code == 404
    r = purge(server, {"key": key("/static/never")})
    assert r.status_code == 404 and "nothing cached" in r.json()["message"]
    assert purge(server, {"tags": ["none", "nothing"]}).status_code == 404
    events.expect(1, channel="cache.invalidate", since=mark, timeout=0.5)
    events.expect(1, type="purged", payload=f"key:{key('/static/exp')}", since=mark, timeout=0.5)
    assert server.get("/static/exp").headers["X-Cache-Status"] == "MISS"


def test_a_burst_that_overflows_the_ring_makes_each_worker_drop_its_memory(ngxsim_server, ngxsim_backend):
    """Three workers are stopped while the fourth takes a purge of the warmed key and then more
    purges than the ring holds: when they resume, that purge's event is gone. Each of them learns
    of the gap and drops its whole memory level, so none serves the stale copy it held."""
    backend = ngxsim_backend()
    backend.respond("/static/hot", body="old")
    server = start(ngxsim_server, backend)
    warm(server, backend, "/static/hot")
    others = [f"/static/o/{i}" for i in range(20)]  # more than the ring's 16 entries
    for path in others:
        assert server.get(path).status_code == 200
    workers = server.worker_pids()
    serving, stopped = workers[0], workers[1:]
    try:
        for pid in stopped:
            procs.stop(pid)
        backend.respond("/static/hot", body="new")
        hot = purge(server, {"key": key("/static/hot")})  # only the running worker can answer
        assert (hot.status_code, hot.worker_pid) == (200, serving), hot.text
        for path in others:
            assert purge(server, {"key": key(path)}).status_code == 200
        assert server.events().read_state()["oldest_generation"] > hot.json()["generation"]  # its event is gone
    finally:
        for pid in stopped:
            os.kill(pid, signal.SIGCONT)
    only_new(server, "/static/hot", b"new")
    gaps = {w["pid"]: w["gaps"] for w in server.events().workers()}
    assert all(gaps[pid] >= 1 for pid in stopped), gaps
    assert gaps[serving] == 0


def test_the_shared_level_survives_a_restart_and_honours_max_size(ngxsim_server, ngxsim_backend):
    backend = ngxsim_backend()
    backend.respond(body="x" * 65536)
    server = start(ngxsim_server, backend, max_size="1m")
    for i in range(40):  # 2.5 MiB of 64 KiB responses into a 1 MiB shared level
        assert server.get(f"/static/big/{i}").headers["X-Cache-Status"] == "MISS"
    backend.respond("/static/keep", body="kept", headers={"Cache-Tag": "kept"})
    assert server.get("/static/keep").headers["X-Cache-Status"] == "MISS"
    shared = server.get("/api/cache").json()["shared"]
    assert shared["size"] <= 1024 * 1024 and shared["entries"] < 41
    server.stop()

    hits = backend.hits
    server = start(ngxsim_server, backend, max_size="1m")  # the same {tmp}/cache
    answers = server.each_worker("/static/keep")
    assert {(r.headers["X-Cache-Status"], r.content) for r in answers.values()} == {("HIT", b"kept")}
    assert backend.hits == hits  # nothing fetched again
    assert purge(server, {"tag": "kept"}).json()["purged"] == 1  # the key index came back too
    assert server.get("/static/keep").headers["X-Cache-Status"] == "MISS"


def test_a_bypass_refresh_reaches_every_workers_memory(ngxsim_server, ngxsim_backend):
    """issue #22: a proxy_cache_bypass answer stored over a copy that every worker holds in
    memory. nginx has one copy, so every later request gets the new one; here each worker must
    drop its memory copy too (the "refreshed" event), whichever worker refreshed."""
    backend = ngxsim_backend()
    path, long_path = "/fresh/page", "/fresh/" + "p" * 600  # the second's key is too long for a payload
    server = start(ngxsim_server, backend)
    for p in (path, long_path):
        backend.respond(p, body="v1")
        warm(server, backend, p)
    events = server.events()
    mark = events.newest()
    for round_, body in enumerate((b"v2", b"v3")):
        for p in (path, long_path):
            backend.respond(p, body=body)
            r = server.get(p, headers={"X-Refresh": "1"})
            assert (r.headers["X-Cache-Status"], r.content) == ("BYPASS", body)
            answers = server.spray(p, 3 * WORKERS)
            stale = [(a.worker_pid, a.content) for a in answers if a.content != body]
            assert not stale, f"round {round_}: workers answered the old copy: {stale}"
            assert {a.headers["X-Cache-Status"] for a in answers} == {"HIT"}
    got = events.read(since=mark, channel="cache.invalidate")
    assert [e["type"] for e in got] == ["refreshed"] * 4
    assert got[0]["payload"] == f"key:{key(path)}"
    assert set(json.loads(got[1]["payload"])) == {"batch", "count", "zone"}
    # a first store, and a store over an expired copy, announce nothing
    mark = events.newest()
    assert server.get("/fresh/other").headers["X-Cache-Status"] == "MISS"
    events.expect(0, channel="cache.invalidate", since=mark, timeout=0.5)
