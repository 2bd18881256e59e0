"""upstreams' zone: snapshots and the peer slots beside them."""

from __future__ import annotations

import pytest

from ngxsim.core.instance import STANDALONE, current_instance
from ngxsim.core.shm import attach_zone, remove_zone_files
from ngxsim_plugins.upstreams import snapshots
from ngxsim_plugins.upstreams.conf import ServerSpec
from ngxsim_plugins.upstreams.zone import HEALTH_CHECKING, HEALTH_NONE, UpstreamZone


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
