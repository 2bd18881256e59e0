"""This process's rings and dispatchers (kept in ``runtime.stash["worker_events"]``)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from .dispatcher import Dispatcher
from .ring import Ring

NAME = "worker_events"


class LongPolls:
    """How many requests of this process are blocked in a long-poll (all API locations)."""

    def __init__(self) -> None:
        self.busy = 0
        self._lock = threading.Lock()

    def take(self, limit: int) -> bool:
        with self._lock:
            if self.busy >= limit:
                return False
            self.busy += 1
            return True

    def give(self) -> None:
        with self._lock:
            self.busy -= 1


@dataclass
class State:
    rings: dict[str, Ring]
    dispatchers: dict[str, Dispatcher] = field(default_factory=dict)
    long_polls: LongPolls = field(default_factory=LongPolls)


def state(runtime) -> State:
    """This process's rings, built on first use from the zones the runtime attached."""
    st = runtime.stash.get(NAME)
    if st is None:
        capacities = runtime.config.stash.get(NAME, {})
        st = State({name: Ring(runtime.zone(name), cap) for name, cap in capacities.items()})
        runtime.stash[NAME] = st
    return st
