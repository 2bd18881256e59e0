"""The hysteresis state machine of one peer, over the sequences that matter, on a frozen clock."""

from __future__ import annotations

import pytest
from freezegun import freeze_time

from ngxsim_plugins.healthchecks.machine import (
    CHECKING, DOWN, HEALTHY, UNHEALTHY, UP, PeerHealth, ProbeResult, service_state,
)

T0 = "2024-05-01 12:00:00"
T0_MSEC = 1714564800000
OK = ProbeResult(True, 0.002, 200)
BAD = ProbeResult(False, 0.001, 503, "status 503")
TIMEOUT = ProbeResult(False, 0.5, 0, "timed out")


def run(peer: PeerHealth, results, fails: int, passes: int, clock=None, step: float = 1.0):
    """Apply results one per ``step`` seconds; returns the (from, to) of every flip."""
    flips = []
    for result in results:
        old = peer.apply(result, fails, passes)
        if old is not None:
            flips.append((old, peer.state))
        if clock is not None:
            clock.tick(step)
    return flips


def test_a_new_peer_is_healthy_and_a_mandatory_one_checking():
    with freeze_time(T0):
        assert PeerHealth.new(False) == PeerHealth(HEALTHY, since_msec=T0_MSEC)
        assert PeerHealth.new(True).state == CHECKING


def test_exactly_fails_minus_one_failures_do_not_flip():
    peer = PeerHealth.new(False)
    assert run(peer, [BAD, BAD], fails=3, passes=2) == []
    assert peer.state == HEALTHY and peer.fails == 2 and peer.passes == 0
    assert run(peer, [BAD], fails=3, passes=2) == [(HEALTHY, UNHEALTHY)]
    assert peer.fails == 3


def test_a_pass_resets_the_failure_count():
    peer = PeerHealth.new(False)
    assert run(peer, [BAD, BAD, OK, BAD, BAD, OK], fails=3, passes=1) == []
    assert peer.state == HEALTHY and peer.checks == 6 and peer.failed_checks == 4


def test_recovery_needs_passes_in_a_row():
    peer = PeerHealth.new(False)
    run(peer, [BAD], fails=1, passes=3)
    assert peer.state == UNHEALTHY
    assert run(peer, [OK, OK, BAD, OK, OK], fails=1, passes=3) == []
    assert peer.state == UNHEALTHY and peer.passes == 2
    assert run(peer, [OK], fails=1, passes=3) == [(UNHEALTHY, HEALTHY)]
    assert peer.passes == 3 and peer.fails == 0


def test_more_failures_while_unhealthy_do_not_flip_again():
    peer = PeerHealth.new(False)
    assert run(peer, [BAD] * 10, fails=2, passes=2) == [(HEALTHY, UNHEALTHY)]
    assert peer.transitions == 1 and peer.fails == 10


def test_flapping_with_hysteresis_flips_only_when_the_threshold_is_reached():
    peer = PeerHealth.new(False)
    # alternating pass/fail never reaches 2 in a row either way: no flip at all
    assert run(peer, [BAD, OK] * 10, fails=2, passes=2) == []
    assert peer.state == HEALTHY and peer.transitions == 0
    # without hysteresis (1/1) the same sequence flips on every probe
    peer = PeerHealth.new(False)
    assert len(run(peer, [BAD, OK] * 10, fails=1, passes=1)) == 20
    assert peer.transitions == 20


def test_timeouts_count_as_failures_and_keep_their_reason():
    peer = PeerHealth.new(False)
    assert run(peer, [TIMEOUT, TIMEOUT], fails=2, passes=1) == [(HEALTHY, UNHEALTHY)]
    assert peer.last_reason == "timed out" and peer.last_status == 0 and peer.last_duration == 0.5


def test_a_mandatory_peer_is_decided_by_its_first_probe():
    peer = PeerHealth.new(True)
    assert run(peer, [OK], fails=3, passes=3) == [(CHECKING, HEALTHY)]
    peer = PeerHealth.new(True)
    assert run(peer, [BAD], fails=3, passes=3) == [(CHECKING, UNHEALTHY)]
    # then the usual hysteresis applies
    assert run(peer, [OK, OK], fails=3, passes=3) == [] and peer.state == UNHEALTHY
    assert run(peer, [OK], fails=3, passes=3) == [(UNHEALTHY, HEALTHY)]


def test_probe_and_transition_times_follow_the_clock():
    with freeze_time(T0) as clock:
        peer = PeerHealth.new(False)
        clock.tick(10)
        run(peer, [BAD, BAD, BAD], fails=3, passes=1, clock=clock, step=2)
        # probes at +10, +12, +14: the flip is dated by the probe that made it
        assert peer.since_msec == T0_MSEC + 14_000
        assert peer.last_probe_msec == T0_MSEC + 14_000
        run(peer, [OK], fails=3, passes=1)
        assert peer.since_msec == peer.last_probe_msec == T0_MSEC + 16_000
        assert peer.last_status == 200 and peer.last_reason == ""


def test_no_transition_leaves_since_alone():
    with freeze_time(T0) as clock:
        peer = PeerHealth.new(False)
        run(peer, [OK] * 5, fails=1, passes=1, clock=clock, step=5)
        assert peer.since_msec == T0_MSEC and peer.last_probe_msec == T0_MSEC + 20_000


@pytest.mark.parametrize("states, service", [
    ([HEALTHY, UNHEALTHY], UP),
    ([UNHEALTHY, UNHEALTHY], DOWN),
    ([CHECKING, CHECKING], DOWN),
    ([CHECKING, HEALTHY], UP),
    ([], DOWN),
])
def test_the_service_is_up_while_any_peer_is_healthy(states, service):
    assert service_state([PeerHealth(s) for s in states]) == service
