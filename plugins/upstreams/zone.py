"""An upstream's shared memory: its snapshots, its peers' counters, every worker's in-flight count.

Layout of ``zone.buf`` (every field little-endian)::

    header (64)   magic, snapshot version, active area, snapshot length, slots N, rows W, area size
    N peer slots  (416 each) peer id, flags, requests, fails, the passive-failure window (fails,
                  accessed, checked) and the health healthchecks reports; then NGINX Plus's
                  peer statistics (responses by class, bytes sent and received, unavail, health
                  check totals, last selected, downtime: see ``PeerStats``); the recent
                  responses' times (two windows); the responses by status code (16 codes)
    W worker rows (16 + 2N each) pid, its idle kept connections to the upstream, start time, and
                  the requests it has in flight to each slot
    2 areas       snapshot JSON, double-buffered: a new one is written into the idle area and
                  activated by one header write, under the zone lock

Why this shape: a snapshot changes rarely (API, refresh) and is read whole by each worker when it
delivers ``snapshot_activated``, so it is plain JSON under the lock. Counters change on every
proxied request, so they are fixed-size fields; the pure counters (requests, failures, responses,
bytes, unavail) move by ``Zone.add_u64`` — atomic adds without the zone lock where the core's
accelerator is built — and are never rewritten by a locked read-modify-write (which could lose
a concurrent add): a locked writer writes only its own fields (the failure window, the health,
the flags). In-flight counts are per worker row (no lock: each
worker writes only its own row) and summed over the *live* rows, so a worker SIGKILLed mid-request
does not leave a peer "active" forever and ``peer_drained`` still comes.

Every field some process reads without the lock (the balancer's in-flight counts and failure
window, the API's statistics, the flags) or that must outlive a writer SIGKILLed under it (the
header's active area) changes by one aligned store of its own size (``ngxsim.words``), never by
``struct.pack_into``: that zeroes its destination before writing it, so the balancer saw a peer
at 0 requests in flight (past ``max_conns``) or at 0 failures (back from ``max_fails`` before
``fail_timeout``), and a worker killed there left it so. ``pack_into`` writes only fields made
from zero (a slot or a row reset, a new code, a new time window).
"""

from __future__ import annotations

import json
import os
import struct
import threading
import time
from dataclasses import dataclass

from ngxsim import process_start_time, words

_MAGIC = b"UPSZONE1"
_HEADER = struct.Struct("<8sQIIIII")  # magic, version, active area, length, slots, rows, area size
_SLOT = struct.Struct("<IIQQIBBHIIdd")
# at slot + 64: responses 1xx..5xx, sent, received, unavail, health checks, failed checks, times
# unhealthy, last check passed; last selected (epoch), down since (epoch, 0: up), downtime (s),
# unavail until (epoch, 0: not unavail)
_STATS = struct.Struct("<QQQQQQQQQQQQdddd")
_DOWN_SINCE, _DOWNTIME, _UNAVAIL_UNTIL = 13, 14, 15  # their indexes in _STATS
_STATS_AT = 64
# single fields of a slot, written one by one (the per-request accounting, and the locked writers,
# which write only their own fields): offsets in the slot of _SLOT's flags, requests, fails_total,
# fails, accessed, checked, and of the stats' responses, sent, received, unavail, health checks
# (and the three after it), last selected and down since (and downtime after it)
_U32, _F64 = struct.Struct("<I"), struct.Struct("<d")
_FLAGS_AT, _REQUESTS_AT, _FAILS_TOTAL_AT, _FAILS_AT, _ACCESSED_AT, _CHECKED_AT = 4, 8, 16, 24, 40, 48
_HEALTH_AT, _HEALTH_COUNTS_AT = 28, 32  # health (u8); health check fails, passes (u32 each)
_RESPONSES_AT, _SENT_AT, _RECEIVED_AT, _UNAVAIL_AT = _STATS_AT, _STATS_AT + 40, _STATS_AT + 48, _STATS_AT + 56
_CHECKS_AT, _SELECTED_AT, _DOWN_AT = _STATS_AT + 64, _STATS_AT + 96, _STATS_AT + 104
_TWO_U32 = struct.Struct("<II")
# at slot + 192: NGINX Plus's header_time and response_time, averages of the recent responses:
# two buckets, one per window of TIME_WINDOW seconds (even, odd), each its tag (u32: the window's
# and the peer's low 16 bits, so that an add lands only in its own window of its own peer), then
# the sums of header and response times (µs) and the responses timed; the averages are over both
_TIMES_AT, _TIME_BUCKET = 192, struct.Struct("<I4xQQQ")
TIME_WINDOW = 10.0
# at slot + 256: the responses by status code (NGINX Plus's responses.codes): 16 codes (u16, 0:
# free; a code takes a free one under the zone lock), then their counts (u64, moved by add_u64)
_CODES_AT, _CODE_COUNTS_AT, CODES = 256, 288, 16
_CODES = struct.Struct(f"<{CODES}H")
SLOT_SIZE = 416
ROWS = 128
_ROW_HEAD = struct.Struct("<IIQ")  # pid, idle kept connections (keepalive), start time
_IDLE_AT = 4
HEALTH_NONE, HEALTH_UP, HEALTH_DOWN, HEALTH_CHECKING = 0, 1, 2, 3
FLAG_DRAINED_PUBLISHED = 1


