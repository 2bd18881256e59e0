"""cache_purge across hosts: three instances (real gunicorn, several workers each) sharing a real
engine, proxying to one real backend whose content the tests change. A purge made on one host
must hold on every worker of every host, both levels: no stale answer once the purge was
delivered there, no response fetched before it stored after it, and a host that missed purges
drops what it stored before the gap."""

from __future__ import annotations

import os
import shutil
import threading
import uuid

import pytest

from ngxsim.testing import wait_for

API = "/ev"
PURGE_API = "/api/cache?key=changeme"
PAST_RETENTION = 300  # purges: Redis trims "MAXLEN ~ 100" by whole nodes of 100 entries

CONF = """
load_module worker_events;
load_module upstreams;
load_module cache_purge;
load_module cluster;
http {
    worker_events_zone bus;
    cluster_bridge bus {engine} channels=cache.invalidate state={state} stream={stream} instance={instance}
                   retention=100;
    proxy_cache_path {state}/cache keys_zone=assets:1m inactive=10m;
    upstream backend { zone backend 256k; server {backend}; }
    server {
        listen 127.0.0.1:{port};
        location /static/ {
            proxy_pass http://backend;
            proxy_cache assets;
            proxy_cache_valid 200 10m;
            proxy_cache_purge PURGE from 127.0.0.1;
            add_header X-Cache-Status $upstream_cache_status always;
        }
        location /api/cache { cache_purge_api assets; cache_purge_key changeme; }
        location /ev { worker_events_api; worker_events_channel cache.invalidate; }
    }
}
"""


@pytest.fixture
def stream():
    return f"test.{uuid.uuid4().hex[:12]}"


def start(cluster, stream, backend, count=3, workers=(2, 3, 2)):
    members = cluster.start(CONF, count=count, workers=list(workers)[:count], stream=stream,
                            placeholders={"backend": backend.address})
    for m in members:
        m.wait_connected(API)
    return members


def key(path: str) -> str:
    """nginx's default key for a proxy_pass to the group "backend" (its cache file's KEY: line)."""
    return "http://backend" + path


def warm(member, path, body):
    """Every worker of ``member`` holds ``path`` in its memory level (and the shared level has it)."""
    member.server.get(path)
    answers = member.server.each_worker(path)
    assert {(r.text, r.headers["X-Cache-Status"]) for r in answers.values()} == {(body, "HIT")}, member.name


def delivered(member, origin_name, payload_part, timeout=20.0):
    """Until ``member``'s ring holds the purge event relayed from ``origin_name``."""
    def found():
        events = member.server.get(API + "?since=0&limit=1000").json()["events"]
        return [e for e in events if e["origin"] == origin_name and payload_part in e["payload"]] or None

    return wait_for(found, timeout, 0.02, what=f"{member.name} to receive {payload_part} from {origin_name}")


