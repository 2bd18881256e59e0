"""The event ring: fixed-size entries in a shared-memory zone, one writer at a time.

Layout of ``zone.buf`` (little endian)::

    control   64 bytes     newest generation u64, dropped events u64, last publish msec u64,
                           the ring's birth (µs since the epoch, set once: ``Ring.birth_usec``),
                           the zone's tag key (16 random bytes, set once)
    workers   128 x 64     one slot per worker process (see ``WorkerSlot``)
    entries   capacity x 736
        seq u64            2g-1 while generation g is being written, 2g once it is whole
        timestamp u64      ms since the epoch (time.time(), so freezegun can fix it)
        lengths            channel u8, type u8, payload u16, origin u8 (0: a local event),
                           3 bytes padding
        origin generation  u64 (0 for a local event)
        channel 64, type 64, payload 512, origin 64 bytes (UTF-8)
    tags      capacity x 4 each slot's channel tag, written with the slot (under its seq)

The tags are the channel index: a channel-filtered read searches them (a few hundred KiB,
contiguous, searched by ``bytes.find``) instead of decoding every 736-byte entry, and reads
only the slots whose tag matches (a collision is caught by comparing the decoded channel). A
tag is a keyed BLAKE2b of the channel, 4 bytes, with a random key the zone keeps: anyone may
GET, and with an unkeyed hash (CRC-32 collisions are made at will) a client could name a
channel whose tag matches a busy one's and make every read decode the whole ring.

An all-zero zone is an empty ring, so a freshly created zone needs no initialisation.

Generation g lives in slot (g-1) % capacity. A writer takes the zone lock, marks the slot in
flux, writes it, marks it whole, and only then advances ``newest``: a reader never trusts a
slot whose seq is not exactly 2g, and re-reads seq after copying (a seqlock), so it never
returns a torn entry. A writer SIGKILLed mid-write leaves an odd seq past ``newest`` (or, killed
between marking the slot whole and advancing ``newest``, an even one: a generation no publish
returned, which no reader reads since it is past ``newest``); the next writer takes the same
generation and overwrites it, and the kernel has already dropped its lock. Generations therefore
start at 1 and are strictly increasing and never reused as long as the zone lives (worker
respawns included).

The words a reader reads without the lock (``newest``, ``dropped``, the last publish's time,
each slot's seq, a worker's delivery counters) change by one aligned 8-byte store each, so
they only move forward: a reader, or a writer that comes after a killed one, sees the old
value or the new one, never another. ``struct.pack_into`` does not do that: it zeroes its
destination, then writes the fields, so a reader racing it (or a writer killed between the
two) sees 0 — a newest of 0 makes the next publish take generation 1 again. The Python code
stores these words through ``ngxsim.words`` (a memoryview of 8-byte items: CPython copies an
item with one 8-byte ``memcpy``), the C writer with ``store64``.

A tag is trusted only for a slot no writer can have touched since the reader looked at
``newest``: generation g's slot is rewritten by g + capacity, so after a search the reader
re-reads ``newest`` and reads every generation up to ``newest + 1 - capacity`` whole (their
tags may already be the next lap's); above that line a tag is the one written with g.
"""

from __future__ import annotations

import struct
import os
import time
from hashlib import blake2b
from dataclasses import dataclass

from ngxsim import Event
from json.encoder import encode_basestring as _json_str  # a JSON string, non-ASCII left as is

from ngxsim import LivenessWatch
from ngxsim import process_alive as alive
from ngxsim import Zone, words

CHANNEL_MAX, TYPE_MAX, PAYLOAD_MAX = 64, 64, 512
ORIGIN_MAX = 64  # an instance id of a cluster (see docs/cluster.md)
MAX_WORKERS = 128
_JSON_CACHE_MAX = 16384  # events whose JSON text a process keeps for the API
MAX_CAPACITY = 262_144  # 166 MiB of shared memory; more is a misconfiguration, not a ring

