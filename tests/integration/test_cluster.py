"""worker_events across hosts: instances (real gunicorn, several workers each) sharing a real
engine. Parametrized over engines: another engine joins by adding its server fixture to
ENGINES."""

from __future__ import annotations

import os
import re
import signal
import uuid

import pytest

from ngxsim.testing import wait_for

ENGINES = {"redis": "ngxsim_redis"}
FRESH_ENGINES = {"redis": "ngxsim_redis_factory"}

CONF = """
load_module worker_events;
load_module cluster;
load_module ngxsim_test_recorder;
http {
    worker_events_zone bus;
    worker_events_ring_size {ring};
    cluster_bridge bus {engine} channels=c,cache.invalidate state={state} stream={stream} instance={instance} {extra};
    server {
        listen 127.0.0.1:{port};
        location /ev { worker_events_api; worker_events_channel c; }
        location /local { worker_events_api; worker_events_channel local.only; }
        location /dump { recorder_dump; }
    }
}
"""
API = "/ev"


@pytest.fixture(params=sorted(ENGINES))
def engine(request):
    """The engine every instance of a test shares (the session's server)."""
    return request.getfixturevalue(ENGINES[request.param])


@pytest.fixture(params=sorted(FRESH_ENGINES))
def fresh_engine(request):
    """A factory of engine servers of this test's own (to stop, pause, restart)."""
    return request.getfixturevalue(FRESH_ENGINES[request.param])


@pytest.fixture
def stream():
    return f"test.{uuid.uuid4().hex[:12]}"


def start(cluster, stream, count=3, workers=(2, 3, 2), ring=1024, extra="", **kw):
    members = cluster.start(CONF, count=count, workers=list(workers)[:count], stream=stream,
                            placeholders={"ring": ring, "extra": extra}, **kw)
    for m in members:
        m.wait_connected(API)
    return members


def publish(member, n, prefix="p", path=API):
    gens = []
    for i in range(n):
        r = member.server.post(path, json={"type": "t", "payload": f"{prefix}{i}"})
        assert r.status_code == 201, r.text
        gens.append(r.json()["generation"])
    return gens


_REMOTE = re.compile(r"^E (\d+) (\S+) (\S+) (\S*) from (\S+)#(\d+)$")


def remote_events(lines, origin=None):
    """(channel, payload, origin, origin generation) of each remote event a worker recorded."""
    out = []
    for line in lines:
        m = _REMOTE.match(line)
        if m and (origin is None or m.group(5) == origin):
            out.append((m.group(2), m.group(4), m.group(5), int(m.group(6))))
    return out


def wait_all_workers(member, predicate, what, timeout=20.0):
    """Until every live worker's record satisfies ``predicate``; returns the records."""
    def check():
        recs = member.records()
        return recs if recs and all(predicate(lines) for lines in recs.values()) else None

    return wait_for(check, timeout, 0.05, what=f"{what} in every worker of {member.name}")


def test_a_publish_on_one_instance_reaches_every_worker_of_the_others_once_in_order_and_never_echoes(
        ngxsim_cluster, engine, stream):
    a, b, c = start(ngxsim_cluster(engine.url), stream)
    publish(a, 20)
    publish(a, 1, prefix="x", path="/local")  # a channel that is not bridged stays on A
    for member in (b, c):
        recs = wait_all_workers(member, lambda lines: len(remote_events(lines, "A")) >= 20, "A's 20 events")
        for pid, lines in recs.items():
            got = remote_events(lines)
            assert [p for _, p, _, _ in got] == [f"p{i}" for i in range(20)], (member.name, pid, lines)
            gens = [g for _, _, _, g in got]
            assert gens == sorted(gens) and len(set(gens)) == 20  # in order, once
            assert not any("local.only" in line for line in lines)
    publish(b, 5, prefix="b")
    wait_all_workers(c, lambda lines: len(remote_events(lines, "B")) >= 5, "B's events")
    wait_all_workers(a, lambda lines: len(remote_events(lines, "B")) >= 5, "B's events")
    for pid, lines in a.records().items():
        # A's own events came back from the engine, and were not delivered again (no echo)
        assert remote_events(lines, "A") == [], lines
        assert sum(1 for line in lines if line.endswith(" c t p3")) == 1, lines
    view = b.cluster_view(API)
    assert view["instance"] == "B" and view["connected"] is True and view["relayed_in"] >= 20
    assert set(view["instances"]) >= {"A", "C"} or set(view["instances"]) >= {"A"}
    ring = b.server.get(API + "?limit=1000").json()["events"]
    remote = [e for e in ring if e["origin"] == "A"]
    assert len(remote) == 20 and all(e["origin_generation"] for e in remote)
