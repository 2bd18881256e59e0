"""healthchecks with ``scope=cluster``: three instances (real gunicorn, several workers each)
sharing a real engine (each engine the bridge has a test server for), probing two real backends. One prober for the whole cluster (counted at the
backends), its verdicts applied on every host, taken over when its instance goes, and each host
probing by itself while the engine is away."""

from __future__ import annotations

import time
import uuid

from ngxsim.testing import wait_for

STATUS = "/api/health"
API = "/ev"
INTERVAL = 1.0

CONF = """
load_module worker_events;
load_module upstreams;
load_module healthchecks;
load_module cluster;
http {
    worker_events_zone bus;
    cluster_bridge bus {engine} channels=healthchecks state={state} stream={stream} instance={instance} timeout=500ms;
    upstream backend { zone backend 256k; server {b1}; server {b2}; }
    server {
        listen 127.0.0.1:{port};
        location / { proxy_pass http://backend; health_check interval=1s uri=/health timeout=250ms scope={scope}; }
        location /api/health { health_check_status; }
        location /ev { worker_events_api; worker_events_channel healthchecks; }
    }
}
"""


def start(cluster, stream, b1, b2, scope="cluster", count=3):
    members = cluster.start(CONF, count=count, workers=[2, 3, 2][:count], stream=stream,
                            placeholders={"b1": b1.address, "b2": b2.address, "scope": scope})
    for m in members:
        m.wait_connected(API)
    return members


def role(member):
    return member.server.get(STATUS).json()["upstreams"]["backend"]["cluster"]["role"]


def roles(members, want):
    """Until the members' roles are ``want`` (a sorted list); returns them by name."""
    def check():
        got = {m.name: role(m) for m in members}
        return got if sorted(got.values()) == sorted(want) else None

    return wait_for(check, 20, 0.1, what=f"roles {want}")


def probers(members, backends, rounds=3):
    """The instances whose workers sent the next ``rounds`` rounds of probes to every backend."""
    pids = {pid: m.name for m in members for pid in m.server.worker_pids()}
    start = {b: len(b.requests_for("/health")) for b in backends}
    for b in backends:
        b.wait_hits(start[b] + rounds, path="/health", timeout=rounds * INTERVAL * 4 + 10)
    return {pids.get(r.worker_pid, "?") for b in backends for r in b.requests_for("/health")[start[b]:]}


def answered_by(member, rounds=2):
    """The backends that answered ``/x`` in every worker of ``member``, ``rounds`` times each."""
    return {r.text.split()[0] for _ in range(rounds) for r in member.server.each_worker("/x").values()}


def test_one_prober_for_the_cluster_its_verdicts_everywhere_takeover_and_each_host_alone_without_engine(
        ngxsim_cluster, ngxsim_engine_factory, ngxsim_backend):
    engine = ngxsim_engine_factory()
    b1, b2 = ngxsim_backend("b1"), ngxsim_backend("b2")
    cluster, stream = ngxsim_cluster(engine.url), f"test.{uuid.uuid4().hex[:12]}"
    members = start(cluster, stream, b1, b2)
    got = roles(members, ["follower", "follower", "prober"])
    prober = next(m for m in members if got[m.name] == "prober")
    followers = [m for m in members if m is not prober]
    assert probers(members, (b1, b2)) == {prober.name}

    # a verdict made on the prober's host: the others stop routing to the failed peer
    b1.set_healthy(False)
    for m in followers:
        wait_for(lambda: answered_by(m) == {"b2"}, 20, 0.1, what=f"{m.name} to stop routing to b1")
        peer = next(p for p in m.server.get(STATUS).json()["upstreams"]["backend"]["peers"] if p["server"] == b1.address)
        assert peer["state"] == "unhealthy", peer
    assert probers(members, (b1, b2), rounds=2) == {prober.name}  # the followers still do not probe
    # a host that starts after the verdict (no event will tell it) follows the verdicts kept in the engine
    late = cluster.start_one(CONF, "D", 2, stream,
                             placeholders={"b1": b1.address, "b2": b2.address, "scope": "cluster"})
    late.wait_connected(API)
    wait_for(lambda: answered_by(late) == {"b2"}, 20, 0.1, what="D to stop routing to b1")
    assert role(late) == "follower"
    late.server.stop()
    cluster.members.remove(late)
    b1.set_healthy(True)
    for m in followers:
        wait_for(lambda: answered_by(m) == {"b1", "b2"}, 20, 0.1, what=f"{m.name} to route to b1 again")

    # the prober's instance goes: another takes over (within 2 intervals: benchmarks/bench_healthchecks_cluster.py)
    prober.server.stop()
    t0 = time.monotonic()
    got = roles(followers, ["follower", "prober"])
    print(f"takeover after {time.monotonic() - t0:.2f}s")
    new = next(m for m in followers if got[m.name] == "prober")
    assert probers(followers, (b1, b2)) == {new.name}

    # the engine goes away: each host probes by itself, and says so; back to one prober after
    engine.stop()
    roles(followers, ["alone", "alone"])
    assert probers(followers, (b1, b2)) == {m.name for m in followers}
    for m in followers:
        assert "the cluster's engine cannot be reached; this instance probes its peers by itself" in m.server.output()
    engine.start()
    got = roles(followers, ["follower", "prober"])
    again = next(m for m in followers if got[m.name] == "prober")
    assert probers(followers, (b1, b2)) == {again.name}
    assert any("the cluster's engine is reached again" in m.server.output() for m in followers)
