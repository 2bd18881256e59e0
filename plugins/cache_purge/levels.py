"""The two levels of a cache: each worker's memory in front of one shared directory on disk.

- ``MemoryLevel``: this worker's bounded LRU (cachetools ``TLRUCache``, sized in bytes, each
  entry gone when it stops being fresh). A hit here touches neither disk nor shared memory.
- ``SharedLevel``: what every worker sees and what survives a restart, under the
  ``proxy_cache_path`` directory: the responses in a diskcache ``Cache`` (bounded by
  ``max_size``, oldest stored out first; an entry unused for ``inactive`` expires), and a
  ``KeyIndex`` (SQLite, never culled) of every key that may still be fresh in some level, with
  its tags, so a purge by prefix or tag finds them all.

Stores never resurrect purged content. A response fetched before a purge must not land in a
level after it. Two counters make that so: the keys zone's purge epoch in shared memory (a
purge bumps it before it removes anything; a store re-reads it after writing and undoes its
write if it moved) and each memory level's own epoch (bumped on every invalidation this worker
delivers; a memory store made with an older epoch is dropped).
"""

from __future__ import annotations

import errno
import functools
import os
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass

import cachetools
import diskcache
from werkzeug.wrappers import Response

from ngxsim import keep_status_line, words

from .storage import disk_failures, reraise_as_storage_error

ENTRY_FORMAT = 2  # 2: the status line as the origin sent it, whether it sent a length, its variant
NOT_STORED, STORED, REPLACED = 0, 1, 2  # what SharedLevel.store did
BATCH_TTL = 3600.0          # a stored purge batch outlives any worker's delivery of its event
# the keys zone's u64 words (ngxsim.words): 0 the purge epoch, 1 the generation of the
# databases (0: none opened yet by this instance; 1: the first, which any worker may make; each
# folder made again after that, +1): a worker whose databases are of an older generation reopens
# at once. Both are read without the lock (every store, every shared-level access) and must
# never go back, even under a writer SIGKILLed mid-change: one 8-byte store each, never
# struct.pack_into (which zeroes first: a purge killed there left the epoch at 0, to count up
# again through values stores in flight had read — a stale store then passed for a fresh one)
_EPOCH_WORD, _GENERATION_WORD = 0, 1
EPOCH_ZONE_SIZE = 256       # zone header (64) + the purge epoch + the databases' generation + the
                            # statistics (stats.py)
ZONE_TAG = f"cache_purge v{ENTRY_FORMAT}"
# an entry's memory footprint beyond its body: the object, the headers, the key (an estimate)
_ENTRY_OVERHEAD = 512
# a variant other than the one stored under a key is stored under KEY + VARIANT + the variant
VARIANT = "\x00variant\x00"


def _now() -> float:
    return time.time()  # looked up per call: tests freeze time


class _Hit(Response):
    default_mimetype = None  # answer a cached response with the headers it had, no added Content-Type


