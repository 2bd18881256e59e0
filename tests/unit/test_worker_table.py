"""The core's worker table (``ngxsim/core/workers.py``) on a real zone: what it says of workers
that died."""

from __future__ import annotations

import os
import subprocess

import pytest

from ngxsim.core.instance import STANDALONE, current_instance
from ngxsim.core.shm import attach_zone, remove_zone_files
from ngxsim.core.workers import MAX_WORKERS, WORKERS_ZONE, ZONE_SIZE, WorkerTable


@pytest.fixture
def table(shm_leftovers):
    instance = current_instance(STANDALONE)
    zone = attach_zone(instance, WORKERS_ZONE, ZONE_SIZE)
    yield WorkerTable(zone)
    zone.close()
    remove_zone_files(instance)


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait(10)
    return proc.pid


def test_a_dead_workers_slot_taken_over_still_counts_as_a_death(table):
    dead = _dead_pid()
    for _ in range(MAX_WORKERS):  # a full table of workers that died without freeing their slot
        assert WorkerTable(table.zone).claim(dead) is not None
    assert table.died() == MAX_WORKERS
    assert table.claim(os.getpid()) is not None  # the room is a dead worker's
    assert table.died() == MAX_WORKERS and sum(1 for w in table.workers() if w.alive) == 1
    table.release()  # a clean stop is no death
    assert table.died() == MAX_WORKERS


def test_a_worker_that_stops_cleanly_is_not_counted(table):
    table.claim(os.getpid())
    table.release()
    assert table.died() == 0 and table.workers() == []
