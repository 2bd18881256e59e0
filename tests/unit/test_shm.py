"""Zones, their lock and their doorbell, across real processes."""

from __future__ import annotations

import fcntl
import os
import signal
import struct
import time

import pytest

from ngxsim.core.instance import STANDALONE, Instance, current_instance, process_start_time
from ngxsim.core.shm import (HEADER_SIZE, SHM_DIR_ENV, Wait, ZoneError, attach_zone, remove_stale_zone_files, remove_zone_files,
                              words, zone_path)

from ngxsim.testing import wait_for

from forked import child as _child, exit_status as _exit_status

import stepping


@pytest.fixture
def instance(shm_leftovers):
    inst = current_instance(STANDALONE)
    yield inst
    remove_zone_files(inst)


def test_a_zone_is_shared_between_processes_and_kept_on_reattach(instance):
    zone = attach_zone(instance, "z1", 4096)
    assert zone.fresh and zone.usable == 4096 - HEADER_SIZE
    assert bytes(zone.buf[:16]) == bytes(16)  # zero-filled

    def write():
        other = attach_zone(instance, "z1", 4096)
        assert not other.fresh
        other.buf[0:5] = b"hello"

    assert _exit_status(_child(write)) == 0
    assert bytes(zone.buf[0:5]) == b"hello"
    again = attach_zone(instance, "z1", 4096)
    assert not again.fresh and bytes(again.buf[0:5]) == b"hello"
    again.close()
    zone.close()


def test_a_zone_with_another_size_or_tag_is_created_afresh(instance):
    zone = attach_zone(instance, "z2", 4096, tag="v1")
    zone.buf[0:3] = b"old"
    bigger = attach_zone(instance, "z2", 8192, tag="v1")
    assert bigger.fresh and bytes(bigger.buf[0:3]) == bytes(3)
    assert bytes(zone.buf[0:3]) == b"old"  # the old mapping stays valid for whoever holds it
    retagged = attach_zone(instance, "z2", 8192, tag="v2")
    assert retagged.fresh
    for z in (zone, bigger, retagged):
        z.close()


def test_two_instances_never_share_a_zone(instance):
    other = Instance(instance.pid, instance.start_time + 1, STANDALONE)
    a = attach_zone(instance, "same", 4096)
    b = attach_zone(other, "same", 4096)
    a.buf[0:1] = b"a"
    assert bytes(b.buf[0:1]) == b"\0" and a.path != b.path
    a.close()
    b.close()
    remove_zone_files(other)


def test_stale_zone_of_a_dead_master_is_removed(instance, tmp_path, monkeypatch):
    # a folder of its own: another server starting on this machine runs the same janitor on
    # /dev/shm and could remove the stale file first
    monkeypatch.setenv(SHM_DIR_ENV, str(tmp_path))
    pid = _child(lambda: None)
    start = process_start_time(pid)
    assert _exit_status(pid) == 0
    dead = Instance(pid, start or 1, STANDALONE)
    path = zone_path(dead, "stale")
    open(path, "wb").close()
    live = attach_zone(instance, "live", 4096)
    removed = remove_stale_zone_files()
    assert os.path.basename(path) in removed and not os.path.exists(path)
    assert os.path.exists(live.path)
    live.close()


def test_lock_excludes_other_processes_even_after_fork(instance, shm_path):
    """Each process gets its own open file description: an inherited fd would give no exclusion."""
    zone = attach_zone(instance, "lock", 4096)
    counter = struct.Struct("<Q")
    rounds, procs = 2000, 4

    def bump():
        for _ in range(rounds):
            with zone.lock():
                (n,) = counter.unpack_from(zone.buf, 0)
                counter.pack_into(zone.buf, 0, n + 1)

    pids = [_child(bump) for _ in range(procs)]
    assert [_exit_status(p, 60) for p in pids] == [0] * procs
    assert counter.unpack_from(zone.buf, 0)[0] == rounds * procs
    zone.close()


def test_an_inherited_flock_fd_gives_no_exclusion(instance):
    """The pitfall the zone lock avoids, shown: parent and child both 'hold' LOCK_EX."""
    fd = os.open(zone_path(instance, "pitfall"), os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)

    def try_lock():
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # succeeds: same open file description

    assert _exit_status(_child(try_lock)) == 0
    os.close(fd)


def test_lock_is_released_when_its_holder_is_sigkilled(instance, shm_path):
    zone = attach_zone(instance, "killed", 4096)
    r, w = os.pipe()

    def hold():
        with zone.lock():
            os.write(w, b"x")
            time.sleep(60)

    pid = _child(hold)
    assert os.read(r, 1) == b"x"
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    started = time.monotonic()
    with zone.lock():
        pass
    assert time.monotonic() - started < 5
    zone.close()


