"""Health state in a real shared-memory zone: peers follow the upstream, counts outlive the
process that made them, the service flips once per flip."""

from __future__ import annotations

import os
from typing import NamedTuple

import pytest
from freezegun import freeze_time

from ngxsim.core.instance import STANDALONE, current_instance
from ngxsim.core.shm import HEADER_SIZE, attach_zone, remove_zone_files
from ngxsim_plugins.healthchecks.machine import CHECKING, DOWN, HEALTHY, UNHEALTHY, UP, ProbeResult
from ngxsim_plugins.healthchecks.store import SLOT_SIZE, HealthStore, ServiceChange, zone_size

import stepping

OK = ProbeResult(True, 0.001, 200)
BAD = ProbeResult(False, 0.001, 503, "status 503")


class Peer(NamedTuple):
    """The fields of upstreams' PeerInfo the store reads."""

    id: int
    server: str
    down: bool = False


@pytest.fixture
def zone(shm_leftovers):
    instance = current_instance(STANDALONE)
    zone = attach_zone(instance, "hc", HEADER_SIZE + zone_size(2, slots=4))
    yield zone
    zone.close()
    remove_zone_files(instance)


@pytest.fixture
def section(zone):
    return HealthStore(zone, ["backend", "other"], slots=4).section("backend")


def probe_once(section, tracked, result, fails=2, passes=2):
    """What the checker does with one result: apply it under the lock, write it back."""
    with section.lock():
        now = section.read(tracked.slot)
        old = now.health.apply(result, fails, passes)
        section.write(now.slot, now.peer_id, now.server, now.down, now.health)
        return old, section.update_service()


def test_under_mandatory_every_new_peer_starts_checking_and_the_service_waits_for_a_probe(section):
    with section.lock():
        # the peers the instance starts with wait for their first probe too, as in NGINX Plus
        tracked, overflow = section.sync([Peer(0, "127.0.0.1:1"), Peer(1, "127.0.0.1:2")], mandatory=True)
        assert section.update_service() is None and section.service()[0] is None  # not known yet
    assert overflow == [] and [t.health.state for t, _ in tracked] == [CHECKING, CHECKING]
    assert probe_once(section, tracked[0][0], OK) == (CHECKING, None)  # decided: the service is up, no flip
    with section.lock():
        assert section.service()[0] == UP
        tracked, _ = section.sync([Peer(0, "127.0.0.1:1"), Peer(2, "127.0.0.1:3")], mandatory=True)
        # the kept peer keeps its state; the new one waits for its first probe
        assert [(t.peer_id, t.health.state) for t, _ in tracked] == [(0, HEALTHY), (2, CHECKING)]
        assert sorted(t.peer_id for t in section.tracked()) == [0, 2]  # peer 1 is forgotten
        tracked, _ = section.sync([Peer(0, "127.0.0.1:1"), Peer(2, "127.0.0.1:3"), Peer(3, "127.0.0.1:4")],
                                  mandatory=False)
        assert tracked[2][0].health.state == HEALTHY


def test_counts_are_kept_across_syncs_and_an_id_reused_for_another_server_starts_afresh(section):
    with section.lock():
        (t, _), = section.sync([Peer(0, "127.0.0.1:1")], mandatory=False)[0]
    probe_once(section, t, BAD)
    with section.lock():
        (again, _), = section.sync([Peer(0, "127.0.0.1:1")], mandatory=False)[0]
        assert again.health.fails == 1 and again.health.checks == 1
        (other, _), = section.sync([Peer(0, "127.0.0.1:9")], mandatory=False)[0]
        assert other.server == "127.0.0.1:9" and other.health.checks == 0


def test_a_peer_marked_down_keeps_its_health_and_leaves_the_service(section):
    with section.lock():
        tracked, _ = section.sync([Peer(0, "a:1"), Peer(1, "b:1")], mandatory=False)
        assert section.update_service() is None  # the first look only records: nothing at start
    old, change = probe_once(section, tracked[0][0], BAD, fails=1)
    assert old == HEALTHY and change is None  # b is still healthy
    with section.lock():
        section.sync([Peer(0, "a:1"), Peer(1, "b:1", down=True)], mandatory=False)
        assert [t.down for t in section.tracked()] == [False, True]
        assert section.update_service() == ServiceChange("backend", UP, DOWN, 0, 1)


def test_no_slot_left_is_reported_not_crashed(section):
    peers = [Peer(i, f"10.0.0.{i}:80") for i in range(6)]
    with section.lock():
        tracked, overflow = section.sync(peers, mandatory=False)
    assert len(tracked) == 4 and [p.id for p in overflow] == [4, 5]


