"""The instance's worker table: which workers run, since when, how many requests each served, and
its client connections (nginx's ``stub_status`` counters, shared by every worker).

Kept only when the config has a location that reads it (``ngxsim_status``, ``stub_status``,
``api``), in the core's ``@workers`` zone: a 64-byte header, then one 64-byte slot per worker
process, 128 slots. A worker claims a slot when it starts (under the zone lock), counts each
request and each change of a connection's state into it (only it writes its slot; a reader may
see a value one request old), and frees it when it stops cleanly. A worker that was killed keeps
its slot, shown as not alive, until the table needs the room: what a person looking at the status
wants to see is that a worker died.

Header: connections accepted u64 (nginx's connection number: taken under the zone lock, so
unique in the instance), requests of the slots freed or taken over u64, dead workers' slots taken
over u64 (totals never go back). What a reader reads without the lock — the totals, a slot's
requests and last request time, its gauges — changes by one aligned store each (``words``, never
``struct.pack_into``, which zeroes its destination first: a reader saw the totals at 0, and a
worker killed there left them at 0, connection numbers starting over at 1).
Slot: pid u32, pad u32, start time u64 (clock ticks, with the pid names the process), started
msec u64, requests u64, last request msec u64, then the worker's connections now: active,
reading, writing, waiting (u32 each), 8 bytes unused. Gauges are summed over live workers only:
a killed worker's connections are gone with it.
"""

from __future__ import annotations

import os
import struct
import threading
import time
from dataclasses import dataclass

from .instance import LivenessWatch, process_start_time
from .shm import HEADER_SIZE, words

WORKERS_ZONE = "@workers"  # not a valid zone name for modules, so never one of theirs
MAX_WORKERS = 128
SLOT_SIZE = 64
TABLE_AT = 64  # the slots follow the table's own header
ZONE_BYTES = TABLE_AT + MAX_WORKERS * SLOT_SIZE
ZONE_SIZE = HEADER_SIZE + ZONE_BYTES  # a zone's declared size includes the core's header
LAYOUT_TAG = "workers v2"
_SLOT = struct.Struct("<IIQQQQ")  # pid, pad, start time, started msec, requests, last request msec
_COUNTS_OFF = 24  # requests u64, last request msec u64
_GAUGES = struct.Struct("<IIII")  # active, reading, writing, waiting
_GAUGES_OFF = 40
# header u64 words: connections accepted, requests of freed slots, dead workers' slots taken over
# (each one a worker that died)
_ACCEPTED, _RETIRED, _TAKEN_OVER = 0, 1, 2
STATES = ("reading", "writing", "waiting")


@dataclass(frozen=True)
class WorkerRecord:
    pid: int
    start_time: int
    started_msec: int
    requests: int
    last_request_msec: int
    alive: bool

    def as_json(self) -> dict:
        return {"pid": self.pid, "alive": self.alive, "started_msec": self.started_msec,
                "requests": self.requests, "last_request_msec": self.last_request_msec or None}