_BIRTH = struct.Struct("<Q")
CONTROL_SIZE = 64
_KEY_OFF, _KEY_SIZE = 32, 16  # in the control block
_BIRTH_OFF = 24  # in the control block: when the ring was first used, µs since the epoch
_SLOT = struct.Struct("<IIQQQQQQQ")  # pid, subscribers, start, delivered, gaps, lost, last_msec, events, wakeups
SLOT_SIZE = 64
_TAG = struct.Struct("<I")
# time.time as Python has it is a builtin; a patched one (freezegun's) is not: call that one,
# else the C writer reads the same clock itself
_BUILTIN = type(len)
_EVENT_JSON = ('{"generation":%d,"channel":%s,"type":%s,"payload":%s,"timestamp_msec":%d,'
               '"origin":null,"origin_generation":null}')
_REMOTE_EVENT_JSON = ('{"generation":%d,"channel":%s,"type":%s,"payload":%s,"timestamp_msec":%d,'
                      '"origin":%s,"origin_generation":%d}')
TAG_SIZE = _TAG.size
_TAG_CACHE_MAX = 1024  # channels whose tag a process remembers (publishers use a handful)
_BODY = struct.Struct(f"<QBBHB3xQ{CHANNEL_MAX}s{TYPE_MAX}s{PAYLOAD_MAX}s{ORIGIN_MAX}s")
ENTRY_SIZE = 8 + _BODY.size  # the seq, then the body
ENTRIES_OFFSET = CONTROL_SIZE + MAX_WORKERS * SLOT_SIZE
LAYOUT_VERSION = 3  # 2: the channel tags after the entries; 3: the origin fields

assert ENTRY_SIZE == 736 and ENTRY_SIZE % 8 == 0


