"""Shared-memory zones: named, fixed-size memory every worker of one server instance maps.

A zone is a file in its instance's private folder in ``/dev/shm`` (``NGXSIM_SHM_DIR``
overrides): ``ngxsim.<master pid>.<master start time>.<secret>/<zone>``, mapped ``MAP_SHARED`` by
every process that attaches. The folder is made mode 0700 and checked (a directory of this
user, open to nobody else); its name carries a secret that only processes of the server's user
can compute (a hash of the master's ``/proc/PID/auxv``: addresses that address-space
randomisation picked, which the kernel shows only to that user). So another local user can
neither guess a zone's path before the server makes it nor put anything in the way (a file, a
link, a janitor marker): the names in the folder are the zones', and the folder is the server's.
The first 64 bytes are the core's: a magic, the size, the owner's layout tag and the doorbell
word. ``zone.buf`` is the rest, for the owning module.

Why these primitives (measured on 2-core boxes, see DESIGN.md):

- **Lock**: ``flock`` on a file descriptor that *this process* opened. The kernel releases it
  when the holder dies, even by SIGKILL. An fd inherited across fork shares its open file
  description with the parent and gives no exclusion at all, so each process reopens the zone
  through ``/proc/self/fd`` (a new description of the same inode, even if the path was replaced
  meanwhile). flock does not exclude threads of one process from each other: a per-process
  ``threading.Lock`` is taken first. ``multiprocessing.Lock`` and POSIX semaphores stay locked
  forever when their holder is SIGKILLed, so they are not used.
- **Accelerator**: when the optional C extension ``_shm_accel`` was built (``pip install``
  does when a compiler is there), the lock's two steps run in C (``Zone.lock()`` returns its
  ``Lock``), and ``Zone.event_ring_writer`` gives an event ring's whole publish in one call.
  Same lock, same bytes in memory; without it (or with ``NGXSIM_PURE_PYTHON=1``) the pure-Python
  code below runs.
- **Doorbell**: a futex on a 32-bit word inside the zone. Waiters block in the kernel (no
  polling, GIL released); a ringer bumps the word and wakes them all. It needs no per-worker
  file descriptors, so a respawned worker just attaches. A waiter that read the word before a
  ring never sleeps through it: ``FUTEX_WAIT`` returns at once when the word has moved.
"""

from __future__ import annotations

import contextlib
import ctypes
import enum
import errno
import functools
import fcntl
import hashlib
import mmap
import os
import platform
import re
import secrets
import stat
import struct
import subprocess
import sys
import threading
import weakref

from .events import Event
from .instance import Instance, alive

PURE_PYTHON_ENV = "NGXSIM_PURE_PYTHON"
if os.environ.get(PURE_PYTHON_ENV):
    accel = None
else:
    try:
        from . import _shm_accel as accel
    except ImportError:  # built without a compiler: the pure-Python path
        accel = None
    # an accelerator built from older sources (an editable install not rebuilt after an update)
    # lacks what newer code calls: the pure-Python path then, never an error per request
    if accel is not None and not hasattr(accel, "add_u64"):
        accel = None

SHM_DIR_ENV = "NGXSIM_SHM_DIR"
PREFIX = "ngxsim."
HEADER_SIZE = 64
_MAGIC = b"NGXZONE1"
# magic(8) size(8) tag(40) doorbell word(4) sleepers(4)
_HEADER = struct.Struct("<8sQ40sII")
_U32, _U64, _F64 = struct.Struct("<I"), struct.Struct("<Q"), struct.Struct("<d")
_DOORBELL_OFFSET = 56
_SLEEPERS_OFFSET = 60
_FILE = re.compile(r"ngxsim\.(\d+)\.(\d+)\.(.+)")
JANITOR_MARKER = "@janitor"  # not a valid zone name, so never a zone's file


def shm_dir() -> str:
    return os.environ.get(SHM_DIR_ENV, "/dev/shm")


_FOLDER = re.compile(r"ngxsim\.(\d+)\.(\d+)\.[0-9a-f]{32}")
_FOLDERS: dict[tuple[str, int, int], str] = {}  # (shm folder, pid, start) -> the instance's folder


def zone_path(instance: Instance, name: str) -> str:
    """The file of zone ``name`` of ``instance``, in the instance's private folder (made, mode
    0700, if absent; refused with ZoneError if what is there is not this user's private folder)."""
    folder = instance_folder(instance)
    _private_folder(folder)
    return os.path.join(folder, name)