def test_lock_excludes_threads_of_one_process(instance, shm_path):
    import threading

    zone = attach_zone(instance, "threads", 4096)
    counter = struct.Struct("<Q")

    def bump():
        for _ in range(3000):
            with zone.lock():
                (n,) = counter.unpack_from(zone.buf, 0)
                time.sleep(0) if n % 500 == 0 else None
                counter.pack_into(zone.buf, 0, n + 1)

    threads = [threading.Thread(target=bump, daemon=True) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert counter.unpack_from(zone.buf, 0)[0] == 12000
    zone.close()


def test_doorbell_wakes_a_waiter_in_another_process(instance):
    zone = attach_zone(instance, "bell", 4096)
    r, w = os.pipe()

    def waiter():
        seen = zone.doorbell.value
        os.write(w, b"r")
        woke = zone.doorbell.wait(seen, 10.0)
        os.write(w, b"w" if woke is Wait.WOKEN else b"t")

    pid = _child(waiter)
    assert os.read(r, 1) == b"r"
    time.sleep(0.05)  # let it block
    zone.doorbell.ring()
    assert os.read(r, 1) == b"w"
    assert _exit_status(pid) == 0
    zone.close()


def test_doorbell_wait_returns_at_once_if_rung_since_it_was_read(instance):
    zone = attach_zone(instance, "bell2", 4096)
    seen = zone.doorbell.value
    zone.doorbell.ring()
    started = time.monotonic()
    assert zone.doorbell.wait(seen, 5.0) is Wait.MOVED  # no sleep at all
    assert time.monotonic() - started < 1.0
    assert zone.doorbell.wait(zone.doorbell.value, 0.05) is Wait.TIMED_OUT  # nobody rings
    zone.close()


def test_janitor_removes_zone_files_when_the_master_exits(shm_leftovers):
    from ngxsim.core.shm import ensure_janitor

    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()

    def master():
        inst = current_instance(STANDALONE)
        attach_zone(inst, "j", 4096)
        assert ensure_janitor(Instance(inst.pid, inst.start_time, "master"))
        os.write(ready_w, b"x")
        os.read(go_r, 1)  # wait until told to exit

    pid = _child(master)
    assert os.read(ready_r, 1) == b"x"
    assert any(e.startswith(f"ngxsim.{pid}.") for e in os.listdir("/dev/shm"))
    os.write(go_w, b"g")
    assert _exit_status(pid) == 0
    wait_for(lambda: not any(e.startswith(f"ngxsim.{pid}.") for e in os.listdir("/dev/shm")), 10,
             what="the janitor to remove the zone files")


def test_liveness_watch_sees_exits_and_keeps_no_fd_it_no_longer_needs():
    from ngxsim.core.instance import LivenessWatch

    watch = LivenessWatch()
    r, w = os.pipe()
    pid = _child(lambda: os.read(r, 1))
    me = (os.getpid(), process_start_time(os.getpid()))
    child = (pid, process_start_time(pid))
    assert watch.alive([me, child]) == {me, child}
    os.write(w, b"x")
    assert _exit_status(pid) == 0
    assert watch.alive([me, child]) == {me}
    assert watch.alive([(me[0], me[1] + 1)]) == set()  # same pid, another start time: not us
    assert watch.alive([]) == set() and watch._fds == {}


def test_a_zone_larger_than_the_shared_memory_fails_at_once_and_leaves_no_file(instance):
    total = os.statvfs("/dev/shm")
    too_big = (total.f_blocks * total.f_frsize) + (1 << 30)
    with pytest.raises(ZoneError, match="cannot reserve .* bytes for zone file"):
        attach_zone(instance, "huge", too_big)
    assert not os.path.exists(zone_path(instance, "huge"))


def _requested_slice(tid: int = 0) -> int:
    """sched_getattr's sched_runtime for thread ``tid`` (0: this one): the slice it asked for."""
    import ctypes
    import platform

    number = {"x86_64": 315, "aarch64": 275}.get(platform.machine())
    if number is None:
        pytest.skip("sched_getattr number unknown here")
    out = ctypes.create_string_buffer(48)
    if ctypes.CDLL(None, use_errno=True).syscall(number, tid, out, 48, 0) != 0:
        pytest.skip("sched_getattr not available")
    return struct.unpack_from("<Q", out.raw, 24)[0]


def test_prompt_wakeups_asks_a_short_slice_for_the_calling_thread_only():
    import threading

    from ngxsim import prompt_wakeups
    from ngxsim.core.shm import SHORT_SLICE_NS

    seen = []

    def waiter():
        seen.append(prompt_wakeups())
        seen.append(_requested_slice())

    before = _requested_slice()
    t = threading.Thread(target=waiter)
    t.start()
    t.join(10)
    if seen[0] is False:
        pytest.skip("this kernel does not take a slice request")
    assert seen == [True, SHORT_SLICE_NS]
    assert _requested_slice() == before  # the calling thread's only


def test_add_u64_loses_no_add_between_processes(instance, shm_path):
    """Counters moved without the zone lock (atomic adds in C; under the lock in Python) lose
    nothing to other processes adding to the same words at the same time."""
    zone = attach_zone(instance, "adds", 4096)
    word = struct.Struct("<Q")
    rounds, procs = 20000, 4

    def bump():
        for _ in range(rounds):
            zone.add_u64(((0, 1), (8, 3)))

    pids = [_child(bump) for _ in range(procs)]
    assert [_exit_status(p, 60) for p in pids] == [0] * procs
    assert (word.unpack_from(zone.buf, 0)[0], word.unpack_from(zone.buf, 8)[0]) == (rounds * procs, 3 * rounds * procs)
    zone.close()


def test_add_u64_counters_and_stamp_never_read_as_0_at_any_instant_of_an_add(instance, shm_path):
    """Readers of add_u64's counters take no lock (and the C path takes none to add): stepped one
    instruction at a time, an add shows each counter and the stamp at the old value or the new,
    never 0 — the pure-Python path's ``struct.pack_into`` zeroed each first, and a process killed
    there left a counter at 0 for good."""
    zone = attach_zone(instance, "add-steps", 4096)
    zone.add_u64(((8, 5), (16, 7)), stamp_at=24, stamp=1.5)
    u64 = words(zone.buf)

    def look(step):
        assert (u64[1], u64[2]) in ((5, 7), (6, 7), (6, 9)), f"instruction {step}: {u64[1]}, {u64[2]}"
        assert struct.unpack_from("<d", zone.buf, 24)[0] in (1.5, 2.5), f"instruction {step}"

    stepping.each_instruction(lambda: zone.add_u64(((8, 1), (16, 2)), stamp_at=24, stamp=2.5), look,
                              before=lambda: zone.add_u64(((0, 1),)))
    assert (u64[1], u64[2]) == (6, 9)
    u64.release()
    zone.close()


def test_words_are_little_endian_items_on_any_machine(monkeypatch):
    """``ngxsim.words``: item i of code c is the little-endian value at byte i * size, through a
    memoryview on a little-endian machine, through ctypes' little-endian items elsewhere (run here
    with ``sys.byteorder`` set to "big"): the same bytes either way."""
    import sys

    import ngxsim

    for byteorder in ("little", "big"):
        monkeypatch.setattr(sys, "byteorder", byteorder)
        data = bytearray(35)
        q, i, h, d = (ngxsim.words(data, code) for code in "QIHd")
        assert (len(q), len(i), len(h), len(d)) == (4, 8, 17, 4)  # a short tail is left out
        q[1], i[4], h[10], d[3] = 2**64 - 2, 0x01020304, 0xBEEF, -0.5
        assert struct.unpack_from("<QIHxxd", data, 8) == (2**64 - 2, 0x01020304, 0xBEEF, -0.5)
        assert (q[1], i[4], h[10], d[3]) == (2**64 - 2, 0x01020304, 0xBEEF, -0.5)
        assert isinstance(q, memoryview) == (byteorder == "little")


def test_add_u64_writes_only_when_its_guard_holds_and_nothing_on_a_bad_offset(instance, shm_path):
    zone = attach_zone(instance, "guard", 4096)
    struct.pack_into("<I", zone.buf, 0, 7)
    assert zone.add_u64(((8, 5),), guard_at=0, guard=7, stamp_at=16, stamp=1.25) is True
    assert zone.add_u64(((8, 5),), guard_at=0, guard=8, stamp_at=16, stamp=9.0) is False  # another id
    assert struct.unpack_from("<QdQ", zone.buf, 8) == (5, 1.25, 0)
    for bad in (((8, 1), (4, 1)), ((8, 1), (len(zone.buf), 1))):  # unaligned, outside: nothing moves
        with pytest.raises(ValueError):
            zone.add_u64(bad)
    with pytest.raises(ValueError):
        zone.add_u64(((8, 1),), stamp_at=12)
    assert struct.unpack_from("<Q", zone.buf, 8)[0] == 5
    zone.add_u64(((24, 2**64 - 1), (24, 2)))  # wraps as a u64 does
    assert struct.unpack_from("<Q", zone.buf, 24)[0] == 1
    zone.close()


def test_add_u64_leaves_the_same_bytes_on_the_c_and_the_python_path(instance, monkeypatch):
    from ngxsim.core import shm

    if shm.accel is None:
        pytest.skip("the C accelerator ngxsim.core._shm_accel is not built here (no compiler at install)")
    fast = attach_zone(instance, "c-path", 4096)
    monkeypatch.setattr(shm, "accel", None)
    slow = attach_zone(instance, "python-path", 4096)
    for zone in (fast, slow):
        struct.pack_into("<I", zone.buf, 64, 3)
        for i in range(50):
            zone.add_u64(((72 + 8 * (i % 5), i), (0, 1)), guard_at=64, guard=3 if i % 7 else 4,
                         stamp_at=128, stamp=i / 3)
    assert bytes(fast.buf) == bytes(slow.buf) and any(fast.buf)
    fast.close()
    slow.close()