def slot_count(usable: int) -> int:
    return max(8, min(1024, usable // 2048))


@dataclass(frozen=True)
class Layout:
    slots: int
    rows: int
    row_size: int
    slots_at: int
    rows_at: int
    areas_at: int
    area_size: int

    @classmethod
    def for_size(cls, usable: int) -> "Layout":
        n = slot_count(usable)
        row_size = (_ROW_HEAD.size + 2 * n + 7) // 8 * 8
        slots_at = 64
        rows_at = slots_at + n * SLOT_SIZE
        areas_at = rows_at + ROWS * row_size
        return cls(n, ROWS, row_size, slots_at, rows_at, areas_at, (usable - areas_at) // 2)


@dataclass
class PeerCounters:
    requests: int
    fails_total: int
    fails: int
    health: int
    health_fails: int
    health_passes: int
    accessed: float
    checked: float
    flags: int


@dataclass
class PeerStats:
    """NGINX Plus's statistics of a peer (``/api/N/http/upstreams``), shared by every worker."""

    responses: tuple[int, int, int, int, int]  # 1xx .. 5xx
    sent: int
    received: int
    unavail: int
    checks: int
    check_fails: int
    unhealthy: int
    last_passed: bool
    selected: float  # epoch seconds, 0: never
    down_since: float  # epoch seconds, 0: not down
    downtime: float  # seconds down before down_since
    unavail_until: float  # epoch seconds: the end of the max_fails window, 0: not unavail
    header_time: int | None = None  # ms, the average of the recent responses (None: none timed)
    response_time: int | None = None
    codes: dict[str, int] | None = None  # responses by status code ("200": 12)

    # NGINX Plus's ``downtime`` is the time a peer spent in the states ``unavail`` (max_fails
    # failures within fail_timeout), ``checking`` and ``unhealthy`` (health checks), and
    # ``downstart`` when it last entered them. The causes overlap (a peer can be unhealthy and
    # unavail at once): one interval is kept, open from the first cause to the end of the last.
    # A health state ends by an event (set_health); ``unavail`` by one (a success resets the
    # failures) or by time passing (unavail_until): such an interval is closed when next looked
    # at, at unavail_until.

    def down_end(self, health: int, now: float) -> float:
        """When the open down interval ended, or ``now`` if it goes on (``health``: the slot's)."""
        if health in (HEALTH_DOWN, HEALTH_CHECKING) or self.unavail_until > now:
            return now
        return self.unavail_until

    def downtime_ms(self, health: int, now: float) -> int:
        """``downtime`` at ``now``, in milliseconds."""
        open_ = max(0.0, self.down_end(health, now) - self.down_since) if self.down_since else 0.0
        return int((self.downtime + open_) * 1000)

    def downstart(self, health: int, now: float) -> float:
        """When the peer became down, if it is now (epoch seconds), else 0."""
        return self.down_since if self.down_since and self.down_end(health, now) >= now else 0.0


def _settle(v: list, health: int, now: float, ended: float = 0.0) -> None:
    """Close the open down interval of the stats fields ``v`` if no cause holds at ``now``:
    at ``ended`` (a health state that ends now) or when the unavail window ran out."""
    if not v[_DOWN_SINCE] or health in (HEALTH_DOWN, HEALTH_CHECKING) or v[_UNAVAIL_UNTIL] > now:
        return
    v[_DOWNTIME] += max(0.0, max(v[_UNAVAIL_UNTIL], ended) - v[_DOWN_SINCE])
    v[_DOWN_SINCE] = v[_UNAVAIL_UNTIL] = 0.0


def _unavail(v: list, health: int, now: float, until: float) -> None:
    """The max_fails window (re)starts at ``now``: the peer is unavail until ``until``."""
    _settle(v, health, now)  # an earlier window that ran out is a closed interval
    v[_DOWN_SINCE] = v[_DOWN_SINCE] or now
    v[_UNAVAIL_UNTIL] = max(v[_UNAVAIL_UNTIL], until)


class UpstreamZone:
    """One upstream's zone in this process."""

    def __init__(self, zone):
        self.zone = zone
        self.buf = zone.buf
        # the zone as items of each size: item i is at byte i * size (so at offset o, o // size)
        self._u16, self._u32, self._u64, self._f64 = (words(zone.buf, code) for code in "HIQd")
        self.layout = Layout.for_size(zone.usable)
        self._row: int | None = None
        self._counts_at: int | None = None  # where this worker's row's in-flight counts start
        self._row_lock = threading.Lock()  # threads of one worker share its row

    # -- snapshots ---------------------------------------------------------------------------

    def initialised(self) -> bool:
        return bytes(self.buf[:8]) == _MAGIC

    def read_snapshot(self) -> dict | None:
        """The active snapshot (None before the first one was written)."""
        with self.zone.lock():
            return self._read_locked()

    def _read_locked(self) -> dict | None:
        magic, version, active, length, *_ = _HEADER.unpack_from(self.buf, 0)
        if magic != _MAGIC or not length:
            return None
        start = self.layout.areas_at + active * self.layout.area_size
        return json.loads(bytes(self.buf[start:start + length]))

    def update(self, change):
        """Under the zone lock: ``change(current_snapshot_or_None) -> new snapshot dict`` (or
        raise, activating nothing). Writes the new snapshot into the idle area and activates it
        with the next version. Returns ``(new snapshot, change's second result)`` when change
        returns a pair, else ``(new, None)``."""
        with self.zone.lock():
            current = self._read_locked()
            result = change(current)
            new, extra = result if isinstance(result, tuple) else (result, None)
            if new is None:
                return current, extra
            version = (current["version"] if current else 0) + 1
            new["version"] = version
            # "checking" is an instruction for the slot below, not part of the stored snapshot
            checking = {p["id"] for p in new["peers"] if p.pop("checking", False)}
            text = json.dumps(new, separators=(",", ":")).encode()
            if len(text) > self.layout.area_size:
                raise OverflowError(f"the snapshot needs {len(text)} bytes and the zone holds {self.layout.area_size}: "
                                    f"give the upstream a larger zone")
            magic, _, active, *_ = _HEADER.unpack_from(self.buf, 0)
            idle = 0 if magic != _MAGIC else 1 - active
            start = self.layout.areas_at + idle * self.layout.area_size
            self.buf[start:start + len(text)] = text
            for slot in {p["slot"] for p in new["peers"]} - {p["slot"] for p in (current or {"peers": []})["peers"]}:
                self._reset_slot(slot, None)
            for peer in new["peers"]:
                if self._slot_id(peer["slot"]) != _held(peer["id"]):
                    # a new peer: fresh counters; "checking" when mandatory health checks must pass first
                    self._reset_slot(peer["slot"], peer["id"], HEALTH_CHECKING if peer["id"] in checking else HEALTH_NONE)
            self._activate(magic == _MAGIC, version, idle, len(text))
            return new, extra

    def _activate(self, initialised: bool, version: int, area: int, length: int) -> None:
        """Under the zone lock: the snapshot of ``length`` bytes in ``area`` is the active one."""
        if not initialised:  # the first snapshot: nothing to lose, the magic last
            _HEADER.pack_into(self.buf, 0, bytes(8), version, area, length, self.layout.slots, self.layout.rows,
                              self.layout.area_size)
            self.buf[:8] = _MAGIC
        else:  # the version, then the active area with its length in one store: a writer killed
            self._u64[1] = version  # anywhere leaves the old snapshot or the new, whole
            self._u64[2] = area | length << 32

    # -- peer slots --------------------------------------------------------------------------

    def _slot_at(self, slot: int) -> int:
        return self.layout.slots_at + slot * SLOT_SIZE

    def _slot_id(self, slot: int) -> int:
        return struct.unpack_from("<I", self.buf, self._slot_at(slot))[0]

    def _reset_slot(self, slot: int, peer_id: int | None, health: int = HEALTH_NONE) -> None:
        """Fresh counters for ``peer_id`` (None: the slot is empty); a peer that starts
        ``checking`` starts down."""
        at = self._slot_at(slot)
        self.buf[at:at + SLOT_SIZE] = bytes(SLOT_SIZE)
        _SLOT.pack_into(self.buf, at, 0 if peer_id is None else _held(peer_id), 0, 0, 0, 0, health, 0, 0, 0, 0, 0.0, 0.0)
        if health == HEALTH_CHECKING:
            _F64.pack_into(self.buf, at + _DOWN_AT, time.time())  # down since

    def stats(self, slot: int) -> PeerStats:
        at = self._slot_at(slot)
        v = _STATS.unpack_from(self.buf, at + _STATS_AT)
        low = _U32.unpack_from(self.buf, at)[0] & 0xFFFF
        header = response = count = 0
        for bucket in range(2):
            tag, header_us, response_us, timed = _TIME_BUCKET.unpack_from(self.buf, at + _TIMES_AT + 32 * bucket)
            if timed and tag & 0xFFFF == low:  # (a bucket of an earlier peer of the slot is not this one's)
                header, response, count = header + header_us, response + response_us, count + timed
        counts = struct.unpack_from(f"<{CODES}Q", self.buf, at + _CODE_COUNTS_AT)
        codes = {str(code): n for code, n in sorted(zip(_CODES.unpack_from(self.buf, at + _CODES_AT), counts))
                 if code and n}
        return PeerStats(tuple(v[0:5]), v[5], v[6], v[7], v[8], v[9], v[10], bool(v[11]), v[12], v[13], v[14], v[15],
                         header // count // 1000 if count else None, response // count // 1000 if count else None,
                         codes)

    def peer_state(self, slot: int) -> tuple[PeerCounters, PeerStats]:
        """A slot's counters and statistics, read together (under the zone lock)."""
        with self.zone.lock():
            return self.counters(slot), self.stats(slot)

    def _update_stats(self, at: int, change) -> None:
        """Under the zone lock: ``change(list of the stats fields)`` edits the health checks'
        (checks, failed checks, times unhealthy, last check passed, down since, downtime, unavail
        until); the others are written back as they were not (the counters move by ``add_u64``)."""
        values = list(_STATS.unpack_from(self.buf, at + _STATS_AT))
        change(values)
        u64, checks = self._u64, (at + _CHECKS_AT) >> 3
        for i in range(4):
            u64[checks + i] = values[8 + i]
        self._store_down(at, values)

    def _store_down(self, at: int, values: list) -> None:
        """Down since, downtime, unavail until of the stats fields ``values`` into the slot at ``at``."""
        f64, down = self._f64, (at + _DOWN_AT) >> 3
        f64[down], f64[down + 1], f64[down + 2] = values[_DOWN_SINCE:_UNAVAIL_UNTIL + 1]

    def selected(self, slot: int, peer_id: int, now: float) -> None:
        """The balancer chose the peer for a request: NGINX Plus counts ``requests`` here (with
        ``active``), and remembers when (``selected``)."""
        at = self.layout.slots_at + slot * SLOT_SIZE
        self.zone.add_u64(((at + _REQUESTS_AT, 1),), at, peer_id + 1, at + _SELECTED_AT, now)  # guard: _held

    def counters(self, slot: int) -> PeerCounters:
        (_, flags, requests, fails_total, fails, health, _, _, hfails, hpasses,
         accessed, checked) = _SLOT.unpack_from(self.buf, self._slot_at(slot))
        return PeerCounters(requests, fails_total, fails, health, hfails, hpasses, accessed, checked, flags)

    def failure_window(self, slot: int) -> tuple[int, float]:
        """The peer's failures in its current window and when it was last checked (what the
        balancer asks on each pick of a peer with ``max_fails``)."""
        at = self.layout.slots_at + slot * SLOT_SIZE
        return self._u32[(at + _FAILS_AT) >> 2], self._f64[(at + _CHECKED_AT) >> 3]

    def health(self, slot: int) -> int:
        return self.buf[self._slot_at(slot) + _HEALTH_AT]

    def set_health(self, slot: int, peer_id: int, health: int, fails: int, passes: int, now: float = 0.0) -> bool:
        """Record what healthchecks reports after one probe (``fails``: consecutive failed
        probes, so more than 0 when this one failed); count it into the peer's health-check
        statistics and its downtime. False when the slot no longer holds that peer."""
        with self.zone.lock():
            at = self._slot_at(slot)
            if self._slot_id(slot) != _held(peer_id):
                return False
            before = self.buf[at + _HEALTH_AT]
            self.buf[at + _HEALTH_AT] = health
            self._u32[(at + _HEALTH_COUNTS_AT) >> 2] = fails
            self._u32[(at + _HEALTH_COUNTS_AT + 4) >> 2] = passes

            def count(v):
                v[8] += 1
                v[9] += fails > 0
                v[11] = int(fails == 0)
                if health == HEALTH_DOWN and before != HEALTH_DOWN:
                    v[10] += 1
                if health in (HEALTH_DOWN, HEALTH_CHECKING):
                    _settle(v, before, now)  # an unavail window that ran out before is its own interval
                    v[_DOWN_SINCE] = v[_DOWN_SINCE] or now
                elif before in (HEALTH_DOWN, HEALTH_CHECKING):
                    _settle(v, health, now, ended=now)

            self._update_stats(at, count)
            return True

    def finish(self, slot: int, peer_id: int, failed: bool, success: bool, now: float, max_fails: int,
               status: int = 0, sent: int = 0, received: int = 0, fail_timeout: float = 0.0,
               wall: float | None = None, times: tuple[float, float] | None = None) -> bool:
        """A try on the peer ended: count its response (``status``, 0 for none; its class and
        its code), its bytes and ``times`` (seconds to its header and to its end), and run
        nginx's passive failure accounting (``max_fails`` failures within ``fail_timeout``
        make the peer unavailable for that long; ``now`` is ``time.monotonic()``, ``wall``
        ``time.time()`` for the downtime). Returns True when this failure just made the peer
        unavailable."""
        buf, at, held = self.buf, self.layout.slots_at + slot * SLOT_SIZE, peer_id + 1  # _held
        adds = [(at + _SENT_AT, sent), (at + _RECEIVED_AT, received)]
        if 100 <= status <= 599:
            adds.append((at + _RESPONSES_AT + 8 * (status // 100 - 1), 1))
            code = self._code_index(at, held, status)
            if code is not None:
                adds.append((at + _CODE_COUNTS_AT + 8 * code, 1))
            if times is not None:
                self._time(at, held, now, times)
        tripped = False
        if failed:  # the failure window is consistent with itself: under the lock
            with self.zone.lock():
                if _U32.unpack_from(buf, at)[0] != held:
                    return False
                fails = self._u32[(at + _FAILS_AT) >> 2] + 1
                self._u32[(at + _FAILS_AT) >> 2] = fails
                self._f64[(at + _ACCESSED_AT) >> 3] = now  # accessed
                self._f64[(at + _CHECKED_AT) >> 3] = now
                tripped = bool(max_fails) and fails == max_fails
                if max_fails and fails >= max_fails:  # unavail from now for fail_timeout (API: "unavail")
                    self._down_window(at, wall, fail_timeout)
            adds += ((at + _FAILS_TOTAL_AT, 1), (at + _UNAVAIL_AT, int(tripped)))
        elif success:
            f64, accessed_at = self._f64, (at + _ACCESSED_AT) >> 3
            if f64[accessed_at] < f64[accessed_at + 1]:  # a success after the last failure was checked: nginx resets
                with self.zone.lock():  # (read again: a failure may have come meanwhile)
                    accessed, checked = f64[accessed_at], f64[accessed_at + 1]
                    if _U32.unpack_from(buf, at)[0] == held and accessed < checked:
                        self._u32[(at + _FAILS_AT) >> 2] = 0
                        self._down_window(at, wall, None)
        return self.zone.add_u64(adds, at, held) and tripped

    def _code_index(self, at: int, held: int, status: int) -> int | None:
        """Where the slot at ``at`` counts ``status`` (a free place taken under the lock the
        first time), or None when its 16 places hold other codes."""
        codes = _CODES.unpack_from(self.buf, at + _CODES_AT)
        if status in codes:
            return codes.index(status)
        if 0 not in codes:
            return None
        with self.zone.lock():
            codes = _CODES.unpack_from(self.buf, at + _CODES_AT)
            if _U32.unpack_from(self.buf, at)[0] != held:
                return None
            if status in codes:
                return codes.index(status)
            if 0 not in codes:
                return None
            i = codes.index(0)
            struct.pack_into("<H", self.buf, at + _CODES_AT + 2 * i, status)
            return i

    def _time(self, at: int, held: int, now: float, times: tuple[float, float]) -> None:
        """Add a response's times into the bucket of the window of ``now`` (monotonic); the
        first add of a window in a bucket empties it of the window before last, under the lock."""
        window = int(now // TIME_WINDOW)
        tag = (window & 0xFFFF) << 16 | held & 0xFFFF
        bucket = at + _TIMES_AT + 32 * (window % 2)
        adds = ((bucket + 8, int(times[0] * 1e6)), (bucket + 16, int(times[1] * 1e6)), (bucket + 24, 1))
        if self.zone.add_u64(adds, bucket, tag):
            return
        with self.zone.lock():
            if _U32.unpack_from(self.buf, at)[0] != held:
                return
            if _U32.unpack_from(self.buf, bucket)[0] != tag:  # (emptied: zeroed first is fine)
                _TIME_BUCKET.pack_into(self.buf, bucket, tag, 0, 0, 0)
        self.zone.add_u64(adds, bucket, tag)

    def _down_window(self, at: int, wall: float | None, fail_timeout: float | None) -> None:
        """Under the zone lock: the slot at ``at`` is unavail from ``wall`` for ``fail_timeout``
        (None: its failures were just reset, the window ends now) — counted into its downtime."""
        wall = time.time() if wall is None else wall
        health = self.buf[at + _HEALTH_AT]
        values = list(_STATS.unpack_from(self.buf, at + _STATS_AT))
        if fail_timeout is not None:
            _unavail(values, health, wall, wall + fail_timeout)
        elif values[_UNAVAIL_UNTIL] > wall:
            values[_UNAVAIL_UNTIL] = wall
            _settle(values, health, wall)
        else:
            return
        self._store_down(at, values)  # its own fields only

    def mark_checked(self, slot: int, now: float, fail_timeout: float = 0.0, wall: float | None = None) -> None:
        """nginx's retry of an unavailable peer after ``fail_timeout``: one request probes it
        (and the API shows the peer ``unavail`` again until that request's end says more)."""
        with self.zone.lock():
            at = self._slot_at(slot)
            self._f64[(at + _CHECKED_AT) >> 3] = now
            self._down_window(at, wall, fail_timeout)

    def take_drained_flag(self, slot: int, peer_id: int) -> bool:
        """True exactly once per drain of the peer: whoever sees it first publishes
        ``peer_drained``."""
        with self.zone.lock():
            at = self._slot_at(slot)
            held, flags = _TWO_U32.unpack_from(self.buf, at)
            if held != _held(peer_id) or flags & FLAG_DRAINED_PUBLISHED:
                return False
            self._u32[(at + _FLAGS_AT) >> 2] = flags | FLAG_DRAINED_PUBLISHED
            return True

    def clear_drained_flag(self, slot: int) -> None:
        with self.zone.lock():
            at = (self._slot_at(slot) + _FLAGS_AT) >> 2
            self._u32[at] = self._u32[at] & ~FLAG_DRAINED_PUBLISHED

    # -- in flight ---------------------------------------------------------------------------

    def _row_at(self, row: int) -> int:
        return self.layout.rows_at + row * self.layout.row_size

    def claim_row(self, alive) -> int | None:
        """This worker's row: a free one, or one whose worker is dead (``alive(pid, start)``)."""
        pid = os.getpid()
        start = _start_time(pid)
        with self.zone.lock():
            for row in range(self.layout.rows):
                at = self._row_at(row)
                rpid, _, rstart = _ROW_HEAD.unpack_from(self.buf, at)
                if rpid == 0 or (rpid, rstart) == (pid, start) or not alive(rpid, rstart):
                    self.buf[at:at + self.layout.row_size] = bytes(self.layout.row_size)
                    _ROW_HEAD.pack_into(self.buf, at, pid, 0, start)
                    self._row, self._counts_at = row, at + _ROW_HEAD.size
                    return row
        return None

    def release_row(self) -> None:
        if self._row is not None:
            at = self._row_at(self._row)
            with self.zone.lock():
                self.buf[at:at + self.layout.row_size] = bytes(self.layout.row_size)
            self._row = self._counts_at = None

    def add_active(self, slot: int, delta: int) -> None:
        counts_at = self._counts_at
        if counts_at is None:
            return
        at, u16 = (counts_at >> 1) + slot, self._u16
        with self._row_lock:
            value = u16[at] + delta
            u16[at] = value if 0 <= value <= 0xFFFF else 0 if value < 0 else 0xFFFF

    def set_idle(self, count: int) -> None:
        """How many idle connections to the upstream's peers this worker keeps (``keepalive``)."""
        if self._row is not None:
            self._u32[(self._row_at(self._row) + _IDLE_AT) >> 2] = min(count, 0xFFFFFFFF)

    def idle(self, live_rows: set[int]) -> int:
        """Idle kept connections, summed over the rows of live workers (NGINX Plus's ``keepalive``)."""
        return sum(_U32.unpack_from(self.buf, self._row_at(row) + _IDLE_AT)[0] for row in live_rows)

    def in_flight(self, slot: int) -> int:
        """Requests in flight to one slot, summed over the workers' rows (``max_conns``)."""
        total = 0
        u32, u16, offset = self._u32, self._u16, _ROW_HEAD.size + 2 * slot
        for row in range(self.layout.rows):
            at = self._row_at(row)
            if u32[at >> 2]:  # a claimed row (its pid)
                total += u16[(at + offset) >> 1]
        return total

    def active(self, live_rows: set[int] | None = None) -> list[int]:
        """Requests in flight to each slot, summed over the rows of live workers."""
        n = self.layout.slots
        totals = [0] * n
        fmt = struct.Struct(f"<{n}H")
        for row in range(self.layout.rows):
            at = self._row_at(row)
            pid = struct.unpack_from("<I", self.buf, at)[0]
            if pid == 0 or (live_rows is not None and row not in live_rows):
                continue
            for i, count in enumerate(fmt.unpack_from(self.buf, at + _ROW_HEAD.size)):
                if count:
                    totals[i] += count
        return totals

    def rows(self) -> list[tuple[int, int, int]]:
        """(row, pid, start time) of every claimed row."""
        out = []
        for row in range(self.layout.rows):
            pid, _, start = _ROW_HEAD.unpack_from(self.buf, self._row_at(row))
            if pid:
                out.append((row, pid, start))
        return out


def _held(peer_id: int) -> int:
    """What a slot stores for ``peer_id``: ids start at 0 (NGINX Plus), and 0 is an empty slot."""
    return peer_id + 1


def _start_time(pid: int) -> int:
    return process_start_time(pid) or 0
