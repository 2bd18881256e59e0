"""upstreams under gunicorn -w 4 with real loopback backends: balancing, failover, URI rules,
the dynamic API reaching every worker, drain, refresh and state."""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter

import pytest

from ngxsim.testing import wait_for

API = "/api/upstreams"
EVENTS = "/internal/worker-events"

BASE = """
load_module worker_events;
load_module upstreams;
worker_processes 4;
http {
    worker_events_zone bus;
    upstream backend {
        zone backend 256k;
        %(servers)s
        %(upstream_extra)s
    }
    server {
        listen 127.0.0.1:{port};
        add_header X-Upstream-Addr $upstream_addr always;
        add_header X-Upstream-Status $upstream_status always;
        %(server_extra)s
        location / { proxy_pass http://backend; %(location_extra)s }
        location /api/upstreams { upstreams_api; upstreams_api_key changeme; }
        location /internal/worker-events {
            worker_events_api;
            worker_events_zone bus;
            worker_events_channel ops;
        }
    }
}
"""


def conf(servers, upstream_extra="", server_extra="", location_extra=""):
    return BASE % {"servers": "\n        ".join(servers), "upstream_extra": upstream_extra,
                   "server_extra": server_extra, "location_extra": location_extra}


def spray(server, path="/", count=200, **kw):
    """``count`` requests, every worker serving its share (ngxsim.testing's spray)."""
    return server.spray(path, count, **kw)


def workers_seen(responses) -> set[int]:
    return {r.worker_pid for r in responses}


def events(server, type_=None, channel="upstreams"):
    return server.events(EVENTS).read(channel=channel, type=type_)


def wait_event(server, type_, channel="upstreams"):
    return server.events(EVENTS).wait(type=type_, channel=channel)


def api(server, method, path="", key="changeme", **kw):
    return server.request(method, API + path, params={"key": key} if key else None, **kw)


@pytest.fixture
def start(ngxsim_server):
    """Servers that count as ready once every worker answered the API location: it proxies
    nothing, so no backend sees the start and each worker's round-robin starts fresh."""
    return lambda text, **kw: ngxsim_server(text, ready_path=API, **kw)


@pytest.fixture
def backends(ngxsim_backend):
    return [ngxsim_backend(name=f"b{i}") for i in range(4)]


# -- balancing -------------------------------------------------------------------------------------


@pytest.mark.ngxsim_modes()
def test_weighted_round_robin_across_four_workers(start, backends):
    a, b, c = backends[:3]
    server = start(conf([f"server {a.address} weight=3;", f"server {b.address};", f"server {c.address};"]),
                            workers=4)
    responses = spray(server, count=300)
    assert all(r.status_code == 200 for r in responses)
    assert len(workers_seen(responses)) == 4  # every worker served some
    hits = Counter({"a": a.hits, "b": b.hits, "c": c.hits})
    assert sum(hits.values()) == 300
    # smooth weighted round-robin per worker: 3:1:1 overall, within a few requests per worker
    assert abs(hits["a"] - 180) <= 12 and abs(hits["b"] - 60) <= 12 and abs(hits["c"] - 60) <= 12, hits
    # the body and the variables come from the peer that answered
    r = responses[-1]
    assert r.headers["X-Upstream-Status"] == "200"
    assert r.text.startswith({a.address: "b0", b.address: "b1", c.address: "b2"}[r.headers["X-Upstream-Addr"]])


def test_backup_only_while_no_primary_is_usable_and_down_never(start, backends):
    a, b, backup, down = backends
    server = start(conf([f"server {a.address};", f"server {b.address};",
                                  f"server {backup.address} backup;", f"server {down.address} down;"]), workers=4)
    spray(server, count=60)
    assert backup.hits == 0 and down.hits == 0 and a.hits + b.hits == 60
    a.stop()
    b.stop()
    responses = spray(server, count=40)
    assert all(r.status_code == 200 for r in responses), [r.status_code for r in responses]
    assert backup.hits == 40 and down.hits == 0


def test_a_dead_peer_is_skipped_then_502_when_all_are_dead(start, backends):
    a, b = backends[:2]
    server = start(conf([f"server {a.address} max_fails=0;", f"server {b.address} max_fails=0;"]), workers=4)
    a.stop()
    b.reset()
    responses = spray(server, count=40)
    assert all(r.status_code == 200 for r in responses)
    assert b.hits == 40
    # tried a first, then b: both addresses in $upstream_addr, as nginx writes them
    retried = [r for r in responses if "," in r.headers["X-Upstream-Addr"]]
    assert retried and retried[0].headers["X-Upstream-Addr"] == f"{a.address}, {b.address}"
    assert retried[0].headers["X-Upstream-Status"] == "502, 200"
    b.stop()
    r = server.get("/x")
    assert r.status_code == 502
    assert r.headers["Content-Type"].startswith("text/html")
    assert "<title>502 Bad Gateway</title>" in r.text


