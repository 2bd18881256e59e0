"""When the disk under ``proxy_cache_path`` fails: what failed, worded as nginx words it, and
how often it is said.

A full disk (ENOSPC), a read-only or vanished folder, a locked database: the client still gets
its answer (from the backend), a purge answers a JSON error naming the path and the errno, and
the error log gets one ``[crit]`` line per cache and worker at most every ``REPORT_INTERVAL``
seconds (with the count of those not logged), never a traceback per request.

SQLite reports ENOSPC as ``SQLITE_FULL`` ("database or disk is full"; its unix VFS maps ENOSPC,
and ngxsim never sets a page-count limit, the only other cause), so that one is reported with
errno 28 and SQLite's words beside it. Other SQLite errors carry no errno and say so.
"""

from __future__ import annotations

import errno as errnos
import logging
import os
import sqlite3
import threading
import time
from contextlib import contextmanager
from typing import NoReturn

import diskcache

log = logging.getLogger("ngxsim.cache_purge")
REPORT_INTERVAL = 10.0


class StorageError(Exception):
    """A cache's disk failed. ``path``: the file or folder; ``errno``: the OS error number
    (None when the failure has none, e.g. a locked SQLite database); ``reason``: nginx's
    ``(28: No space left on device)`` wording without the parentheses."""

    def __init__(self, path: str, errno: int | None, reason: str):
        super().__init__(f'"{path}" failed ({reason})')
        self.path, self.errno, self.reason = path, errno, reason

    @property
    def disk_full(self) -> bool:
        return self.errno in (errnos.ENOSPC, errnos.EDQUOT)


def storage_error(exc: BaseException, folder: str) -> StorageError | None:
    """``exc`` as a StorageError of the cache folder ``folder`` (None: not a disk failure)."""
    if isinstance(exc, StorageError):
        return exc
    if isinstance(exc, OSError) and exc.errno is not None:
        return StorageError(exc.filename or folder, exc.errno, f"{exc.errno}: {os.strerror(exc.errno)}")
    if isinstance(exc, diskcache.Timeout):
        return StorageError(folder, None, "database is locked")
    if isinstance(exc, sqlite3.Error):
        name = getattr(exc, "sqlite_errorname", None) or type(exc).__name__
        if name == "SQLITE_FULL":
            return StorageError(folder, errnos.ENOSPC, f"{errnos.ENOSPC}: {os.strerror(errnos.ENOSPC)}; SQLite: {exc}")
        return StorageError(folder, None, f"{name}: {exc}")
    return None


@contextmanager
def disk_failures(folder: str):
    """Raise a disk failure inside as a ``StorageError`` of ``folder`` (others go through)."""
    try:
        yield
    except Exception as exc:
        reraise_as_storage_error(exc, folder)


def reraise_as_storage_error(exc: Exception, folder: str) -> NoReturn:
    """Raise ``exc`` again, as a ``StorageError`` of ``folder`` when it is a disk failure."""
    error = storage_error(exc, folder)
    if error is None or error is exc:
        raise exc
    raise error from exc


class Reporter:
    """One ``[crit]`` line per ``REPORT_INTERVAL`` for one cache in this worker; the errors in
    between are counted and the next line says how many were not logged."""

    def __init__(self, zone: str, interval: float = REPORT_INTERVAL):
        self.zone = zone
        self.interval = interval
        self._lock = threading.Lock()
        self._next = 0.0
        self._quiet = 0

    def __call__(self, error: StorageError, verb: str, doing: str) -> None:
        """Log ``VERB "PATH" failed (ERRNO: TEXT) while DOING in cache "ZONE"`` (nginx's shape:
        ``pwrite() "..." failed (28: No space left on device) while ...``) unless one was
        logged less than ``interval`` ago."""
        now = time.monotonic()
        with self._lock:
            if now < self._next:
                self._quiet += 1
                return
            quiet, self._quiet, self._next = self._quiet, 0, now + self.interval
        more = f"; {quiet} more cache errors in the last {self.interval:g}s not logged" if quiet else ""
        log.critical('[crit] cache_purge: %s %s while %s in cache "%s"%s', verb, error, doing, self.zone, more)


__all__ = ["REPORT_INTERVAL", "Reporter", "StorageError", "disk_failures", "reraise_as_storage_error", "storage_error"]
