"""SharedTable: a keyed table in a zone (records, expiry, LRU eviction, stripe locks that survive
a killed holder), shared by the processes that attach the zone."""

from __future__ import annotations

import os
import signal
import struct
import threading

import pytest

from ngxsim import SharedTable, TableFull
from ngxsim.core.instance import STANDALONE, current_instance
from ngxsim.core.shm import attach_zone, remove_zone_files

import stepping

COUNTER = struct.Struct("<q")


@pytest.fixture
def zone(shm_leftovers):
    inst = current_instance(STANDALONE)
    zone = attach_zone(inst, f"table-{os.getpid()}", SharedTable.size_for(64, 16, 8, stripes=4))
    yield zone
    zone.close()
    remove_zone_files(inst)


def test_put_get_delete_and_expiry(zone):
    table = SharedTable(zone, 16, 8, stripes=4)
    assert table.capacity >= 64
    table.put("a", COUNTER.pack(1), now=1000.0)
    table.put(b"b", COUNTER.pack(2), ttl=5, now=1000.0)
    assert table.get("a", now=1000.0) == COUNTER.pack(1)
    assert table.get("b", now=1004.0) == COUNTER.pack(2)
    assert table.get("b", now=1005.5) is None  # expired
    assert len(table) == 2
    assert table.delete("a") and not table.delete("a")
    assert table.get("a") is None
    with pytest.raises(ValueError, match="keys are at most 16"):
        table.put("k" * 17, COUNTER.pack(0))
    with pytest.raises(ValueError, match="values are 8"):
        table.put("a", b"x")


def test_a_second_view_sees_the_records_and_a_different_shape_is_refused(zone):
    SharedTable(zone, 16, 8, stripes=4).put("k", COUNTER.pack(7))
    assert SharedTable(zone, 16, 8, stripes=4).get("k") == COUNTER.pack(7)
    with pytest.raises(ValueError, match="holds a table of another shape"):
        SharedTable(zone, 32, 8, stripes=4)


def test_a_full_stripe_evicts_its_least_recently_used_record(zone):
    table = SharedTable(zone, 16, 8, stripes=1)
    keys = [f"k{i}" for i in range(table.capacity)]
    for key in keys:
        table.put(key, COUNTER.pack(0))
    table.update(keys[0], lambda v: (v, None))  # k0 used again: k1 is now the least recent
    table.put("new", COUNTER.pack(1))
    assert table.get(keys[1]) is None
    assert table.get(keys[0]) is not None and table.get("new") == COUNTER.pack(1)
    assert len(table) == table.capacity


def _increment(table, key, times):
    for _ in range(times):
        table.update(key, lambda v: (COUNTER.pack((COUNTER.unpack(v)[0] if v else 0) + 1), None))


def test_updates_from_several_processes_lose_nothing(zone):
    table = SharedTable(zone, 16, 8, stripes=4)
    go_r, go_w = os.pipe()
    children = []
    for _ in range(4):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.read(go_r, 1)  # all start together
                _increment(table, "hits", 3000)
                code = 0
            finally:
                os._exit(code)
        children.append(pid)
    os.write(go_w, b"xxxx")
    _increment(table, "hits", 3000)
    os.close(go_r)
    os.close(go_w)
    assert [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in children] == [0] * 4
    assert COUNTER.unpack(table.get("hits"))[0] == 15000


def test_a_holder_killed_with_the_stripe_lock_leaves_it_free(zone):
    table = SharedTable(zone, 16, 8, stripes=4)
    stripe = table._where(b"k")[0]
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            with table._locked(stripe):
                os.write(ready_w, b"x")
                threading.Event().wait(60)
        finally:
            os._exit(0)
    os.close(ready_w)
    assert os.read(ready_r, 1) == b"x"  # the child holds the lock
    os.close(ready_r)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    done = threading.Event()
    worker = threading.Thread(target=lambda: (table.put("k", COUNTER.pack(1)), done.set()), daemon=True)
    worker.start()
    worker.join(10)
    assert done.is_set(), "the stripe lock stayed held after its holder was killed"


def test_eviction_skips_records_in_use_and_a_stripe_of_them_refuses_a_new_key(zone):
    table = SharedTable(zone, 16, 8, stripes=1, in_use=lambda value: COUNTER.unpack(value)[0] > 0)
    keys = [f"k{i}" for i in range(table.capacity)]
    for key in keys:
        table.put(key, COUNTER.pack(1))  # every record counts a request in progress
    table.put(keys[3], COUNTER.pack(0))  # but k3's ended: the only one that may go
    table.put("new", COUNTER.pack(1))
    assert table.get(keys[3]) is None
    assert all(table.get(key) == COUNTER.pack(1) for key in keys if key != keys[3])  # k0 (oldest) kept
    with pytest.raises(TableFull, match='no room in zone "table-'):
        table.put("newer", COUNTER.pack(1))
    assert table.get("newer") is None and len(table) == table.capacity


def test_a_writer_killed_at_any_instant_of_an_update_leaves_every_record_findable(zone):
    """Lookups, and the writer after a killed one, trust a slot's state word and its stripe's
    clock and count. Stepped one instruction at a time through an update of record A, with B
    past A in the same probe chain: A and B stay findable with the old value or the new at every
    instruction (what a SIGKILL there would leave), the stripe's clock never goes back and its
    count stays 2. ``struct.pack_into`` zeroed A's state (EMPTY: the chain ended before B, and a
    put of B then made a second B) and the clock and count."""
    table = SharedTable(zone, 16, 8, stripes=1)
    by_start: dict[int, bytes] = {}
    for i in range(1000):  # two keys that start at the same slot: B is found past A
        key = b"k%d" % i
        stripe, start = table._where(key)
        if start in by_start:
            a, b = by_start[start], key
            break
        by_start[start] = key
    table.put(a, COUNTER.pack(1), now=1000.0)
    table.put(b, COUNTER.pack(2), now=1000.0)
    clock_at = 32 + stripe * table.stripe_size  # the stripe's header: clock u64, count u32

    def clock_now():  # (the child is stopped while this reads)
        return struct.unpack_from("<Q", zone.buf, clock_at)[0]

    clock = clock_now()

    def look(step):
        found_a, _ = table._find(stripe, start, a, 1000_000)  # no lock: the child holds it
        found_b, _ = table._find(stripe, start, b, 1000_000)
        assert found_a is not None and found_b is not None, f"instruction {step}: A {found_a}, B {found_b}"
        assert table._value(found_a) in (COUNTER.pack(1), COUNTER.pack(3)), f"instruction {step}"
        assert clock_now() in (clock, clock + 1) and len(table) == 2, f"instruction {step}"

    stepping.each_instruction(lambda: table.put(a, COUNTER.pack(3), now=1000.0), look,
                              before=lambda: table.get(b"warm"))
    assert table.get(a, now=1000.0) == COUNTER.pack(3) and table.get(b, now=1000.0) == COUNTER.pack(2)
    assert clock_now() == clock + 1