@dataclass(slots=True)
class Entry:
    """One cached response."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes
    valid_until: float              # fresh until (wall clock); served from no level after it
    tags: tuple[str, ...] = ()
    mem_until: float = 0.0          # how long the memory level may keep it (<= valid_until)
    line: str = ""                  # the status line as the origin sent it ("302 Found"); "": nginx's
    sized: bool = True              # the origin sent a Content-Length (a hit without: chunked, as nginx)
    vary: tuple[str, ...] = ()      # the request headers its Vary names (lower case)
    variant: str = ""               # their values in the request it answered (policy.variant)

    @property
    def size(self) -> int:
        return len(self.body) + _ENTRY_OVERHEAD + sum(len(k) + len(v) for k, v in self.headers)

    def response(self) -> Response:
        # nginx answers a hit with the status line and the framing the origin's answer had
        response = _Hit(self.body if self.sized else iter((self.body,)), status=self.status, headers=self.headers)
        return keep_status_line(response, self.line) if self.line else response

    def dump(self) -> tuple:
        return (ENTRY_FORMAT, self.status, self.headers, self.body, self.valid_until, self.tags, self.line, self.sized,
                self.vary, self.variant)

    @classmethod
    def load(cls, value) -> "Entry | None":
        if not isinstance(value, tuple) or not value or value[0] != ENTRY_FORMAT:
            return None  # written by another layout: treated as not cached
        _, status, headers, body, valid_until, tags, line, sized, vary, variant = value
        return cls(status, headers, body, valid_until, tags, line=line, sized=sized, vary=tuple(vary), variant=variant)


class MemoryLevel:
    """This worker's level: a byte-bounded LRU whose entries leave when their time is up."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.lock = threading.Lock()
        self.epoch = 0  # bumped by every invalidation this worker delivers
        self.cache: cachetools.TLRUCache = cachetools.TLRUCache(
            maxsize=max_bytes, ttu=lambda key, entry, now: entry.mem_until, timer=_now, getsizeof=lambda e: e.size)

    def get(self, key: str) -> Entry | None:
        with self.lock:
            return self.cache.get(key)

    def put(self, key: str, entry: Entry, epoch: int) -> bool:
        """Keep ``entry`` unless an invalidation was delivered since ``epoch`` was read (it may
        have been meant for this very content) or it cannot fit."""
        if entry.size > self.max_bytes:
            return False
        with self.lock:
            if epoch != self.epoch:
                return False
            self.cache[key] = entry
            return True

    def evict(self, keys=(), prefix: str | None = None, tags=()) -> int:
        """Drop the entries with these keys, this key prefix, or any of these tags."""
        tags = set(tags)
        with self.lock:
            self.epoch += 1
            dropped = sum(self.cache.pop(k, None) is not None for k in keys)
            if prefix is not None or tags:  # a scan: the level is small, and these purges rare
                gone = [k for k, e in self.cache.items()
                        if (prefix is not None and k.startswith(prefix)) or tags.intersection(e.tags)]
                for k in gone:
                    self.cache.pop(k, None)
                dropped += len(gone)
            return dropped

    def clear(self) -> int:
        with self.lock:
            self.epoch += 1
            n = len(self.cache)
            self.cache.clear()
            return n

    def stats(self) -> dict:
        with self.lock:
            self.cache.expire()
            return {"entries": len(self.cache), "size": int(self.cache.currsize), "max_size": self.max_bytes}


