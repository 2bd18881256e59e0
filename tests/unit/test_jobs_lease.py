"""The instance-wide jobs' lease slots (``ngxsim/core/jobs.py``) in a real ``@jobs`` zone: what a
worker killed at any instant of a look at its job leaves to the next one."""

from __future__ import annotations

import os
import time

import pytest

from ngxsim.core.conf.zones import JOB_SLOT, JOBS_ZONE, JobSpec
from ngxsim.core.instance import STANDALONE, current_instance
from ngxsim.core.jobs import JobRunner
from ngxsim.core.shm import HEADER_SIZE, attach_zone, remove_zone_files

import stepping


class _Zones:
    """What JobRunner asks of a runtime: its zones (a real one here)."""

    def __init__(self, zone):
        self._zone = zone

    def zone(self, name):
        assert name == JOBS_ZONE
        return self._zone


@pytest.fixture
def job(shm_leftovers):
    instance = current_instance(STANDALONE)
    zone = attach_zone(instance, JOBS_ZONE, HEADER_SIZE + JOB_SLOT + 64)
    spec = JobSpec("t.refresh", interval=10.0, run=lambda runtime: None, owner="t", lease=20.0)
    yield JobRunner(_Zones(zone), [spec]).jobs["t.refresh"]
    zone.close()
    remove_zone_files(instance)


def test_a_holder_killed_at_any_instant_of_its_look_leaves_its_due_time_and_its_runs(job):
    """The holder renews its lease and, when due, sets the next due time and counts the run, all
    in one slot rewritten under the lock. ``struct.pack_into`` zeroed the slot first: a holder
    killed there (here: stepped one instruction at a time, every instruction looked at) left no
    due time — the next worker ran the job at once, off the instance's schedule — and the run
    count at 0; ``status`` (no lock) read it so. Now every field reads old or new."""
    now = time.monotonic()
    assert job.tick(now) == (True, 10.0)  # taken, run: due in 10 s, 1 run
    pid, _, start, lease_until, due, runs, _, _ = job._read()
    assert (pid, runs) == (os.getpid(), 1) and due == now + 10.0

    def look(step):
        held, _, held_start, until, due_now, runs_now, _, _ = job._read()
        assert held in (pid, os.getpid()) and held and runs_now in (1, 2), f"instruction {step}: {job._read()}"
        assert due_now in (now + 10.0, now + 10.5 + 10.0) and until in (lease_until, now + 10.5 + 20.0), (
            f"instruction {step}: {job._read()}")

    # the same worker 10.5 s later, in a forked copy (its pid is the child's: a takeover of a live
    # holder's lease is not what this looks at, so the copy takes this process's identity)
    def same_holder():
        job.runner.pid, job.runner.start_time = pid, start
        assert job.tick(now + 10.5) == (True, 10.0)

    stepping.each_instruction(same_holder, look, before=job.runner.zone.lock,
                              watch=job.runner.zone.buf[:JOB_SLOT])
    assert job._read()[4:6] == (now + 20.5, 2)
