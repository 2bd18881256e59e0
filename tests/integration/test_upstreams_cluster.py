"""upstreams cluster-wide (issue 21): three real instances (gunicorn, several workers each) sharing
a real engine, real backends behind them. An API change made on any host holds on every host with
the same peer ids; a drain on A stops B and C routing to the peer; concurrent changes on A and B
converge; a restarted instance starts from the cluster's state.

One cluster of instances for the module (per engine); each test uses an upstream of its own."""

from __future__ import annotations

import json
import os
import signal
import threading
import uuid

import pytest

from ngxsim.testing import Backend, start_server, stop_all, wait_for
from ngxsim.testing.cluster import Cluster
from pytest_ngxsim import ENGINE_FIXTURES

API = "/api/upstreams"
EVENTS = "/ev"
HELD_AT_MOST = 30.0  # seconds a held request waits for the test to let it go (a bound, not a timing)
UPSTREAMS = ("u_drain", "u_add", "u_conc", "u_restart", "u_plus")
PLUS = "/api/8/http/upstreams"

CONF = """
load_module worker_events;
load_module cluster;
load_module upstreams;
http {
    worker_events_zone bus;
    cluster_bridge bus {engine} channels=upstreams state={state} stream={stream} instance={instance};
%(upstreams)s
    server {
        listen 127.0.0.1:{port};
        add_header X-Upstream-Addr $upstream_addr always;
%(locations)s
        location /api { api write=on; }
        location /api/upstreams { upstreams_api; }
        location /ev { worker_events_api; worker_events_channel upstreams; }
    }
}
"""


def conf(backends: list[Backend]) -> str:
    servers = "".join(f"        server {b.address};\n" for b in backends[:2])
    ups = "".join(f"    upstream {name} {{\n        zone {name} 256k;\n{servers}    }}\n" for name in UPSTREAMS)
    locs = "".join(f"        location /{name}/ {{ proxy_pass http://{name}; }}\n" for name in UPSTREAMS)
    return CONF % {"upstreams": ups, "locations": locs}


class Members:
    """The module's cluster: instances A, B, C and what they proxy to."""

    def __init__(self, folder, engine):
        self.folder = folder
        self.engine = engine
        self.servers = []
        self.backends = [Backend(f"b{i}").start() for i in range(1, 5)]
        self.stream = f"test.{uuid.uuid4().hex[:12]}"
        self.conf = conf(self.backends)
        self.cluster = Cluster(self._start, folder, engine.url)
        self.a, self.b, self.c = self.cluster.start(self.conf, count=3, workers=[2, 3, 2], stream=self.stream)

    def _start(self, text, **kw):
        server = start_server(self.folder, text, ready_path=API, wait_ready=False, worker_class="gthread", **kw)
        self.servers.append(server)
        server.wait_ready(API, 30.0)
        return server

    def restart(self, member):
        member.server.stop()
        self.cluster.members.remove(member)
        return self.cluster.start_one(self.conf, member.name, 2, self.stream)

    def close(self):
        stop_all(self.servers)
        stop_all(self.backends)


@pytest.fixture(scope="module", params=sorted(ENGINE_FIXTURES))
def members(request, tmp_path_factory):
    engine = request.getfixturevalue(ENGINE_FIXTURES[request.param][0])
    made = Members(tmp_path_factory.mktemp("cluster"), engine)
    try:
        for m in (made.a, made.b, made.c):
            m.wait_connected(EVENTS)
        yield made
    finally:
        made.close()


def api(member, method, path="", **kw):
    return member.server.request(method, API + path, **kw)


def upstream(member, name) -> dict:
    return api(member, "GET", f"/{name}").json()


def peers_of(member, name) -> list[tuple]:
    """What must be equal on every host: ids, servers and parameters (not counters)."""
    return [(p["id"], p["server"], p["weight"], p["down"], p["drain"], p["backup"])
            for p in upstream(member, name)["peers"]]


def converged(members_, name):
    """Until every host routes by the same revision of ``name``; returns its peers."""
    def same():
        seen = [(upstream(m, name)["revision"], peers_of(m, name)) for m in members_]
        return seen[0][1] if all(s == seen[0] for s in seen) and seen[0][0] else None

    return wait_for(same, 20, 0.05, what=f"every host to route upstream {name} by the same revision")