def test_a_purge_on_one_host_evicts_both_levels_on_every_worker_of_the_others_and_nothing_fetched_before_is_stored(
        ngxsim_cluster, ngxsim_engine, ngxsim_backend, stream):
    backend = ngxsim_backend()
    backend.respond(body="v1")
    a, b, c = start(ngxsim_cluster(ngxsim_engine.url), stream, backend)
    for m in (a, b, c):
        warm(m, "/static/a.css", "v1")
        warm(m, "/static/t.css", "v1")
    backend.respond(body="v2")

    # through the API of A
    r = a.server.post(PURGE_API, json={"key": key("/static/a.css")})
    assert r.status_code == 200, r.text
    for m in (b, c):
        delivered(m, "A", key("/static/a.css"))
        # every worker delivers what its ring holds before it answers: no wait beyond delivery
        for rnd in range(3):
            answers = m.server.each_worker("/static/a.css")
            assert {r.text for r in answers.values()} == {"v2"}, (m.name, rnd, answers)
        assert {r.text for r in m.server.each_worker("/static/t.css").values()} == {"v1"}, "purged more than asked"

    # PURGE on B: A and C follow
    assert b.server.request("PURGE", "/static/t.css").status_code == 200
    for m in (a, c):
        delivered(m, "B", key("/static/t.css"))
        assert {r.text for r in m.server.each_worker("/static/t.css").values()} == {"v2"}, m.name

    # by tag: each host finds its own keys carrying it
    backend.respond("/static/blue.css", body="blue1", headers={"Cache-Tag": "blue"})
    warm(c, "/static/blue.css", "blue1")
    backend.respond("/static/blue.css", body="blue2", headers={"Cache-Tag": "blue"})
    assert a.server.post(PURGE_API, json={"tag": "blue"}).status_code == 404  # none on A: sent all the same
    delivered(c, "A", "tag:blue")
    assert {r.text for r in c.server.each_worker("/static/blue.css").values()} == {"blue2"}

    # read-your-purge: B fetches from a slow origin, A purges (matching nothing on A: still sent)
    # while the fetch is in flight; B delivers the purge before the answer arrives: not stored
    backend.respond("/static/slow.css", body="old", delay=2.0)
    answer = {}
    fetch = threading.Thread(target=lambda: answer.update(r=b.server.get("/static/slow.css", timeout=20)))
    fetch.start()
    try:
        backend.wait_hits(1, path="/static/slow.css")
        r = a.server.post(PURGE_API, json={"key": key("/static/slow.css")})
        assert r.status_code == 404 and "sent to the other hosts" in r.json()["message"], r.text
        delivered(b, "A", key("/static/slow.css"), timeout=1.5)
    finally:
        fetch.join(20)
    assert answer["r"].text == "old" and answer["r"].headers["X-Cache-Status"] == "MISS"
    backend.respond("/static/slow.css", body="new")
    answers = b.server.each_worker("/static/slow.css")
    assert {r.text for r in answers.values()} == {"new"}, answers

    # A's cache folder removed while running: A's workers drop their memory, the other hosts keep theirs
    assert {r.headers["X-Cache-Status"] for r in b.server.each_worker("/static/a.css").values()} == {"HIT"}
    os.rename(a.state / "cache", a.state / "gone")
    shutil.rmtree(a.state / "gone")
    probes = iter(range(1000))
    wait_for(lambda: a.server.get(f"/static/p{next(probes)}").status_code == 200 and (a.state / "cache").is_dir(),
             10, 0.05, what="A to make its cache folder again")
    delivered(b, "A", "assets")  # the "recreated" event
    assert {r.headers["X-Cache-Status"] for r in b.server.each_worker("/static/a.css").values()} == {"HIT"}


def test_a_host_back_after_a_gap_drops_what_it_stored_before_the_gap(
        ngxsim_cluster, ngxsim_engine, ngxsim_backend, stream):
    backend = ngxsim_backend()
    backend.respond(body="v1")
    cluster = ngxsim_cluster(ngxsim_engine.url)
    a, b = start(cluster, stream, backend, count=2, workers=(2, 2))
    warm(b, "/static/g.css", "v1")
    b.server.stop()
    cluster.members.remove(b)

    backend.respond(body="v2")
    # B's purge, then enough others that the engine (retention=100) drops it before B reads it
    for i in range(PAST_RETENTION):
        path = "/static/g.css" if i == 0 else f"/static/other-{i}.css"
        assert a.server.post(PURGE_API, json={"key": key(path)}).status_code == 404  # A never had it
    wait_for(lambda: a.cluster_view(API).get("relayed_out", 0) >= PAST_RETENTION, 30, 0.05,
             what="A to relay its purges")

    b = cluster.start_one(CONF, "B", 2, stream, placeholders={"backend": backend.address})
    b.wait_connected(API)
    wait_for(lambda: b.cluster_view(API).get("gaps", 0) >= 1, 20, 0.05, what="B to notice its gap")
    # every worker delivers the gap before it answers: none serves what B stored before it
    def fresh():
        answers = b.server.each_worker("/static/g.css")
        return answers if {r.text for r in answers.values()} == {"v2"} else None

    wait_for(fresh, 10, 0.1, what="B's workers to answer v2")
    # what B stores after the gap stays
    assert {r.headers["X-Cache-Status"] for r in b.server.each_worker("/static/g.css").values()} == {"HIT"}
