"""The relay's manners in its worker: it keeps to a small share of the worker while the worker's
other threads are busy (serving requests), and runs at full speed otherwise.

The relay runs in one of the instance's workers (under the instance-wide lease), so its CPU is
taken from that worker's requests: Python runs one thread of a process at a time (the GIL),
and a relay thread woken by a burst of publishes takes the GIL from the request publishing
them for as long as it works (bench_cluster: a 5,000-publish request in the relay's worker ran
at 59% of its unbridged speed with the relay working beside it, 119% in the other worker).
nginx gives such background work to processes of their own with bounded work per iteration
(the cache manager's ``manager_files``/``manager_sleep``); here the relay measures, after each
piece of work, how much CPU the rest of its process used lately, and when that is more than
``busy`` of a core it pauses long enough to keep its own share at ``share``: the relay falls
behind during a request's burst and catches up after it. A pause is never shorter than
``min_pause`` (each time the relay takes the GIL back costs the request a switch: fewer,
larger batches) nor longer than ``max_pause``, and there is none while the ring's unsent events fill more than half of it
(events lost to the ring's wrap would cost more than a slower request).
"""

from __future__ import annotations

import threading
import time
from typing import Callable

SHARE = 0.1       # the relay's share of its worker while the rest of the worker is busy
BUSY = 0.25       # the rest of the process above this many cores (over WINDOW) is "busy"
WINDOW = 0.005    # seconds over which the rest's CPU is measured (a request's burst is seen within it)
MIN_PAUSE = 0.002  # the shortest pause while busy: the relay takes the GIL for batches, not for each event
MAX_PAUSE = 0.02  # the longest single pause, seconds


class Pacer:
    """Shared by the relay's threads. ``done(cpu)`` after each piece of work (its thread CPU
    time, seconds) returns how long to pause before the next (0: go on at once)."""

    def __init__(self, *, share: float = SHARE, busy: float = BUSY, window: float = WINDOW,
                 min_pause: float = MIN_PAUSE, max_pause: float = MAX_PAUSE, clock: Callable[[], float] = time.monotonic,
                 process_cpu: Callable[[], float] = time.process_time):
        self.share, self.busy, self.window = share, busy, window
        self.min_pause, self.max_pause = min_pause, max_pause
        self._clock, self._process_cpu = clock, process_cpu
        self._lock = threading.Lock()
        self._since = clock()
        self._process_since = process_cpu()
        self._relay_cpu = 0.0  # the relay's own CPU since _since
        self._rest_rate = 0.0  # cores the rest of the process used over the last window
        self.paused = 0.0      # seconds paused in all (for the view)

    def done(self, cpu: float, *, backlog: int = 0, room: int = 1) -> float:
        """``cpu``: the relay thread's CPU for the piece just done; ``backlog``: unsent events
        in the ring, ``room``: what the ring holds (no pause while backlog > room / 2)."""
        with self._lock:
            self._relay_cpu += cpu
            now = self._clock()
            if now - self._since >= self.window:
                process = self._process_cpu()
                rest = (process - self._process_since) - self._relay_cpu
                self._rest_rate = max(0.0, rest) / (now - self._since)
                self._since, self._process_since, self._relay_cpu = now, process, 0.0
            if self._rest_rate <= self.busy or backlog * 2 > room:
                return 0.0
            pause = min(self.max_pause, max(self.min_pause, cpu * (1 - self.share) / self.share))
            self.paused += pause
            return pause
