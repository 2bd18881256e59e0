"""The hysteresis of one peer's health: ``fails`` failures in a row make a healthy peer unhealthy,
``passes`` passes in a row make an unhealthy one healthy again; a ``mandatory`` peer starts
``checking`` and its first probe decides. Pure: the shared-memory store (``store.py``) keeps
a ``PeerHealth`` per peer and runs ``apply`` on it under the zone lock.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

HEALTHY, UNHEALTHY, CHECKING = "healthy", "unhealthy", "checking"
STATES = (HEALTHY, UNHEALTHY, CHECKING)  # index+1 is the byte in the zone (0: no peer)
UP, DOWN = "up", "down"


@dataclass(frozen=True)
class ProbeResult:
    """What one probe found. ``reason`` says why it failed ("" when it passed)."""

    ok: bool
    duration: float
    status: int = 0           # 0: no HTTP status (refused, timed out, broken response)
    reason: str = ""


@dataclass
class PeerHealth:
    """One peer's health as kept in the zone. Times are wall-clock milliseconds."""

    state: str = HEALTHY
    fails: int = 0            # consecutive failed probes
    passes: int = 0           # consecutive passed probes
    checks: int = 0
    failed_checks: int = 0
    transitions: int = 0
    last_probe_msec: int = 0
    last_duration: float = 0.0
    last_status: int = 0
    last_reason: str = ""
    since_msec: int = 0       # the last transition, or when the peer was first seen

    @classmethod
    def new(cls, checking: bool) -> "PeerHealth":
        """A peer seen for the first time: healthy, or ``checking`` until its first probe (a
        peer added at run time under a ``mandatory`` check)."""
        return cls(state=CHECKING if checking else HEALTHY, since_msec=now_msec())

    @property
    def healthy(self) -> bool:
        return self.state == HEALTHY

    def apply(self, result: ProbeResult, fails: int, passes: int) -> str | None:
        """Count one probe; returns the previous state if the peer flipped, else None."""
        self.checks += 1
        self.last_probe_msec = now_msec()
        self.last_duration = result.duration
        self.last_status = result.status
        self.last_reason = result.reason
        if result.ok:
            self.passes += 1
            self.fails = 0
            flip = self.state == CHECKING or (self.state == UNHEALTHY and self.passes >= passes)
            new = HEALTHY
        else:
            self.failed_checks += 1
            self.fails += 1
            self.passes = 0
            flip = self.state == CHECKING or (self.state == HEALTHY and self.fails >= fails)
            new = UNHEALTHY
        if not flip:
            return None
        old, self.state = self.state, new
        self.transitions += 1
        self.since_msec = self.last_probe_msec
        return old


def service_state(peers: list[PeerHealth]) -> str:
    """An upstream's service is up while at least one of its peers is healthy."""
    return UP if any(p.healthy for p in peers) else DOWN


def now_msec() -> int:
    return int(time.time() * 1000)