def instance_folder(instance: Instance) -> str:
    """The path of ``instance``'s private folder (not made here). Its name ends with a secret
    every process of the server's user computes alike from the live master (no coordination,
    no race between workers that start together); for a master that is gone, the folder of
    this user that exists for it (or, if none, a new random name)."""
    key = (shm_dir(), instance.pid, instance.start_time)
    folder = _FOLDERS.get(key)
    if folder is None:
        secret = _master_secret(instance)
        if secret is None:
            found = _instance_folders(instance.tag)
            folder = found[0] if found else os.path.join(key[0], f"{PREFIX}{instance.tag}.{secrets.token_hex(16)}")
        else:
            folder = os.path.join(key[0], f"{PREFIX}{instance.tag}.{secret}")
        _FOLDERS[key] = folder
    return folder


def _master_secret(instance: Instance) -> str | None:
    """A hash of the master's auxiliary vector (/proc/PID/auxv: the addresses of its stack, vDSO
    and executable that ASLR chose). The kernel lets only the process's own user (and root)
    read it; None when the master is gone (or this is not its user)."""
    try:
        with open(f"/proc/{instance.pid}/auxv", "rb") as fh:
            vector = fh.read()
    except OSError:
        return None
    if not alive(instance.pid, instance.start_time):  # read from another process of a reused pid
        return None
    return hashlib.sha256(b"ngxsim zone folder\0" + vector).hexdigest()[:32]


def _private_folder(folder: str) -> None:
    """Make ``folder`` (mode 0700) or check the one there: a directory (not a link) of this
    user that no other user may enter; else ZoneError."""
    try:
        os.mkdir(folder, 0o700)
        return
    except FileExistsError:
        pass
    except OSError as exc:
        raise ZoneError(f'mkdir() "{folder}" failed ({exc.errno}: {exc.strerror})') from None
    st = os.lstat(folder)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
        raise ZoneError(f"zone folder {folder} is not this server's private folder (uid {st.st_uid}, mode "
                        f"{stat.S_IMODE(st.st_mode):04o}): refusing it (remove it)")


def _is_private_folder(path: str) -> bool:
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and not st.st_mode & 0o077


def _instance_folders(tag: str) -> list[str]:
    """The private folders of this user for the instance ``tag`` (normally one)."""
    return [os.path.join(shm_dir(), e) for e in sorted(_entries())
            if e.startswith(f"{PREFIX}{tag}.") and _FOLDER.fullmatch(e) and _is_private_folder(os.path.join(shm_dir(), e))]


# ------------------------------------------------------------------------------------------
# futex
# ------------------------------------------------------------------------------------------

_SYS_FUTEX = {"x86_64": 202, "aarch64": 98, "i686": 240, "armv7l": 240, "ppc64le": 221, "s390x": 238}.get(
    platform.machine()
)
_FUTEX_WAIT, _FUTEX_WAKE = 0, 1
_INT_MAX = 2**31 - 1
_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
# futex(uaddr, op, val, timeout, uaddr2, val3): declared so each call converts nothing by hand
_libc.syscall.argtypes = [ctypes.c_long, ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32, ctypes.c_void_p,
                          ctypes.c_void_p, ctypes.c_uint32]


_plain_syscall = ctypes.CDLL(None, use_errno=True).syscall  # its own handle: _libc.syscall is typed for futex
_SYS_SCHED_SETATTR = {"x86_64": 314, "aarch64": 274}.get(platform.machine())
_SCHED_ATTR = struct.Struct("<IIQiIQQQ")  # size, policy, flags, nice, priority, runtime, deadline, period
SHORT_SLICE_NS = 100_000  # the shortest slice Linux grants (it clamps to 0.1 .. 100 ms)


