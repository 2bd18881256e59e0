"""Which server instance this process belongs to, and whether a process is still alive.

An *instance* is one running server: a gunicorn arbiter and its workers, or one standalone
process (a test, ``flask run``). It is named by its master's pid and that process's start time
(``/proc/PID/stat`` field 22), so a reused pid never adopts a dead server's shared memory, and
two servers never share zones by accident.
"""

from __future__ import annotations

import os
import select
import sys
import threading
from dataclasses import dataclass

MASTER, WORKER, STANDALONE = "master", "worker", "standalone"
# a service's own process, started by the worker holding its lease (helper.py)
HELPER = "helper"


class MasterGone(RuntimeError):
    """This worker's master exited: the worker must not serve (its zones are about to go)."""


def process_start_time(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot, or None if it is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except OSError:
        return None
    # the command name may hold spaces and parentheses: fields start after the last ")"
    fields = stat[stat.rfind(b")") + 2 :].split()
    if fields[0] in (b"Z", b"X"):
        return None
    return int(fields[19])


def alive(pid: int, start_time: int) -> bool:
    """Is the process that had ``pid`` and started at ``start_time`` still running?"""
    return process_start_time(pid) == start_time


class LivenessWatch:
    """Which of many (pid, start time) processes are alive, cheaply enough for every request.

    The first look at a process opens a pidfd for it and checks its start time once (so the
    pidfd is known to refer to *that* process, not a later one with the same pid). Afterwards
    one ``poll`` with no timeout answers for all of them: a pidfd turns readable when its
    process exits. No /proc reads on the hot path.
    """

    def __init__(self) -> None:
        self._fds: dict[tuple[int, int], int] = {}
        self._lock = threading.Lock()

    def alive(self, procs: list[tuple[int, int]]) -> set[tuple[int, int]]:
        """The ``(pid, start_time)`` pairs of ``procs`` whose process is still running."""
        with self._lock:
            live: set[tuple[int, int]] = set()
            poller = select.poll()
            watched: dict[int, tuple[int, int]] = {}
            for key in procs:
                fd = self._fds.get(key)
                if fd is None:
                    fd = self._open(*key)
                    if fd is None:
                        continue
                    if fd < 0:  # no pidfd here: ask /proc
                        if alive(*key):
                            live.add(key)
                        continue
                watched[fd] = key
                poller.register(fd, select.POLLIN)
            exited = {fd for fd, _ in poller.poll(0)}
            for fd, key in watched.items():
                if fd in exited:
                    os.close(self._fds.pop(key))
                else:
                    live.add(key)
            for key in set(self._fds) - set(procs):  # no longer asked about: let go of its fd
                os.close(self._fds.pop(key))
            return live

    def _open(self, pid: int, start: int) -> int | None:
        """A pidfd known to be this process's; None if it is gone; -1 without pidfd support."""
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            return None
        except (OSError, AttributeError):  # pragma: no cover - kernels before 5.3
            return -1
        if process_start_time(pid) != start:
            os.close(fd)
            return None
        self._fds[(pid, start)] = fd
        return fd


@dataclass(frozen=True)
class Instance:
    pid: int
    start_time: int
    role: str

    @property
    def tag(self) -> str:
        return f"{self.pid}.{self.start_time}"

    def alive(self) -> bool:
        return alive(self.pid, self.start_time)


def _gunicorn_object():
    """gunicorn's worker or arbiter object up the stack of the calling code, if any."""
    if "gunicorn.arbiter" not in sys.modules:
        return None
    from gunicorn.arbiter import Arbiter
    from gunicorn.workers.base import Worker

    frame = sys._getframe(2)
    while frame is not None:
        obj = frame.f_locals.get("self")
        if isinstance(obj, (Worker, Arbiter)):
            return obj
        frame = frame.f_back
    return None


def _gunicorn_role() -> tuple[str, int] | None:
    """Find gunicorn's worker or arbiter object up the stack of the code loading the app.

    A worker loads the app from ``Worker.init_process`` (no ``--preload``); the arbiter loads
    it from ``Arbiter.setup`` with ``--preload``. The worker object knows its master's pid.
    """
    obj = _gunicorn_object()
    if obj is None:
        return None
    from gunicorn.workers.base import Worker

    return (WORKER, obj.ppid) if isinstance(obj, Worker) else (MASTER, os.getpid())


def gunicorn_threads() -> int | None:
    """How many requests one gunicorn worker of this server serves at once (``--threads``;
    1 for sync workers), found from gunicorn's objects up the stack: the worker loading the
    app, or the arbiter forking a worker. None outside gunicorn."""
    obj = _gunicorn_object()
    if obj is None:
        return None
    cfg = obj.cfg
    return 1 if cfg.worker_class_str == "sync" else max(1, int(cfg.threads))


def gunicorn_graceful_timeout() -> float | None:
    """The gunicorn worker's ``graceful_timeout`` (how long its master lets a stopping worker
    run before it kills it), found as ``gunicorn_threads`` finds its setting. None outside gunicorn."""
    obj = _gunicorn_object()
    return None if obj is None else float(obj.cfg.graceful_timeout)


def current_instance(role: str | None = None, master_pid: int | None = None) -> Instance:
    """The instance of this process: ask gunicorn's objects on the stack when not told."""
    if role is None:
        found = _gunicorn_role()
        role, master_pid = found if found else (STANDALONE, os.getpid())
    if master_pid is None:
        master_pid = os.getpid() if role in (MASTER, STANDALONE) else os.getppid()
    start = process_start_time(master_pid)
    if start is None:
        raise RuntimeError(f"the master process {master_pid} of this server is not running")
    return Instance(master_pid, start, role)
