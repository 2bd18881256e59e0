"""upstreams' zone: snapshots and the peer slots beside them."""

from __future__ import annotations

import time

import pytest

from ngxsim.core.instance import STANDALONE, current_instance
from ngxsim.core.shm import attach_zone, remove_zone_files
from ngxsim_plugins.upstreams import snapshots
from ngxsim_plugins.upstreams.conf import ServerSpec
from ngxsim_plugins.upstreams.zone import HEALTH_CHECKING, HEALTH_DOWN, HEALTH_NONE, HEALTH_UP, UpstreamZone


@pytest.fixture
def zone(shm_leftovers):
    instance = current_instance(STANDALONE)
    zone = attach_zone(instance, "up", 256 * 1024)
    yield UpstreamZone(zone)
    zone.close()
    remove_zone_files(instance)


def test_a_checking_peer_starts_checking_and_the_stored_snapshot_does_not_say_so(zone):
    specs = [ServerSpec("127.0.0.1", 1), ServerSpec("127.0.0.1", 2)]
    new, _ = zone.update(lambda cur: snapshots.from_specs(specs, cur, zone.layout.slots, checking_new=True))
    stored = zone.read_snapshot()
    assert stored == new and all("checking" not in p for p in stored["peers"])
    assert [zone.health(p["slot"]) for p in stored["peers"]] == [HEALTH_CHECKING, HEALTH_CHECKING]
    # a kept peer keeps its slot's health; one new to the zone takes the instruction
    specs.append(ServerSpec("127.0.0.1", 3))
    zone.update(lambda cur: snapshots.from_specs(specs, cur, zone.layout.slots, checking_new=False))
    assert [zone.health(p["slot"]) for p in zone.read_snapshot()["peers"]] == [HEALTH_CHECKING, HEALTH_CHECKING,
                                                                               HEALTH_NONE]


# -- downtime: NGINX Plus's time in "unavail", "checking" and "unhealthy", without double counting


@pytest.fixture
def peer(zone):
    specs = [ServerSpec("127.0.0.1", 1), ServerSpec("127.0.0.1", 2)]
    zone.update(lambda cur: snapshots.from_specs(specs, cur, zone.layout.slots, checking_new=False))
    return zone.read_snapshot()["peers"][0]


T = 1_000_000.0  # the wall clock of these tests (epoch seconds); the failure window's clock is monotonic


def _fail(zone, peer, wall, mono, fail_timeout=10.0):
    return zone.finish(peer["slot"], peer["id"], True, False, mono, 1, 502, fail_timeout=fail_timeout, wall=wall)


def _down(zone, peer, at) -> tuple[int, float]:
    """(downtime ms, downstart) as the API computes them at ``at``."""
    counters, stats = zone.peer_state(peer["slot"])
    return stats.downtime_ms(counters.health, at), stats.downstart(counters.health, at)


def test_unavail_counts_until_its_window_runs_out_and_a_failure_within_extends_it(zone, peer):
    assert _fail(zone, peer, T, 1.0)  # max_fails=1: unavail for fail_timeout from now
    assert _down(zone, peer, T + 5) == (5000, T)
    assert _down(zone, peer, T + 60) == (10000, 0.0)  # the window ran out: up again, nothing more counted
    _fail(zone, peer, T + 60 + 8, 2.0)  # a new window, a new interval
    _fail(zone, peer, T + 60 + 9, 3.0)  # a failure within it extends it
    assert _down(zone, peer, T + 200) == (10000 + 11000, 0.0)


def test_a_success_of_the_retry_ends_unavail_at_once(zone, peer):
    _fail(zone, peer, T, 1.0)
    zone.mark_checked(peer["slot"], 20.0, 10.0, wall=T + 20)  # after fail_timeout: one request tries it
    assert _down(zone, peer, T + 20.5) == (10500, T + 20)  # "unavail" again while it does (the API's state)
    zone.finish(peer["slot"], peer["id"], False, True, 21.0, 1, 200, fail_timeout=10.0, wall=T + 21)
    assert _down(zone, peer, T + 100) == (11000, 0.0)


def test_overlapping_unhealthy_and_unavail_count_once(zone, peer):
    slot, pid = peer["slot"], peer["id"]
    _fail(zone, peer, T, 1.0)  # unavail T .. T+10
    zone.set_health(slot, pid, HEALTH_DOWN, 1, 0, T + 5)  # unhealthy from T+5
    assert _down(zone, peer, T + 20) == (20000, T)  # one interval since T, not 20 s + 10 s
    zone.set_health(slot, pid, HEALTH_UP, 0, 1, T + 30)
    assert _down(zone, peer, T + 100) == (30000, 0.0)
    # healthy again while still unavail: down until the window ends
    zone.set_health(slot, pid, HEALTH_DOWN, 1, 0, T + 200)
    _fail(zone, peer, T + 205, 2.0)  # unavail T+205 .. T+215
    zone.set_health(slot, pid, HEALTH_UP, 0, 1, T + 210)
    assert _down(zone, peer, T + 212) == (30000 + 12000, T + 200)
    assert _down(zone, peer, T + 300) == (30000 + 15000, 0.0)


def test_a_peer_that_starts_checking_is_down_until_its_first_probe_passes(zone):
    before = time.time()
    zone.update(lambda cur: snapshots.from_specs([ServerSpec("127.0.0.1", 1)], cur, zone.layout.slots,
                                                 checking_new=True))
    after = time.time()
    (peer,) = zone.read_snapshot()["peers"]
    assert zone.health(peer["slot"]) == HEALTH_CHECKING
    ms, start = _down(zone, peer, after + 50)
    assert before <= start <= after and (after + 50 - start) * 1000 - 1 <= ms <= (after + 50 - before) * 1000
    zone.set_health(peer["slot"], peer["id"], HEALTH_UP, 0, 1, after + 60)
    ms, start = _down(zone, peer, after + 500)
    assert start == 0.0 and 60_000 - 1 <= ms <= (after + 60 - before) * 1000
