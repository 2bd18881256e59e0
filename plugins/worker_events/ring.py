"""The event ring: fixed-size entries in a shared-memory zone, one writer at a time.

Layout of ``zone.buf`` (little endian)::

    control   64 bytes     newest generation u64, dropped events u64, last publish msec u64
    workers   128 x 64     one slot per worker process (see ``WorkerSlot``)
    entries   capacity x 664
        seq u64            2g-1 while generation g is being written, 2g once it is whole
        timestamp u64      ms since the epoch (time.time(), so freezegun can fix it)
        lengths            channel u8, type u8, payload u16, 4 bytes padding
        channel 64, type 64, payload 512 bytes (UTF-8)

An all-zero zone is an empty ring, so a freshly created zone needs no initialisation.

Generation g lives in slot (g-1) % capacity. A writer takes the zone lock, marks the slot in
flux, writes it, marks it whole, and only then advances ``newest``: a reader never trusts a
slot whose seq is not exactly 2g, and re-reads seq after copying (a seqlock), so it never
returns a torn entry. A writer SIGKILLed mid-write leaves an odd seq past ``newest``; the next
writer takes the same generation and overwrites it, and the kernel has already dropped its
lock. Generations therefore start at 1 and are strictly increasing and never reused as long as
the zone lives (worker respawns included).
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass

from ngxsim.core.events import Event
from ngxsim.core.http.responses import compact_json
from ngxsim.core.instance import LivenessWatch, alive
from ngxsim.core.shm import Zone

CHANNEL_MAX, TYPE_MAX, PAYLOAD_MAX = 64, 64, 512
MAX_WORKERS = 128
_JSON_CACHE_MAX = 16384  # events whose JSON text a process keeps for the API
MAX_CAPACITY = 262_144  # 166 MiB of shared memory; more is a misconfiguration, not a ring

_CONTROL = struct.Struct("<QQQ")  # newest, dropped, last_publish_msec
_NEWEST = struct.Struct("<Q")
CONTROL_SIZE = 64
_SLOT = struct.Struct("<IIQQQQQQQ")  # pid, subscribers, start, delivered, gaps, lost, last_msec, events, wakeups
_SLOT_STATS = struct.Struct("<QQQQQQ")  # the part after pid, subscribers and start time
SLOT_SIZE = 64
_SEQ = struct.Struct("<Q")
_BODY = struct.Struct(f"<QBBH4x{CHANNEL_MAX}s{TYPE_MAX}s{PAYLOAD_MAX}s")
ENTRY_SIZE = _SEQ.size + _BODY.size
ENTRIES_OFFSET = CONTROL_SIZE + MAX_WORKERS * SLOT_SIZE
LAYOUT_VERSION = 1

assert ENTRY_SIZE == 664 and ENTRY_SIZE % 8 == 0


def ring_bytes(capacity: int) -> int:
    """Bytes of zone memory (after the core's zone header) a ring of ``capacity`` needs."""
    return ENTRIES_OFFSET + capacity * ENTRY_SIZE


def encode_event(channel: str, type_: str, payload: str) -> tuple[bytes, bytes, bytes]:
    """Check an event's fields and return them as UTF-8; ValueError names the problem.

    Limits are bytes of UTF-8, not characters, and too long is rejected, never truncated.
    """
    if (channel.__class__ is str and type_.__class__ is str and payload.__class__ is str
            and channel.isascii() and type_.isascii() and payload.isascii()):
        c, t, p = channel.encode(), type_.encode(), payload.encode()  # the common case, fast
        if 0 < len(c) <= CHANNEL_MAX and 0 < len(t) <= TYPE_MAX and len(p) <= PAYLOAD_MAX:
            return c, t, p
    out = []
    for field, value, limit, required in (
        ("channel", channel, CHANNEL_MAX, True),
        ("type", type_, TYPE_MAX, True),
        ("payload", payload, PAYLOAD_MAX, False),
    ):
        if not isinstance(value, str):
            raise ValueError(f'"{field}" must be a string, not {_json_type(value)}')
        data = _utf8(field, value)
        if required and not data:
            raise ValueError(f'"{field}" must not be empty')
        if len(data) > limit:
            raise ValueError(f'"{field}" is {len(data)} bytes of UTF-8, more than the limit of {limit}')
        out.append(data)
    return out[0], out[1], out[2]


def _utf8(field: str, value: str) -> bytes:
    try:
        return value.encode("utf-8", "strict")
    except UnicodeEncodeError:
        raise ValueError(f'"{field}" is not valid Unicode (lone surrogate)') from None


def _json_type(value: object) -> str:
    return {type(None): "null", bool: "a boolean", int: "a number", float: "a number",
            list: "an array", dict: "an object"}.get(type(value), type(value).__name__)


@dataclass
class Scan:
    """The answer to one read of the ring."""

    events: list[Event]
    newest: int
    oldest: int
    missed: int  # generations the reader asked for that were overwritten before it read them


@dataclass(frozen=True)
class WorkerSlot:
    index: int
    pid: int
    subscribers: int  # modules listening to this zone in that worker; 0: nothing to deliver
    start_time: int
    delivered: int
    gaps: int
    lost: int
    last_delivery_msec: int
    events: int
    wakeups: int


class Ring:
    """A view of one zone's ring in this process."""

    def __init__(self, zone: Zone, capacity: int):
        if not 1 <= capacity <= MAX_CAPACITY:
            raise ValueError(f"ring capacity must be between 1 and {MAX_CAPACITY}")
        if zone.usable < ring_bytes(capacity):
            raise ValueError(f'zone "{zone.name}" has {zone.usable} bytes, the ring needs {ring_bytes(capacity)}')
        self.zone = zone
        self.name = zone.name
        self.capacity = capacity
        self.buf = zone.buf
        self._watch = LivenessWatch()
        # generation -> (channel, the event's JSON text): events never change once published,
        # so each process serialises each one once (the API's hot path)
        self._json: dict[int, tuple[str, str]] = {}

    # -- control block --------------------------------------------------------------------------

    @property
    def newest(self) -> int:
        return _NEWEST.unpack_from(self.buf, 0)[0]

    def control(self) -> tuple[int, int, int]:
        """(newest generation, dropped events, last publish msec)."""
        return _CONTROL.unpack_from(self.buf, 0)

    def oldest_for(self, newest: int) -> int:
        return max(1, newest - self.capacity + 1) if newest else 0

    # -- writing --------------------------------------------------------------------------------

    def publish(self, channel: bytes, type: bytes, payload: bytes, timestamp_msec: int | None = None) -> int:
        """Append one (already checked) event; returns its generation and wakes every waiter."""
        if timestamp_msec is None:
            timestamp_msec = int(time.time() * 1000)
        buf, cap, zone = self.buf, self.capacity, self.zone
        with zone:  # the zone lock
            newest, dropped, _ = _CONTROL.unpack_from(buf, 0)
            gen = newest + 1
            off = ENTRIES_OFFSET + ((gen - 1) % cap) * ENTRY_SIZE
            _SEQ.pack_into(buf, off, 2 * gen - 1)
            _BODY.pack_into(buf, off + 8, timestamp_msec, len(channel), len(type), len(payload), channel, type, payload)
            _SEQ.pack_into(buf, off, 2 * gen)
            _CONTROL.pack_into(buf, 0, gen, dropped + (gen > cap), timestamp_msec)
            wake = zone.doorbell.bump()
        if wake:
            zone.doorbell.wake()
        return gen

    # -- reading --------------------------------------------------------------------------------

    def read(self, gen: int) -> Event | None:
        """Generation ``gen`` if its slot still holds it whole, else None (overwritten, or being
        overwritten right now)."""
        buf = self.buf
        off = ENTRIES_OFFSET + ((gen - 1) % self.capacity) * ENTRY_SIZE
        want = 2 * gen
        if _SEQ.unpack_from(buf, off)[0] != want:
            return None
        ts, lc, lt, lp, ch, ty, pl = _BODY.unpack_from(buf, off + 8)
        if _SEQ.unpack_from(buf, off)[0] != want:
            return None  # a writer lapped us while we copied: the copy may be torn
        return Event(gen, self.name, ch[:lc].decode(), ty[:lt].decode(), pl[:lp].decode(), ts)

    def scan(self, since: int | None = None, limit: int | None = None, channel: str | None = None) -> Scan:
        """Events in ascending generation order.

        Without ``since``: the newest ``limit`` (all when None). With ``since``: generations
        after it, the oldest ``limit`` first (so a client pages forward). ``missed`` counts the
        generations after ``since`` that the ring no longer holds.
        """
        return Scan(*self._walk(since, limit, channel, self._event_of))

    def json_scan(self, since: int | None = None, limit: int | None = None, channel: str | None = None):
        """Like ``scan`` but gives each event as its JSON text: (texts, newest, oldest, missed).

        Serves the API: a generation's JSON is made once per process and reused while the ring
        holds it (``oldest`` is arithmetic on ``newest``, so a cached event is known to be still
        there without touching its slot)."""
        texts, newest, oldest, missed = self._walk(since, limit, channel, self._json_of)
        if len(self._json) > min(self.capacity, _JSON_CACHE_MAX) + 256:
            self._prune_json(oldest)
        return texts, newest, oldest, missed

    def _event_of(self, gen: int) -> tuple[str, Event] | None:
        event = self.read(gen)
        return None if event is None else (event.channel, event)

    def _json_of(self, gen: int) -> tuple[str, str] | None:
        hit = self._json.get(gen)
        if hit is None:
            event = self.read(gen)
            if event is None:
                return None
            hit = self._json[gen] = (event.channel, compact_json(event.as_json()))
        return hit

    def _walk(self, since, limit, channel, fetch):
        """The one scan behind ``scan`` and ``json_scan``: ``fetch(gen)`` gives (channel, item)
        or None when the slot no longer holds ``gen``. Returns (items, newest, oldest, missed)."""
        newest = self.newest
        oldest = self.oldest_for(newest)
        items: list = []
        missed = 0
        if newest == 0 or limit == 0:
            return items, newest, oldest, 0
        if since is not None:
            first = since + 1
            if first < oldest:
                missed, first = oldest - first, oldest
            gens = range(first, newest + 1)
        else:
            gens = range(newest, oldest - 1, -1)
        for gen in gens:
            if limit is not None and len(items) >= limit:
                break
            hit = fetch(gen)
            if hit is None:
                if since is None:
                    break  # newest first: from here down the writers have lapped us, all is gone
                missed += 1  # overwritten between our look at newest and now
            elif channel is None or hit[0] == channel:
                items.append(hit[1])
        if since is None:
            items.reverse()
        return items, newest, oldest, missed

    def _prune_json(self, oldest: int) -> None:
        """Forget what the ring no longer holds, and keep at most _JSON_CACHE_MAX entries (a
        huge ring read whole must not pin its JSON in every worker). list(dict) is one atomic
        copy, so a concurrent request thread adding an entry cannot break the walk."""
        cache = self._json
        gens = sorted(list(cache))
        stale = [g for g in gens if g < oldest]
        keep_from = gens[-_JSON_CACHE_MAX] if len(gens) - len(stale) > _JSON_CACHE_MAX else oldest
        for gen in gens:
            if gen < keep_from:
                cache.pop(gen, None)

    # -- worker slots ---------------------------------------------------------------------------

    def _slot_off(self, index: int) -> int:
        return CONTROL_SIZE + index * SLOT_SIZE

    def slot(self, index: int) -> WorkerSlot:
        return WorkerSlot(index, *_SLOT.unpack_from(self.buf, self._slot_off(index)))

    def _slots(self) -> list[WorkerSlot]:
        """Every occupied slot, from one read of the table."""
        table = self.buf[CONTROL_SIZE:ENTRIES_OFFSET]
        return [WorkerSlot(i, *fields) for i, fields in enumerate(_SLOT.iter_unpack(table)) if fields[0]]

    def claim_slot(self, pid: int, start_time: int, delivered: int, subscribers: int = 0) -> int | None:
        """Take a free slot (empty, or whose worker is dead) for this worker; None if all 128
        are held by live workers."""
        with self.zone.lock():
            taken = {s.index: s for s in self._slots()}
            for index in range(MAX_WORKERS):
                s = taken.get(index)
                if s is None or s.pid == pid or not alive(s.pid, s.start_time):
                    _SLOT.pack_into(self.buf, self._slot_off(index), pid, subscribers, start_time, delivered, 0, 0, 0, 0, 0)
                    return index
        return None

    def update_slot(self, index: int, delivered: int, gaps: int, lost: int, last_msec: int, events: int, wakeups: int) -> None:
        """Only the slot's own worker writes it (pid and start time stay); readers tolerate a
        value one delivery old."""
        _SLOT_STATS.pack_into(self.buf, self._slot_off(index) + 16, delivered, gaps, lost, last_msec, events, wakeups)

    def release_slot(self, index: int, pid: int) -> None:
        with self.zone.lock():
            if self.slot(index).pid == pid:
                _SLOT.pack_into(self.buf, self._slot_off(index), 0, 0, 0, 0, 0, 0, 0, 0, 0)

    def live_slots(self) -> list[WorkerSlot]:
        """The slots of workers that are still running (a dead one's slot is not listed)."""
        slots = self._slots()
        live = self._watch.alive([(s.pid, s.start_time) for s in slots])
        return [s for s in slots if (s.pid, s.start_time) in live]