def test_read_timeout_is_504_and_http_502_retries_when_configured(start, backends):
    a, b = backends[:2]
    a.respond("/slow", body="late", delay=3)
    b.respond("/slow", body="late", delay=3)
    a.respond("/bad", status=502, body="a broke")
    b.respond("/bad", body="b fine")
    server = start(conf([f"server {a.address} max_fails=0;", f"server {b.address} max_fails=0;"],
                                 location_extra="proxy_read_timeout 300ms; proxy_next_upstream error timeout http_502;"),
                            workers=2)
    r = server.get("/slow")
    assert r.status_code == 504 and "<title>504 Gateway Time-out</title>" in r.text or "504" in r.text
    assert r.headers["X-Upstream-Status"] == "504, 504"
    bodies = {server.get("/bad").text for _ in range(6)}
    assert bodies == {"b fine"}  # a's 502 is retried on b every time


def test_passive_failures_mark_a_peer_unavailable(start, backends):
    a, b = backends[:2]
    server = start(conf([f"server {a.address} max_fails=1 fail_timeout=30s;", f"server {b.address};"]), workers=4)
    a.stop()
    spray(server, count=20)  # the first try of a fails in some worker: a is out for 30 s, for all
    a.start()
    before = a.hits
    spray(server, count=40)
    assert a.hits == before  # no worker routes to it inside fail_timeout
    peer = api(server, "GET", "/backend/servers").json()[0]
    assert peer["state"] == "unavail" and peer["fails"] >= 1


# -- what goes to the backend ---------------------------------------------------------------------