def kill_every_worker(member):
    """SIGKILL every worker of ``member`` at once; until gunicorn has replaced them all."""
    workers = member.server.worker_pids()
    for pid in workers:
        os.kill(pid, signal.SIGKILL)
    wait_for(lambda: (lambda now: len(now) == len(workers) and not set(now) & set(workers))(
        member.server.worker_pids()), 30, 0.05, what=f"{member.name}'s workers to be replaced")
    member.server.wait_ready(API, 30.0)


def hits(backend, path_prefix):
    return sum(1 for r in backend.requests if r.path.startswith(path_prefix))


def test_a_drain_on_a_stops_b_and_c_routing_to_the_peer_and_each_host_reports_its_own(members):
    a, b, c = members.a, members.b, members.c
    b1, b2 = members.backends[:2]
    converged((a, b, c), "u_drain")
    # a request in flight to b2 on C when the drain starts: C's drain is not over until it ends
    # (both backends slow, so that whichever peer C's workers pick first, one soon waits on b2)
    # held until the checks are done (a fixed delay could end before them on a loaded machine)
    release = threading.Event()

    def held(_request):
        release.wait(HELD_AT_MOST)
        return b"slow"

    for backend in (b1, b2):
        backend.respond("/u_drain/slow", body=held)
    # three, not four: C's workers have 4 threads each, and the API calls below must find one free
    # (gthread queues a connection behind busy threads: four held on one worker stalled them)
    slow = [threading.Thread(target=c.server.request, args=("GET", "/u_drain/slow")) for _ in range(3)]
    for t in slow:
        t.start()
    try:
        wait_for(lambda: any(p["active"] for p in upstream(c, "u_drain")["peers"] if p["id"] == 1), 20, 0.01,
                 what="C's request in flight to b2")
        r = api(a, "PATCH", "/u_drain/servers/1", json={"drain": True})
        assert r.status_code == 200, r.text
        assert r.json()["drain"] is True
        peers = converged((a, b, c), "u_drain")
        assert [p[4] for p in peers] == [False, True]
        # each host says how its own drain is going: C still has the slow request in flight
        hosts = wait_for(lambda: (lambda h: h if len(h) == 3 else None)(
            next(p for p in upstream(a, "u_drain")["peers"] if p["id"] == 1).get("drain_hosts", {})),
            20, 0.05, what="A to hear every host's drain")
        assert hosts["A"] == "drained" and hosts["B"] == "drained"
        assert next(p for p in upstream(c, "u_drain")["peers"] if p["id"] == 1)["drain_hosts"]["C"] == "draining"
    finally:
        release.set()
        for t in slow:
            t.join(30)
        for backend in (b1, b2):
            backend.forget("/u_drain/slow")
    wait_for(lambda: next(p for p in upstream(a, "u_drain")["peers"] if p["id"] == 1)["drain_hosts"].get("C")
             == "drained", 20, 0.05, what="C's drain to end on A's API")
    # workers that start later (respawned) know the other hosts' drains too (from the ring)
    kill_every_worker(b)
    answers = b.server.each_worker(API + "/u_drain/servers/1")
    assert len(answers) == 3
    assert all(r.json()["drain_hosts"] == {"A": "drained", "B": "drained", "C": "drained"} for r in answers.values())
    before1, before2 = hits(b1, "/u_drain/x"), hits(b2, "/u_drain/x")
    for m in (b, c, a):
        answers = m.server.spray("/u_drain/x", 6 * len(m.server.worker_pids()))
        assert {r.status_code for r in answers} == {200}
    assert hits(b2, "/u_drain/x") == before2, "a drained peer got new requests"
    assert hits(b1, "/u_drain/x") - before1 == 6 * 7


def test_an_add_on_b_gets_the_same_id_on_a_and_c_and_they_route_to_it(members):
    a, b, c = members.a, members.b, members.c
    b3 = members.backends[2]
    r = api(b, "POST", "/u_add/servers", json={"server": b3.address, "weight": 3})
    assert r.status_code == 201, r.text
    new_id = r.json()["id"]
    peers = converged((a, b, c), "u_add")
    assert (new_id, b3.address, 3) in [p[:3] for p in peers]
    before = hits(b3, "/u_add/")
    for m in (a, c):
        m.server.spray("/u_add/y", 10 * len(m.server.worker_pids()))
    assert hits(b3, "/u_add/") > before
    # a change naming a peer another host added works on every host by its id
    assert api(c, "PATCH", f"/u_add/servers/{new_id}", json={"down": True}).status_code == 200
    assert next(p for p in converged((a, b, c), "u_add") if p[0] == new_id)[3] is True


