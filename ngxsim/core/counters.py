"""Named rows of counters in a zone: a module's per-object statistics (NGINX Plus's ``passed``,
``rejected``... of each limit_req zone) that every worker adds to and any worker reads.

A row belongs to a name (up to 64 bytes, a zone name); its counters move by ``Zone.add_u64``
(atomic, no lock where the core's accelerator is built). A row is claimed once per process and
name under the zone lock; the zone is declared with a fixed tag, so a reload keeps the rows of
the names it keeps. A reload that drops names leaves their rows behind; a name that finds no free
row takes one whose name the current configuration does not have (``keep``), with a new id: the
u32 id at the row's start is the guard of every add, so a worker of an older configuration still
counting into a row that changed hands loses its add instead of counting it for another name (and
claims no other row: its name is gone from the configuration that took the row).

Layout of ``zone.buf`` (little-endian): a 16-byte header (magic, fields, rows, the last id given),
then the rows: ``id u32, name length u16, pad u16``, the name (64 bytes), one u64 per field. A
new id goes into the header as one 8-byte store (rows and the id), never ``struct.pack_into``
(which zeroes first: a worker killed there left the magic at 0, and the next view made the
zone anew, every row's counts with it); the counts are read through ``words`` (one load each).
"""

from __future__ import annotations

import struct
import threading
from typing import Iterable

from .shm import HEADER_SIZE, Zone, words

_MAGIC = 0x52544E43  # "CNTR"
_HEADER = struct.Struct("<IIII")  # magic, fields, rows, the last id given
_ROW_HEAD = struct.Struct("<IHH")  # id (0: free), name length, pad
NAME_MAX = 64


class CounterRows:
    """This process's view of a zone of named counter rows (``CounterRows(zone, fields, keep)``).

    ``fields`` are the counters' names, in the order they are laid out; ``keep`` the names the
    current configuration has (a row of another name may be taken over). ``add(name, field)``
    counts, ``read(name)`` returns ``{field: count}``, ``reset(name)`` sets them to 0 (a count
    added at that very moment may land before or after the reset, as it would in NGINX Plus).
    """

    def __init__(self, zone: Zone, fields: tuple[str, ...], keep: Iterable[str] = ()):
        self.zone, self.buf, self.fields = zone, zone.buf, tuple(fields)
        self.row_size = _ROW_HEAD.size + NAME_MAX + 8 * len(self.fields)
        self.rows = (zone.usable - _HEADER.size) // self.row_size
        if self.rows < 1:
            raise ValueError(f'zone "{zone.name}" of {zone.size} bytes holds no row of {len(self.fields)} counters')
        self.keep = {_name(n) for n in keep}
        self._index = {f: i for i, f in enumerate(self.fields)}
        self._claimed: dict[str, tuple[int, int]] = {}  # name -> (row offset, id)
        self._lock = threading.Lock()
        self._u64 = words(zone.buf)
        with zone.lock():
            magic, nfields, rows, _ = _HEADER.unpack_from(self.buf, 0)
            if (magic, nfields, rows) != (_MAGIC, len(self.fields), self.rows):
                self.buf[:_HEADER.size + self.rows * self.row_size] = bytes(_HEADER.size + self.rows * self.row_size)
                _HEADER.pack_into(self.buf, 0, _MAGIC, len(self.fields), self.rows, 0)

    @staticmethod
    def size_for(names: int, fields: int) -> int:
        """The zone size (``ngxsim.ZONE_HEADER_SIZE`` included) to declare for ``names`` names:
        room for them twice over (a reload's new names beside the old ones), at least 32 rows,
        rounded up to a power of two so that a reload adding a name seldom changes the size."""
        rows = 32
        while rows < 2 * names:
            rows *= 2
        return HEADER_SIZE + _HEADER.size + rows * (_ROW_HEAD.size + NAME_MAX + 8 * fields)

    @classmethod
    def declare(cls, config, zone: str, owner: str, names, fields: tuple[str, ...]) -> None:
        """Declare ``zone`` for the rows of ``names`` (in ``ngxsim_postconfiguration``)."""
        config.zones.declare(zone, cls.size_for(len(names), len(fields)), owner=owner,
                             tag=f"counters {','.join(fields)}")

    @classmethod
    def of(cls, runtime, zone: str, fields: tuple[str, ...], keep) -> "CounterRows":
        """This process's view of ``zone`` (made on first use, kept in ``runtime.stash``)."""
        view = runtime.stash.get(f"counters.{zone}")
        if view is None:
            view = runtime.stash[f"counters.{zone}"] = cls(runtime.zone(zone), fields, keep)
        return view

    def add(self, name: str, field: str, n: int = 1) -> None:
        """Count ``n`` into ``field`` of ``name``'s row. Lost when the row changed hands (a
        configuration without ``name`` took it over: this process serves an older one)."""
        at, row_id = self._row(name)
        self.zone.add_u64(((at + _ROW_HEAD.size + NAME_MAX + 8 * self._index[field], n),), at, row_id)

    def read(self, name: str) -> dict[str, int]:
        at, _ = self._row(name)
        start = (at + _ROW_HEAD.size + NAME_MAX) >> 3
        return dict(zip(self.fields, self._u64[start:start + len(self.fields)]))

    def reset(self, name: str) -> None:
        at, _ = self._row(name)
        start = at + _ROW_HEAD.size + NAME_MAX
        with self.zone.lock():  # the pure-Python add_u64 adds under it: none is half-reset
            self.buf[start:start + 8 * len(self.fields)] = bytes(8 * len(self.fields))

    # -- rows -------------------------------------------------------------------------------------

    def _row(self, name: str) -> tuple[int, int]:
        found = self._claimed.get(name)
        if found is not None:
            return found
        key = _name(name)
        with self._lock, self.zone.lock():
            free = taken = None
            for row in range(self.rows):
                at = _HEADER.size + row * self.row_size
                row_id, length, _ = _ROW_HEAD.unpack_from(self.buf, at)
                held = bytes(self.buf[at + _ROW_HEAD.size:at + _ROW_HEAD.size + length])
                if row_id and held == key:
                    self._claimed[name] = (at, row_id)
                    return at, row_id
                if not row_id and free is None:
                    free = at
                elif row_id and taken is None and held not in self.keep:
                    taken = at
            at = free if free is not None else taken
            if at is None:
                raise ValueError(f'zone "{self.zone.name}": no row left for "{name}"')
            magic, nfields, rows, last = _HEADER.unpack_from(self.buf, 0)
            row_id = last % 0xFFFFFFFF + 1
            self._u64[1] = rows | row_id << 32  # the header's second half; the magic stays
            self.buf[at:at + self.row_size] = bytes(self.row_size)  # its old adds' guard fails from here
            _ROW_HEAD.pack_into(self.buf, at, row_id, len(key), 0)  # (zero to begin with: no dip)
            self.buf[at + _ROW_HEAD.size:at + _ROW_HEAD.size + len(key)] = key
            self._claimed[name] = (at, row_id)
            return at, row_id


def _name(name: str) -> bytes:
    key = name.encode()
    if len(key) > NAME_MAX:
        raise ValueError(f'counter row name "{name}" is longer than {NAME_MAX} bytes')
    return key
