"""upstreams' zone: snapshots and the peer slots beside them."""

from __future__ import annotations

import os
import time

import pytest

from ngxsim.core.instance import STANDALONE, current_instance
from ngxsim.core.shm import attach_zone, remove_zone_files
from ngxsim_plugins.upstreams import snapshots
from ngxsim_plugins.upstreams.conf import ServerSpec
from forked import child, exit_status
import stepping
from ngxsim_plugins.upstreams import zone as zone_module
from ngxsim_plugins.upstreams.zone import HEALTH_CHECKING, HEALTH_DOWN, HEALTH_NONE, HEALTH_UP, UpstreamZone


@pytest.fixture
def zone(shm_leftovers, shm_path):
    """An upstream zone on the core's C path and on the pure-Python one (each test runs on both)."""
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


def _peers(zone, count=2):
    specs = [ServerSpec("127.0.0.1", port) for port in range(1, count + 1)]
    new, _ = zone.update(lambda cur: snapshots.from_specs(specs, cur, zone.layout.slots))
    return new["peers"]


def test_a_try_is_counted_into_its_peer_and_a_failure_into_its_window(zone):
    a, b = _peers(zone)
    zone.selected(a["slot"], a["id"], 1000.5)
    assert zone.finish(a["slot"], a["id"], failed=False, success=True, now=1.0, max_fails=1, status=204, sent=10,
                       received=20) is False
    zone.selected(a["slot"], a["id"], 1001.5)
    assert zone.finish(a["slot"], a["id"], failed=True, success=False, now=2.0, max_fails=2, status=502, sent=7) is False
    zone.selected(a["slot"], a["id"], 1002.5)
    assert zone.finish(a["slot"], a["id"], failed=True, success=False, now=3.0, max_fails=2) is True  # tripped
    zone.selected(b["slot"], b["id"] + 1, 9.0)  # a slot that holds another peer counts nothing
    assert zone.finish(b["slot"], b["id"] + 1, failed=True, success=False, now=3.0, max_fails=1, status=200) is False
    counters, stats = zone.counters(a["slot"]), zone.stats(a["slot"])
    assert (counters.requests, counters.fails_total, counters.fails, counters.accessed, counters.checked) == (3, 2, 2, 3.0, 3.0)
    assert (stats.responses, stats.sent, stats.received, stats.unavail, stats.selected) == ((0, 1, 0, 0, 1), 17, 20, 1, 1002.5)
    assert zone.counters(b["slot"]).requests == 0 and zone.stats(b["slot"]).selected == 0
    zone.mark_checked(a["slot"], 4.0)  # after fail_timeout one request re-tries it; its success resets the window
    zone.finish(a["slot"], a["id"], failed=False, success=True, now=5.0, max_fails=2, status=200)
    assert zone.counters(a["slot"]).fails == 0 and zone.stats(a["slot"]).responses == (0, 2, 0, 0, 1)