class KeyIndex:
    """Every key that may still be fresh in some level, its freshness bound and its tags.

    SQLite beside the diskcache, never culled (diskcache drops entries under ``max_size``
    without saying which, while workers may still hold them in memory: a purge must still find
    them). A key's bound only grows and its tags only accumulate until it is purged or its
    bound has passed, so the index always covers what any worker may hold.
    """

    SCHEMA = (
        "CREATE TABLE IF NOT EXISTS keys (key TEXT PRIMARY KEY, until REAL NOT NULL, stored REAL NOT NULL DEFAULT 0)"
        " WITHOUT ROWID",
        "CREATE TABLE IF NOT EXISTS tags (tag TEXT NOT NULL, key TEXT NOT NULL, PRIMARY KEY (tag, key)) WITHOUT ROWID",
        "CREATE INDEX IF NOT EXISTS tags_by_key ON tags (key)",
        "CREATE INDEX IF NOT EXISTS keys_by_until ON keys (until)",
    )
    _CHUNK = 500  # SQLite's bound on parameters per statement is 999 on old builds

    def __init__(self, path: str, timeout: float = 30.0):
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, timeout=timeout, isolation_level=None, check_same_thread=False)
        # WAL is a property of the file, set once (by the master: see SharedLevel.prepare); switching
        # needs the database to itself, which workers opening it together would fight over
        if self._db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        if self._db.execute("SELECT count(*) FROM sqlite_master WHERE name = 'keys'").fetchone()[0] == 0:
            with self._write():
                for statement in self.SCHEMA:
                    self._db.execute(statement)
        elif "stored" not in {row[1] for row in self._db.execute("PRAGMA table_info(keys)")}:
            with self._write():  # an index made before keys had their store time: 0, older than any gap
                if "stored" not in {row[1] for row in self._db.execute("PRAGMA table_info(keys)")}:
                    self._db.execute("ALTER TABLE keys ADD COLUMN stored REAL NOT NULL DEFAULT 0")

    def _write(self):
        return _Transaction(self._db, self._lock)

    def add(self, key: str, until: float, tags=()) -> float | None:
        """Record ``key`` fresh until ``until``, stored now; returns the bound it had (None: not
        indexed)."""
        with self._write() as db:
            row = db.execute("SELECT until FROM keys WHERE key = ?", (key,)).fetchone()
            db.execute("INSERT INTO keys VALUES (?, ?, ?) ON CONFLICT (key) DO UPDATE SET "
                       "until = max(until, excluded.until), stored = excluded.stored", (key, until, _now()))
            db.executemany("INSERT OR IGNORE INTO tags VALUES (?, ?)", [(t, key) for t in tags])
            return row[0] if row is not None else None

    def take_keys(self, keys: list[str]) -> list[tuple[str, float]]:
        with self._write() as db:
            found = []
            for part in _chunks(list(dict.fromkeys(keys)), self._CHUNK):
                marks = ",".join("?" * len(part))
                found += db.execute(f"SELECT key, until FROM keys WHERE key IN ({marks})", part).fetchall()
            self._remove(db, [k for k, _ in found])
            return found

    def take_prefix(self, prefix: str) -> list[tuple[str, float]]:
        with self._write() as db:
            upper = _after_prefix(prefix)
            if upper is None:
                found = db.execute("SELECT key, until FROM keys WHERE key >= ?", (prefix,)).fetchall()
            else:
                found = db.execute("SELECT key, until FROM keys WHERE key >= ? AND key < ?", (prefix, upper)).fetchall()
            self._remove(db, [k for k, _ in found])
            return found

    def take_stored_before(self, when: float) -> list[tuple[str, float]]:
        """The keys last stored before ``when`` (removed)."""
        with self._write() as db:
            found = db.execute("SELECT key, until FROM keys WHERE stored < ?", (when,)).fetchall()
            self._remove(db, [k for k, _ in found])
            return found

    def take_tags(self, tags: list[str]) -> tuple[list[tuple[str, float]], dict[str, list[str]]]:
        """The keys carrying any of ``tags`` (removed), and which keys each tag had."""
        with self._write() as db:
            by_tag: dict[str, list[str]] = {}
            for part in _chunks(list(dict.fromkeys(tags)), self._CHUNK):
                marks = ",".join("?" * len(part))
                for tag, key in db.execute(f"SELECT tag, key FROM tags WHERE tag IN ({marks})", part):
                    by_tag.setdefault(tag, []).append(key)
            keys = list(dict.fromkeys(k for ks in by_tag.values() for k in ks))
            found = []
            for part in _chunks(keys, self._CHUNK):
                marks = ",".join("?" * len(part))
                found += db.execute(f"SELECT key, until FROM keys WHERE key IN ({marks})", part).fetchall()
            self._remove(db, keys)
            return found, by_tag

    def expire(self, now: float) -> int:
        """Forget keys whose freshness bound has passed (no level may serve them any more)."""
        with self._write() as db:
            db.execute("DELETE FROM tags WHERE key IN (SELECT key FROM keys WHERE until < ?)", (now,))
            return db.execute("DELETE FROM keys WHERE until < ?", (now,)).rowcount

    def count(self) -> int:
        with self._lock:
            return self._db.execute("SELECT count(*) FROM keys").fetchone()[0]

    @staticmethod
    def _remove(db, keys: list[str]) -> None:
        for part in _chunks(keys, KeyIndex._CHUNK):
            marks = ",".join("?" * len(part))
            db.execute(f"DELETE FROM tags WHERE key IN ({marks})", part)
            db.execute(f"DELETE FROM keys WHERE key IN ({marks})", part)

    def close(self) -> None:
        with self._lock:
            self._db.close()


