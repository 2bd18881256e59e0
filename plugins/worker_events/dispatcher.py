"""Delivery: in every worker, every new event of a zone reaches the modules' subscribers.

One thread per zone per worker blocks on the zone's doorbell (a futex: no polling) and, when
woken, delivers every generation published since its cursor, in order. A burst coalesces into
one wake-up. The wait's timeout is a safety net only (a publisher killed between its write and
its ring); it is not what delivers events.

A publish from this worker (``runtime.publish``) calls ``deliver_own()``: this worker's
subscribers have run for every generation up to the published one when the publish returns
(a handler sees its own publish in the same response). Called from a subscriber (the thread is
delivering already), it returns at once: the running delivery takes the new event next, after
the current call, in order.

Request threads call ``drain()`` before their handler runs: a cheap look at the ring's newest
generation, and delivery of whatever is pending, so a worker never answers from state older
than an event published before the request arrived, however long the GIL keeps the
dispatcher thread from running.

A worker that falls behind by more than the ring holds gets a ``Gap`` (the generations it
lost) before the next event, never a silent skip. An entry on channel ``@gap`` with an origin is
a gap of another instance's events (relayed by a cluster bridge, see ``publish_remote_gap``):
delivered as a ``Gap`` with that origin, never as an event.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from threading import get_ident
from dataclasses import dataclass
from typing import Callable

from ngxsim import Event, Gap, Subscription, Wait, call_impl, process_start_time, prompt_wakeups, tracing

# the server's error log (error_log) is the "ngxsim" logger
log = logging.getLogger("ngxsim")

from .ring import Ring

SAFETY_TIMEOUT = 1.0
REMOTE_GAP_CHANNEL = "@gap"
_WOKEN = Wait.WOKEN
_NOT_READY_RETRIES = 1000


def bind_impl(impl, first: str, second: str) -> Callable:
    """``f(a, b)`` that calls the hook implementation with the part of ``first=a, second=b``
    it declares (pluggy lets an implementation take any subset), without building keyword
    dicts on every event. Under ``NGXSIM_TRACE_HOOKS`` every call is traced instead."""
    if tracing():
        return lambda a, b: call_impl(impl, **{first: a, second: b})
    fn, names = impl.function, tuple(impl.argnames)
    if names == (first, second):
        return fn
    if names == (second, first):
        return lambda a, b: fn(b, a)
    if names == (first,):
        return lambda a, b: fn(a)
    if names == (second,):
        return lambda a, b: fn(b)
    return lambda a, b: fn()


@dataclass
class Subscriber:
    module: str
    on_event: Callable | None
    on_gap: Callable | None
    subscriptions: list[Subscription] | None  # None: every channel of every zone

    def wants_zone(self, zone: str) -> bool:
        return self.subscriptions is None or any(s.zone == zone for s in self.subscriptions)

    def replays(self, zone: str) -> bool:
        return self.subscriptions is not None and any(s.zone == zone and s.replay for s in self.subscriptions)

    def once(self, zone: str) -> bool:
        """Whether one worker of the instance handles each event of ``zone`` (``once=True``)."""
        return self.subscriptions is not None and any(s.zone == zone and s.once for s in self.subscriptions)

    def channels(self, zone: str) -> frozenset[str] | None:
        """The channels of ``zone`` it wants (None: all of them)."""
        if self.subscriptions is None:
            return None
        wanted: set[str] = set()
        for sub in self.subscriptions:
            if sub.zone == zone:
                if sub.channels is None:
                    return None
                wanted.update(sub.channels)
        return frozenset(wanted)


def collect_subscribers(config) -> list[Subscriber]:
    """One Subscriber per module implementing ``ngxsim_event`` or ``ngxsim_event_gap``, in
    module load order, with what its ``ngxsim_event_subscriptions`` asked for (the core
    collected and checked them at load: ``config.subscriptions``)."""
    hook = config.pm.hook
    events = {impl.plugin_name: impl for impl in hook.ngxsim_event.get_hookimpls()}
    gaps = {impl.plugin_name: impl for impl in hook.ngxsim_event_gap.get_hookimpls()}
    out = []
    for name, subscriptions in config.subscriptions.items():
        ev, gap = events.get(name), gaps.get(name)
        out.append(Subscriber(
            name,
            ev and bind_impl(ev, "runtime", "event"),
            gap and bind_impl(gap, "runtime", "gap"),
            subscriptions,
        ))
    return out


class Dispatcher:
    """Delivers one zone's events in this worker."""

    def __init__(self, runtime, ring: Ring, subscribers: list[Subscriber]):
        self.runtime = runtime
        self.ring = ring
        self.zone = ring.name
        self.subscribers = [s for s in subscribers if s.wants_zone(self.zone)]
        # what each event needs, decided once: (module, callable, channels or None, replays, once)
        self._targets = [(s.module, s.on_event, s.channels(self.zone), s.replays(self.zone), s.once(self.zone))
                         for s in self.subscribers if s.on_event is not None]
        newest = ring.newest
        replay = any(s.replays(self.zone) for s in self.subscribers)
        # generations up to live_from were published before this worker started: only the
        # modules that asked for a replay get them
        self.live_from = newest
        self.cursor = ring.oldest_for(newest) - 1 if replay and newest else newest
        self.events = self.gaps = self.lost = self.wakeups = self.errors = 0
        self.last_delivery_msec = 0
        self._lock = threading.Lock()
        self._owner: int | None = None  # a thread other than the dispatcher's delivering (holding _lock)
        self._thread_ident: int | None = None  # the dispatcher thread's, once it runs
        self._stop = False  # set by stop_thread(); the thread looks at it after every wake-up
        self._thread: threading.Thread | None = None
        self.pid = os.getpid()
        self.slot = ring.claim_slot(self.pid, process_start_time(self.pid) or 0, self.cursor, len(self.subscribers))
        if self.slot is None:
            log.warning("worker_events: zone %s has no free worker slot; this worker is not listed", self.zone)

    # -- thread -----------------------------------------------------------------------------

    @property
    def active(self) -> bool:
        """Does any module of this worker listen to this zone? If not, there is nothing to
        deliver: no thread runs and publishers do not wake this worker."""
        return bool(self.subscribers)

    def start(self) -> None:
        if not self.active:
            return
        self._thread = threading.Thread(target=self._run, name=f"ngxsim-events-{self.zone}", daemon=True)
        self._thread.start()

    def stop_thread(self) -> None:
        """Stop the dispatcher thread (woken, joined, bounded); the worker stays listed and
        requests still drain pending events."""
        self._stop = True
        if self._thread is not None and self._thread.is_alive():
            self.ring.zone.doorbell.wake()  # a wake without news: others look, find none, sleep
            self._thread.join(2 * SAFETY_TIMEOUT)

    def stop(self) -> None:
        """Stop the thread and give the worker slot back."""
        self.stop_thread()
        if self.slot is not None:
            self.ring.release_slot(self.slot, self.pid)
            self.slot = None

    def _run(self) -> None:
        # What runs here after each wake-up is CPU that, on 2 cores, the last worker to deliver
        # waits for, and it runs with cold caches (~10x the cost of the same code in a warm
        # loop): few calls, locals, no enum member looked up through its class.
        self._thread_ident = threading.get_ident()
        ring = self.ring
        bell = ring.zone.doorbell
        wait, newest, lock, deliver = bell.wait, ring.newest_now, self._lock, self._deliver
        woken, timeout = _WOKEN, SAFETY_TIMEOUT
        prompt_wakeups()  # this thread only: woken, it runs before busy tasks' slices end
        bell.register()  # counted once: publishers wake us without a per-wake lock on our side
        try:
            while not self._stop:
                seen = bell.value
                if newest() > self.cursor:
                    try:
                        with lock:  # request threads (drain) and this worker's publishes deliver too
                            deliver()
                    except Exception:  # never let the dispatcher die: log and keep listening
                        log.exception("worker_events: dispatcher of zone %s failed", self.zone)
                if wait(seen, timeout, True) is woken and bell.value != seen:
                    self.wakeups += 1  # a real sleep ended by a publish (not a look that found news)
        finally:
            self._thread_ident = None  # thread ids are reused: a later thread must not pass for this one
            bell.unregister()

    # -- delivery ---------------------------------------------------------------------------

    def _delivering_here(self) -> bool:
        """Is this thread delivering already (the dispatcher thread, or a thread in
        ``_deliver_locked``)? Then a subscriber published: the running delivery takes it next."""
        me = get_ident()
        return me == self._thread_ident or me == self._owner

    def drain(self) -> None:
        """Deliver everything published so far (cheap when nothing is pending)."""
        if self.ring.newest_now() <= self.cursor or self._delivering_here():
            return
        self._deliver_locked()

    def deliver_own(self, generation: int) -> None:
        """This worker published ``generation``: deliver up to it (and whatever came before)
        now, in this thread, unless this thread is delivering already (a subscriber that
        publishes) or nobody listens here."""
        if self.cursor >= generation or not self.subscribers or self._delivering_here():
            return
        self._deliver_locked()

    def _deliver_locked(self) -> None:
        """Deliver from a thread other than the dispatcher's (it holds the lock itself)."""
        with self._lock:
            self._owner = get_ident()
            try:
                self._deliver()
            finally:
                self._owner = None

    def _deliver(self) -> None:
        """Deliver every generation after the cursor, in order (hold ``_lock``)."""
        ring = self.ring
        read, newest_now, capacity = ring.read_event, ring.newest_now, ring.capacity
        targets, runtime, live_from = self._targets, self.runtime, self.live_from
        newest = newest_now()
        while newest > self.cursor:
            gen = self.cursor + 1
            while gen <= newest:
                if gen <= newest - capacity:  # older than the ring's oldest: overwritten
                    self._gap(gen, newest - capacity)
                    gen = newest - capacity + 1
                    continue
                event = read(gen)
                if event is None:
                    event, newest = self._retry(gen, newest)
                    if event is None:
                        if gen > newest - capacity:  # still in the ring: never readable, _retry counted it lost
                            gen += 1
                        continue  # else lapped: the top of the loop reports the gap
                # the event to each module that wants it (a replaying one also gets the backlog)
                self.events += 1
                channel, backlog = event.channel, gen <= live_from
                if channel == REMOTE_GAP_CHANNEL and event.origin is not None:
                    self._remote_gap(event, backlog)
                    self.cursor = gen
                    gen += 1
                    continue
                for module, on_event, channels, replays, once in targets:
                    if (channels is not None and channel not in channels) or (backlog and not replays):
                        continue
                    if once and not runtime.claim_event(self.zone, module, gen):
                        continue  # another worker of the instance handles this one
                    try:
                        on_event(runtime, event)
                    except Exception:
                        self.errors += 1
                        log.exception("worker_events: module %s failed on generation %d of zone %s",
                                      module, gen, self.zone)
                self.cursor = gen
                gen += 1
            if newest > self.cursor:
                self.cursor = newest
            newest = newest_now()
        self.last_delivery_msec = int(time.time() * 1000)
        if self.slot is not None:
            ring.update_slot(self.slot, self.cursor, self.gaps, self.lost, self.last_delivery_msec, self.events, self.wakeups)

    def _retry(self, gen: int, newest: int) -> tuple[Event | None, int]:
        """``gen`` was unreadable: overwritten by writers that lapped us (-> a gap), or, on a
        machine with weak memory ordering, not yet visible (-> read again)."""
        for _ in range(_NOT_READY_RETRIES):
            newest = max(newest, self.ring.newest)
            if gen < self.ring.oldest_for(newest):
                return None, newest
            event = self.ring.read(gen)
            if event is not None:
                return event, newest
            time.sleep(0)
        # never became readable: count it lost rather than stall delivery
        self._gap(gen, gen)
        return None, newest

    def _remote_gap(self, event: Event, backlog: bool) -> None:
        """A gap relayed from another instance (a backlog one only to modules that replay)."""
        first, _, last = event.payload.partition("-")
        gap = Gap(self.zone, int(first), int(last), event.origin)
        if not backlog:
            log.warning("worker_events: zone %s lost events %d..%d of instance %s on their way here",
                        self.zone, gap.first, gap.last, gap.origin)
        for sub in self.subscribers:
            if sub.on_gap is not None and (not backlog or sub.replays(self.zone)):
                try:
                    sub.on_gap(self.runtime, gap)
                except Exception:
                    self.errors += 1
                    log.exception("worker_events: module %s failed on the gap %d..%d of instance %s",
                                  sub.module, gap.first, gap.last, gap.origin)

    def _gap(self, first: int, last: int) -> None:
        self.gaps += 1
        self.lost += last - first + 1
        log.warning("worker_events: worker %d lost generations %d..%d of zone %s (overwritten before delivery)",
                    self.pid, first, last, self.zone)
        for sub in self.subscribers:
            if sub.on_gap is None:
                continue
            lo = first if sub.replays(self.zone) else max(first, self.live_from + 1)
            if lo > last:
                continue
            try:
                sub.on_gap(self.runtime, Gap(self.zone, lo, last))
            except Exception:
                self.errors += 1
                log.exception("worker_events: module %s failed on the gap %d..%d of zone %s",
                              sub.module, lo, last, self.zone)