def prompt_wakeups(slice_ns: int = SHORT_SLICE_NS) -> bool:
    """Ask the kernel to run the calling thread promptly when it is woken: a short time slice
    (``sched_setattr`` with ``sched_runtime`` on the normal policy; Linux 6.12+ EEVDF, allowed
    to any user, same nice, same share of the CPU). EEVDF orders runnable tasks by a deadline of
    their slice: a waiter with a 0.1 ms slice is picked before a busy task whose default slice
    (~3 ms on 2 cores, one 4 ms tick to notice) would otherwise finish first. For a thread that
    sleeps on a doorbell and runs for microseconds per wake-up (a dispatcher). False (and
    nothing changed) where the kernel or the architecture does not support it."""
    if _SYS_SCHED_SETATTR is None:
        return False
    attr = ctypes.create_string_buffer(_SCHED_ATTR.pack(_SCHED_ATTR.size, 0, 0, os.getpriority(os.PRIO_PROCESS, 0),
                                                        0, slice_ns, 0, 0))
    if os.sched_getscheduler(0) != os.SCHED_OTHER:
        return False  # a policy set by the operator (batch, idle, real-time) stays
    return _plain_syscall(_SYS_SCHED_SETATTR, 0, attr, 0) == 0


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class Wait(enum.IntEnum):
    """How a ``Doorbell.wait`` ended: ``WOKEN`` (slept, then rung), ``MOVED`` (rung before it
    could sleep) or ``TIMED_OUT`` (false; the others are true)."""

    TIMED_OUT = 0
    WOKEN = 1
    MOVED = 2


_WOKEN = Wait.WOKEN  # (an enum member looked up through its class costs a __getattr__ each time)
# how FUTEX_WAIT ended, by errno: the word was not ``seen`` (no sleep), the timeout, a signal
# (WOKEN: let the caller re-check its state and deadline)
_WAIT_BY_ERRNO = {errno.EAGAIN: Wait.MOVED, errno.ETIMEDOUT: Wait.TIMED_OUT, errno.EINTR: Wait.WOKEN}


@functools.lru_cache(maxsize=64)
def _timespec(timeout: float | None):
    """A relative timeout for FUTEX_WAIT, made once per distinct value (the dispatcher's is
    a constant). The kernel only reads it, so threads may share one."""
    if timeout is None:
        return None
    timeout = max(timeout, 0.0)
    sec = int(timeout)
    return ctypes.pointer(_Timespec(sec, int((timeout - sec) * 1e9)))


class Doorbell:
    """A futex word in shared memory, and a count of the processes sleeping on it.

    Waiter: ``seen = bell.value``; check the shared state; if nothing new, ``bell.wait(seen)``.
    Ringer: ``wake = bell.bump()`` while holding the zone lock (after writing the state), then
    ``bell.wake()`` after releasing it if ``wake`` is true.

    The sleeper count (changed under the zone lock) spares the ringer the wake-up syscall when
    nobody can be waiting: a waiter counts itself before its last look at the word, so a ringer
    either sees it counted or it sees the new word. A long-lived waiter (a dispatcher thread)
    ``register()``s once and stays counted, so each of its wake-ups costs no lock; a one-off
    waiter (a long-poll) is counted for the length of its ``wait``. A waiter SIGKILLed while
    counted leaves the count too high: ringers then make a syscall they could have skipped,
    nothing worse.
    """

    def __init__(self, zone: "Zone", word: ctypes.c_uint32, sleepers: ctypes.c_uint32):
        if _SYS_FUTEX is None:  # pragma: no cover - other architectures
            raise RuntimeError(f"no futex syscall number known for {platform.machine()}")
        self._zone = zone
        self._word = word
        self._sleepers = sleepers
        self._addr = ctypes.c_void_p(ctypes.addressof(word))
        self._address = ctypes.addressof(word)  # for the accelerator's futex calls (word keeps it mapped)
        self._accel = accel  # chosen when the zone is attached, as the zone's lock is
        # FUTEX_WAIT(seen, timeout) -> 0 when woken, else the errno; the kernel sleeps only while
        # the word is still ``seen`` (else EAGAIN: MOVED). The accelerator's own call where it is
        # built: no Python frame on a dispatcher's every wake-up.
        self._futex_wait = (self._ctypes_futex_wait if accel is None
                            else functools.partial(accel.futex_wait, self._address))

    @property
    def value(self) -> int:
        """The word now: read it before looking at the shared state, pass it to ``wait``."""
        return self._word.value

    def bump(self) -> bool:
        """Advance the word (hold the zone lock); True if someone sleeps and must be woken."""
        self._word.value = (self._word.value + 1) & 0xFFFFFFFF
        return self._sleepers.value > 0

    def wake(self) -> None:
        """Wake every process sleeping on the word."""
        if self._accel is not None:
            self._accel.futex_wake(self._address)
            return
        _libc.syscall(_SYS_FUTEX, self._addr, _FUTEX_WAKE, _INT_MAX, None, None, 0)

    def ring(self) -> None:
        """Bump and wake, taking the zone lock for the bump."""
        with self._zone.lock():
            wake = self.bump()
        if wake:
            self.wake()

    def register(self) -> None:
        """Count a long-lived waiter (call before its first look at the shared state)."""
        with self._zone.lock():
            self._sleepers.value += 1

    def unregister(self) -> None:
        """Stop counting a waiter ``register()`` counted."""
        with self._zone.lock():
            self._sleepers.value = max(self._sleepers.value - 1, 0)

    def wait(self, seen: int, timeout: float | None, registered: bool = False) -> "Wait":
        """Sleep while the word still equals ``seen``, at most ``timeout`` seconds.

        Returns ``Wait.WOKEN`` (slept, then rung), ``Wait.MOVED`` (rung before it could sleep:
        no sleep at all) or ``Wait.TIMED_OUT`` (false; the others are true). The GIL is released
        while blocked (by the accelerator's call, or by ctypes on the pure-Python path).
        ``registered``: the caller is counted already (``register()``).
        """
        if registered:  # a dispatcher's every wake-up: no count to keep, no try/finally
            err = self._futex_wait(seen, timeout)
        else:
            self.register()
            try:
                err = self._futex_wait(seen, timeout)
            finally:
                self.unregister()
        return _WOKEN if err == 0 else _wait_ended(err)

    def _ctypes_futex_wait(self, seen: int, timeout: float | None) -> int:
        """``_futex_wait`` without the accelerator."""
        if _libc.syscall(_SYS_FUTEX, self._addr, _FUTEX_WAIT, seen, _timespec(timeout), None, 0) == 0:
            return 0
        return ctypes.get_errno()


