"""The relay's pacer (plugins/cluster/pace.py), on clocks the test moves: the relay keeps to its
share of the worker while the rest of the worker is busy, and runs at once otherwise."""

from __future__ import annotations

from ngxsim_plugins.cluster.pace import Pacer


class Clocks:
    def __init__(self):
        self.now = 100.0
        self.process = 5.0

    def pacer(self, **kw) -> Pacer:
        return Pacer(clock=lambda: self.now, process_cpu=lambda: self.process, share=0.1, busy=0.25, window=0.02,
                     min_pause=0.002, max_pause=0.02, **kw)

    def spend(self, seconds: float, rest: float, relay: float) -> None:
        """``seconds`` pass; the rest of the process uses ``rest`` CPU and the relay ``relay``."""
        self.now += seconds
        self.process += rest + relay


def test_an_idle_worker_lets_the_relay_run_at_once():
    c = Clocks()
    pacer = c.pacer()
    for _ in range(5):
        c.spend(0.03, rest=0.001, relay=0.002)
        assert pacer.done(0.002) == 0.0
    assert pacer.paused == 0.0


def test_a_busy_worker_makes_the_relay_pause_nine_times_its_work():
    c = Clocks()
    pacer = c.pacer()
    c.spend(0.03, rest=0.028, relay=0.001)  # a request kept the worker busy (0.93 of a core)
    assert abs(pacer.done(0.001) - 0.009) < 1e-9  # 1 ms of work, 9 ms of pause: a 10% share
    c.spend(0.001, rest=0.001, relay=0.005)  # within the window: the last measure holds
    assert pacer.done(0.005) == 0.02  # at most max_pause at once
    assert pacer.done(0.00001) == 0.002  # at least min_pause: the next batch gathers more events
    assert abs(pacer.paused - 0.031) < 1e-9


def test_the_relay_s_own_work_is_not_taken_for_the_worker_s():
    c = Clocks()
    pacer = c.pacer()
    c.spend(0.03, rest=0.0, relay=0.029)  # only the relay worked (a burst from another host)
    assert pacer.done(0.029) == 0.0


def test_no_pause_while_the_ring_s_unsent_events_fill_more_than_half_of_it():
    c = Clocks()
    pacer = c.pacer()
    c.spend(0.03, rest=0.028, relay=0.001)
    assert pacer.done(0.001, backlog=5000, room=8192) == 0.0  # the ring's wrap would lose them
    assert pacer.done(0.001, backlog=3000, room=8192) > 0.0


def test_a_worker_that_was_busy_and_is_idle_again_lets_the_relay_run():
    c = Clocks()
    pacer = c.pacer()
    c.spend(0.03, rest=0.028, relay=0.001)
    assert pacer.done(0.001) > 0.0
    c.spend(0.03, rest=0.001, relay=0.001)
    assert pacer.done(0.001) == 0.0

