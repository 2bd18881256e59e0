"""CounterRows: named rows of counters in a zone that processes add to without a lock, kept by
name, a row of a name the configuration dropped taken over with a new id (its old holders' adds
are lost, never counted for the new name)."""

from __future__ import annotations

import os
import struct

import pytest

from ngxsim import CounterRows
from ngxsim.core.instance import STANDALONE, current_instance
from ngxsim.core.shm import attach_zone, remove_zone_files

import stepping

FIELDS = ("passed", "rejected")


@pytest.fixture
def zone(shm_leftovers):
    inst = current_instance(STANDALONE)
    zone = attach_zone(inst, f"counters-{os.getpid()}", CounterRows.size_for(2, len(FIELDS)))
    yield zone
    zone.close()
    remove_zone_files(inst)


def test_rows_by_name_seen_by_another_view_and_reset(zone):
    rows = CounterRows(zone, FIELDS, keep=("a", "b"))
    assert rows.rows == 32
    rows.add("a", "passed")
    rows.add("a", "passed", 2)
    rows.add("b", "rejected")
    other = CounterRows(zone, FIELDS, keep=("a", "b"))  # another process's view: the same rows
    assert other.read("a") == {"passed": 3, "rejected": 0} and other.read("b") == {"passed": 0, "rejected": 1}
    other.reset("a")
    assert rows.read("a") == {"passed": 0, "rejected": 0} and rows.read("b")["rejected"] == 1
    with pytest.raises(ValueError, match="longer than 64"):
        rows.read("x" * 65)


def test_a_dropped_names_row_is_taken_over_and_its_old_holder_counts_nothing_there(zone):
    old = CounterRows(zone, FIELDS, keep=["gone"])
    old.add("gone", "passed")
    new = CounterRows(zone, FIELDS, keep=["fresh"])
    for i in range(new.rows - 1):  # fill every free row
        new.read(f"n{i}")
    new.add("fresh", "passed")  # no free row: it takes the row of "gone", which it does not keep
    assert new.read("fresh") == {"passed": 1, "rejected": 0}
    old.add("gone", "passed")  # the old view's row changed hands: this add must not count for "fresh"
    assert new.read("fresh") == {"passed": 1, "rejected": 0}
    assert all(new.read(f"n{i}") == {"passed": 0, "rejected": 0} for i in range(new.rows - 1))  # nor take a row
    with pytest.raises(ValueError, match='no row left for "late"'):  # every row held by a name kept
        CounterRows(zone, FIELDS, keep=[f"n{i}" for i in range(new.rows - 1)] + ["fresh"]).read("late")


def test_a_worker_killed_at_any_instant_of_claiming_a_row_leaves_the_zone_and_its_counts(zone):
    """A row claimed for a new name takes the next id from the header: ``struct.pack_into``
    rewrote the whole header, magic first zeroed, so a worker killed there (found by stepping it
    one instruction at a time) left a zone the next view took for an unformatted one: made anew,
    every row's counts gone."""
    rows = CounterRows(zone, FIELDS, keep=("a", "b"))
    rows.add("a", "passed", 5)

    def look(step):
        assert struct.unpack_from("<III", zone.buf, 0) == (0x52544E43, 2, rows.rows), f"instruction {step}"
        assert rows.read("a") == {"passed": 5, "rejected": 0}, f"instruction {step}"

    stepping.each_instruction(lambda: rows._row("b"), look, before=zone.lock, watch=zone.buf[:256])
    again = CounterRows(zone, FIELDS, keep=("a", "b"))  # a worker starting now: the same rows
    assert again.read("a") == {"passed": 5, "rejected": 0} and again._row("b")[1] == 2
