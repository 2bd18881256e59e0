"""cache_purge's disk failures: what each is called, and how often it is logged."""

from __future__ import annotations

import errno
import os
import time
import logging
import sqlite3

import diskcache
import pytest
from freezegun import freeze_time

from ngxsim_plugins.cache_purge.storage import Reporter, StorageError, disk_failures, storage_error

import stepping


def test_an_os_error_keeps_its_errno_and_file():
    error = storage_error(OSError(errno.ENOSPC, "No space left on device", "/c/x.val"), "/c")
    assert (error.path, error.errno, error.disk_full) == ("/c/x.val", 28, True)
    assert str(error) == '"/c/x.val" failed (28: No space left on device)'
    assert storage_error(OSError(errno.EROFS, "Read-only file system"), "/c").path == "/c"


def test_sqlite_full_is_enospc_and_other_sqlite_errors_have_no_errno():
    full = sqlite3.OperationalError("database or disk is full")
    full.sqlite_errorname = "SQLITE_FULL"
    error = storage_error(full, "/c")
    assert (error.errno, error.disk_full) == (28, True) and "SQLite: database or disk is full" in error.reason
    locked = storage_error(sqlite3.OperationalError("database is locked"), "/c")
    assert locked.errno is None and not locked.disk_full
    assert storage_error(diskcache.Timeout(), "/c").reason == "database is locked"
    assert storage_error(ValueError("a bug"), "/c") is None


def test_disk_failures_raise_storage_errors_and_let_bugs_through():
    try:
        with disk_failures("/c"):
            raise OSError(errno.ENOENT, "No such file or directory", "/c/cache.db")
    except StorageError as error:
        assert error.errno == errno.ENOENT
    try:
        with disk_failures("/c"):
            raise KeyError("bug")
    except KeyError:
        pass


def test_one_line_per_interval_with_the_count_of_the_others(caplog):
    report = Reporter("assets", interval=3600)
    error = StorageError("/c", 28, "28: No space left on device")
    with caplog.at_level(logging.CRITICAL, logger="ngxsim.cache_purge"):
        for _ in range(50):
            report(error, "writing", 'storing "k"')
    assert [r.getMessage() for r in caplog.records] == [
        '[crit] cache_purge: writing "/c" failed (28: No space left on device) while storing "k" in cache "assets"']
    report._next = 0  # the interval has passed
    with caplog.at_level(logging.CRITICAL, logger="ngxsim.cache_purge"):
        report(error, "writing", 'storing "k"')
    assert caplog.records[-1].getMessage().endswith("; 49 more cache errors in the last 3600s not logged")


def test_entries_stored_before_a_time_are_removed_and_an_index_without_store_times_counts_as_older(tmp_path):
    import sqlite3

    from ngxsim_plugins.cache_purge.levels import KeyIndex

    old = tmp_path / "old.sqlite3"
    db = sqlite3.connect(old)
    db.execute("CREATE TABLE keys (key TEXT PRIMARY KEY, until REAL NOT NULL) WITHOUT ROWID")
    db.execute("CREATE TABLE tags (tag TEXT NOT NULL, key TEXT NOT NULL, PRIMARY KEY (tag, key)) WITHOUT ROWID")
    db.execute("INSERT INTO keys VALUES ('before', 9e9)")
    db.commit()
    db.close()
    index = KeyIndex(str(old))
    with freeze_time("2030-01-01 00:00:10"):
        index.add("later", 9e9, ("t",))
    with freeze_time("2030-01-01 00:00:05"):
        cut = time.time()
    assert [k for k, _ in index.take_stored_before(cut)] == ["before"]
    assert index.take_stored_before(cut) == [] and index.count() == 1
    index.close()


# -- the keys zone's words, under a writer stepped one instruction at a time -------------------