def test_the_service_flips_once_per_flip_and_counts_transitions(section):
    with freeze_time("2024-05-01 12:00:00") as clock:
        with section.lock():
            tracked, _ = section.sync([Peer(0, "a:1"), Peer(1, "b:1")], mandatory=False)
            section.update_service()
        a, b = (t for t, _ in tracked)
        assert probe_once(section, a, BAD, fails=1) == (HEALTHY, None)
        clock.tick(3)
        old, change = probe_once(section, b, BAD, fails=1)
        assert old == HEALTHY and change == ServiceChange("backend", UP, DOWN, 0, 2)
        assert probe_once(section, b, BAD, fails=1) == (None, None)  # still down: nothing flips
        clock.tick(4)
        old, change = probe_once(section, a, OK, passes=1)
        assert old == UNHEALTHY and change == ServiceChange("backend", DOWN, UP, 1, 2)
        with section.lock():
            assert section.service() == (UP, 2, 1714564807000)


def test_upstreams_have_sections_of_their_own(zone):
    store = HealthStore(zone, ["backend", "other"], slots=4)
    with zone.lock():
        store.section("backend").sync([Peer(0, "a:1")], mandatory=False)
        store.section("backend").update_service()
        store.section("backend").sync([Peer(0, "a:1"), Peer(1, "b:1")], mandatory=True)
        store.section("other").sync([Peer(0, "z:1")], mandatory=False)
        assert [(t.server, t.health.state) for t in store.section("backend").tracked()] == [
            ("a:1", HEALTHY), ("b:1", CHECKING)]
        # the other upstream's peers and service are its own
        assert [(t.server, t.health.state) for t in store.section("other").tracked()] == [("z:1", HEALTHY)]
        assert (store.section("backend").service()[0], store.section("other").service()[0]) == (UP, None)
    with pytest.raises(ValueError, match="too small"):
        HealthStore(zone, ["a", "b", "c"], slots=4)


def test_a_successor_process_continues_from_the_same_counts(zone, section):
    """A takeover loses nothing: another process that attaches the zone sees the counts and
    its next failure completes the flip."""
    with section.lock():
        (t, _), = section.sync([Peer(0, "a:1")], mandatory=False)[0]
    probe_once(section, t, BAD, fails=3)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            other = attach_zone(current_instance(STANDALONE, master_pid=os.getppid()), "hc", zone.size)
            child = HealthStore(other, ["backend", "other"], slots=4).section("backend")
            old, _ = probe_once(child, t, BAD, fails=3)
            code = 0 if old is None and child.read(t.slot).health.fails == 2 else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    old, _ = probe_once(section, t, BAD, fails=3)
    assert old == HEALTHY
    assert section.read(t.slot).health.checks == 3 and section.read(t.slot).health.transitions == 1


def test_slot_layout_size_is_what_the_zone_size_accounts_for():
    assert SLOT_SIZE == 288
    assert zone_size(1) == 64 + 256 * SLOT_SIZE


def test_a_prober_killed_at_any_instant_of_a_write_leaves_the_peer_and_the_service_known(section):
    """Stepped one instruction at a time (what a SIGKILL there would leave): while a probe's
    result is written, the peer's slot stays used with its old counts or its new ones, and while
    the service flips it reads up or down. ``struct.pack_into`` zeroed the slot first (the peer
    forgotten: a down peer came back as new) and the section's header (the service unknown: the
    next flip went unannounced)."""
    with section.lock():
        tracked, _ = section.sync([Peer(0, "127.0.0.1:1")], mandatory=False)
    peer = tracked[0][0]
    probe_once(section, peer, BAD, fails=1)  # unhealthy: the service is down
    assert section.service()[0] == DOWN
    before = section.read(peer.slot).health

    def look(step):
        now = section.read(peer.slot)
        assert now is not None and now.peer_id == 0 and now.server == "127.0.0.1:1", f"instruction {step}: {now}"
        assert now.health.checks in (before.checks, before.checks + 1), f"instruction {step}: {now.health}"
        assert section.service()[0] in (DOWN, UP), f"instruction {step}: {section.service()}"

    health = section.read(peer.slot).health
    assert health.apply(OK, 1, 1) is not None  # healthy again: written back, then the service flips

    def write():
        with section.lock():
            section.write(peer.slot, 0, "127.0.0.1:1", False, health)

    def flip():
        with section.lock():
            assert section.update_service() is not None

    for call in (write, flip):
        steps = stepping.each_instruction(call, look, before=section.lock, watch=zone_view(section))
        assert steps > 100
    with section.lock():
        assert section.read(peer.slot).health.checks == before.checks + 1 and section.service()[0] == UP


def zone_view(section):
    return section.zone.buf[section.offset:section.offset + 64 + section.slots * SLOT_SIZE]
