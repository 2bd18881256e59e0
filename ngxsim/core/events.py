"""The value types of the event hooks (see ``hookspecs.py``, events group)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import NamedTuple


class Event(NamedTuple):
    """One published event as stored in a zone's ring (a named tuple: readers make many).

    - ``generation``: its place in the zone's global order (1, 2, 3...; never reused);
    - ``zone``: the worker_events zone it was published into;
    - ``channel``: the channel it was published on (at most 64 bytes of UTF-8);
    - ``type``: what happened (at most 64 bytes, never empty);
    - ``payload``: the data (at most 512 bytes; structured payloads are compact JSON);
    - ``timestamp_msec``: when it was published, in milliseconds since the epoch.
    """

    generation: int
    zone: str
    channel: str
    type: str
    payload: str
    timestamp_msec: int

    def as_json(self) -> dict:
        """The event's JSON form in the HTTP API (the zone is implied by the endpoint)."""
        return {
            "generation": self.generation,
            "channel": self.channel,
            "type": self.type,
            "payload": self.payload,
            "timestamp_msec": self.timestamp_msec,
        }


@dataclass(frozen=True)
class Gap:
    """Generations ``first`` to ``last`` of ``zone`` were overwritten before this worker read them."""

    zone: str
    first: int
    last: int

    @property
    def count(self) -> int:
        """How many events were lost."""
        return self.last - self.first + 1

    def as_json(self) -> dict:
        """The gap's JSON form: ``zone``, ``first``, ``last``, ``count``."""
        return asdict(self) | {"count": self.count}


@dataclass(frozen=True)
class Subscription:
    """What a module wants to hear: a zone, some channels (None: all), and whether a worker that
    starts replays what the ring still holds (otherwise it begins at the newest generation)."""

    zone: str
    channels: tuple[str, ...] | None = None
    replay: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.channels, str):
            object.__setattr__(self, "channels", (self.channels,))
        elif self.channels is not None:
            object.__setattr__(self, "channels", tuple(self.channels))


def http_event_zone(config, module: str) -> str | None:
    """The zone of the http-level ``worker_events_zone`` that consumer modules publish into.

    Every first-party consumer (upstreams, cache_purge, healthchecks) publishes into this one bus.
    Fails the load with the fix when the bus is missing: no module declares the directive
    (``load_module worker_events;`` missing) or the http block does not set it. None when the
    config has no http block (nothing to serve, nothing to publish).
    """
    blocks = config.blocks("http")
    if not blocks:
        return None
    http = blocks[0]
    if config.table.get("worker_events_zone") is None:
        raise http.error(None, f'module "{module}" publishes events, but no loaded module provides them: '
                               f'add "load_module worker_events;" and "worker_events_zone NAME;" in the http block')
    if "worker_events_zone" not in http.own:
        raise http.error(None, f'module "{module}" publishes events into the http-level "worker_events_zone": '
                               f'add "worker_events_zone NAME;" to this http block')
    return http.own["worker_events_zone"][0]