@pytest.fixture
def shared_level(tmp_path, shm_leftovers):
    from ngxsim.core.instance import STANDALONE, current_instance
    from ngxsim.core.shm import attach_zone, remove_zone_files
    from ngxsim_plugins.cache_purge.conf import CachePath
    from ngxsim_plugins.cache_purge.levels import EPOCH_ZONE_SIZE, SharedLevel

    inst = current_instance(STANDALONE)
    zone = attach_zone(inst, f"keys-{os.getpid()}", EPOCH_ZONE_SIZE)
    level = SharedLevel(CachePath(str(tmp_path / "cache"), zone.name, zone.size), zone)
    yield level
    level.close()
    zone.close()
    remove_zone_files(inst)


def test_a_purge_killed_at_any_instant_leaves_the_epoch_where_a_store_in_flight_cannot_pass(shared_level):
    """A store compares the purge epoch it read before fetching with the one after writing: the
    epoch must never come back to a value a store in flight read. A purge process SIGKILLed
    while it bumps the epoch (at the instruction where ``struct.pack_into`` had zeroed it, here
    found by stepping it) left it at 0: the next purges counted 1, 2... again, and a response
    fetched before one of them was stored after it (STORED, a stale entry that purge had
    removed). Now the epoch is one 8-byte store: the killed purge leaves the old value or the
    new, and the store in flight is refused."""
    from ngxsim_plugins.cache_purge.levels import NOT_STORED, Entry

    level = shared_level
    level.remove(keys=["other"])  # an earlier purge: epoch 1
    read_before_fetch = level.epoch()
    assert read_before_fetch == 1
    stale = Entry(200, [], b"before the purge", time.time() + 60)

    def kill_once_it_moved(step):
        if level.epoch() != read_before_fetch:
            raise stepping.Killed

    stepping.each_instruction(level._bump_epoch, kill_once_it_moved, before=level.epoch)
    assert level.remove(keys=["k"]).keys == []  # the purge the stale response must not survive
    assert level.store("k", stale, read_before_fetch) == NOT_STORED
    assert level.get("k") is None
    assert level.epoch() == read_before_fetch + 2  # the killed purge's bump was whole when seen


def test_every_instant_of_a_purge_shows_lock_free_readers_the_old_epoch_or_the_new(shared_level):
    """Stepped through a whole bump (every instruction, the zone lock's too), the epoch a store
    reads without the lock is the old one or the new one, never 0."""
    level = shared_level
    level._bump_epoch()
    seen = set()

    def look(step):
        seen.add(level.epoch())
        assert level.epoch() in (1, 2), f"instruction {step}: the epoch reads {level.epoch()}"

    steps = stepping.each_instruction(level._bump_epoch, look, before=level.epoch)
    assert seen == {1, 2} and steps > 100


def test_recording_a_new_generation_of_the_databases_never_shows_generation_0(shared_level):
    """A worker that finds the databases made again records generation + 1 in the keys zone, which
    every other worker compares with its own on each access without the lock: seen at 0 (or left
    at 0 by a killed writer) it would reopen for nothing, or the next opener would restart at 1."""
    level = shared_level
    assert level._zone_generation() == 1

    def look(step):
        assert level._zone_generation() in (1, 2), f"instruction {step}: generation {level._zone_generation()}"

    stepping.each_instruction(lambda: level._record_generation(True), look, before=level._zone_generation)
    assert level._zone_generation() == 2


def test_the_cache_statistics_a_worker_adds_never_read_as_0(shm_path, shared_level):
    """``/api/N/http/caches`` reads the 20 counts without the lock while workers add to them: a
    locked ``struct.pack_into`` of all 20 showed every count at 0 for an instant, and a worker
    killed there reset them all for good."""
    from ngxsim_plugins.cache_purge import stats

    zone = shared_level.zone
    stats.count(zone, "HIT", 100)
    stats.written(zone, "MISS", 7)
    stats.count(zone, "MISS", 7)

    def look(step):
        now = stats.read(zone)
        assert now["hit"]["responses"] in (1, 2) and now["hit"]["bytes"] in (100, 150), f"instruction {step}: {now}"
        assert now["miss"] == {"responses": 1, "bytes": 7, "responses_written": 1, "bytes_written": 7}

    stepping.each_instruction(lambda: stats.count(zone, "HIT", 50), look, before=lambda: stats.count(zone, "BYPASS", 0))
    assert stats.read(zone)["hit"] == {"responses": 2, "bytes": 150}