def test_the_locked_writers_lose_no_counter_added_meanwhile(zone):
    """The pure counters move without the zone lock (add_u64): health reports, the failure
    window's check and the drain flag, written under the lock meanwhile, write only their own
    fields, so no request, response or byte is lost to them."""
    (peer,) = _peers(zone, 1)
    slot, pid_ = peer["slot"], peer["id"]
    rounds = 20000
    go_read, go = os.pipe()

    def requests():
        os.read(go_read, 1)  # all three start together
        for i in range(rounds):
            zone.selected(slot, pid_, float(i))
            zone.finish(slot, pid_, failed=False, success=True, now=float(i), max_fails=0, status=200, sent=3,
                        received=5)

    def reports():
        os.read(go_read, 1)
        for i in range(rounds):
            zone.set_health(slot, pid_, HEALTH_DOWN if i % 2 else HEALTH_UP, i % 2, 1 - i % 2, float(i))
            zone.mark_checked(slot, float(i))
            zone.take_drained_flag(slot, pid_)
            zone.clear_drained_flag(slot)

    children = [child(work) for work in (requests, requests, reports)]
    os.write(go, b"xxx")
    assert [exit_status(pid, 120) for pid in children] == [0, 0, 0]
    os.close(go_read)
    os.close(go)
    counters, stats = zone.counters(slot), zone.stats(slot)
    assert (counters.requests, stats.responses[1], stats.sent, stats.received) == (2 * rounds, 2 * rounds,
                                                                                  6 * rounds, 10 * rounds)
    assert (stats.checks, stats.check_fails, zone.health(slot)) == (rounds, rounds // 2, HEALTH_DOWN)


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


def test_responses_by_code_and_the_recent_responses_times(zone):
    """NGINX Plus's ``responses.codes`` (16 codes a peer; a 17th is counted in its class only),
    and ``header_time``/``response_time``: the averages of the responses of the last two windows."""
    a, b = _peers(zone)
    for status in (200, 200, 404, 503):
        zone.finish(a["slot"], a["id"], failed=False, success=True, now=1.0, max_fails=0, status=status)
    zone.finish(b["slot"], b["id"] + 1, failed=False, success=True, now=1.0, max_fails=0, status=201)  # not b's
    stats = zone.stats(a["slot"])
    assert stats.codes == {"200": 2, "404": 1, "503": 1} and stats.responses == (0, 2, 0, 1, 1)
    assert zone.stats(b["slot"]).codes == {} and zone.stats(b["slot"]).header_time is None
    assert stats.header_time is None  # nothing timed yet
    for status in range(205, 222):
        zone.finish(a["slot"], a["id"], failed=False, success=True, now=1.0, max_fails=0, status=status)
    stats = zone.stats(a["slot"])
    assert len(stats.codes) == 16 and "220" not in stats.codes and stats.responses[1] == 19

    w = zone_module.TIME_WINDOW
    zone.finish(a["slot"], a["id"], failed=False, success=True, now=0.5 * w, max_fails=0, status=200,
                times=(0.010, 0.030))
    zone.finish(a["slot"], a["id"], failed=False, success=True, now=1.5 * w, max_fails=0, status=200,
                times=(0.020, 0.050))
    stats = zone.stats(a["slot"])
    assert (stats.header_time, stats.response_time) == (15, 40)  # ms, both windows
    zone.finish(a["slot"], a["id"], failed=False, success=True, now=2.5 * w, max_fails=0, status=200,
                times=(0.050, 0.100))  # the window before last leaves the average
    stats = zone.stats(a["slot"])
    assert (stats.header_time, stats.response_time) == (35, 75)
    zone.finish(b["slot"], b["id"] + 1, failed=False, success=True, now=2.5 * w, max_fails=0, status=200,
                times=(9.0, 9.0))  # a try counted for a peer the slot no longer holds
    assert zone.stats(b["slot"]).header_time is None


# -- what lock-free readers see, a writer stepped one instruction at a time --------------------
# (what a SIGKILL at that instruction would leave, too)


def test_the_requests_in_flight_the_balancer_reads_for_max_conns_never_drop_at_any_instant(zone):
    """The balancer sums every worker's in-flight count without a lock to enforce ``max_conns``:
    a count read at 0 while a worker adds one (``struct.pack_into`` zeroed it first) let a
    request past the limit."""
    a, _ = _peers(zone)

    def busy_worker():
        zone.claim_row(lambda pid, start: True)
        for _ in range(3):
            zone.add_active(a["slot"], +1)

    def look(step):
        assert zone.in_flight(a["slot"]) in (3, 4), f"instruction {step}: {zone.in_flight(a['slot'])} in flight"

    stepping.each_instruction(lambda: zone.add_active(a["slot"], +1), look, before=busy_worker,
                              watch=zone.buf[zone.layout.rows_at:zone.layout.areas_at])
    assert zone.in_flight(a["slot"]) == 4


def test_a_failure_shows_the_failure_window_and_the_statistics_old_or_new_at_any_instant(zone):
    """``max_fails``: the balancer reads a peer's failures and when they were last checked
    without the lock (a peer at 0 failures, or checked at 0, is available again at once), the API
    its statistics; a failure stores each of them once."""
    a, _ = _peers(zone)
    slot, peer = a["slot"], a["id"]
    zone.finish(slot, peer, failed=True, success=False, now=2.0, max_fails=3, status=502, sent=7, wall=100.0,
                fail_timeout=10.0)
    zone.set_health(slot, peer, HEALTH_UP, fails=0, passes=2, now=100.0)
    before = (zone.stats(slot), zone.counters(slot))

    def look(step):
        fails, checked = zone.failure_window(slot)
        assert fails in (1, 2) and checked in (2.0, 3.0), f"instruction {step}: {fails}, {checked}"
        stats, counters = zone.stats(slot), zone.counters(slot)
        assert stats.checks == 1 and stats.sent in (7, 14) and stats.responses[4] in (1, 2), f"instruction {step}"
        assert counters.requests == 0 and counters.fails_total in (1, 2) and counters.health_passes == 2, (
            f"instruction {step}: {counters}")
        assert counters.flags == 0 and counters.accessed in (2.0, 3.0)

    at = zone._slot_at(slot)
    stepping.each_instruction(
        lambda: zone.finish(slot, peer, failed=True, success=False, now=3.0, max_fails=3, status=502, sent=7,
                            wall=101.0, fail_timeout=10.0), look, before=zone.zone.lock,
        watch=zone.buf[at:at + zone_module.SLOT_SIZE])
    assert zone.failure_window(slot) == (2, 3.0) and before[0].sent == 7


def test_an_update_killed_at_any_instant_leaves_the_old_snapshot_or_the_new(zone):
    """A new snapshot is written into the idle area and made active by the header: a writer
    killed while ``struct.pack_into`` rewrote the header (zeroing it first, magic included) left
    the zone with no snapshot at all, the API's changes gone. Stepped through the activation of
    the next snapshot, what is active is the old snapshot or the new at every instruction."""
    _peers(zone, 2)
    text = b'{"version":2,"peers":[]}'
    zone.buf[zone.layout.areas_at + zone.layout.area_size:][:len(text)] = text  # the idle area: 1

    def look(step):
        held = zone._read_locked()  # (the child holds the lock; it is stopped while this reads)
        assert held is not None and held["version"] in (1, 2), f"instruction {step}: {held}"

    stepping.each_instruction(lambda: zone._activate(True, 2, 1, len(text)), look, before=zone.zone.lock,
                              watch=zone.buf[:64])
    assert zone.read_snapshot() == {"version": 2, "peers": []}