class WorkerTable:
    """This process's view of the table; ``claim``/``count``/``release`` in a worker."""

    def __init__(self, zone):
        self.zone = zone
        self.buf = zone.buf
        self._u64 = words(zone.buf[:ZONE_BYTES])
        self.slot: int | None = None
        self._requests = 0
        self._count_lock = threading.Lock()
        self._gauges = [0, 0, 0, 0]  # this worker's active, reading, writing, waiting
        self._watch = LivenessWatch()

    def claim(self, pid: int | None = None) -> int | None:
        """Take a slot for this worker: a free one, else one whose worker is dead. None when
        128 live workers hold them all (this worker then serves unlisted)."""
        pid = pid or os.getpid()
        start = process_start_time(pid) or 0
        with self.zone.lock():
            records = self._records()
            free = [i for i in range(MAX_WORKERS) if i not in records]
            if not free:
                live = self._watch.alive([(r.pid, r.start_time) for r in records.values()])
                free = [i for i, r in records.items() if (r.pid, r.start_time) not in live]
            if not free:
                return None
            self.slot = free[0]
            if self.slot in records:  # a dead worker's: its requests stay in the total, its death counted
                self._retire(records[self.slot].requests)
                self._u64[_TAKEN_OVER] += 1
            # (a slot made anew: free or a dead worker's already retired, it may read as free meanwhile)
            _SLOT.pack_into(self.buf, self._at(self.slot), pid, 0, start, int(time.time() * 1000), 0, 0)
            _GAUGES.pack_into(self.buf, self._at(self.slot) + _GAUGES_OFF, 0, 0, 0, 0)
        return self.slot

    def count(self) -> None:
        """One more request served by this worker (called at every request's start)."""
        if self.slot is None:
            return
        with self._count_lock:  # threads of one worker: the stored count never goes back
            self._requests += 1
            at = (self._at(self.slot) + _COUNTS_OFF) >> 3
            self._u64[at] = self._requests
            self._u64[at + 1] = int(time.time() * 1000)

    def release(self) -> None:
        if self.slot is None:
            return
        with self.zone.lock():
            self._retire(self._requests)
            self.buf[self._at(self.slot):self._at(self.slot) + SLOT_SIZE] = bytes(SLOT_SIZE)
        self.slot = None

    @staticmethod
    def _at(index: int) -> int:
        return TABLE_AT + index * SLOT_SIZE

    def _retire(self, requests: int) -> None:
        """Under the zone lock: a slot's requests go into the total before the slot is reused."""
        self._u64[_RETIRED] += requests

    # -- connections (nginx's stub_status) ------------------------------------------------------

    def accepted(self) -> int:
        """A client connection was accepted: its number (nginx's ``*CID``), unique in the instance."""
        with self.zone.lock():
            accepted = self._u64[_ACCEPTED] + 1
            self._u64[_ACCEPTED] = accepted
        return accepted

    def move(self, old: str | None, new: str | None) -> None:
        """A connection of this worker goes from state ``old`` to ``new`` (``reading``,
        ``writing``, ``waiting``; None: not open — from None it was just accepted, to None it
        closed)."""
        with self._count_lock:
            gauges = self._gauges
            if old is None:
                gauges[0] += 1
            else:
                gauges[1 + STATES.index(old)] -= 1
            if new is None:
                gauges[0] -= 1
            else:
                gauges[1 + STATES.index(new)] += 1
            if self.slot is not None:  # two u64 stores of two u32 gauges each (little endian)
                active, reading, writing, waiting = (max(0, g) for g in gauges)
                at = (self._at(self.slot) + _GAUGES_OFF) >> 3
                self._u64[at] = active | reading << 32
                self._u64[at + 1] = writing | waiting << 32

    def connections(self) -> dict:
        """The instance's connection counters as nginx's ``stub_status`` has them."""
        accepted, retired = self._u64[_ACCEPTED], self._u64[_RETIRED]
        table = bytes(self.buf[:ZONE_BYTES])
        records = self._records()
        live = self._watch.alive([(r.pid, r.start_time) for r in records.values()])
        gauges = [0, 0, 0, 0]
        requests = retired
        for index, record in records.items():
            requests += record.requests
            if (record.pid, record.start_time) in live:
                for i, value in enumerate(_GAUGES.unpack_from(table, self._at(index) + _GAUGES_OFF)):
                    gauges[i] += value
        return {"active": gauges[0], "accepted": accepted, "handled": accepted, "requests": requests,
                "reading": gauges[1], "writing": gauges[2], "waiting": gauges[3]}

    def _records(self) -> dict[int, tuple]:
        table = bytes(self.buf[:ZONE_BYTES])
        out = {}
        for index in range(MAX_WORKERS):
            fields = _SLOT.unpack_from(table, self._at(index))
            if fields[0]:
                out[index] = WorkerRecord(fields[0], fields[2], fields[3], fields[4], fields[5], False)
        return out

    def died(self) -> int:
        """How many workers of the instance died without stopping cleanly (killed, crashed):
        the dead ones listed, and those whose slot a later worker took over. A worker that
        stops cleanly (a reload's old ones, a stop) frees its slot and is not counted."""
        with self.zone.lock():  # a slot taken over meanwhile would be counted in neither
            taken = self._u64[_TAKEN_OVER]
            return taken + sum(1 for w in self.workers() if not w.alive)

    def workers(self) -> list[WorkerRecord]:
        """Every listed worker, alive or not, oldest start first."""
        records = list(self._records().values())
        live = self._watch.alive([(r.pid, r.start_time) for r in records])
        out = [WorkerRecord(r.pid, r.start_time, r.started_msec, r.requests, r.last_request_msec,
                            (r.pid, r.start_time) in live) for r in records]
        return sorted(out, key=lambda r: (r.started_msec, r.pid))
