"""cache_purge under gunicorn -w 4, proxying through upstreams to a real loopback backend that
counts its hits and whose content the tests change: every worker's memory level is warmed, a
purge through one worker must reach all of them, and no worker may answer with purged content
once the purge has answered."""

from __future__ import annotations

import json
import os
import signal

import requests

from helpers import wait_for

API = "/api/cache?key=changeme"
EVENTS = "/internal/worker-events"

CONF = """
load_module worker_events;
load_module upstreams;
load_module cache_purge;
http {
    worker_events_zone bus;
    worker_events_ring_size 16;
    proxy_cache_path CACHE_DIR keys_zone=assets:1m inactive=10m MAX_SIZE;
    upstream backend { zone backend 256k; server BACKEND; }
    server {
        listen 127.0.0.1:{port};
        add_header X-Worker-Pid $pid always;
        location /static/ {
            proxy_pass http://backend;
            proxy_cache assets;
            proxy_cache_valid 200 10m;
            proxy_cache_purge PURGE from 127.0.0.1;
            proxy_cache_bypass $arg_nocache;
            add_header X-Cache-Status $upstream_cache_status always;
            add_header X-Worker-Pid $pid always;
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


def start(server_factory, tmp_path, backend, max_size="max_size=100m"):
    conf = (CONF.replace("CACHE_DIR", str(tmp_path / "cache")).replace("BACKEND", backend.address)
            .replace("MAX_SIZE", max_size))
    return server_factory(conf, workers=4, ready_path="/internal/worker-events")


def key(path: str) -> str:
    """nginx's default key for a proxy_pass to the group "backend": $scheme$proxy_host$request_uri."""
    return "httpbackend" + path


def by_worker(server, path, per_worker=1, attempts=600, **kw) -> dict[int, list[requests.Response]]:
    """GET ``path`` on a new connection each time until every worker answered ``per_worker`` times."""
    out: dict[int, list[requests.Response]] = {}
    for _ in range(attempts):
        r = requests.get(server.url(path), timeout=10, **kw)
        out.setdefault(int(r.headers["X-Worker-Pid"]), []).append(r)
        if len(out) == server.workers and all(len(rs) >= per_worker for rs in out.values()):
            return out
    raise AssertionError(f"{path}: workers {sorted((p, len(rs)) for p, rs in out.items())} in {attempts} requests")


def warm(server, backend, *paths):
    """Every worker answers each path once: the first from the backend (MISS), the others from
    the shared level, after which each worker holds the response in its memory level."""
    for path in paths:
        hits = len(backend.requests_for(path))
        answers = [r for rs in by_worker(server, path).values() for r in rs]
        assert len(backend.requests_for(path)) == hits + 1, f"{path} fetched more than once"
        assert sorted(r.headers["X-Cache-Status"] for r in answers).count("MISS") == 1
    for pid_stats in memory_stats(server).values():
        assert pid_stats["entries"] >= len(paths)


def memory_stats(server) -> dict[int, dict]:
    """Each worker's memory level, as its own GET of the purge API reports it."""
    return {pid: rs[-1].json()["memory"] for pid, rs in by_worker(server, "/api/cache").items()}


def only_new(server, path, body: bytes, per_worker=5) -> list[str]:
    """Every worker answers ``path`` with ``body`` only; returns the statuses in order."""
    seen = by_worker(server, path, per_worker=per_worker)
    statuses = []
    for pid, answers in seen.items():
        for r in answers:
            assert r.content == body, f"worker {pid} answered {path} with {r.content!r} ({r.headers['X-Cache-Status']})"
            statuses.append(r.headers["X-Cache-Status"])
    return statuses


def purge(server, body):
    return requests.post(server.url(API), json=body, timeout=10)


def ring(server):
    return requests.get(server.url(EVENTS + "?channel=cache.invalidate"), timeout=10).json()


