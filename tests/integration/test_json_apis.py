"""What every module's JSON API gets from the core's ``read_json``, through a real server: a
string holding a lone surrogate escape (``"\\ud800"``, valid JSON syntax but no Unicode text) is a
400 with a JSON body naming it — never an HTML 500 — and nothing is stored; a surrogate *pair*
is an ordinary character."""

from __future__ import annotations

import pytest

from ngxsim.testing import Backend, start_server, stop_all

CONF = """
load_module worker_events;
load_module upstreams;
load_module cache_purge;
http {
    proxy_cache_path {tmp}/cache keys_zone=assets:1m inactive=10m max_size=10m;
    worker_events_zone bus;
    upstream backend { zone backend 256k; server {origin}; }
    server {
        listen 127.0.0.1:{port};
        location /static/ { proxy_pass http://backend; proxy_cache assets; proxy_cache_valid 200 10m; }
        location /api/upstreams { upstreams_api; }
        location /api/cache { cache_purge_api assets; }
        location = /events { worker_events_api; worker_events_zone bus; worker_events_channel ops; }
    }
}
"""

# (API, body as sent on the wire, where the message says the surrogate is)
LONE = [
    ("/events", rb'{"type": "\ud800"}', '"type" holds a lone surrogate \\ud800'),
    ("/events", rb'{"type": "t", "payload": "x\uDBFFy"}', '"payload" holds a lone surrogate \\udbff'),
    ("/events", rb'{"\udc00": 1}', 'key "\\udc00" holds a lone surrogate \\udc00'),
    ("/api/upstreams/backend/servers", rb'{"server": "\ud800:1"}', '"server" holds a lone surrogate \\ud800'),
    ("/api/cache", rb'{"key": "\ud800"}', '"key" holds a lone surrogate \\ud800'),
    ("/api/cache", rb'{"tag": "\udfff"}', '"tag" holds a lone surrogate \\udfff'),
    ("/api/cache", rb'{"keys": ["ok", "\ude00\ud800"]}', '"keys[1]" holds a lone surrogate \\ude00'),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    origin = Backend("origin").start()
    server = None
    try:
        server = start_server(tmp_path_factory.mktemp("json"), CONF, workers=2, mode="ngxsim", ready_path="/events",
                              placeholders={"origin": origin.address})
        yield server
    finally:
        stop_all([*([server] if server else []), origin])


def _stored(server) -> tuple:
    """What the three modules hold: the ring's newest generation, the upstream's peers, the cache."""
    return (server.get("/events", params={"limit": 0}).json()["newest_generation"],
            [p["server"] for p in server.get("/api/upstreams/backend").json()["peers"]],
            server.get("/api/cache").json()["shared"]["entries"])


@pytest.mark.parametrize("path, body, where", LONE, ids=[f"{p}-{b.decode()}" for p, b, _ in LONE])
def test_a_lone_surrogate_is_a_400_naming_it_and_stores_nothing(server, path, body, where):
    assert server.get("/static/a").status_code == 200  # something in the cache a bad purge must not touch
    before = _stored(server)
    r = server.post(path, data=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    assert r.headers["Content-Type"].startswith("application/json")
    assert r.json()["message"] == f"body is not valid JSON text: {where}, which is no Unicode character"
    assert _stored(server) == before
    assert not server.severe_lines() and "Traceback" not in server.output()


def test_a_surrogate_pair_is_an_ordinary_character(server):
    r = server.post("/events", data=rb'{"type": "t", "payload": "\ud83d\ude00"}',
                    headers={"Content-Type": "application/json"})
    assert r.status_code == 201 and r.json()["payload"] == "\U0001f600"
    r = server.post("/api/cache", data=rb'{"key": "\ud83d\ude00"}', headers={"Content-Type": "application/json"})
    assert r.status_code == 404 and r.headers["Content-Type"].startswith("application/json")  # nothing of that key