def ring_bytes(capacity: int) -> int:
    """Bytes of zone memory (after the core's zone header) a ring of ``capacity`` needs."""
    return ENTRIES_OFFSET + capacity * (ENTRY_SIZE + TAG_SIZE)


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
        self._tags_off = ENTRIES_OFFSET + capacity * ENTRY_SIZE
        # the control block, the worker slots and the entries as u64 words: word 0 is newest, 1
        # dropped, 2 the last publish's msec, any other u64 the word at its offset / 8 (the module
        # docstring says why)
        self._words = words(zone.buf[:self._tags_off])
        self._tags: dict[bytes | str, int] = {}  # channel -> its tag, so a publish hashes nothing
        self._key: bytes | None = None
        # the core's C publish when it is built (same bytes, same lock), else None: the Python below
        self._writer = zone.event_ring_writer(ENTRIES_OFFSET, self._tags_off, capacity, CHANNEL_MAX, TYPE_MAX,
                                              PAYLOAD_MAX, ORIGIN_MAX)
        # the same as read() and newest, as the plainest callables there are: a dispatcher's
        # every wake-up calls them (the C reader's own methods when it is built)
        self.read_event = self.read if self._writer is None else self._writer.read
        self.newest_now = self._newest_python if self._writer is None else self._writer.newest

    # -- control block --------------------------------------------------------------------------

    @property
    def newest(self) -> int:
        return self.newest_now()

    def _newest_python(self) -> int:
        return self._words[0]

    def control(self) -> tuple[int, int, int]:
        """(newest generation, dropped events, last publish msec)."""
        words = self._words
        return words[0], words[1], words[2]

    def oldest_for(self, newest: int) -> int:
        return max(1, newest - self.capacity + 1) if newest else 0

    # -- writing --------------------------------------------------------------------------------

    def publish_text(self, channel: str, type: str, payload: str) -> int:
        """Check and append one event given as text (the ``ngxsim_publish`` hook's path);
        ValueError names a field that is wrong. The C writer takes ASCII text as it is."""
        writer = self._writer
        if writer is not None and channel.__class__ is str:
            tag = self._tags.get(channel)
            if tag is None:
                tag = self._tag_of(channel)
            gen = writer.publish(channel, type, payload, tag, -1 if time.time.__class__ is _BUILTIN else int(time.time() * 1000))
            if gen is not None:
                return gen
        return self.publish(*encode_event(channel, type, payload))

    def publish(self, channel: bytes, type: bytes, payload: bytes, timestamp_msec: int | None = None,
                origin: bytes | None = None, origin_generation: int = 0) -> int:
        """Append one (already checked) event; returns its generation and wakes every waiter.
        ``origin`` (1 to ORIGIN_MAX bytes) and ``origin_generation`` mark an event relayed from
        another instance; None: a local event."""
        tag = self._tags.get(channel)
        if tag is None:
            tag = self._tag_of(channel)
        if origin is not None and not (0 < len(origin) <= ORIGIN_MAX and 0 <= origin_generation < 1 << 64):
            raise ValueError(f"origin must be 1 to {ORIGIN_MAX} bytes and origin_generation a u64")
        writer = self._writer
        if writer is not None:
            if timestamp_msec is None and time.time.__class__ is not _BUILTIN:
                timestamp_msec = int(time.time() * 1000)  # a patched clock (freezegun): use it
            ts = -1 if timestamp_msec is None else timestamp_msec
            gen = (writer.publish(channel, type, payload, tag, ts) if origin is None else
                   writer.publish(channel, type, payload, tag, ts, origin, origin_generation))
            if gen is None:
                raise ValueError("event fields must be checked first (encode_event)")
            return gen
        return self._publish_py(channel, type, payload, tag, timestamp_msec, origin, origin_generation)

    def _publish_py(self, channel: bytes, type: bytes, payload: bytes, tag: int, timestamp_msec: int | None,
                    origin: bytes | None = None, origin_generation: int = 0) -> int:
        """The pure-Python writer: what the C one does, step by step."""
        if timestamp_msec is None:
            timestamp_msec = int(time.time() * 1000)
        origin = origin or b""
        buf, words, cap, zone = self.buf, self._words, self.capacity, self.zone
        with zone:  # the zone lock
            newest, dropped = words[0], words[1]
            gen = newest + 1
            slot = newest % cap
            off = ENTRIES_OFFSET + slot * ENTRY_SIZE
            seq = off >> 3
            words[seq] = 2 * gen - 1  # in flux, before any byte of the body (x86 keeps store order)
            _BODY.pack_into(buf, off + 8, timestamp_msec, len(channel), len(type), len(payload), len(origin),
                            origin_generation if origin else 0, channel, type, payload, origin)
            _TAG.pack_into(buf, self._tags_off + slot * TAG_SIZE, tag)
            words[seq] = 2 * gen  # whole
            words[1] = dropped + (gen > cap)
            words[2] = timestamp_msec
            words[0] = gen  # last: readers trust the slot from here on
            wake = zone.doorbell.bump()
        if wake:
            zone.doorbell.wake()
        return gen

    def _tag_of(self, channel: bytes | str) -> int:
        if len(self._tags) >= _TAG_CACHE_MAX:
            self._tags.clear()
        data = channel.encode("utf-8", "surrogatepass") if channel.__class__ is str else channel
        tag = self._tags[channel] = _TAG.unpack(self.channel_tag(data))[0]
        return tag

    def channel_tag(self, channel: bytes) -> bytes:
        """The 4 bytes a slot's tag holds for ``channel`` in this zone."""
        key = self._key
        if key is None:
            key = self._key = self._zone_key()
        return blake2b(channel, digest_size=TAG_SIZE, key=key).digest()

    @property
    def birth_usec(self) -> int:
        """When this ring was first used, in µs since the epoch: the same for every process
        while the zone lives, another one after the zone was made anew (a restart of the
        instance). With the generation it names an event across restarts."""
        birth = _BIRTH.unpack_from(self.buf, _BIRTH_OFF)[0]
        if not birth:
            with self.zone.lock():
                birth = _BIRTH.unpack_from(self.buf, _BIRTH_OFF)[0]
                if not birth:
                    birth = time.time_ns() // 1000
                    _BIRTH.pack_into(self.buf, _BIRTH_OFF, birth)
        return birth

    def _zone_key(self) -> bytes:
        """The zone's tag key: made by the first process that needs it, then the same for every
        process (and every later server start that keeps the zone, so old tags stay valid)."""
        key = bytes(self.buf[_KEY_OFF:_KEY_OFF + _KEY_SIZE])
        if key == bytes(_KEY_SIZE):
            with self.zone.lock():
                key = bytes(self.buf[_KEY_OFF:_KEY_OFF + _KEY_SIZE])
                if key == bytes(_KEY_SIZE):
                    key = os.urandom(_KEY_SIZE)
                    self.buf[_KEY_OFF:_KEY_OFF + _KEY_SIZE] = key
        return key

    # -- reading --------------------------------------------------------------------------------

    def read(self, gen: int) -> Event | None:
        """Generation ``gen`` if its slot still holds it whole, else None (overwritten, or being
        overwritten right now)."""
        if self._writer is not None:  # the same seqlock read, in the core's C accelerator
            return self._writer.read(gen)
        if gen <= 0:
            return None  # (an unwritten slot's seq is 0: it must not pass for generation 0)
        words = self._words
        off = ENTRIES_OFFSET + ((gen - 1) % self.capacity) * ENTRY_SIZE
        want = 2 * gen
        if words[off >> 3] != want:
            return None
        ts, lc, lt, lp, lo, og, ch, ty, pl, orig = _BODY.unpack_from(self.buf, off + 8)
        if words[off >> 3] != want:
            return None  # a writer lapped us while we copied: the copy may be torn
        if lo:
            return Event(gen, self.name, ch[:lc].decode(), ty[:lt].decode(), pl[:lp].decode(), ts,
                         orig[:lo].decode(), og)
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
            # Event.as_json's keys in its order, formatted directly: json.dumps of the dict
            # costs ~6x more, and this is what a cold read of a page spends its time on
            if event.origin is None:
                text = _EVENT_JSON % (gen, _json_str(event.channel), _json_str(event.type),
                                      _json_str(event.payload), event.timestamp_msec)
            else:
                text = _REMOTE_EVENT_JSON % (gen, _json_str(event.channel), _json_str(event.type),
                                             _json_str(event.payload), event.timestamp_msec,
                                             _json_str(event.origin), event.origin_generation)
            hit = self._json[gen] = (event.channel, text)
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
        first = oldest
        if since is not None:
            first = since + 1
            if first < oldest:
                missed, first = oldest - first, oldest
        if channel is not None:
            missed += self._walk_tagged(first, newest, since is not None, channel, limit, fetch, items)
            return items, newest, oldest, missed
        gens = range(first, newest + 1) if since is not None else range(newest, first - 1, -1)
        for gen in gens:
            if limit is not None and len(items) >= limit:
                break
            hit = fetch(gen)
            if hit is None:
                if since is None:
                    break  # newest first: from here down the writers have lapped us, all is gone
                missed += 1  # overwritten between our look at newest and now
            else:
                items.append(hit[1])
        if since is None:
            items.reverse()
        return items, newest, oldest, missed

    def _walk_tagged(self, lo, hi, ascending, channel, limit, fetch, items) -> int:
        """The channel-filtered walk of generations lo..hi (oldest first when ``ascending``,
        else newest first), appending to ``items``; returns how many generations it found
        overwritten. Reads only slots whose tag matches, plus, one by one, the oldest slots the
        writers may have reached since ``newest`` was read (their tags are not to be trusted:
        see the module docstring). Same answer as reading every slot."""
        tag = self.channel_tag(channel.encode("utf-8", "surrogatepass"))
        cap = self.capacity
        missed = 0
        step = 1 if ascending else -1
        cursor = lo if ascending else hi  # the next generation the walk considers
        while lo <= cursor <= hi and (limit is None or len(items) < limit):
            unsure = min(hi, self.newest + 1 - cap)  # generations <= this: read whole, not by tag
            if cursor <= unsure:
                hit = fetch(cursor)
                if hit is None:
                    if not ascending:
                        break  # newest first: from here down the writers have lapped us
                    missed += 1
                elif hit[0] == channel:
                    items.append(hit[1])
                cursor += step
                continue
            want = None if limit is None else limit - len(items)
            a, b = (cursor, hi) if ascending else (max(lo, unsure + 1), cursor)
            found = self._find_tag(tag, a, b, want, ascending)
            # the search covered a..b, or up to its last find when it stopped at ``want``
            done_to = found[-1] if want is not None and len(found) == want else (b if ascending else a)
            unsure = min(hi, self.newest + 1 - cap)  # where the writers got to while we searched
            if ascending and cursor <= unsure:
                continue  # they reached slots we searched: read those whole first, then search on
            stop = False
            for gen in found:
                if gen <= unsure:
                    break  # newest first: the rest of the search ran into rewritten slots
                hit = fetch(gen)
                if hit is None:  # lapped after the search (a reader descheduled for a whole lap)
                    if not ascending:
                        stop = True
                        break
                    missed += 1
                elif hit[0] == channel:  # else a collision: another channel, same tag
                    items.append(hit[1])
            if stop:
                break
            cursor = done_to + 1 if ascending else (done_to - 1 if done_to > unsure else unsure)
        if not ascending:
            items.reverse()
        return missed

    def _find_tag(self, tag: bytes, a: int, b: int, want: int | None, ascending: bool) -> list[int]:
        """Generations a..b whose slot's tag is ``tag``, in walk order, at most ``want``."""
        cap, base = self.capacity, self._tags_off
        runs = []  # a..b as runs of consecutive slots (two when it wraps around the end)
        gen = a
        while gen <= b:
            slot = (gen - 1) % cap
            n = min(b - gen + 1, cap - slot)
            runs.append((gen, slot, n))
            gen += n
        if not ascending:
            runs.reverse()
        out: list[int] = []
        for first, slot, n in runs:
            data = bytes(self.buf[base + slot * TAG_SIZE: base + (slot + n) * TAG_SIZE])
            i = data.find(tag) if ascending else data.rfind(tag)
            while i >= 0:
                if i % TAG_SIZE:  # a match straddling two tags: look on
                    i = data.find(tag, i + 1) if ascending else data.rfind(tag, 0, i + TAG_SIZE - 1)
                    continue
                out.append(first + i // TAG_SIZE)
                if len(out) == want:
                    return out
                i = data.find(tag, i + TAG_SIZE) if ascending else data.rfind(tag, 0, i)
        return out

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
                    # made anew (free, a dead worker's, or this one's again): read as free meanwhile
                    _SLOT.pack_into(self.buf, self._slot_off(index), pid, subscribers, start_time, delivered, 0, 0, 0, 0, 0)
                    return index
        return None

    def update_slot(self, index: int, delivered: int, gaps: int, lost: int, last_msec: int, events: int, wakeups: int) -> None:
        """Only the slot's own worker writes it (pid and start time stay), without the lock;
        readers tolerate a value one delivery old. One 8-byte store a counter, so a reader sees
        each at its old value or its new one, never 0 (``pack_into`` zeroes first)."""
        words, at = self._words, (self._slot_off(index) + 16) >> 3
        words[at] = delivered
        words[at + 1] = gaps
        words[at + 2] = lost
        words[at + 3] = last_msec
        words[at + 4] = events
        words[at + 5] = wakeups

    def release_slot(self, index: int, pid: int) -> None:
        with self.zone.lock():
            if self.slot(index).pid == pid:
                _SLOT.pack_into(self.buf, self._slot_off(index), 0, 0, 0, 0, 0, 0, 0, 0, 0)

    def live_slots(self) -> list[WorkerSlot]:
        """The slots of workers that are still running (a dead one's slot is not listed)."""
        slots = self._slots()
        live = self._watch.alive([(s.pid, s.start_time) for s in slots])
        return [s for s in slots if (s.pid, s.start_time) in live]