def test_the_nginx_plus_api_changes_the_cluster_wide_peers_too(members):
    """``/api/N/http/upstreams/NAME/servers`` (the ``api`` location) is the same code as
    ``upstreams_api``: cluster-wide, its POST/PATCH/DELETE go through the sync service."""
    a, b, c = members.a, members.b, members.c
    b3 = members.backends[2]
    converged((a, b, c), "u_plus")
    r = a.server.request("POST", f"{PLUS}/u_plus/servers", json={"server": b3.address})
    assert r.status_code == 201, r.text
    new_id = r.json()["id"]
    assert new_id == 2  # after the config's peers 0 and 1: NGINX Plus numbers from 0, the cluster too
    peers = converged((a, b, c), "u_plus")
    assert [p[:2] for p in peers] == [(0, members.backends[0].address), (1, members.backends[1].address),
                                      (2, b3.address)]
    r = b.server.request("PATCH", f"{PLUS}/u_plus/servers/0", json={"down": True})
    assert r.status_code == 200 and r.json()["down"] is True, r.text
    assert converged((a, b, c), "u_plus")[0][3] is True
    r = c.server.request("DELETE", f"{PLUS}/u_plus/servers/{new_id}")
    assert r.status_code == 200 and [p["id"] for p in r.json()] == [0, 1], r.text
    assert [p[0] for p in converged((a, b, c), "u_plus")] == [0, 1]
    # the NGINX Plus error shape for a change the sync service refuses
    r = a.server.request("PATCH", f"{PLUS}/u_plus/servers/{new_id}", json={"down": False})
    assert r.status_code == 404 and r.json()["error"]["code"] == "UpstreamServerNotFound", r.text
    shown = a.server.request("GET", f"{PLUS}/u_plus").json()
    assert shown["cluster"] == "joined" and shown["revision"] == upstream(a, "u_plus")["revision"]


