"""limit_conn's records: each worker's count held apart (pid and start time), a dead holder's
count dropped at the limit, more live holders than a record has room for sharing one count, and
what eviction may take (real processes, a real zone)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from ngxsim import SharedTable, process_start_time
from ngxsim.core.instance import STANDALONE, current_instance
from ngxsim.core.shm import attach_zone, remove_zone_files
from ngxsim_plugins.limit_conn import (HOLDERS, OVERFLOW, RECORD_SIZE, _count_in, _count_out, _pack, _unpack,
                                       in_use)


@pytest.fixture
def table(shm_leftovers):
    inst = current_instance(STANDALONE)
    zone = attach_zone(inst, f"conn-{os.getpid()}", SharedTable.size_for(64, 64, RECORD_SIZE, stripes=1))
    yield SharedTable(zone, 64, RECORD_SIZE, stripes=1, in_use=in_use)
    zone.close()
    remove_zone_files(inst)


@pytest.fixture
def sleepers():
    """Live processes to stand for other workers (each ends at teardown)."""
    procs: list[subprocess.Popen] = []

    def make(n: int) -> list[tuple[int, int]]:
        for _ in range(n):
            procs.append(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]))
        return [(p.pid, process_start_time(p.pid)) for p in procs[-n:]]

    yield make
    for proc in procs:
        proc.kill()
        proc.wait(timeout=10)


def dead_holder() -> tuple[int, int]:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    start = process_start_time(proc.pid) or 1
    proc.wait(timeout=10)
    return proc.pid, start


def test_a_dead_holders_count_is_dropped_only_at_the_limit(table, sleepers):
    (other,) = sleepers(1)
    dead = dead_holder()
    table.put("k", _pack(0, {dead: 1, other: 1}))
    me = table.update("k", _count_in(3))  # below the limit: nothing looked at, the dead one stays
    assert _unpack(table.get("k")) == (0, {dead: 1, other: 1, me: 1})
    assert table.update("k", _count_in(3)) == me  # at the limit: the dead one's request is gone
    assert _unpack(table.get("k")) == (0, {other: 1, me: 2})
    assert table.update("k", _count_in(3)) is None  # live holders at the limit: refused
    for _ in range(2):
        table.update("k", _count_out(me))
    assert _unpack(table.get("k")) == (0, {other: 1})


def test_more_live_holders_than_a_record_has_room_for_share_one_count(table, sleepers):
    others = sleepers(HOLDERS)
    table.put("k", _pack(0, dict.fromkeys(others, 1)))
    assert table.update("k", _count_in(100)) == OVERFLOW
    assert _unpack(table.get("k"))[0] == 1
    table.update("k", _count_out(OVERFLOW))
    assert _unpack(table.get("k")) == (0, dict.fromkeys(others, 1))


def test_a_record_only_dead_workers_hold_may_be_evicted(sleepers):
    (other,) = sleepers(1)
    assert in_use(_pack(0, {other: 1})) and in_use(_pack(1, {}))
    assert not in_use(_pack(0, {dead_holder(): 2}))