def test_uri_rules_headers_and_bodies(start, ngxsim_backend):
    be = ngxsim_backend(name="be")
    text = conf([f"server {be.address};"], upstream_extra="keepalive 2;", server_extra=f"""
        location /direct/ {{ proxy_pass http://{be.address}/; }}
        location /ka/ {{ proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection ""; }}
        location /sub/ {{ proxy_pass http://{be.address}/other/; }}
        location /keep/ {{ proxy_pass http://{be.address}; }}
        location ~ ^/re/ {{ proxy_pass http://backend; }}
        location /hdr/ {{
            proxy_pass http://backend;
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Drop "";
        }}""")
    server = start(text, workers=2)
    cases = [("/direct/abc?x=1", "/abc", "x=1"), ("/sub/a/b", "/other/a/b", ""),
             ("/keep/abc?y=2", "/keep/abc", "y=2"), ("/re/z?q", "/re/z", "q")]
    for sent, path, query in cases:
        be.reset()
        assert server.get(sent).status_code == 200
        got = be.requests[-1]
        assert (got.path, got.query) == (path, query), sent
    # without a URI part the request URI goes exactly as the client sent it
    be.reset()
    server.get("/keep//a/./b%20c?z=%41")  # the plugin's client sends the target as written
    assert (be.requests[-1].path, be.requests[-1].query) == ("/keep//a/./b%20c", "z=%41")
    # default Host is $proxy_host; nginx's own hop-by-hop ones (Connection, TE, Keep-Alive,
    # Upgrade, Expect) are not passed, a header the client's Connection names is
    be.reset()
    server.get("/keep/h", headers={"Connection": "keep-alive, X-Secret-Hop", "X-Secret-Hop": "1", "X-Pass": "yes",
                                   "TE": "trailers"})
    got = be.requests[-1].headers
    assert got["Host"] == be.address and got["X-Pass"] == "yes" and got["X-Secret-Hop"] == "1"
    assert got["TE"] is None and got["Connection"] == "close"
    be.reset()
    server.get("/hdr/x", headers={"Host": "example.test", "X-Forwarded-For": "10.1.1.1", "X-Drop": "gone"})
    got = be.requests[-1].headers
    assert got["Host"] == "example.test" and got["X-Forwarded-For"] == "10.1.1.1, 127.0.0.1"
    assert got["X-Drop"] is None
    # bodies both ways, the method, response headers and status as the backend sent them
    be.respond("/echo", body="made", status=201, headers={"X-From-Backend": "1", "Content-Type": "text/x-made"})
    r = server.post("/echo", data=b"x" * 70000, headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 201 and r.text == "made" and r.headers["X-From-Backend"] == "1"
    assert r.headers["Content-Type"] == "text/x-made"
    got = be.requests[-1]
    assert got.method == "POST" and got.body == b"x" * 70000 and got.path == "/echo"
    # keepalive 2 with HTTP/1.1 and Connection "": many requests, few connections per worker;
    # without keepalive (an address) one connection per request, as nginx
    be.reset()
    before = be.connections
    spray(server, "/ka/x", count=40)
    assert be.connections - before <= 4
    before = be.connections
    spray(server, "/keep/x", count=10)
    assert be.connections - before == 10


# -- the API ----------------------------------------------------------------------------------------


def test_api_changes_reach_every_worker_from_the_next_request(start, backends):
    a, b, c = backends[:3]
    server = start(conf([f"server {a.address};", f"server {b.address};"]), workers=4)
    spray(server, count=20)
    r = api(server, "POST", "/backend/servers", json={"server": c.address, "weight": 2})
    assert r.status_code == 201, r.text
    added = r.json()
    assert added["server"] == c.address and added["weight"] == 2 and added["state"] == "up"
    responses = spray(server, count=120)
    assert len(workers_seen(responses)) == 4
    assert c.worker_pids() >= workers_seen(responses)  # every worker routed to the new peer
    up = api(server, "GET", "/backend").json()
    assert up["version"] == 2 and [p["server"] for p in up["peers"]] == [a.address, b.address, c.address]
    assert [e["payload"] for e in events(server, "snapshot_activated")] == ['{"upstream":"backend","version":2}']

    # a new weight steers every worker from the next request: c takes 10 of 12
    assert api(server, "PATCH", f"/backend/servers/{added['id']}", json={"weight": 10}).json()["weight"] == 10
    for be in (a, b, c):
        be.reset()
    spray(server, count=120)
    assert c.hits >= 90 and a.hits + b.hits <= 30, (a.hits, b.hits, c.hits)
    # weight 0 is invalid: nothing changes; then down=true takes a out of every worker at once
    assert api(server, "PATCH", f"/backend/servers/{up['peers'][0]['id']}", json={"weight": 0}).status_code == 400
    assert api(server, "PATCH", f"/backend/servers/{up['peers'][0]['id']}", json={"down": True}).status_code == 200
    a.reset()
    responses = spray(server, count=120)
    assert a.hits == 0 and len(workers_seen(responses)) == 4
    # delete b: gone from every worker
    r = api(server, "DELETE", f"/backend/servers/{up['peers'][1]['id']}")
    assert r.status_code == 200 and b.address not in [p["server"] for p in r.json()]
    b.reset()
    spray(server, count=80)
    assert b.hits == 0
    assert api(server, "GET", "/backend").json()["version"] == 5


def test_drain_publishes_both_events_and_the_peer_gets_nothing_new(start, backends):
    a, b = backends[:2]
    a.respond("/slow", body="slow", delay=2)
    b.respond("/slow", body="slow", delay=0.2)
    server = start(conf([f"server {a.address};", f"server {b.address};"]), workers=4)
    peers = api(server, "GET", "/backend/servers").json()
    a_id = next(p["id"] for p in peers if p["server"] == a.address)
    # a request in flight to a while it drains: peer_drained only once it ends
    import threading

    slow = []
    threads = []
    for _ in range(12):  # until one of them is in flight to a (the others go to b)
        t = threading.Thread(target=lambda: slow.append(server.get("/slow", timeout=10)))
        t.start()
        threads.append(t)
        try:
            a.wait_hits(1, path="/slow", timeout=1)
            break
        except AssertionError:
            continue
    assert a.requests_for("/slow"), "no slow request reached a"
    r = api(server, "PATCH", f"/backend/servers/{a_id}", json={"drain": True})
    assert r.status_code == 200 and r.json()["state"] == "draining" and r.json()["active"] >= 1
    assert len(events(server, "peer_draining")) == 1
    assert events(server, "peer_drained") == []
    a.reset()
    spray(server, count=80)
    assert a.hits == 0  # nothing new from any worker
    for t in threads:
        t.join(10)
    drained = wait_event(server, "peer_drained")
    assert json.loads(drained["payload"]) == {"upstream": "backend", "peer": a_id, "server": a.address}
    assert len(events(server, "peer_drained")) == 1
    # a drained peer can be deleted safely
    assert api(server, "DELETE", f"/backend/servers/{a_id}").status_code == 200


def test_every_bad_api_input_gets_its_status_and_changes_nothing(start, backends):
    a, b = backends[:2]
    server = start(conf([f"server {a.address};"]), workers=2)
    before = api(server, "GET", "/backend").json()
    pid = before["peers"][0]["id"]
    cases = [
        ("POST", "/backend/servers", {"json": {"server": b.address}}, "nokey", 403),
        ("POST", "/backend/servers", {"json": {"server": b.address}}, "wrong", 403),
        ("POST", "/nope/servers", {"json": {"server": b.address}}, "changeme", 404),
        ("PATCH", "/backend/servers/999", {"json": {"weight": 2}}, "changeme", 404),
        ("PATCH", "/backend/servers/x", {"json": {"weight": 2}}, "changeme", 404),
        ("PATCH", "/backend/servers/%C2%B2", {"json": {"weight": 2}}, "changeme", 404),  # isdigit, but not int()
        ("DELETE", "/backend/servers/%D9%A1", {}, "changeme", 404),  # int() takes it: ids are ASCII
        ("POST", "/backend/servers", {"json": {"server": "127.0.0.1:\u0669\u0660"}}, "changeme", 400),
        ("POST", "/backend/servers", {"json": {"server": a.address}}, "changeme", 409),
        ("POST", "/backend/servers", {"json": {"server": "nohost"}}, "changeme", 400),
        ("POST", "/backend/servers", {"json": {"server": "example.com:80"}}, "changeme", 400),
        ("POST", "/backend/servers", {"json": {"server": b.address, "weight": "2"}}, "changeme", 400),
        ("POST", "/backend/servers", {"json": {"server": b.address, "colour": "red"}}, "changeme", 400),
        ("POST", "/backend/servers", {"json": [1]}, "changeme", 400),
        ("POST", "/backend/servers", {"data": "{", "headers": {"Content-Type": "application/json"}}, "changeme", 400),
        ("POST", "/backend/servers", {"data": "server=x"}, "changeme", 415),
        ("PATCH", f"/backend/servers/{pid}", {"json": {"server": b.address}}, "changeme", 400),
        ("PATCH", f"/backend/servers/{pid}", {"json": {"fail_timeout": "soon"}}, "changeme", 400),
        ("PATCH", f"/backend/servers/{pid}", {"json": {"max_fails": -1}}, "changeme", 400),
        ("PATCH", f"/backend/servers/{pid}", {"json": {"backup": "yes"}}, "changeme", 400),
        ("PUT", "/backend/servers", {"json": {}}, "changeme", 405),
        ("POST", "/backend", {"json": {"server": b.address}}, "changeme", 405),
        ("DELETE", "/backend/servers", {}, "changeme", 405),
        ("POST", "/backend/servers", {"data": "x" * 5000, "headers": {"Content-Type": "application/json"}}, "changeme", 413),
    ]
    for method, path, kw, key, status in cases:
        r = api(server, method, path, key=None if key == "nokey" else key, **kw)
        assert r.status_code == status, (method, path, kw, r.status_code, r.text)
        body = r.json()
        assert body["status"] == status and body["message"], body
    assert api(server, "GET", "/backend").json() == before
    assert events(server, "snapshot_activated") == []
    # the key never reaches a log line in clear: only the access log could show it, and it is off


def test_an_invalid_change_keeps_serving(start, backends):
    a = backends[0]
    server = start(conf([f"server {a.address};"], upstream_extra=""), workers=2)
    for _ in range(3):
        assert api(server, "POST", "/backend/servers", json={"server": a.address}).status_code == 409
    assert all(r.status_code == 200 for r in spray(server, count=20))


# -- refresh and state -----------------------------------------------------------------------------


def test_refresh_once_per_interval_failure_event_and_takeover(start, backends, tmp_path):
    a, b, source = backends[:3]
    source.respond("/servers.json", body=[{"server": a.address}])
    server = start(conf([f"server {a.address};"],
                                 upstream_extra=f"upstream_refresh url={source.url('/servers.json')} interval=300ms;"),
                            workers=4)
    source.wait_hits(3, path="/servers.json")
    source.reset()
    time.sleep(1.5)
    reads = source.requests_for("/servers.json")
    assert 3 <= len(reads) <= 7, len(reads)  # ~5 in 1.5 s: one reader for the instance, not four
    assert len({r.worker_pid for r in reads}) == 1
    # a change in the source becomes a snapshot every worker routes by
    source.respond("/servers.json", body=[{"server": a.address}, {"server": b.address, "weight": 3}])
    wait_event(server, "snapshot_activated")
    responses = spray(server, count=120)
    assert b.worker_pids() >= workers_seen(responses) and b.hits > a.hits
    # an invalid source changes nothing and says why
    source.respond("/servers.json", body=[{"server": "nonsense"}])
    payload = json.loads(wait_event(server, "refresh_failed")["payload"])
    assert payload["upstream"] == "backend" and "entry 0" in payload["reason"]
    assert {p["server"] for p in api(server, "GET", "/backend/servers").json()} == {a.address, b.address}
    assert all(r.status_code == 200 for r in spray(server, count=20))
    # kill the worker that refreshes: another takes over
    source.respond("/servers.json", body=[{"server": a.address}])
    reader = source.requests_for("/servers.json")[-1].worker_pid
    os.kill(reader, signal.SIGKILL)
    source.reset()
    wait_for(lambda: {r.worker_pid for r in source.requests_for("/servers.json")} - {reader, None}, 10,
             what="another worker to refresh")


def test_refresh_from_an_unreadable_file_publishes_refresh_failed(start, backends, tmp_path):
    a = backends[0]
    source = tmp_path / "servers.json"
    server = start(conf([f"server {a.address};"],
                                 upstream_extra=f"upstream_refresh file={source} interval=200ms;"), workers=2)
    assert "No such file" in json.loads(wait_event(server, "refresh_failed")["payload"])["reason"]
    assert server.get("/").status_code == 200
    source.write_text(json.dumps([{"server": a.address, "weight": 5}]))
    wait_event(server, "snapshot_activated")
    assert api(server, "GET", "/backend/servers").json()[0]["weight"] == 5


def test_state_file_survives_a_restart(start, backends, tmp_path):
    a, b, c = backends[:3]
    state = tmp_path / "backend.state"
    text = conf([f"server {a.address};", f"server {b.address};"], upstream_extra=f"state {state};")
    server = start(text, workers=2)
    ids = {p["server"]: p["id"] for p in api(server, "GET", "/backend/servers").json()}
    assert api(server, "DELETE", f"/backend/servers/{ids[b.address]}").status_code == 200
    assert api(server, "POST", "/backend/servers", json={"server": c.address, "weight": 4, "backup": True}).status_code == 201
    server.stop()
    assert state.read_text().splitlines() == ["# ngxsim: next_id=3",
                                              f"server {a.address} weight=1 max_fails=1 fail_timeout=10s; # id=0",
                                              f"server {c.address} weight=4 max_fails=1 fail_timeout=10s backup; # id=2"]
    again = start(text, workers=2)
    peers = api(again, "GET", "/backend/servers").json()
    assert [(p["server"], p["weight"], p["backup"]) for p in peers] == [(a.address, 1, False), (c.address, 4, True)]
    b.reset()
    spray(again, count=20)
    assert b.hits == 0 and a.hits >= 20


# -- health reported by another module (the healthchecks contract) ----------------------------------


def test_health_reported_through_the_public_functions_steers_every_worker(start, backends):
    a, b, c = backends[:3]
    text = conf([f"server {a.address};", f"server {b.address};"],
                server_extra="location = /mark { test_mark_health; }").replace(
        "load_module upstreams;", "load_module upstreams;\nload_module ngxsim_test_health;").replace(
        "worker_events_zone bus;", "worker_events_zone bus;\n    test_health_for backend mandatory;", 1)
    server = start(text, workers=4)
    ids = {p["server"]: p["id"] for p in api(server, "GET", "/backend/servers").json()}
    r = server.post("/mark", params={"upstream": "backend", "peer": ids[a.address], "healthy": "0"})
    assert r.json()["recorded"] is True
    a.reset()
    responses = spray(server, count=80)
    assert a.hits == 0 and len(workers_seen(responses)) == 4  # no worker routes to it any more
    peer = api(server, "GET", f"/backend/servers/{ids[a.address]}").json()
    assert peer["state"] == "unhealthy" and peer["health"] == {"healthy": False, "fails": 2, "passes": 0}
    # every peer unhealthy: 502 at once, nobody tried
    server.post("/mark", params={"upstream": "backend", "peer": ids[b.address], "healthy": "0"})
    a.reset(), b.reset()
    r = server.get("/x")
    assert r.status_code == 502 and a.hits == 0 and b.hits == 0
    server.post("/mark", params={"upstream": "backend", "peer": ids[a.address], "healthy": "1"})
    assert all(r.status_code == 200 for r in spray(server, count=20)) and a.hits == 20
    # mandatory: a peer added at run time takes nothing before it is reported healthy
    new = api(server, "POST", "/backend/servers", json={"server": c.address}).json()
    assert new["state"] == "checking"
    spray(server, count=40)
    assert c.hits == 0
    server.post("/mark", params={"upstream": "backend", "peer": new["id"], "healthy": "1"})
    responses = spray(server, count=80)
    assert c.worker_pids() >= workers_seen(responses)
