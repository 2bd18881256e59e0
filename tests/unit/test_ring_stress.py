"""Never wrong under contention: writers in several processes lap a small ring while readers in
other processes scan and deliver; every event read is whole, and every reader accounts for
every generation exactly once (delivered or reported lost), in order."""

from __future__ import annotations

import hashlib
import os
import struct
import time

from ngxsim.core.instance import STANDALONE, current_instance
from ngxsim.core.shm import HEADER_SIZE, attach_zone, remove_zone_files
from ngxsim_plugins.worker_events.ring import Ring, encode_event, ring_bytes

CAPACITY, WRITERS, PER_WRITER = 8, 3, 3000


def _payload(writer: int, i: int) -> str:
    body = f"{writer}:{i}:" + "x" * (i % 300)
    return body + ":" + hashlib.blake2s(body.encode(), digest_size=8).hexdigest()


def _whole(payload: str) -> bool:
    body, _, digest = payload.rpartition(":")
    return hashlib.blake2s(body.encode(), digest_size=8).hexdigest() == digest


def _fork(fn) -> int:
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = fn() or 0
        finally:
            os._exit(code)
    return pid


def test_writers_lapping_readers_never_produce_a_wrong_event(shm_leftovers, shm_path):
    inst = current_instance(STANDALONE)
    zone = attach_zone(inst, "stress", HEADER_SIZE + ring_bytes(CAPACITY))
    ring = Ring(zone, CAPACITY)
    r, w = os.pipe()
    try:
        def writer(n):
            def run():
                for i in range(PER_WRITER):
                    ring.publish(*encode_event("c", f"w{n}", _payload(n, i)))
            return run

        def reader():
            """Follows the ring like a dispatcher; checks every event and the accounting."""
            total = WRITERS * PER_WRITER
            cursor, delivered, lost, bad = 0, 0, 0, 0
            deadline = time.monotonic() + 60
            while cursor < total and time.monotonic() < deadline:
                newest = ring.newest
                gen = cursor + 1
                while gen <= newest:
                    oldest = ring.oldest_for(ring.newest)
                    if gen < oldest:
                        lost += oldest - gen
                        gen = oldest
                        continue
                    event = ring.read(gen)
                    if event is None:
                        continue  # lapped while reading: the next look counts it lost
                    if event.generation != gen or not _whole(event.payload):
                        bad += 1
                    delivered += 1
                    gen += 1
                cursor = max(cursor, gen - 1)
                for event in ring.scan(limit=CAPACITY).events:  # the API's newest-first scan, too
                    if not _whole(event.payload):
                        bad += 1
            os.write(w, struct.pack("<QQQQ", cursor, delivered, lost, bad))

        readers = [_fork(reader) for _ in range(2)]
        writers = [_fork(writer(n)) for n in range(WRITERS)]
        statuses = [os.waitstatus_to_exitcode(os.waitpid(p, 0)[1]) for p in writers + readers]
        assert statuses == [0] * (WRITERS + 2)
        total = WRITERS * PER_WRITER
        assert ring.newest == total and ring.control()[1] == total - CAPACITY
        for _ in readers:
            cursor, delivered, lost, bad = struct.unpack("<QQQQ", os.read(r, 32))
            assert bad == 0
            assert cursor == total and delivered + lost == total
        # what the ring holds at the end is the last CAPACITY generations, whole
        assert [e.generation for e in ring.scan().events] == list(range(total - CAPACITY + 1, total + 1))
    finally:
        zone.close()
        remove_zone_files(inst)