def _wait_ended(err: int) -> Wait:
    """How a FUTEX_WAIT that failed with ``err`` ended, or OSError for what never should."""
    ended = _WAIT_BY_ERRNO.get(err)
    if ended is None:
        raise OSError(err, os.strerror(err))
    return ended


# ------------------------------------------------------------------------------------------
# zones
# ------------------------------------------------------------------------------------------


_WORD_CTYPES = {"H": ctypes.c_uint16, "I": ctypes.c_uint32, "Q": ctypes.c_uint64, "d": ctypes.c_double}


def words(buf, code: str = "Q"):
    """``buf`` (a zone's ``buf`` or a slice of it starting at an offset aligned to the item) as an
    array of little-endian items of ``code`` — ``"Q"`` u64 (the default), ``"I"`` u32, ``"H"``
    u16, ``"d"`` f64 — each read and written with one aligned load or store of its size: item
    ``i`` is the value at byte ``i * size``; a tail shorter than an item is left out.

    What a module stores in shared memory and some process reads *without the zone lock* (or
    must find intact after a writer was SIGKILLed under the lock), it stores through these: a
    reader, or the writer after a killed one, then sees the old value or the new one, never
    another. ``struct.pack_into`` does not do that: it zeroes its whole destination, then writes
    the fields, so a reader racing it (or a writer killed between the two) sees 0 — a counter
    that goes back, an epoch that repeats, a record that looks free.

    A memoryview of native items on a little-endian machine (CPython copies an item with one
    ``memcpy`` of its size); elsewhere an array of ctypes' little-endian items, so the bytes in
    the zone are the same on every machine. Make it once (per process, per layout) and keep it:
    a view costs ~0.35 us to make; reading an item, adding one and storing it ~50 ns (with
    ``unpack_from``/``pack_into`` ~150 ns)."""
    ctype = _WORD_CTYPES[code]
    size = ctypes.sizeof(ctype)
    view = buf if isinstance(buf, memoryview) else memoryview(buf)
    buf = view.cast("B")[:view.nbytes // size * size]
    if sys.byteorder == "little":
        return buf.cast(code)
    return (ctype.__ctype_le__ * (len(buf) // size)).from_buffer(buf)


def store_words(u64, offset: int, data) -> None:
    """Store ``data`` (bytes, a multiple of 8 of them) at byte ``offset`` (8-aligned) of ``u64``
    (``words(buf)``), one 8-byte store a word, from the last word to the first, skipping the
    words that do not change: a record written over its old self where a reader without the
    lock, or the writer after a killed one, finds every word old or new, the first one (where a
    record keeps what says it is there: its id, its state) last."""
    new, at = words(data if isinstance(data, bytearray) else bytearray(data)), offset >> 3
    for i in range(len(new) - 1, -1, -1):
        if u64[at + i] != new[i]:
            u64[at + i] = new[i]


class ZoneError(RuntimeError):
    """A zone cannot be created or attached (e.g. the shared memory is full)."""


class Zone:
    """One attached zone in this process: ``runtime.zone(name)``.

    Attributes:
        name (str): the zone's name as declared.
        size (int): its size in bytes, the core's header included.
        buf (memoryview): the module's bytes (``size - ngxsim.ZONE_HEADER_SIZE`` of them), shared
            by every process of the instance; zero-filled when created.
        fresh (bool): this start created (or recreated) the zone, rather than kept the one a
            previous run of the same instance left (``ngxsim_init_master`` reads it).
        tag (str): the layout tag it was declared with.
        doorbell (Doorbell): a futex word in the zone's header: ``doorbell.ring()`` wakes every
            process waiting in ``doorbell.wait(seen, timeout)`` (which returns a ``Wait``).
    """

    def __init__(self, name: str, size: int, tag: str, path: str, fd: int, fresh: bool):
        self.name = name
        self.size = size
        self.tag = tag
        self.path = path
        self.fresh = fresh  # created (or recreated) by this attach, rather than kept
        self._fd = fd
        self._mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self.buf = memoryview(self._mm)[HEADER_SIZE:]
        self.doorbell = Doorbell(
            self,
            ctypes.c_uint32.from_buffer(self._mm, _DOORBELL_OFFSET),
            ctypes.c_uint32.from_buffer(self._mm, _SLEEPERS_OFFSET),
        )
        self._lock_fd = -1
        self._tlock = threading.Lock()
        self._accel = accel  # fixed per zone, so one zone never mixes the two kinds of lock
        self._clock = None  # the accelerator's Lock (thread lock + flock in C), made on first use
        self._u64 = None  # words(buf), made on first use by the pure-Python add_u64
        _ZONES.add(self)

    @property
    def usable(self) -> int:
        """How many bytes ``buf`` holds."""
        return self.size - HEADER_SIZE

    def _forked(self) -> None:
        """In a child after fork: the lock fd is the parent's (no exclusion), the thread lock
        may be held by a thread that does not exist here. Reopen both lazily."""
        self._lock_fd = -1
        self._tlock = threading.Lock()
        self._clock = None

    def _open_lock_fd(self) -> int:
        # a new open file description of the same inode, even if the path was replaced since
        self._lock_fd = os.open(f"/proc/self/fd/{self._fd}", os.O_RDWR | os.O_CLOEXEC)
        return self._lock_fd

    def lock(self) -> "Zone":
        """``with zone.lock():`` — exclusive across every thread of every process attached to
        this zone; released by the kernel if the holder dies. Not re-entrant."""
        if self._accel is None:
            return self
        return self._clock or self._accel_lock()

    def _accel_lock(self):
        with _FIRST_USE:  # once per process: two threads must not open two lock fds
            if self._clock is None:
                self._clock = self._accel.Lock(self._open_lock_fd())
            return self._clock

    def add_u64(self, adds: tuple[tuple[int, int], ...], guard_at: int = -1, guard: int = 0, stamp_at: int = -1,
                stamp: float = 0.0) -> bool:
        """Counters in ``buf`` moved without taking the zone lock where the accelerator is built:
        add each ``(offset, delta)`` of ``adds`` to the little-endian u64 at that offset (8-byte
        aligned, delta >= 0; at most 16) and, with ``stamp_at`` >= 0, store the f64 ``stamp``
        there — only if the u32 at ``guard_at`` equals ``guard`` (``guard_at`` < 0: always).
        Returns whether the guard held (nothing is written when it did not).

        With the accelerator each access is one atomic instruction, so no add is lost to another
        process adding at the same time; the pure-Python path does the same under the zone
        lock, with the same bytes as a result. So a field moved here must be moved only here
        (a locked read-modify-write of it elsewhere could lose a concurrent add), and anything
        that must stay consistent with other fields belongs under ``lock()``. The guard is read
        once before the adds: a writer that changes it under the lock meanwhile may see one
        add land after its change."""
        if self._accel is not None:
            return self._accel.add_u64(self.buf, guard_at, guard, stamp_at, stamp, adds)
        buf = self.buf
        if len(adds) > 16:
            raise ValueError("add_u64: at most 16 counters per call")
        fields = [(guard_at, 4)] if guard_at >= 0 else []
        fields += [(stamp_at, 8)] if stamp_at >= 0 else []
        fields += [(offset, 8) for offset, _ in adds]
        if any(offset < 0 or offset % size or offset + size > len(buf) for offset, size in fields):
            raise ValueError("add_u64: an offset is outside the buffer or not aligned to its field")
        u64 = self._u64 or self._words()
        with self:  # one 8-byte store a field: readers take no lock (pack_into would zero it first)
            if guard_at >= 0 and _U32.unpack_from(buf, guard_at)[0] != guard:
                return False
            if stamp_at >= 0:
                u64[stamp_at >> 3] = _U64.unpack(_F64.pack(stamp))[0]
            for offset, delta in adds:
                u64[offset >> 3] = (u64[offset >> 3] + delta) & 0xFFFFFFFFFFFFFFFF
            return True

    def _words(self):
        self._u64 = words(self.buf)
        return self._u64

    def event_ring_writer(self, entries_offset: int, tags_offset: int, capacity: int, channel_max: int,
                          type_max: int, payload_max: int, origin_max: int):
        """The accelerator's one-call publish for an event ring laid out in ``buf`` as
        worker_events' ring is (control block at offset 0: newest u64, dropped u64, last publish
        msec u64; entries of seq u64, timestamp u64, four lengths u8 u8 u16 u8 (channel, type,
        payload, origin: 0 for a local event), 3 zero bytes, the origin generation u64 and the
        four zero-padded fields; one u32 tag per entry at ``tags_offset``), or None when the
        accelerator is not built. It takes this zone's lock again after a fork. Its
        ``publish(channel, type, payload, tag, ts_msec[, origin, origin_generation])`` does,
        under this zone's lock, what the pure-Python writer does, and returns the generation, or
        None when a field is not bytes or ASCII text within its limit (check it and pass bytes);
        ``ts_msec`` < 0 means the clock's now. Its ``read(generation)`` is the seqlock read: an
        ``Event`` of this zone (``origin`` and ``origin_generation`` None for a local one), or None
        when the slot does not hold that generation whole; ``newest()`` the newest generation."""
        if self._accel is None:
            return None
        return self._accel.RingWriter(
            self.lock, self._mm, ring_offset=HEADER_SIZE, entries_offset=entries_offset, tags_offset=tags_offset,
            capacity=capacity, channel_max=channel_max, type_max=type_max, payload_max=payload_max,
            origin_max=origin_max, doorbell_offset=_DOORBELL_OFFSET, sleepers_offset=_SLEEPERS_OFFSET, event_type=Event,
            zone_name=self.name)

    def __enter__(self) -> None:
        if self._accel is not None:
            (self._clock or self._accel_lock()).acquire()
            return
        self._tlock.acquire()
        try:
            fd = self._lock_fd
            if fd < 0:  # first use in this process: opened under the thread lock, once
                fd = self._open_lock_fd()
            fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            self._tlock.release()
            raise

    def __exit__(self, *exc) -> None:
        if self._accel is not None:
            self._clock.release()
            return
        fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
        self._tlock.release()

    def close(self) -> None:
        """Unmap and close. Views still held elsewhere (a dispatcher thread's doorbell) keep
        the mapping alive until they go; the file descriptors are closed regardless."""
        if self._mm is None:
            return
        mm, self._mm = self._mm, None
        if isinstance(self._u64, memoryview):
            self._u64.release()
        self._u64 = None
        self.buf.release()
        try:
            mm.close()
        except BufferError:
            pass  # exported views remain; the mapping goes when they do (or at exit)
        for fd in (self._fd, self._lock_fd):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._fd = self._lock_fd = -1
        self._clock = None

    def __repr__(self) -> str:
        return f"<Zone {self.name} {self.size} bytes at {self.path}>"


_ZONES: "weakref.WeakSet[Zone]" = weakref.WeakSet()
_FIRST_USE = threading.Lock()


def _after_fork_in_child() -> None:
    global _FIRST_USE
    _FIRST_USE = threading.Lock()  # another thread may have held it at the fork
    for zone in list(_ZONES):
        zone._forked()


os.register_at_fork(after_in_child=_after_fork_in_child)


def attach_zone(instance: Instance, name: str, size: int, tag: str = "", path: str | None = None) -> Zone:
    """Map zone ``name`` of ``instance``, creating it (zero-filled) if it does not exist, and
    recreating it if it exists with another size or layout tag (nginx keeps a zone across a
    reload only when its name and size are unchanged).

    The file name is predictable and ``/dev/shm`` is writable by every user, so a file found
    there is trusted only if it is a regular file of this process's user that nobody else may
    open (see ``_check_trusted``); a symbolic link is never followed. Otherwise, or when the
    file cannot be created, ZoneError says why and nothing is attached. ``path``: another file
    than the zone's own (a reload's staged zone, see ``staged_zone_path``)."""
    if size <= HEADER_SIZE:
        raise ValueError(f'zone "{name}": {size} bytes is not more than the {HEADER_SIZE}-byte header')
    path = path or zone_path(instance, name)
    want = _HEADER.pack(_MAGIC, size, tag.encode()[:40], 0, 0)[:56]
    for _ in range(100):
        fd = _open_zone_file(path)
        if fd is None:
            continue  # removed between our two opens: try again
        try:
            _check_trusted(fd, path)
            fcntl.flock(fd, fcntl.LOCK_EX)  # a fresh fd of ours: real exclusion
            fresh = _claim(fd, path, size, want)
            zone = None if fresh is None else Zone(name, size, tag, path, fd, fresh)
        except BaseException:
            os.close(fd)
            raise
        if zone is None:
            os.close(fd)  # replaced meanwhile, or replaced by us: open the current file
            continue
        fcntl.flock(fd, fcntl.LOCK_UN)
        return zone
    raise ZoneError(f'zone "{name}": could not attach {path} (it keeps being replaced)')


_OPEN_FLAGS = os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW


def _open_zone_file(path: str) -> int | None:
    """An fd of the zone file: created (exclusively) if absent, else the existing one; None if
    it vanished between the two attempts. Never follows a symbolic link."""
    try:
        try:
            return os.open(path, _OPEN_FLAGS | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return os.open(path, _OPEN_FLAGS)
    except FileNotFoundError:
        if not os.path.isdir(os.path.dirname(path)):
            raise ZoneError(f'open() "{path}" failed (2: No such file or directory)') from None
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ZoneError(f"zone file {path} is a symbolic link: refusing to follow it (another user may have "
                            "placed it there; remove it)") from None
        raise ZoneError(f'open() "{path}" failed ({exc.errno}: {exc.strerror})') from None


def _check_trusted(fd: int, path: str) -> None:
    """Refuse a zone file another user could have planted or could read: it must be a regular
    file owned by this process's user, with no permission for group or others."""
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise ZoneError(f"zone file {path} is not a regular file: refusing it")
    if st.st_uid != os.geteuid():
        raise ZoneError(f"zone file {path} belongs to uid {st.st_uid}, not to this server's uid {os.geteuid()}: "
                        "refusing it (another user may have placed it there; remove it)")
    if st.st_mode & 0o077:
        raise ZoneError(f"zone file {path} has mode {stat.S_IMODE(st.st_mode):04o}, open to other users: "
                        "refusing it (remove it)")


def _claim(fd: int, path: str, size: int, header: bytes) -> bool | None:
    """With the creation lock held: True if we initialised the file, False if it is kept as it
    is, None if the caller must reopen the path (another file is there now)."""
    st = os.fstat(fd)
    try:
        if os.lstat(path).st_ino != st.st_ino:
            return None
    except FileNotFoundError:
        return None
    if st.st_size == 0:
        try:
            # reserve the memory now: a sparse file on a full tmpfs would SIGBUS a worker the
            # first time it touched an unbacked page, long after start
            os.posix_fallocate(fd, 0, size)
        except OSError as exc:
            os.unlink(path)
            raise ZoneError(f"cannot reserve {size} bytes for zone file {path}: {exc.strerror}") from None
        os.pwrite(fd, header, 0)
        return True
    if st.st_size != size or os.pread(fd, len(header), 0) != header:
        os.unlink(path)  # processes that still map the old file keep it until they unmap it
        return None
    return False


def staged_zone_path(instance: Instance, name: str) -> str:
    """Where a reload makes a zone it resizes, until the reload is accepted (then it is renamed
    over the zone's own file): a rejected reload leaves the running zone's file as it was. Named
    like a zone file ("@" is no zone name's), so the janitor removes it if the master dies."""
    return zone_path(instance, f"@staged.{name}")


def remove_zone_files(instance: Instance, keep: set[str] | None = None) -> list[str]:
    """Unlink this instance's zone files (all, and its folder; or all but the names in ``keep``);
    returns the names removed."""
    removed = []
    for folder in _instance_folders(instance.tag):
        removed += _empty_folder(folder, keep)
        if keep is None:
            with contextlib.suppress(OSError):
                os.rmdir(folder)
    return removed


def _empty_folder(folder: str, keep: set[str] | None = None) -> list[str]:
    removed = []
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return removed
    for name in names:
        if keep is None or name not in keep:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(folder, name))
                removed.append(name)
    return removed


def _unlink(entry: str) -> bool:
    """Remove one file of the shm folder; False if it is gone, or not ours to remove (a sticky
    /dev/shm lets only its owner unlink it: another user's stale file stays, it is theirs)."""
    try:
        os.unlink(os.path.join(shm_dir(), entry))
        return True
    except (FileNotFoundError, PermissionError, IsADirectoryError):
        return False


def remove_stale_zone_files() -> list[str]:
    """Remove the zone folders (and files of older versions, named ``ngxsim.<tag>.<zone>`` in
    the shm folder itself) whose instance's master is gone (a crash, a SIGKILLed master) and
    that no process has open any more (orphaned workers finishing their last request). Another
    user's are left alone. Returns the names removed."""
    removed = []
    in_use: dict[tuple[int, int], bool] = {}
    for entry in _entries():
        m = _FILE.fullmatch(entry)
        if not m:
            continue
        key = (int(m.group(1)), int(m.group(2)))
        if alive(*key):
            continue
        if key not in in_use:
            in_use[key] = bool(zone_file_holders(Instance(key[0], key[1], "master")))
        if in_use[key]:
            continue
        path = os.path.join(shm_dir(), entry)
        if _FOLDER.fullmatch(entry) and _is_private_folder(path):
            removed += _empty_folder(path)
            with contextlib.suppress(OSError):
                os.rmdir(path)
        elif _unlink(entry):
            removed.append(entry)
    return removed


def zone_file_holders(instance: Instance, group: int | None = None) -> set[int]:
    """Pids of the processes (other than this one) with a file of ``instance`` open, only those
    of process group ``group`` if given (a server's workers share their master's group, orphaned
    or not; an observer such as a test attaching a zone does not). Scans /proc; only what this
    user may read is seen (its own processes, which is all a server has)."""
    prefix = os.path.join(shm_dir(), f"{PREFIX}{instance.tag}.")
    me = str(os.getpid())
    holders: set[int] = set()
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or pid == me:
            continue
        if group is not None:
            try:
                if os.getpgid(int(pid)) != group:
                    continue
            except OSError:
                continue
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:  # gone, or not ours to look at
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith(prefix) and not target.endswith(" (deleted)"):
                holders.add(int(pid))
                break
    return holders


def _entries() -> list[str]:
    try:
        return [e for e in os.listdir(shm_dir()) if e.startswith(PREFIX)]
    except FileNotFoundError:
        return []


# ------------------------------------------------------------------------------------------
# janitor: removes an instance's files when its master exits, however it exits
# ------------------------------------------------------------------------------------------


def ensure_janitor(instance: Instance) -> bool:
    """Start, once per instance, a small detached process that waits for the master to exit
    (``pidfd``: no polling) and then unlinks the instance's zone files. Under plain
    ``gunicorn ngxsim.wsgi`` nothing of ngxsim runs in the master, so this is how its zones go
    away with it. Returns True if this call started it."""
    marker = zone_path(instance, JANITOR_MARKER)
    try:
        fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        # ours: another process of this instance started the janitor. Anyone else's would stop
        # ours from ever starting (and the zone files from going away): refuse it.
        try:
            st = os.lstat(marker)
        except FileNotFoundError:  # the instance is being removed meanwhile
            return False
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
            raise ZoneError(f"janitor marker {marker} is not this server's (uid {st.st_uid}): refusing it "
                            "(another user may have placed it there; remove it)") from None
        return False
    except OSError as exc:
        raise ZoneError(f'open() "{marker}" failed ({exc.errno}: {exc.strerror})') from None
    os.close(fd)
    env = dict(os.environ)
    env[SHM_DIR_ENV] = shm_dir()
    proc = subprocess.Popen(
        [sys.executable, "-m", "ngxsim.core.janitor", str(instance.pid), str(instance.start_time)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True, close_fds=True, env=env,
    )
    proc.wait(timeout=30)  # the janitor forks and its first process exits at once
    return True