class _Transaction:
    """``BEGIN IMMEDIATE`` (the write lock up front: no deadlock between two upgrading readers)
    ... ``COMMIT``, or ``ROLLBACK`` on an exception; one thread of this process at a time."""

    def __init__(self, db: sqlite3.Connection, lock: threading.Lock):
        self.db, self.lock = db, lock

    def __enter__(self) -> sqlite3.Connection:
        self.lock.acquire()
        try:
            self.db.execute("BEGIN IMMEDIATE")
        except BaseException:
            self.lock.release()
            raise
        return self.db

    def __exit__(self, exc_type, *exc) -> None:
        try:
            self.db.execute("COMMIT" if exc_type is None else "ROLLBACK")
        finally:
            self.lock.release()


def _chunks(items: list, size: int):
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _after_prefix(prefix: str) -> str | None:
    """The smallest string greater than every string that starts with ``prefix`` (None: no
    bound). UTF-8 keeps code point order, so SQLite's byte comparison agrees."""
    chars = list(prefix)
    while chars:
        last = ord(chars.pop())
        nxt = last + 1
        if 0xD800 <= nxt <= 0xDFFF:
            nxt = 0xE000
        if nxt <= 0x10FFFF:
            return "".join(chars) + chr(nxt)
    return None


@dataclass
class Removed:
    """What a purge removed from the shared level: the keys, and for a tag purge the tags that
    had any of them."""

    keys: list[str]
    tags: list[str]


def _on_disk(method):
    """A SharedLevel operation: on the databases as they are now (reopened if the folder was
    removed), its disk failures raised as one ``StorageError``."""

    @functools.wraps(method)
    def run(self, *args, **kw):
        try:  # not disk_failures(): a generator context manager costs ~3 us a call
            self._current()
            return method(self, *args, **kw)
        except Exception as exc:
            reraise_as_storage_error(exc, self.spec.path)

    return run


