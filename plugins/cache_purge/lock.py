"""The per-key records nginx keeps in a cache's keys zone that ngxsim's shared level does not:
``proxy_cache_lock`` and ``proxy_cache_min_uses``' counts, in a ``SharedTable`` in a zone of its
own per cache (``cache_purge.keys.ZONE``, declared when a location of that cache uses either).

``proxy_cache_lock``: of the requests that miss the same key, one at a time goes to the origin
and fills the cache; the others wait for it, in every worker. The lock is a record keyed by the
cache key, expiring after
``proxy_cache_lock_age``: past that age (the holder is slow, or its client left before the answer
was stored), the next request takes it and goes to the origin too, as nginx's ``lock_age``. A
waiting request is set aside without a thread (``ngxsim.Delay``) and looks again every 500 ms,
as nginx's ``ngx_http_file_cache_lock_wait`` does; after ``proxy_cache_lock_timeout`` it goes to
the origin and its answer is not stored.
"""

from __future__ import annotations

import struct

from ngxsim import SharedTable

from .conf import NAME

POLL = 0.5  # nginx's lock wait timer
_KEY_MAX = 64  # longer keys are kept as their SHA-256 (SharedTable)
_HOLDER = struct.Struct("<d")  # when it was taken
_USES = struct.Struct("<q")
CAPACITY = 4096  # keys being filled at once, per cache


def zone_name(cache_zone: str) -> str:
    return f"{NAME}.keys.{cache_zone}"


def zone_size() -> int:
    return SharedTable.size_for(CAPACITY, _KEY_MAX, _HOLDER.size)


class KeyRecords:
    """The records of one cache's keys zone table."""

    def __init__(self, cache_zone: str, names: tuple[str, ...]):
        self.zone = zone_name(cache_zone)
        self.names = names  # every such zone of the config (SharedTable.views)

    def _table(self, runtime) -> SharedTable:
        return SharedTable.views(runtime, f"{NAME}.keys", self.names, _KEY_MAX, _HOLDER.size)[self.zone]

    def use(self, runtime, key: str, ttl: float) -> int:
        """``proxy_cache_min_uses``: count one more request for ``key`` (forgotten ``ttl``
        seconds after the last, as nginx's node after ``inactive``); returns the count."""

        def change(old):
            uses = (_USES.unpack(old)[0] if old is not None else 0) + 1
            return _USES.pack(uses), uses

        return self._table(runtime).update("uses " + key, change, ttl=ttl)


class CacheLock(KeyRecords):
    """The lock of one cache, as a location with ``proxy_cache_lock on`` uses it."""

    def __init__(self, cache_zone: str, age: float, timeout: float, names: tuple[str, ...]):
        super().__init__(cache_zone, names)
        self.age, self.timeout = age, timeout

    def take(self, runtime, key: str, now: float) -> bool:
        """Whether this request holds the lock of ``key`` now (it was free, or older than ``age``)."""

        def change(old):
            # the age is checked from the time it was taken: keeping the record (old) renews
            # its expiry, so the expiry alone would never come while others keep asking
            if old is None or now - _HOLDER.unpack(old)[0] >= self.age:
                return _HOLDER.pack(now), True
            return old, False

        return self._table(runtime).update(key, change, ttl=self.age)

    def release(self, runtime, key: str) -> None:
        self._table(runtime).delete(key)