def test_concurrent_changes_on_a_and_b_converge_to_the_same_state_on_every_host(members):
    a, b, c = members.a, members.b, members.c
    converged((a, b, c), "u_conc")
    since = {m.name: m.server.events(EVENTS).newest() for m in (a, b)}
    answers = []

    def burst(member, base):
        for i in range(8):
            answers.append(api(member, "POST", "/u_conc/servers", json={"server": f"127.0.0.1:{base + i}"}))
        answers.append(api(member, "PATCH", "/u_conc/servers/0", json={"weight": 5 if base < 30000 else 7}))

    threads = [threading.Thread(target=burst, args=(a, 20000)), threading.Thread(target=burst, args=(b, 30000)),
               threading.Thread(target=burst, args=(a, 21000)), threading.Thread(target=burst, args=(b, 31000))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert all(r.status_code in (200, 201) for r in answers), [r.text for r in answers if r.status_code >= 300]
    peers = converged((a, b, c), "u_conc")
    servers = [p[1] for p in peers]
    # every add holds (none lost to a concurrent write), each once, with ids unique cluster-wide
    assert len(servers) == 2 + 32 and len(set(servers)) == len(servers)
    assert len({p[0] for p in peers}) == len(peers)
    created = {r.json()["id"] for r in answers if r.status_code == 201}
    assert created == {p[0] for p in peers} - {0, 1}
    # the two hosts set the same field: the change written last (the highest revision) wins, everywhere
    last = {}
    for m in (a, b):
        applied = [json.loads(e["payload"]) for e in m.server.events(EVENTS).read(since=since[m.name], channel="upstreams",
                                                                               type="change_applied")
                   if e["origin"] is None]
        last[m.name] = max(d["revision"] for d in applied if d["status"] == 200 and d["peer"] == 0)
    assert peers[0][2] == (5 if last["A"] > last["B"] else 7)


def test_a_restarted_instance_starts_from_the_clusters_state(members):
    a, b, c = members.a, members.b, members.c
    c.server.stop()
    b4 = members.backends[3]
    r = api(a, "POST", "/u_restart/servers", json={"server": b4.address})
    assert r.status_code == 201, r.text
    assert api(b, "PATCH", "/u_restart/servers/0", json={"down": True}).status_code == 200
    again = members.restart(c)
    members.c = again
    again.wait_connected(EVENTS)
    peers = converged((a, b, again), "u_restart")
    assert (r.json()["id"], b4.address) in [p[:2] for p in peers]
    assert peers[0][3] is True  # peer 0 down: C's own config says otherwise
    before = hits(b4, "/u_restart/")
    answers = again.server.spray("/u_restart/z", 4 * len(again.server.worker_pids()))
    assert {resp.headers["X-Upstream-Addr"] for resp in answers} <= {members.backends[1].address, b4.address}
    assert hits(b4, "/u_restart/") > before


def test_with_the_engine_away_each_host_goes_on_alone_and_its_changes_join_the_cluster_when_it_returns(
        ngxsim_cluster, ngxsim_engine_factory, ngxsim_backend):
    engine = ngxsim_engine_factory()
    backends = [ngxsim_backend(f"e{i}") for i in range(1, 5)]
    text = conf(backends)
    cluster = ngxsim_cluster(engine.url)
    a, b = cluster.start(text, count=2, workers=2, stream=f"test.{uuid.uuid4().hex[:12]}", ready_path=API,
                         worker_class="gthread")
    for m in (a, b):
        m.wait_connected(EVENTS)
    converged((a, b), "u_add")
    # an engine that does not answer: the request does not wait for it (the store's call is bounded
    # by the bridge's timeout=2s, the API's wait by 1s): 202 with the change's id, applied later
    # ... and it holds even when every worker of A (the sync service's with it) is killed while
    # the change waits on the engine: the service that takes over finds it in A's ring
    engine.pause()
    try:
        pending = api(a, "PATCH", "/u_add/servers/0", json={"weight": 4})
        assert pending.status_code == 202, pending.text
        assert pending.json()["status"] == "pending" and pending.json()["change"]
        kill_every_worker(a)
    finally:
        engine.resume()
    wait_for(lambda: all(peers_of(m, "u_add")[0][2] == 4 and upstream(m, "u_add")["cluster"] == "joined"
                         for m in (a, b)), 30, 0.05, what="the pending change to hold on A and B")
    engine.stop()
    # each host alone: its changes apply at once on its own workers ("apart"), not on the other
    down = api(a, "PATCH", "/u_add/servers/1", json={"down": True})
    assert down.status_code in (200, 202), down.text
    added = api(b, "POST", "/u_add/servers", json={"server": backends[2].address})
    assert added.status_code in (201, 202), added.text
    for m, server in ((a, backends[3]), (b, backends[3])):  # both add the same server while apart
        assert api(m, "POST", "/u_add/servers", json={"server": server.address}).status_code in (201, 202)
    wait_for(lambda: upstream(a, "u_add")["cluster"] == "apart" and peers_of(a, "u_add")[1][3]
             and len(peers_of(a, "u_add")) == 3, 20, 0.05, what="A's changes to apply on A alone")
    wait_for(lambda: upstream(b, "u_add")["cluster"] == "apart" and len(peers_of(b, "u_add")) == 4, 20, 0.05,
             what="B's changes to apply on B alone")
    assert not peers_of(b, "u_add")[1][3], "A's change reached B without the engine"
    assert upstream(a, "u_add")["unsynced"] == 2
    # the changes A made alone are kept in its zone: a sync service that takes over replays them
    kill_every_worker(a)
    assert upstream(a, "u_add")["unsynced"] == 2
    before = hits(backends[1], "/u_add/")
    a.server.spray("/u_add/alone", 4 * len(a.server.worker_pids()))
    assert hits(backends[1], "/u_add/") == before, "A routed to the peer it set down"
    engine.start()
    # back: each host's changes go onto the cluster's document in the engine's order; the same
    # server added on both while apart is there once (the second add is refused and logged)
    peers = wait_for(lambda: (lambda p: p if all(upstream(m, "u_add")["cluster"] == "joined"
                                                  and not upstream(m, "u_add")["unsynced"] for m in (a, b))
                              and len(p) == 4 else None)(converged((a, b), "u_add")), 30, 0.1,
                     what="A and B to join the cluster again with every change")
    assert sorted(p[1] for p in peers) == sorted(backend.address for backend in backends)
    assert peers[1][3] is True
    assert len({p[0] for p in peers}) == 4
