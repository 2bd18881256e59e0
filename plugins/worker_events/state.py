"""This process's rings and dispatchers (kept in ``runtime.stash["worker_events"]``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from .dispatcher import Dispatcher
from .ring import Ring

NAME = "worker_events"


@dataclass
class State:
    rings: dict[str, Ring]
    dispatchers: dict[str, Dispatcher] = field(default_factory=dict)


def state(runtime) -> State:
    """This process's rings, built on first use from the zones the runtime attached."""
    st = runtime.stash.get(NAME)
    if st is None:
        capacities = runtime.config.stash.get(NAME, {})
        st = State({name: Ring(runtime.zone(name), cap) for name, cap in capacities.items()})
        runtime.stash[NAME] = st
    return st