def test_purges_reach_every_workers_memory_and_nothing_stale_is_served(server_factory, ngxsim_backend, tmp_path):
    backend = ngxsim_backend(name="origin")
    single, dir_a, dir_b, tag_1, tag_2 = "/static/k.css", "/static/dir/a", "/static/dir/b", "/static/t1", "/static/t2"
    backend.respond(single, body="v1")
    backend.respond(tag_1, body="t1-v1", headers={"Cache-Tag": "assets css"})
    backend.respond(tag_2, body="t2-v1", headers={"Surrogate-Key": "assets"})
    many = [f"/static/batch/file-{i:02d}.css" for i in range(30)]
    server = start(server_factory, tmp_path, backend)
    warm(server, backend, single, dir_a, dir_b, tag_1, tag_2, *many[:3])
    for path in many[3:]:  # the rest in the shared level only
        requests.get(server.url(path), timeout=10)

    # by key
    backend.respond(single, body="v2")
    r = purge(server, {"key": key(single)})
    assert r.status_code == 200 and r.json()["purged"] == 1 and r.json()["type"] == "purged"
    statuses = only_new(server, single, b"v2")
    assert statuses.count("MISS") == 1 and statuses.count("HIT") == len(statuses) - 1

    # by prefix (NGINX Plus' trailing *)
    backend.respond(body="new")  # every other path
    r = purge(server, {"key": key("/static/dir/*")})
    assert (r.status_code, r.json()["purged"], r.json()["type"]) == (200, 2, "purge_batch")
    only_new(server, dir_a, b"new")
    only_new(server, dir_b, b"new")

    # by tag
    backend.respond(tag_1, body="t1-v2", headers={"Cache-Tag": "assets css"})
    backend.respond(tag_2, body="t2-v2", headers={"Surrogate-Key": "assets"})
    r = purge(server, {"tag": "assets"})
    assert (r.status_code, r.json()["purged"], r.json()["type"]) == (200, 2, "purged")
    only_new(server, tag_1, b"t1-v2")
    only_new(server, tag_2, b"t2-v2")

    # a batch of keys too large for one event: stored in the shared level, named by id
    r = purge(server, {"keys": [key(p) for p in many]})
    assert (r.status_code, r.json()["purged"], r.json()["type"]) == (200, 30, "purge_batch")
    for path in many[:4]:
        only_new(server, path, b"new", per_worker=2)

    events = ring(server)["events"]
    assert [(e["type"], e["payload"]) for e in events[:3]] == [
        ("purged", f"key:{key(single)}"),
        ("purge_batch", json.dumps({"prefix": key("/static/dir/")}, separators=(",", ":"))),
        ("purged", "tag:assets"),
    ]
    batch = json.loads(events[3]["payload"])
    assert events[3]["type"] == "purge_batch" and (batch["count"], batch["zone"]) == (30, "assets")
    assert [e["generation"] for e in events] == sorted(e["generation"] for e in events)
    assert events[3]["generation"] == r.json()["generation"]


def test_purge_method_404_publishes_nothing_and_uncacheable_responses(server_factory, ngxsim_backend, tmp_path):
    backend = ngxsim_backend()
    backend.respond("/static/ns", body="ns", headers={"Cache-Control": "no-store"})
    backend.respond("/static/pv", body="pv", headers={"Cache-Control": "private, max-age=600"})
    backend.respond("/static/ck", body="ck", headers={"Set-Cookie": "session=42"})
    backend.respond("/static/exp", body="e1", headers={"Cache-Control": "max-age=1"})
    server = start(server_factory, tmp_path, backend)

    for path in ("/static/ns", "/static/pv", "/static/ck"):
        answers = [r for rs in by_worker(server, path, per_worker=3).values() for r in rs]
        assert {r.headers["X-Cache-Status"] for r in answers} == {"MISS"}
        assert len(backend.requests_for(path)) == len(answers)  # every one went to the backend

    # nginx's sequences: MISS, HIT...; BYPASS goes to the backend; EXPIRED once stale
    session = requests.Session()
    seq = [session.get(server.url("/static/exp"), timeout=10).headers["X-Cache-Status"] for _ in range(3)]
    assert seq == ["MISS", "HIT", "HIT"]
    assert session.get(server.url("/static/exp?nocache=1"), timeout=10).headers["X-Cache-Status"] == "BYPASS"
    backend.respond("/static/exp", body="e2", headers={"Cache-Control": "max-age=600"})
    wait_for(lambda: session.get(server.url("/static/exp"), timeout=10).headers["X-Cache-Status"] == "EXPIRED",
             timeout=5, interval=0.2, what="the entry to go stale")
    assert only_new(server, "/static/exp", b"e2", per_worker=2).count("MISS") == 0

    # PURGE as ngx_cache_purge answers it; a purge that matches nothing publishes nothing
    newest = ring(server)["newest_generation"]
    r = session.request("PURGE", server.url("/static/exp"), timeout=10)
    assert r.status_code == 200 and b"Successful purge" in r.content
    assert session.request("PURGE", server.url("/static/exp"), timeout=10).status_code == 404
    r = purge(server, {"key": key("/static/never")})
    assert r.status_code == 404 and "nothing cached" in r.json()["message"]
    assert purge(server, {"tags": ["none", "nothing"]}).status_code == 404
    after = ring(server)
    assert after["newest_generation"] == newest + 1
    assert (after["events"][-1]["type"], after["events"][-1]["payload"]) == ("purged", f"key:{key('/static/exp')}")
    assert session.get(server.url("/static/exp"), timeout=10).headers["X-Cache-Status"] == "MISS"
    session.close()


