"""The cluster module's API for other modules: ``bridge_of``, ``is_bridged`` and ``store`` (the
key-value store with leases), against each real engine; two "instances" are two ClusterStore
objects with different instance ids on one engine."""

from __future__ import annotations

import json
import threading
import time
import uuid

import pytest

from ngxsim.core.conf.loader import load_configuration
from ngxsim_plugins import cluster
from ngxsim_plugins.cluster import kv as store_mod
from ngxsim_plugins.cluster.config import Bridge

CONF = """load_module worker_events;
load_module cluster;
http {
    worker_events_zone bus;
    cluster_bridge bus %s channels=c,cache.invalidate state=%s stream=%s instance=web-1;
    server {
        listen 127.0.0.1:8081;
        location /ev { worker_events_api; worker_events_channel c; }
        location /other { worker_events_api; worker_events_zone other; worker_events_channel c; }
    }
}
"""


def bridge(url: str, stream: str, timeout: float = 1.0) -> Bridge:
    return Bridge("bus", url, ("c",), "/nonexistent", stream, None, timeout=timeout, engine=url)


@pytest.fixture
def pair(ngxsim_engine):
    """Two instances of one cluster on the session's engine, a stream of their own."""
    stream = f"store.{uuid.uuid4().hex[:10]}"
    a = cluster.ClusterStore(bridge(ngxsim_engine.url, stream), "host-a")
    b = cluster.ClusterStore(bridge(ngxsim_engine.url, stream), "host-b")
    yield a, b
    a.close()
    b.close()


def test_bridge_of_and_is_bridged_say_what_the_configuration_bridges(tmp_path):
    config = load_configuration("/p/c.conf", text=CONF % ("rediss://relay@10.0.0.5:6379/0", tmp_path, "prod.bus"))
    info = cluster.bridge_of(config, "bus")
    assert info == cluster.BridgeInfo("web-1", ("c", "cache.invalidate"), "prod.bus", "rediss://***@10.0.0.5:6379/0")
    assert cluster.bridge_of(config, "other") is None
    assert cluster.is_bridged(config, "bus", "cache.invalidate") and not cluster.is_bridged(config, "bus", "x")
    assert not cluster.is_bridged(config, "bus", "@gap") and not cluster.is_bridged(config, "other", "c")


ON_REQUEST = """load_module ngxsim_test_onrequest;
http { server { listen 127.0.0.1:8082; location /on { test_on_request; } } }
"""


def test_store_is_one_per_process_refused_on_a_request_and_for_a_zone_not_bridged(tmp_path, ngxsim_redis, make_app):
    import ngxsim_test_onrequest

    on_request = make_app(ON_REQUEST)  # a core serving requests in this process: the store refuses them
    config = load_configuration("/p/c.conf", text=CONF % (ngxsim_redis.url, tmp_path, f"s.{uuid.uuid4().hex[:8]}"))

    class Runtime:  # what store() reads of the runtime: its configuration
        pass

    runtime = Runtime()
    runtime.config = config
    one = cluster.store(runtime, "bus")
    try:
        assert cluster.store(runtime, "bus") is one and one.instance == "web-1"
        assert not one.connected()  # lazily: nothing made yet
        assert one.put("k", "v", 0) == 1 and one.connected()
        with pytest.raises(ValueError, match='zone "other" is not bridged'):
            cluster.store(runtime, "other")
        for call in (lambda: cluster.store(runtime, "bus"), lambda: one.get("k")):  # from a request's thread
            ngxsim_test_onrequest.CALL = call
            try:
                answer = on_request.get("/on").get_json()
            finally:
                ngxsim_test_onrequest.CALL = None
            assert answer["serving"] and "never a request" in answer["raised"], answer
        assert one.get("k") == ("v", 1)
    finally:
        one.close()


def test_get_put_and_conflict_through_the_store(pair):
    a, b = pair
    assert a.get("cfg") == (None, 0)
    revision = a.put("cfg", "1 ✓", 0)
    assert b.get("cfg") == ("1 ✓", revision)
    newer = b.put("cfg", "2", revision)
    with pytest.raises(cluster.Conflict):
        a.put("cfg", "stale", revision)
    assert a.get("cfg") == ("2", newer) and a.connected()


def test_of_two_instances_exactly_one_holds_a_lease_and_renewing_keeps_it(pair):
    a, b = pair
    assert a.lease("purge", 30) is True
    assert b.lease("purge", 30) is False
    for _ in range(3):  # renewals: still a's, never b's
        assert a.lease("purge", 30) is True and b.lease("purge", 30) is False
    value, _ = a.get("lease.purge")
    doc = json.loads(value)
    assert doc["holder"] == "host-a" and doc["expires_msec"] > time.time() * 1000 + 25_000
    assert b.lease("other", 30) is True and a.lease("other", 30) is False  # leases are apart


def test_an_expired_lease_is_taken_over_only_after_the_skew_margin(pair, monkeypatch):
    a, b = pair
    monkeypatch.setattr(store_mod, "LEASE_SKEW", 0.3)
    assert a.lease("job", 1.2) is True  # margin: LEASE_SKEW (a quarter of 1.2 s is more)
    time.sleep(1.3)  # expired, but within the margin: still a's for b
    assert b.lease("job", 5) is False
    time.sleep(0.4)  # expired by more than the margin
    assert b.lease("job", 5) is True
    assert a.lease("job", 5) is False  # a lost it and does not take it back


def test_a_short_lease_is_taken_over_a_quarter_of_its_time_after_it_expired(pair, monkeypatch):
    """A 1 s health check's lease must pass within 2 intervals of its holder's death: the margin
    for clocks is then a quarter of the lease, not the whole LEASE_SKEW."""
    a, b = pair
    monkeypatch.setattr(store_mod, "LEASE_SKEW", 5.0)
    assert a.lease("job", 0.4) is True  # margin 0.1 s
    time.sleep(0.2)
    assert b.lease("job", 5) is False  # not expired yet
    time.sleep(0.45)  # expired 0.25 s ago: past its 0.1 s margin, long before LEASE_SKEW
    assert b.lease("job", 5) is True


def test_of_instances_racing_for_a_free_lease_exactly_one_wins(pair):
    a, b = pair
    for round_ in range(20):  # both at once (a barrier), each round a lease no one held
        barrier = threading.Barrier(2, timeout=10)
        held = {}

        def take(store, name=f"race{round_}"):
            barrier.wait()
            held[store.instance] = store.lease(name, 30)

        threads = [threading.Thread(target=take, args=(store,)) for store in (a, b)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(15)
        assert sorted(held.values()) == [False, True], held


def test_an_unreachable_engine_keeps_a_held_lease_until_its_expiry_and_says_not_connected(ngxsim_engine_factory):
    server = ngxsim_engine_factory()
    a = cluster.ClusterStore(bridge(server.url, f"store.{uuid.uuid4().hex[:8]}", timeout=0.5), "host-a")
    try:
        assert a.lease("job", 3) is True and a.connected()
        server.stop()
        assert a.lease("job", 3) is True and not a.connected()  # ours until the expiry we wrote
        with pytest.raises(cluster.EngineError):
            a.get("lease.job")
        assert a.lease("never-held", 3) is False
    finally:
        a.close()
