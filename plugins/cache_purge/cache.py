"""One worker's caches (a memory level each, the shared level opened on first use), purging,
and applying the invalidation events every worker receives."""

from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import dataclass

from .conf import NAME, CachePath
from .events import CHANNEL, RECREATED, BatchRef, Invalidation, message, messages, parse_body, read
from .levels import MemoryLevel, SharedLevel, _now
from .storage import Reporter, StorageError

log = logging.getLogger("ngxsim.cache_purge")


class Cache:
    """A keys zone in this worker: its memory level and (opened lazily) its shared level."""

    def __init__(self, spec: CachePath, runtime):
        self.spec = spec
        self.runtime = runtime
        self.memory = MemoryLevel(spec.mem_size)
        self.report = Reporter(spec.zone)  # this worker's [crit] lines about the zone's disk
        self._shared: SharedLevel | None = None
        self._opening = threading.Lock()

    @property
    def shared(self) -> SharedLevel:
        shared = self._shared
        if shared is None:  # first use in this process (SQLite connections must not cross a fork)
            with self._opening:  # a request and the manager job may both be first
                if self._shared is None:
                    self._shared = SharedLevel(self.spec, self.runtime.zone(self.spec.zone),
                                               on_recreated=lambda: _recreated(self.runtime, self.spec))
                shared = self._shared
        return shared

    def close(self) -> None:
        if self._shared is not None:
            self._shared.close()
            self._shared = None


@dataclass
class State:
    """What cache_purge keeps in one worker (``runtime.stash["cache_purge"]``)."""

    caches: dict[str, Cache]
    bus: str | None
    pid: int
    bridged: bool = False  # channel cache.invalidate crosses hosts (cluster_bridge)


def start(runtime) -> State:
    """This worker's caches, with empty memory levels (a worker starts with nothing in memory)."""
    plan = runtime.config.stash.get(NAME)
    specs = plan["caches"] if plan else {}
    st = State({zone: Cache(spec, runtime) for zone, spec in specs.items()}, plan["bus"] if plan else None, os.getpid(),
               bool(plan and plan.get("bridged")))
    runtime.stash[NAME] = st
    return st


def state(runtime) -> State:
    st = runtime.stash.get(NAME)
    if st is None or st.pid != os.getpid():
        st = start(runtime)
    return st


@dataclass
class Outcome:
    purged: int
    type: str | None = None        # the (first) event published (None: nothing published)
    generation: int | None = None  # of the last event published


def purge(runtime, zone: str, inv: Invalidation) -> Outcome:
    """Remove what ``inv`` names from the shared level of ``zone`` and, if anything matched,
    tell every worker to drop it from memory. When this returns, no level of any worker will
    answer with what was removed: the shared level no longer has it, and every worker delivers
    the event before it handles its next request.

    When the channel crosses hosts, the purge is announced as asked (the other hosts hold
    their own entries, which this host cannot know), even when nothing matched here, and each of
    them removes it from its own levels on delivery (``apply_event``)."""
    st = state(runtime)
    cache = st.caches[zone]
    removed = cache.shared.remove(keys=list(inv.keys) if inv.keys else None, prefix=inv.prefix,
                                  tags=list(inv.tags) if inv.tags else None)
    if st.bridged:
        announced = inv
    elif not removed.keys:
        return Outcome(0)
    elif inv.prefix is not None:
        announced = inv
    elif inv.keys:
        announced = Invalidation(keys=tuple(removed.keys))
    else:
        announced = Invalidation(tags=tuple(removed.tags))
    sent = messages(zone, announced, inline=st.bridged)
    for msg in sent:
        if msg.batch is not None:
            cache.shared.put_batch(*msg.batch)
        generation = runtime.publish(st.bus, CHANNEL, msg.type, msg.payload)
    return Outcome(len(removed.keys), sent[0].type, generation)


