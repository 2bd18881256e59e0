"""Choosing a peer: nginx's smooth weighted round-robin over one snapshot.

Each worker balances on its own (as nginx does without a shared balancer state), so the
aggregate split over all workers follows the weights too. What a peer may take is read per pick:
its snapshot flags (``down``, ``drain``), the health healthchecks reported (a per-worker copy kept
current by ``peer_transition`` events) and nginx's passive failure window from the zone
(``max_fails`` failures within ``fail_timeout`` make a peer unavailable for ``fail_timeout``;
after that one request tries it again).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from .zone import HEALTH_CHECKING, HEALTH_DOWN, UpstreamZone


@dataclass(eq=False)
class Peer:
    id: int
    slot: int
    host: str
    port: int
    weight: int
    max_fails: int
    fail_timeout: float
    backup: bool
    down: bool
    drain: bool
    current: int = 0
    effective: int = 0
    max_conns: int = 0  # the config's server max_conns= (0: no limit)

    @property
    def server(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @classmethod
    def from_json(cls, item: dict) -> "Peer":
        host, _, port = item["server"].rpartition(":")
        host = host[1:-1] if host.startswith("[") else host
        return cls(item["id"], item["slot"], host, int(port), item["weight"], item["max_fails"],
                   float(item["fail_timeout"]), item["backup"], item["down"], item.get("drain", False),
                   effective=item["weight"])


@dataclass(eq=False)
class Snapshot:
    """One upstream's peers at one version, as this worker routes by it."""

    name: str
    version: int
    peers: list[Peer]
    health: dict[int, int] = field(default_factory=dict)  # slot -> health, from the zone and events
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self):
        # the peers never change within a snapshot (a change is a new one): grouped once
        self.primary: list[Peer] = [p for p in self.peers if not p.backup]
        self.backups: list[Peer] = [p for p in self.peers if p.backup]
        self._groups = (self.primary, self.backups)

    @property
    def single(self) -> bool:
        """One peer in the group: nginx's round robin (``peers->single``) never counts its
        failures, so a lone server is never marked unavailable."""
        return len(self.peers) == 1

    def unhealthy(self, peer: Peer) -> bool:
        return self.health.get(peer.slot, 0) in (HEALTH_DOWN, HEALTH_CHECKING)

    def usable(self, peer: Peer, zone: UpstreamZone, now: float) -> bool:
        """May ``peer`` take a new request (ignoring which ones this request already tried)?"""
        if peer.down or peer.drain or self.unhealthy(peer):
            return False
        if peer.max_conns and zone.in_flight(peer.slot) >= peer.max_conns:
            return False  # nginx's max_conns: every worker's requests to it count
        if peer.max_fails:
            fails, checked = zone.failure_window(peer.slot)
            if fails >= peer.max_fails and now - checked <= peer.fail_timeout:
                return False
        return True

    def all_unhealthy(self) -> bool:
        """Every peer that is not down is reported unhealthy: answer 502 without trying. (Asked
        per request: the first healthy live peer ends the look.)"""
        live = False
        for peer in self.peers:
            if not peer.down:
                if not self.unhealthy(peer):
                    return False
                live = True
        return live

    def pick(self, zone: UpstreamZone, tried: set[int], now: float) -> Peer | None:
        """The next peer for a request that already tried ``tried`` (peer ids): primaries while
        any is usable, backups only after."""
        with self.lock:
            for group in self._groups:
                best = self._smooth(group, zone, tried, now)
                if best is not None:
                    if best.max_fails:
                        if zone.failure_window(best.slot)[0] >= best.max_fails:
                            zone.mark_checked(best.slot, now, best.fail_timeout)  # the one request that re-tries it
                    return best
        return None

    def _smooth(self, group: list[Peer], zone: UpstreamZone, tried: set[int], now: float) -> Peer | None:
        best, total = None, 0
        for peer in group:
            if peer.id in tried or not self.usable(peer, zone, now):
                continue
            peer.current += peer.effective
            total += peer.effective
            if peer.effective < peer.weight:
                peer.effective += 1
            if best is None or peer.current > best.current:
                best = peer
        if best is not None:
            best.current -= total
        return best

    def failed(self, peer: Peer) -> None:
        """nginx lowers a failing peer's effective weight, and restores it step by step."""
        with self.lock:
            step = peer.weight // peer.max_fails if peer.max_fails else 0
            peer.effective = max(peer.effective - step, 0)