class SharedLevel:
    """One ``proxy_cache_path`` as seen by this process (open one per process: SQLite
    connections do not survive a fork).

    The databases live in ``PATH/data.<random>/``, named by the symlink ``PATH/current``. Every
    operation raises ``StorageError`` when the disk fails (full, read-only, gone). When the
    folder or its databases are removed while running, the next operation of any worker makes
    them again (as nginx makes a missing cache path when it stores) under a new random name: a
    connection still open on a removed database deletes its WAL by name when it closes, which
    must never be the new one's. The worker whose symlink won calls ``on_recreated`` (once per
    removal across the instance; not for the first folder, which any worker may make before the
    master's ``prepare``)."""

    FILES = ("cache.db", "ngxsim-keys.sqlite3")  # diskcache's and the key index
    LINK = "current"
    CHECK_EVERY = 0.1  # seconds: how soon a removed folder is noticed

    def __init__(self, spec, zone, on_recreated=None):
        self.spec = spec
        self.zone = zone
        self.inactive = spec.inactive
        self.on_recreated = on_recreated
        self._reopening = threading.Lock()
        self.disk: diskcache.Cache | None = None
        self.index: KeyIndex | None = None
        self._ids: tuple | None = None
        self._generation = 0
        self._words = words(zone.buf[:16])  # the purge epoch and the databases' generation
        self._checked = 0.0
        with disk_failures(spec.path):
            self._current()

    @classmethod
    def _open(cls, spec) -> tuple[diskcache.Cache, KeyIndex, bool]:
        """The databases (made when missing) and whether this call made their folder."""
        data, made = cls._data_dir(spec.path)
        # oldest stored out first: with diskcache's least-recently-used every read is a write
        # (measured 315 us a read against 53 us here); hot entries live in memory levels anyway
        disk = diskcache.Cache(data, timeout=30, size_limit=spec.max_size or 2**62,
                               eviction_policy="least-recently-stored", statistics=0)
        return disk, KeyIndex(os.path.join(data, cls.FILES[1])), made

    @classmethod
    def _data_dir(cls, path: str) -> tuple[str, bool]:
        link = os.path.join(path, cls.LINK)
        for _ in range(3):  # another worker may replace a dangling link meanwhile
            try:
                data = os.path.join(path, os.readlink(link))
                if os.path.isdir(data):
                    return data, False
                os.unlink(link)  # its folder was removed
            except FileNotFoundError:
                pass
            os.makedirs(path, mode=0o700, exist_ok=True)
            if os.path.exists(os.path.join(path, cls.FILES[0])) and not os.path.lexists(link):
                name = "."  # a cache made before the data folder had its own name: used in place
            else:
                name = f"data.{secrets.token_hex(8)}"
                os.mkdir(os.path.join(path, name), 0o700)
            try:
                os.symlink(name, link)
            except FileExistsError:  # another worker made it first: use its folder
                if name != ".":
                    os.rmdir(os.path.join(path, name))
                continue
            return os.path.join(path, name), True
        raise OSError(errno.EAGAIN, "the cache folder keeps changing", link)

    def _identity(self) -> tuple | None:
        try:
            return tuple(os.stat(os.path.join(self.spec.path, self.LINK, name)).st_ino for name in self.FILES)
        except FileNotFoundError:
            return None

    def _current(self) -> None:
        """Reopen when the databases are not the ones this process opened: at once when another
        worker made them again (the keys zone's generation, a memory read), and by looking at
        the files at most every ``CHECK_EVERY`` seconds (two stat calls cost ~15-25 us here,
        half a shared-level read)."""
        if self._ids is not None and self._generation == self._zone_generation():
            now = time.monotonic()
            if now < self._checked + self.CHECK_EVERY:
                return
            self._checked = now
            if self._identity() == self._ids:
                return
        with self._reopening:
            if self._ids is not None and self._generation == self._zone_generation() \
                    and self._identity() == self._ids:
                return
            if self.disk is not None:
                self.close()
            self.disk, self.index, made = self._open(self.spec)
            self._ids = self._identity()
            recreated = self._record_generation(made)
        if recreated and self.on_recreated is not None:
            self.on_recreated()

    def _record_generation(self, made: bool) -> bool:
        """This process's databases are the zone's generation, the next one when it ``made``
        their folder after some process had them open (returns whether it did so)."""
        with self.zone.lock():
            generation = self._zone_generation()
            recreated = made and generation > 0  # made after some process had them open
            if recreated or generation == 0:
                generation += 1
                self._words[_GENERATION_WORD] = generation
            self._generation = generation
        return recreated

    def _zone_generation(self) -> int:
        return self._words[_GENERATION_WORD]

    @classmethod
    def prepare(cls, spec) -> None:
        """Create (or upgrade the settings of) the directory's databases once, in the master,
        before the workers open them all at the same moment. Raises ``StorageError``."""
        with disk_failures(spec.path):
            disk, index, _ = cls._open(spec)
        disk.close()
        index.close()

    # -- the purge epoch (keys zone) ------------------------------------------------------------

    def epoch(self) -> int:
        return self._words[_EPOCH_WORD]

    def _bump_epoch(self) -> None:
        with self.zone.lock():
            words = self._words
            words[_EPOCH_WORD] = words[_EPOCH_WORD] + 1

    # -- entries ----------------------------------------------------------------------------------

    @_on_disk
    def get(self, key: str) -> Entry | None:
        """The stored entry (fresh or not), with ``mem_until`` set to how long a memory level
        may keep it. Reading an entry keeps it from going ``inactive``."""
        value, expire_time = self.disk.get(key, expire_time=True)
        if value is None:
            return None
        entry = Entry.load(value)
        if entry is None:
            return None
        now = _now()
        if expire_time is not None and expire_time - now < self.inactive / 2:
            # renewed at most every inactive/2 per key: a read is not a write each time
            self.index.add(key, now + self.inactive)  # first: the index covers what is on disk
            if self.disk.touch(key, expire=self.inactive):
                expire_time = now + self.inactive
        # a memory copy never outlives the disk copy's expiry: a purge that finds nothing on
        # disk or in the index must be right that no worker still holds it
        entry.mem_until = min(entry.valid_until, expire_time if expire_time is not None else entry.valid_until)
        return entry

    @_on_disk
    def store(self, key: str, entry: Entry, epoch: int) -> int:
        """Store ``entry`` fetched while the purge epoch was ``epoch``: ``NOT_STORED`` when a
        purge began since; ``REPLACED`` when the key had a copy that may still be fresh in some
        worker's memory (a bypass refresh: every worker must drop it); else ``STORED``."""
        if epoch != self.epoch():
            return NOT_STORED
        now = _now()
        # first: a purge that sees the entry sees its key; indexed as long as it is on disk (an
        # expired entry may still be answered, proxy_cache_use_stale: a purge must find it)
        before = self.index.add(key, max(entry.valid_until, now + self.inactive), entry.tags)
        self.disk.set(key, entry.dump(), expire=self.inactive)
        if epoch != self.epoch():  # a purge began meanwhile and may have missed what we just wrote
            self.disk.delete(key)
            return NOT_STORED
        entry.mem_until = min(entry.valid_until, now + self.inactive)
        return REPLACED if before is not None and before > now else STORED

    @_on_disk
    def remove(self, keys: list[str] | None = None, prefix: str | None = None, tags: list[str] | None = None) -> Removed:
        """Purge: remove these keys (and their variants), the keys with this prefix, or the keys
        with any of these tags. A key counts when it may still be fresh somewhere or was on disk."""
        self._bump_epoch()  # before anything is removed: stores in flight now undo themselves
        now = _now()
        by_tag: dict[str, list[str]] = {}
        if keys is not None:
            found = self.index.take_keys(keys)
            extra = [k for k in keys if k not in {f for f, _ in found}]
            for k in keys:  # a key's other variants (stored with Vary) go with it
                found += self.index.take_prefix(k + VARIANT)
        elif prefix is not None:
            found, extra = self.index.take_prefix(prefix), []
        else:
            found, by_tag = self.index.take_tags(tags or [])
            extra = []
        removed = {k for k, until in found if until > now}
        for k, _ in found:
            if self.disk.delete(k):
                removed.add(k)
        for k in extra:  # stale on disk, its index row already expired
            if self.disk.delete(k):
                removed.add(k)
        matched_tags = [t for t in (tags or []) if any(k in removed for k in by_tag.get(t, ()))]
        return Removed(sorted(removed), matched_tags)

    @_on_disk
    def remove_stored_before(self, when: float) -> int:
        """Remove every entry last stored before ``when`` (a host that missed purges of other
        hosts: what it stored before may have been purged there); returns how many keys."""
        self._bump_epoch()  # stores in flight began before too
        found = self.index.take_stored_before(when)
        for k, _ in found:
            self.disk.delete(k)
        return len(found)

    # -- purge batches ---------------------------------------------------------------------------

    @_on_disk
    def put_batch(self, batch_id: str, text: str) -> None:
        self.disk.set(("batch", batch_id), text, expire=BATCH_TTL)

    @_on_disk
    def get_batch(self, batch_id: str) -> str | None:
        return self.disk.get(("batch", batch_id))

    # -- the cache manager ---------------------------------------------------------------------

    @_on_disk
    def manage(self) -> None:
        """Remove what went inactive, keep the size under max_size, forget stale keys."""
        self.disk.expire()
        self.disk.cull()
        self.index.expire(_now())

    @_on_disk
    def stats(self) -> dict:
        return {"entries": len(self.disk), "size": self.disk.volume(), "keys": self.index.count()}

    def close(self) -> None:
        disk, index, self.disk, self.index, self._ids = self.disk, self.index, None, None, None
        if disk is not None:
            disk.close()
            index.close()