def _recreated(runtime, spec: CachePath) -> None:
    """The cache's databases were removed while running and this worker made them again, empty
    (nginx makes a missing cache path when it stores). Say so once, and tell every worker to drop
    its memory level: a purge, which searches the new (empty) key index, could not find what
    they still hold."""
    log.critical('[crit] cache_purge: the databases of cache "%s" under "%s" were removed while running; '
                 "made them again, empty (every worker drops its memory level)", spec.zone, spec.path)
    runtime.publish(state(runtime).bus, CHANNEL, RECREATED, spec.zone)


def announce_refresh(runtime, zone: str, key: str) -> int:
    """A store replaced ``key``'s copy that some worker may still hold in memory (a
    ``proxy_cache_bypass`` refresh): tell every worker to drop it, as a purge does; returns the
    generation. Once this returns, no worker answers the old copy from its memory (each delivers
    the event before its next request) and the shared level has the new one."""
    st = state(runtime)
    msg = message(zone, Invalidation(keys=(key,)), refreshed=True)
    if msg.batch is not None:
        st.caches[zone].shared.put_batch(*msg.batch)
    return runtime.publish(st.bus, CHANNEL, msg.type, msg.payload)


def apply_event(runtime, event) -> None:
    """Drop from this worker's memory levels what the event invalidated; for an event of
    another host (``event.origin``), from this host's shared levels first (and with it the
    purge epoch moves: a response fetched before, stored after, is dropped — read-your-purge).
    Every worker does it (the first removes, the others find nothing): none of them may read
    the shared level's old copy into its memory once it has delivered the purge."""
    st = state(runtime)
    found = read(event.type, event.payload)
    if found is None or (event.origin is not None and event.type == RECREATED):  # another host's disk
        return
    if isinstance(found, BatchRef):
        found = _load_batch(st, found)  # a batch it cannot read: everything
    if event.origin is not None:
        for cache in st.caches.values():
            _remove_shared(cache, found)
    for cache in st.caches.values():
        if found.everything:
            cache.memory.clear()
        else:
            cache.memory.evict(keys=found.keys, prefix=found.prefix, tags=found.tags)
    if found.everything:
        log.warning("cache_purge: generation %d (%s %r) dropped every memory level of worker %d",
                    event.generation, event.type, event.payload[:100], os.getpid())


def _load_batch(st: State, ref: BatchRef) -> Invalidation:
    cache = st.caches.get(ref.zone)
    try:
        text = cache.shared.get_batch(ref.id) if cache is not None else None
    except StorageError as error:
        cache.report(error, "reading", "reading a purge batch")
        text = None
    if text is None:
        return Invalidation(everything=True)  # expired or from another config: drop all, stay right
    try:
        return parse_body(json.loads(text))
    except ValueError:
        return Invalidation(everything=True)


def _remove_shared(cache: Cache, found: Invalidation, when: float | None = None) -> None:
    try:
        if found.everything:
            cache.shared.remove_stored_before(_now() if when is None else when)
        else:
            cache.shared.remove(keys=list(found.keys) or None, prefix=found.prefix, tags=list(found.tags) or None)
    except StorageError as error:
        cache.report(error, "writing", "applying a purge of another host")


def drop_all(runtime, gap=None) -> None:
    """A ``Gap``: invalidations were lost, so nothing in memory can be trusted. When they may
    have been purges of other hosts (a remote gap, or any gap where the channel crosses hosts:
    a relayed purge lost by every worker here was applied by none), no shared-level entry stored
    before the gap can be trusted either: those go too (and the purge epoch moves)."""
    st = state(runtime)
    for cache in st.caches.values():
        cache.memory.clear()
    if gap is not None and (gap.origin is not None or st.bridged):
        when = _now()
        for cache in st.caches.values():
            _remove_shared(cache, Invalidation(everything=True), when)


__all__ = ["CHANNEL", "Cache", "Outcome", "State", "announce_refresh", "apply_event", "drop_all", "purge", "start", "state"]
