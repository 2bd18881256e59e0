"""A keyed table in a shared-memory zone: fixed-size records, expiry, least-recently-used
eviction, one lock per stripe (what nginx's limit_req and limit_conn keep in their zones).

The table is split into ``stripes`` independent parts (a key's stripe is a CRC-32 of the key,
the same in every process); each has its own slots (open addressing, linear probing), its own
recency clock and its own lock, so requests for keys of different stripes never wait on each
other. A stripe's lock is an open-file-description lock (``F_OFD_SETLKW``) on one byte of the
zone's file, taken through a descriptor each process opens itself (DESIGN.md: an inherited
descriptor excludes nothing), plus a per-process thread lock: the kernel releases it when the
holder dies, even by SIGKILL, so a killed worker never leaves a stripe locked. Records live in
the zone, so they survive any worker; a worker killed in the middle of writing a record can
leave that one record's value half-written (a new record becomes visible only once complete).
The words that say which records exist and in what order they were used — a slot's state and
key length, its expiry and last use, a stripe's clock and count — change by one aligned store
each (``words``), never ``struct.pack_into``, which zeroes its destination first: a writer
killed there left a record in use marked empty (ending the probe chain of the records after
it, which a later put then duplicated) or the stripe's clock at 0 (new records oldest).

Layout in ``zone.buf`` (little-endian): a 32-byte header (magic, version, stripes, slots per
stripe, key and value sizes), then per stripe a 16-byte header (recency clock, count) and its
slots; a slot is ``state u8, pad u8, key length u16, pad u32, expires msec u64, last use u64``,
the key (``key_max`` bytes) and the value (``value_size`` bytes), padded to 8 bytes.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import struct
import threading
import time
import zlib
from typing import Any, Callable, Iterator

from .shm import Zone, words

_MAGIC = 0x5442544E  # "NTBT"
_VERSION = 1
_HEADER = struct.Struct("<IIIIHH12x")  # magic, version, stripes, slots per stripe, key_max, value_size
_STRIPE = struct.Struct("<QI4x")  # recency clock, records in use
_SLOT = struct.Struct("<BxH4xQQ")  # state, key length, (pad), expires msec, last use
_EMPTY, _USED, _DELETED = 0, 1, 2
# stripe locks are bytes of the zone file far beyond its data: they conflict with nothing else
_LOCK_BASE = 1 << 40
_FLOCK = struct.Struct("hhqqi4x")  # struct flock on Linux x86-64 / arm64
_LONG = b"\x00sha256:"  # the tag of a key longer than key_max, stored as its SHA-256


class TableFull(MemoryError):
    """A new record found its stripe full of records in use (``SharedTable(in_use=...)``):
    nothing could be evicted for it, so nothing was stored (nginx's failed ``ngx_slab_alloc``)."""

    def __init__(self, zone: str):
        super().__init__(f'no room in zone "{zone}": every record of the stripe is in use')
        self.zone = zone


def _pad8(n: int) -> int:
    return (n + 7) & ~7


class SharedTable:
    """A keyed table laid out in a zone's ``buf``; every process attaches its own view
    (``SharedTable(runtime.zone(name), key_max, value_size)``) and sees the same records.

    Keys are bytes (or str, encoded as UTF-8); a key longer than ``key_max`` bytes is stored as
    its SHA-256 (``key_max`` must then be at least 40), so any length works; values exactly
    ``value_size`` bytes (pack them with ``struct``). Times are ``time.time()`` seconds; a record
    whose expiry passed is absent. When a stripe is full, putting a new key evicts the record
    of that stripe used least recently (an expired one first) among those not in use:
    ``in_use(value)``, when given, says whether a record may not be evicted (a count of requests
    in progress, as nginx never frees a limit_conn node with connections). When every record of
    the stripe is in use, the new key is refused: ``update`` raises :class:`TableFull`.

    Single operations (``get``, ``put``, ``delete``) take the key's stripe lock themselves.
    A read-modify-write of one key (a counter, a leaky bucket) goes through ``update``, which
    holds the lock for the whole change.
    """

    def __init__(self, zone: Zone, key_max: int, value_size: int, stripes: int = 16,
                 in_use: Callable[[bytes], bool] | None = None):
        if not 1 <= key_max <= 65535 or not 1 <= value_size <= 65535 or not 1 <= stripes <= 4096:
            raise ValueError("key_max and value_size must be 1 to 65535 bytes, stripes 1 to 4096")
        self.zone, self.key_max, self.value_size, self.stripes = zone, key_max, value_size, stripes
        self.in_use = in_use
        self.slot_size = _pad8(_SLOT.size + key_max + value_size)
        per_stripe = (zone.usable - _HEADER.size) // stripes - _STRIPE.size
        self.slots = per_stripe // self.slot_size
        if self.slots < 1:
            raise ValueError(f'zone "{zone.name}" of {zone.size} bytes is too small for a table of '
                             f'{stripes} stripes of {self.slot_size}-byte records')
        self.stripe_size = _STRIPE.size + self.slots * self.slot_size
        self._buf = zone.buf
        self._u64 = words(zone.buf)
        self._tlocks = [threading.Lock() for _ in range(stripes)]
        self._fd = -1
        self._fd_pid = -1
        self._fd_lock = threading.Lock()
        self._format()

    @staticmethod
    def size_for(capacity: int, key_max: int, value_size: int, stripes: int = 16) -> int:
        """The zone size (``ngxsim.ZONE_HEADER_SIZE`` included) that holds at least ``capacity``
        records: what to pass to ``config.zones.declare``."""
        from .shm import HEADER_SIZE

        slot = _pad8(_SLOT.size + key_max + value_size)
        per_stripe = -(-capacity // stripes)
        return HEADER_SIZE + _HEADER.size + stripes * (_STRIPE.size + per_stripe * slot)

    @property
    def capacity(self) -> int:
        """How many records fit (every stripe full)."""
        return self.slots * self.stripes

    def _format(self) -> None:
        want = (_MAGIC, _VERSION, self.stripes, self.slots, self.key_max, self.value_size)
        with self.zone.lock():
            found = _HEADER.unpack_from(self._buf, 0)
            if found == want:
                return
            if found[0] == _MAGIC:
                raise ValueError(f'zone "{self.zone.name}" holds a table of another shape {found[2:]} '
                                 f'(stripes, slots, key_max, value_size), not {want[2:]}')
            self._buf[: _HEADER.size + self.stripes * self.stripe_size] = bytes(
                _HEADER.size + self.stripes * self.stripe_size)
            _HEADER.pack_into(self._buf, 0, *want)

    # -- locking ------------------------------------------------------------------------------

    def _lock_fd(self) -> int:
        pid = os.getpid()
        if self._fd_pid != pid:  # first use in this process (an inherited fd would exclude nothing)
            with self._fd_lock:
                if self._fd_pid != pid:
                    self._fd = os.open(f"/proc/self/fd/{self.zone._fd}", os.O_RDWR | os.O_CLOEXEC)
                    self._fd_pid = pid
                    self._tlocks = [threading.Lock() for _ in range(self.stripes)]
        return self._fd

    @contextlib.contextmanager
    def _locked(self, stripe: int) -> Iterator[None]:
        fd = self._lock_fd()
        tlock = self._tlocks[stripe]
        with tlock:
            fcntl.fcntl(fd, fcntl.F_OFD_SETLKW, _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, _LOCK_BASE + stripe, 1, 0))
            try:
                yield
            finally:
                fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _FLOCK.pack(fcntl.F_UNLCK, os.SEEK_SET, _LOCK_BASE + stripe, 1, 0))

    # -- records ------------------------------------------------------------------------------

    def _key(self, key: bytes | str) -> bytes:
        data = key.encode("utf-8", "surrogateescape") if isinstance(key, str) else bytes(key)
        if len(data) > self.key_max:
            if self.key_max < len(_LONG) + 32:
                raise ValueError(f"key of {len(data)} bytes: this table's keys are at most {self.key_max}")
            data = _LONG + hashlib.sha256(data).digest()  # a long key is stored as its digest
        return data

    @classmethod
    def views(cls, runtime, owner: str, names, key_max: int, value_size: int, stripes: int = 16,
              in_use: Callable[[bytes], bool] | None = None) -> dict:
        """This process's tables of the zones ``names`` (made on first use, kept in
        ``runtime.stash``): what a module's handlers call per request."""
        stash_key = f"{owner}.tables"
        tables = runtime.stash.get(stash_key)
        if tables is None:
            tables = runtime.stash[stash_key] = {
                name: cls(runtime.zone(name), key_max, value_size, stripes, in_use) for name in names}
        return tables

    def _where(self, key: bytes) -> tuple[int, int]:
        h = zlib.crc32(key)
        return h % self.stripes, (h // self.stripes) % self.slots

    def _slot_offset(self, stripe: int, slot: int) -> int:
        return _HEADER.size + stripe * self.stripe_size + _STRIPE.size + slot * self.slot_size

    def _find(self, stripe: int, start: int, key: bytes, now_ms: int) -> tuple[int | None, int | None]:
        """(offset of the live record of ``key`` or None, offset of a slot a new record may take)."""
        buf, free = self._buf, None
        for i in range(self.slots):
            off = self._slot_offset(stripe, (start + i) % self.slots)
            state, klen, expires, _ = _SLOT.unpack_from(buf, off)
            if state == _EMPTY:
                return None, free if free is not None else off
            live = state == _USED and (not expires or expires > now_ms)
            if live and klen == len(key) and buf[off + _SLOT.size: off + _SLOT.size + klen] == key:
                return off, None
            if not live and free is None:
                free = off
        return None, free

    def _evict(self, stripe: int) -> int:
        """The slot of the stripe's least recently used record not in use, emptied for a new one;
        raises TableFull when every record is in use."""
        oldest, where = None, None
        for i in range(self.slots):
            off = self._slot_offset(stripe, i)
            state, _, _, used = _SLOT.unpack_from(self._buf, off)
            if state == _USED and (oldest is None or used < oldest) and not (
                    self.in_use is not None and self.in_use(self._value(off))):
                oldest, where = used, off
        if where is None:
            raise TableFull(self.zone.name)
        self._buf[where] = _DELETED
        self._set_count(stripe, -1)
        return where

    def _tick(self, stripe: int) -> int:
        at = (_HEADER.size + stripe * self.stripe_size) >> 3
        clock = self._u64[at] + 1
        self._u64[at] = clock
        return clock

    def _set_count(self, stripe: int, delta: int) -> None:
        at = (_HEADER.size + stripe * self.stripe_size + 8) >> 3  # count u32, then 4 zero bytes
        self._u64[at] = max(0, (self._u64[at] & 0xFFFFFFFF) + delta)

    def _value(self, off: int) -> bytes:
        start = off + _SLOT.size + self.key_max
        return bytes(self._buf[start: start + self.value_size])

    def _write(self, stripe: int, off: int, key: bytes, value: bytes, ttl: float | None, now: float,
               new: bool) -> None:
        if len(value) != self.value_size:
            raise ValueError(f"value of {len(value)} bytes: this table's values are {self.value_size}")
        expires = int((now + ttl) * 1000) if ttl else 0
        start = off + _SLOT.size
        if new:  # key and value first, the state last: a half-written new record is not visible
            if self._buf[off] != _USED:  # (an expired record taken over was counted already)
                self._set_count(stripe, +1)
            self._buf[off] = _EMPTY if self._buf[off] == _EMPTY else _DELETED
            self._buf[start: start + len(key)] = key
        self._buf[start + self.key_max: start + self.key_max + self.value_size] = value
        at = off >> 3
        self._u64[at + 1] = expires
        self._u64[at + 2] = self._tick(stripe)
        self._u64[at] = _USED | len(key) << 16  # state, key length: last, one store

    def update(self, key: bytes | str, change: Callable[[bytes | None], tuple[bytes | None, Any]],
               ttl: float | None = None, now: float | None = None) -> Any:
        """Under the key's stripe lock: ``change(value or None)`` returns ``(new value, result)``;
        a new value is stored (expiring ``ttl`` seconds from now; None: never), None deletes
        the record (or stores nothing), and ``result`` is returned. ``change`` must be quick and
        must not touch the table. Raises :class:`TableFull` (nothing stored) when a new record
        finds its stripe full of records in use."""
        data = self._key(key)
        stripe, start = self._where(data)
        now = time.time() if now is None else now
        with self._locked(stripe):
            found, free = self._find(stripe, start, data, int(now * 1000))
            new_value, result = change(self._value(found) if found is not None else None)
            if new_value is None:
                if found is not None:
                    self._buf[found] = _DELETED
                    self._set_count(stripe, -1)
            elif found is not None:
                self._write(stripe, found, data, bytes(new_value), ttl, now, new=False)
            else:
                self._write(stripe, free if free is not None else self._evict(stripe), data, bytes(new_value), ttl,
                            now, new=True)
            return result

    def get(self, key: bytes | str, now: float | None = None) -> bytes | None:
        """The value of ``key``, or None (absent or expired). Does not count as a use."""
        data = self._key(key)
        stripe, start = self._where(data)
        with self._locked(stripe):
            found, _ = self._find(stripe, start, data, int((time.time() if now is None else now) * 1000))
            return self._value(found) if found is not None else None

    def put(self, key: bytes | str, value: bytes, ttl: float | None = None, now: float | None = None) -> None:
        """Store ``value`` for ``key`` (replacing it), expiring ``ttl`` seconds from now."""
        self.update(key, lambda old: (value, None), ttl, now)

    def delete(self, key: bytes | str) -> bool:
        """Remove ``key``; whether it was there."""
        return self.update(key, lambda old: (None, old is not None))

    def __len__(self) -> int:
        """Records in use (expired ones not yet reused included)."""
        total = 0
        for stripe in range(self.stripes):
            total += self._u64[(_HEADER.size + stripe * self.stripe_size + 8) >> 3] & 0xFFFFFFFF
        return total
