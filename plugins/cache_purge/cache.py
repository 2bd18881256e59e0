"""One worker's caches (a memory level each, the shared level opened on first use), purging,
and applying the invalidation events every worker receives."""

from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import dataclass

from .conf import NAME, CachePath
from .events import CHANNEL, BatchRef, Invalidation, message, parse_body, read
from .levels import MemoryLevel, SharedLevel
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


def start(runtime) -> State:
    """This worker's caches, with empty memory levels (a worker starts with nothing in memory)."""
    plan = runtime.config.stash.get(NAME)
    specs = plan["caches"] if plan else {}
    st = State({zone: Cache(spec, runtime) for zone, spec in specs.items()}, plan["bus"] if plan else None, os.getpid())
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
    type: str | None = None        # the event published (None: nothing matched, nothing published)
    generation: int | None = None


def purge(runtime, zone: str, inv: Invalidation) -> Outcome:
    """Remove what ``inv`` names from the shared level of ``zone`` and, if anything matched,
    tell every worker to drop it from memory. When this returns, no level of any worker will
    answer with what was removed: the shared level no longer has it, and every worker delivers
    the event before it handles its next request."""
    st = state(runtime)
    cache = st.caches[zone]
    removed = cache.shared.remove(keys=list(inv.keys) if inv.keys else None, prefix=inv.prefix,
                                  tags=list(inv.tags) if inv.tags else None)
    if not removed.keys:
        return Outcome(0)
    if inv.prefix is not None:
        announced = inv
    elif inv.keys:
        announced = Invalidation(keys=tuple(removed.keys))
    else:
        announced = Invalidation(tags=tuple(removed.tags))
    msg = message(zone, announced)
    if msg.batch is not None:
        cache.shared.put_batch(*msg.batch)
    generation = runtime.publish(st.bus, CHANNEL, msg.type, msg.payload)
    return Outcome(len(removed.keys), msg.type, generation)


def _recreated(runtime, spec: CachePath) -> None:
    """The cache's databases were removed while running and this worker made them again, empty
    (nginx makes a missing cache path when it stores). Say so once, and tell every worker to drop
    its memory level: a purge, which searches the new (empty) key index, could not find what
    they still hold."""
    log.critical('[crit] cache_purge: the databases of cache "%s" under "%s" were removed while running; '
                 "made them again, empty (every worker drops its memory level)", spec.zone, spec.path)
    st = state(runtime)
    msg = message(spec.zone, Invalidation(prefix=""))
    runtime.publish(st.bus, CHANNEL, msg.type, msg.payload)


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
    """Drop from this worker's memory levels what the event invalidated."""
    st = state(runtime)
    found = read(event.type, event.payload)
    if found is None:
        return
    if isinstance(found, BatchRef):
        found = _load_batch(st, found)  # a batch it cannot read: everything
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


def drop_all(runtime) -> None:
    """A ``Gap``: invalidations were lost, so nothing in memory can be trusted."""
    for cache in state(runtime).caches.values():
        cache.memory.clear()


__all__ = ["CHANNEL", "Cache", "Outcome", "State", "announce_refresh", "apply_event", "drop_all", "purge", "start", "state"]
