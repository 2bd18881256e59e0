"""cache_purge's disk failures: what each is called, and how often it is logged."""

from __future__ import annotations

import errno
import time
import logging
import sqlite3

import diskcache
from freezegun import freeze_time

from ngxsim_plugins.cache_purge.storage import Reporter, StorageError, disk_failures, storage_error


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
