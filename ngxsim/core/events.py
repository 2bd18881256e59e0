"""The value types of the event hooks (see ``hookspecs.py``, events group)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import NamedTuple


class Event(NamedTuple):
    """One published event as stored in a zone's ring (a named tuple: readers make many)."""

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
    """Generations ``first``..``last`` of ``zone`` were overwritten before this worker read them."""

    zone: str
    first: int
    last: int

    @property
    def count(self) -> int:
        return self.last - self.first + 1

    def as_json(self) -> dict:
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
