"""Three ngxsim instances bridged through a 3-node NATS cluster with an R3 stream: the stream's
leader killed mid-flow costs the instances a pause, and nothing published is lost, doubled or
reordered; the cluster's key-value store (a lease) on the same R3 cluster keeps its holder. Needs the cluster relay (skips on a checkout without it) and nats-server."""

from __future__ import annotations

import re
import uuid

import pytest

pytest.importorskip("ngxsim_plugins.cluster.relay", reason="the cluster relay is not in this checkout")

from ngxsim.testing import wait_for  # noqa: E402
from ngxsim_plugins.cluster import ClusterStore  # noqa: E402
from ngxsim_plugins.cluster.config import Bridge  # noqa: E402
from ngxsim_plugins.cluster.engines.nats import stream_name  # noqa: E402

CONF = """
load_module worker_events;
load_module cluster;
load_module ngxsim_test_recorder;
http {
    worker_events_zone bus;
    worker_events_ring_size 1024;
    cluster_bridge bus {engine} channels=c state={state} stream={stream} instance={instance};
    server {
        listen 127.0.0.1:{port};
        location /ev { worker_events_api; worker_events_channel c; }
    }
}
"""
API = "/ev"
_REMOTE = re.compile(r"^E \d+ c \S+ (\S*) from A#\d+$")


def from_a(lines):
    """The payloads of A's events a worker recorded, in the order it got them."""
    return [m.group(1) for m in map(_REMOTE.match, lines) if m]


def publish(member, prefix, count):
    for i in range(count):
        r = member.server.post(API, json={"type": "t", "payload": f"{prefix}{i}"})
        assert r.status_code == 201, r.text  # a request never waits on the engine


def test_the_stream_leader_killed_mid_flow_costs_a_pause_and_loses_nothing(ngxsim_nats_cluster, ngxsim_cluster):
    nats = ngxsim_nats_cluster(3)
    stream = f"test.{uuid.uuid4().hex[:12]}"
    members = ngxsim_cluster(f"{nats.url}?replicas=3").start(CONF, count=3, workers=[2, 3, 2], stream=stream)
    for member in members:
        member.wait_connected(API)
    # the cluster's key-value store on the same R3 cluster: a lease two instances contend for
    bridge = Bridge("bus", f"{nats.url}?replicas=3", ("c",), "/nonexistent", stream, None, timeout=2.0)
    stores = [ClusterStore(bridge, "A"), ClusterStore(bridge, "B")]
    try:
        the_leader_killed_mid_flow(nats, stream, members, stores)
    finally:
        for store in stores:
            store.close()


def the_leader_killed_mid_flow(nats, stream, members, stores):
    a, b, c = members
    assert [s.lease("job", 60) for s in stores] == [True, False]
    publish(a, "before", 20)
    leader = wait_for(lambda: nats.stream_leader(stream_name(stream)), 10, what="the stream's leader")
    leader.kill()
    publish(a, "after", 20)
    want = [f"before{i}" for i in range(20)] + [f"after{i}" for i in range(20)]
    for member in (b, c):
        def complete(member=member):
            records = member.records()
            return records if records and all(len(from_a(lines)) >= len(want) for lines in records.values()) else None

        records = wait_for(complete, 90, 0.1, what=f"A's 40 events in every worker of {member.name}")
        for pid, lines in records.items():
            assert from_a(lines) == want, (member.name, pid, lines)  # every one, in order, once
            assert not [line for line in lines if line.startswith("G ")], lines  # no gap
        view = member.cluster_view(API)
        assert view["gaps"] == 0 and view["connected"] is True
    # the store (R3 too) lost no node's worth of state: the lease is still A's, renewed once
    # the bucket has a leader again, and B still does not get it
    wait_for(lambda: stores[0].lease("job", 60) and stores[0].connected(), 30, what="A's lease renewed")
    assert stores[1].lease("job", 60) is False and stores[1].connected()