def test_a_burst_that_overflows_the_ring_makes_each_worker_drop_its_memory(server_factory, ngxsim_backend, tmp_path):
    """Three workers are stopped while one takes a purge of the warmed key and then more purges
    than the ring holds: when they resume, that purge's event is gone. Each of them learns of the
    gap and drops its whole memory level, so none serves the stale copy it held."""
    backend = ngxsim_backend()
    backend.respond("/static/hot", body="old")
    server = start(server_factory, tmp_path, backend)
    warm(server, backend, "/static/hot")
    others = [f"/static/o/{i}" for i in range(20)]  # more than the ring's 16 entries
    for path in others:
        requests.get(server.url(path), timeout=10)
    workers = server.worker_pids()
    serving, stopped = workers[0], workers[1:]
    for pid in stopped:
        os.kill(pid, signal.SIGSTOP)
    try:
        backend.respond("/static/hot", body="new")
        hot = purge(server, {"key": key("/static/hot")})  # only the running worker can answer
        assert hot.status_code == 200, hot.text
        for path in others:
            assert purge(server, {"key": key(path)}).status_code == 200
        assert ring(server)["oldest_generation"] > hot.json()["generation"]  # its event is gone
    finally:
        for pid in stopped:
            os.kill(pid, signal.SIGCONT)
    only_new(server, "/static/hot", b"new", per_worker=3)
    gaps = {w["pid"]: w["gaps"] for w in ring(server)["workers"]}
    assert all(gaps[pid] >= 1 for pid in stopped), gaps
    assert gaps[serving] == 0


def test_the_shared_level_survives_a_restart_and_honours_max_size(server_factory, ngxsim_backend, tmp_path):
    backend = ngxsim_backend()
    backend.respond(body="x" * 65536)
    server = start(server_factory, tmp_path, backend, max_size="max_size=1m")
    for i in range(40):  # 2.5 MiB of 64 KiB responses into a 1 MiB shared level
        assert requests.get(server.url(f"/static/big/{i}"), timeout=10).headers["X-Cache-Status"] == "MISS"
    backend.respond("/static/keep", body="kept", headers={"Cache-Tag": "kept"})
    requests.get(server.url("/static/keep"), timeout=10)
    shared = requests.get(server.url("/api/cache"), timeout=10).json()["shared"]
    assert shared["size"] <= 1024 * 1024 and shared["entries"] < 41
    server.stop()

    hits = backend.hits
    server = start(server_factory, tmp_path, backend, max_size="max_size=1m")
    answers = [r for rs in by_worker(server, "/static/keep").values() for r in rs]
    assert {(r.headers["X-Cache-Status"], r.content) for r in answers} == {("HIT", b"kept")}
    assert backend.hits == hits  # nothing fetched again
    assert purge(server, {"tag": "kept"}).json()["purged"] == 1  # the key index came back too
    assert requests.get(server.url("/static/keep"), timeout=10).headers["X-Cache-Status"] == "MISS"
