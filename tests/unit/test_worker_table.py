"""The core's worker table (``ngxsim/core/workers.py``) on a real zone: what it says of workers
that died."""

from __future__ import annotations

import os
import subprocess

import pytest

from ngxsim.core.instance import STANDALONE, current_instance
from ngxsim.core.shm import attach_zone, remove_zone_files
from ngxsim.core.workers import MAX_WORKERS, WORKERS_ZONE, ZONE_SIZE, WorkerTable

import stepping


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


def _requests_of(table, pid):
    return [w.requests for w in table._records().values() if w.pid == pid]


def test_a_workers_request_count_never_reads_as_0_at_any_instant_of_a_count(table):
    """Every status reader reads a worker's request count without the lock while the worker
    counts (each request): stepped one instruction at a time, ``count`` shows the old count or
    the new, never 0 (``struct.pack_into`` zeroed it first: stub_status's requests went back for
    an instant, and a worker killed there took its requests out of the instance's total)."""
    child_pid = []

    def become_a_worker():
        table.claim(os.getpid())
        for _ in range(5):
            table.count()

    def look(step):
        if not child_pid:
            child_pid.extend(w.pid for w in table._records().values())
        assert _requests_of(table, child_pid[0]) in ([5], [6]), f"instruction {step}: {table._records()}"

    stepping.each_instruction(table.count, look, before=become_a_worker)
    assert _requests_of(table, child_pid[0]) == [6]


def test_a_worker_killed_at_any_instant_of_accepting_leaves_no_connection_number_to_repeat(table):
    """Connection numbers are unique in the instance (nginx's ``*CID``), and stub_status's
    ``accepted`` never goes back. A worker killed while ``accepted`` stores the new total (at the
    instruction where it first moved) left 0 there: the next connection was number 1 again."""
    for _ in range(3):
        table.accepted()

    def kill_once_it_moved(step):
        assert table.connections()["accepted"] in (3, 4), f"instruction {step}: {table.connections()}"
        if table.connections()["accepted"] != 3:
            raise stepping.Killed

    stepping.each_instruction(table.accepted, kill_once_it_moved, before=lambda: table.zone.lock())
    assert table.accepted() == 5


def test_a_workers_connection_gauges_read_old_or_new_at_any_instant(table):
    """stub_status sums the live workers' gauges without the lock while each worker moves its
    connections from state to state: a gauge reads its old value or its new one, never 0."""
    me = os.getpid()
    table.claim(me)
    for _ in range(3):
        table.move(None, "reading")
    table.move("reading", "writing")  # active 3: reading 2, writing 1

    def look(step):
        now = table.connections()
        # each gauge by itself (stub_status's are independent counters too)
        assert now["active"] == 3 and now["reading"] in (2, 1) and now["writing"] in (1, 2) and not now["waiting"], (
            f"instruction {step}: {now}")

    # a forked copy of this worker moves one connection in the same slot
    stepping.each_instruction(lambda: table.move("reading", "writing"), look)
    assert table.connections()["writing"] == 2
    table.release()
