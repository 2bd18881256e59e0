"""This process's view of the upstreams: zones, the snapshot each upstream routes by, the pool of
backend connections, and the accounting of every try (``runtime.stash["upstreams"]``)."""

from __future__ import annotations

import logging
import threading
import time

from ngxsim import LivenessWatch, compact_json

from .balancer import Peer, Snapshot
from .connections import KeptConnections
from .waiters import Waiters
from .zone import HEALTH_CHECKING, HEALTH_NONE, UpstreamZone

NAME = "upstreams"
CHANNEL = "upstreams"
log = logging.getLogger("ngxsim")


class State:
    def __init__(self, runtime):
        self.runtime = runtime
        self.conf = runtime.config.stash[NAME]  # UpstreamsConf
        self.zones = {name: UpstreamZone(runtime.zone(up.zone)) for name, up in self.conf.upstreams.items()}
        self._snapshots: dict[str, Snapshot] = {}
        self._lock = threading.Lock()
        self._watch = LivenessWatch()
        # the idle connections to the peers of upstreams with keepalive, per worker
        self.links = KeptConnections(lambda upstream, n: self.zones[upstream].set_idle(n))
        # cluster-wide only: the API requests waiting for their change, and what the other hosts
        # said of their drains, {(upstream, peer): {instance: drained?}} (sync.py)
        self.waiters = Waiters()
        self.drains: dict[tuple[str, int], dict[str, bool]] = {}

    def zone(self, name: str) -> UpstreamZone:
        return self.zones[name]

    # -- snapshots ---------------------------------------------------------------------------

    def snapshot(self, name: str) -> Snapshot:
        snap = self._snapshots.get(name)
        if snap is None:
            snap = self.reload(name)
        return snap

    def reload(self, name: str) -> Snapshot:
        """Route by the snapshot the zone holds now (on ``snapshot_activated``, a gap, start).
        Peers kept from the previous snapshot keep their round-robin position."""
        zone = self.zones[name]
        data = zone.read_snapshot() or {"version": 0, "peers": []}
        limits = self.conf.upstreams[name].max_conns  # config lines only (the API has no max_conns)
        with self._lock:
            old = self._snapshots.get(name)
            previous = {p.id: p for p in old.peers} if old else {}
            peers = []
            for item in data["peers"]:
                peer = Peer.from_json(item)
                peer.max_conns = limits.get(peer.server, 0)
                before = previous.get(peer.id)
                if before is not None and before.weight == peer.weight:
                    peer.current, peer.effective = before.current, before.effective
                peers.append(peer)
            snap = Snapshot(name, data["version"], peers)
            snap.health = {p.slot: zone.health(p.slot) for p in peers}
            self._snapshots[name] = snap
        return snap

    def reload_all(self) -> None:
        for name in self.zones:
            self.reload(name)

    def refresh_health(self, name: str, peer_id: int) -> None:
        """A ``peer_transition`` arrived: take the peer's health from the zone."""
        snap = self._snapshots.get(name)
        if snap is None:
            return
        for peer in snap.peers:
            if peer.id == peer_id:
                snap.health[peer.slot] = self.zones[name].health(peer.slot)

    # -- accounting --------------------------------------------------------------------------

    def begin(self, upstream: str | None, target) -> None:
        """A try goes to the peer: ``active`` and ``requests`` move at once (NGINX Plus)."""
        if upstream is not None and target.peer is not None:
            zone = self.zones[upstream]
            zone.add_active(target.peer.slot, +1)
            zone.selected(target.peer.slot, target.peer.id, time.time())

    def end(self, upstream: str | None, target, failed: bool, snapshot: Snapshot | None, success: bool = False,
            status: int = 0, sent: int = 0, received: int = 0, times: tuple[float, float] | None = None) -> None:
        """The try ended: its response's ``status`` (0: none), the bytes it moved and ``times``
        (seconds from the try's start to the response's header and to its end) are counted."""
        if upstream is None or target is None or target.peer is None:
            return
        peer, zone = target.peer, self.zones[upstream]
        if failed and snapshot is not None and snapshot.single:
            failed = False  # nginx never counts a lone server's failures
        zone.add_active(peer.slot, -1)
        if zone.finish(peer.slot, peer.id, failed, success, time.monotonic(), peer.max_fails, status, sent, received,
                       peer.fail_timeout, times=times):
            log.warning('upstream server temporarily disabled: %s in upstream "%s"', peer.server, upstream)
        if failed and snapshot is not None:
            snapshot.failed(peer)
        if peer.drain:
            self.check_drained(upstream)

    def live_rows(self, zone: UpstreamZone) -> set[int]:
        rows = zone.rows()
        alive = self._watch.alive([(pid, start) for _, pid, start in rows])
        return {row for row, pid, start in rows if (pid, start) in alive}

    def idle(self, upstream: str) -> int:
        """The idle connections every live worker keeps to the upstream's peers."""
        zone = self.zones[upstream]
        return zone.idle(self.live_rows(zone))

    def active(self, upstream: str) -> list[int]:
        zone = self.zones[upstream]
        return zone.active(self.live_rows(zone))

    def check_drained(self, upstream: str) -> None:
        """Publish ``peer_drained`` (once) for each draining peer nobody has a request in flight
        to, in any live worker."""
        zone = self.zones[upstream]
        data = zone.read_snapshot()
        if not data:
            return
        draining = [p for p in data["peers"] if p.get("drain")]
        if not draining:
            return
        active = zone.active(self.live_rows(zone))
        for p in draining:
            if active[p["slot"]] == 0 and zone.take_drained_flag(p["slot"], p["id"]):
                self.publish("peer_drained", {"upstream": upstream, "peer": p["id"], "server": p["server"]})

    def drain_heard(self, upstream: str, peer: int, origin: str | None, drained: bool) -> None:
        """``peer_draining``/``peer_drained`` of another host (this host's own drain is read live)."""
        if origin is not None:
            self.drains.setdefault((upstream, peer), {})[origin] = drained

    def drain_hosts(self, upstream: str, peer: int, instance: str, active: int) -> dict[str, str]:
        """Each host's drain of the peer: ``draining`` (requests in flight there) or ``drained``."""
        hosts = {origin: "drained" if done else "draining" for origin, done in self.drains.get((upstream, peer), {}).items()}
        hosts[instance] = "draining" if active else "drained"
        return dict(sorted(hosts.items()))

    def publish(self, type_: str, payload: dict) -> int:
        return self.runtime.publish(self.conf.bus, CHANNEL, type_, compact_json(payload))


def initial_health(conf, upstream: str) -> int:
    """A new peer of an upstream whose health checks are ``mandatory`` takes no traffic until
    its first probe passes."""
    return HEALTH_CHECKING if conf.upstreams[upstream].mandatory else HEALTH_NONE


def state(runtime) -> State:
    st = runtime.stash.get(NAME)
    if st is None:
        st = runtime.stash[NAME] = State(runtime)
    return st


__all__ = ["CHANNEL", "NAME", "State", "state"]
