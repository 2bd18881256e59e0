"""The instance's worker table: which workers run, since when, and how many requests each served.

Kept only when the config has an ``ngxsim_status`` location (nothing else reads it), in the
core's ``@workers`` zone: one 64-byte slot per worker process, 128 slots. A worker claims a slot
when it starts (under the zone lock), counts each request into it (only it writes its slot;
a reader may see a value one request old), and frees it when it stops cleanly. A worker that
was killed keeps its slot, shown as not alive, until the table needs the room: what a person
looking at the status wants to see is that a worker died.

Slot: pid u32, pad u32, start time u64 (clock ticks, with the pid names the process), started
msec u64, requests u64, last request msec u64, 24 bytes unused.
"""

from __future__ import annotations

import os
import struct
import threading
import time
from dataclasses import dataclass

from .instance import LivenessWatch, process_start_time
from .shm import HEADER_SIZE

WORKERS_ZONE = "@workers"  # not a valid zone name for modules, so never one of theirs
MAX_WORKERS = 128
SLOT_SIZE = 64
ZONE_BYTES = MAX_WORKERS * SLOT_SIZE
ZONE_SIZE = HEADER_SIZE + ZONE_BYTES  # a zone's declared size includes the core's header
LAYOUT_TAG = "workers v1"
_SLOT = struct.Struct("<IIQQQQ")  # pid, pad, start time, started msec, requests, last request msec
_COUNTS = struct.Struct("<QQ")  # requests, last request msec
_COUNTS_OFF = 24


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
        self.slot: int | None = None
        self._requests = 0
        self._count_lock = threading.Lock()
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
            _SLOT.pack_into(self.buf, self.slot * SLOT_SIZE, pid, 0, start, int(time.time() * 1000), 0, 0)
        return self.slot

    def count(self) -> None:
        """One more request served by this worker (called at every request's start)."""
        if self.slot is None:
            return
        with self._count_lock:  # threads of one worker: the stored count never goes back
            self._requests += 1
            _COUNTS.pack_into(self.buf, self.slot * SLOT_SIZE + _COUNTS_OFF, self._requests, int(time.time() * 1000))

    def release(self) -> None:
        if self.slot is None:
            return
        with self.zone.lock():
            self.buf[self.slot * SLOT_SIZE:(self.slot + 1) * SLOT_SIZE] = bytes(SLOT_SIZE)
        self.slot = None

    def _records(self) -> dict[int, tuple]:
        table = bytes(self.buf[:ZONE_BYTES])
        out = {}
        for index in range(MAX_WORKERS):
            fields = _SLOT.unpack_from(table, index * SLOT_SIZE)
            if fields[0]:
                out[index] = WorkerRecord(fields[0], fields[2], fields[3], fields[4], fields[5], False)
        return out

    def workers(self) -> list[WorkerRecord]:
        """Every listed worker, alive or not, oldest start first."""
        records = list(self._records().values())
        live = self._watch.alive([(r.pid, r.start_time) for r in records])
        out = [WorkerRecord(r.pid, r.start_time, r.started_msec, r.requests, r.last_request_msec,
                            (r.pid, r.start_time) in live) for r in records]
        return sorted(out, key=lambda r: (r.started_msec, r.pid))
