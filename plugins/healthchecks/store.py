"""Health state in the module's zone, so that it outlives the worker that probes.

The probing worker (the holder of the upstream's periodic job) changes it under the zone lock;
a worker that takes the job over after the holder died or hung continues from the same counts,
and every worker reads it for ``health_check_status``.

Layout of ``zone.buf``: one section per checked upstream (in the order of ``upstreams``)::

    section header (64 bytes): service (0 not yet known, 1 up, 2 down), role (scope=cluster:
                               0 not yet known, 1 prober, 2 follower, 3 alone), pad(2),
                               service transitions (u32), service since (wall ms, u64)
    SLOTS peer slots of SLOT bytes (below)

A peer slot: used, state, down, pad, peer id, consecutive fails and passes, checks, failed
checks, transitions, last status, pad, last probe (wall ms), last duration (s), since (wall ms),
server (128 bytes), last failure reason (96 bytes). Zero is "no peer": a fresh zone is empty.
A peer is its (id, server): an id reused for another server starts afresh.

Everything is read and written under the lock, but a prober SIGKILLed while it writes must not
lose what it overwrites: ``struct.pack_into`` zeroes its destination before writing it, so a
prober killed there left a peer's slot unused (its counts gone, a down peer back as new) or the
service unknown (its next flip recorded without a ``service_transition``). Slots and section
headers are stored one u64 word at a time (``ngxsim.words``), the word that says a slot is used
(or what the service is) last: each word is its old value or its new one.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ngxsim import store_words, words

from .machine import CHECKING, DOWN, STATES, UP, PeerHealth, now_msec, service_state

LAYOUT_VERSION = 1
SLOTS = 256                        # peers per upstream the zone has room for
_SECTION_HEAD = struct.Struct("<BBHIQ")
_SECTION_HEAD_SIZE = 64
_SLOT = struct.Struct("<BBBBIIIQQIHHQdQ128s96s")
SLOT_SIZE = _SLOT.size
_SERVICE = {0: None, 1: UP, 2: DOWN}
_SERVICE_BYTE = {UP: 1, DOWN: 2}
PROBER, FOLLOWER, ALONE = "prober", "follower", "alone"  # this instance's part under scope=cluster
_ROLES = (None, PROBER, FOLLOWER, ALONE)


def section_size(slots: int = SLOTS) -> int:
    return _SECTION_HEAD_SIZE + slots * SLOT_SIZE


def zone_size(upstreams: int, slots: int = SLOTS) -> int:
    """Bytes of ``zone.buf`` the store needs (the zone's own 64-byte header comes on top)."""
    return upstreams * section_size(slots)


@dataclass(frozen=True)
class Tracked:
    """A peer as the store knows it: its slot, identity and health."""

    slot: int
    peer_id: int
    server: str
    down: bool
    health: PeerHealth


@dataclass(frozen=True)
class ServiceChange:
    upstream: str
    old: str
    new: str
    healthy: int
    peers: int

    def payload(self) -> dict:
        return {"upstream": self.upstream, "from": self.old, "to": self.new, "healthy": self.healthy, "peers": self.peers}


class Section:
    """One upstream's part of the zone. Every method but ``lock`` expects the lock held."""

    def __init__(self, zone, offset: int, upstream: str, slots: int = SLOTS):
        self.zone = zone
        self.offset = offset
        self.upstream = upstream
        self.slots = slots
        self._u64 = words(zone.buf)

    def lock(self):
        return self.zone.lock()

    # -- slots --------------------------------------------------------------------------------

    def _slot_offset(self, slot: int) -> int:
        return self.offset + _SECTION_HEAD_SIZE + slot * SLOT_SIZE

    def read(self, slot: int) -> Tracked | None:
        (used, state, down, _, peer_id, fails, passes, checks, failed, transitions, status, _, last_probe,
         duration, since, server, reason) = _SLOT.unpack_from(self.zone.buf, self._slot_offset(slot))
        if not used:
            return None
        health = PeerHealth(STATES[state - 1], fails, passes, checks, failed, transitions, last_probe, duration,
                            status, _text(reason), since)
        return Tracked(slot, peer_id, _text(server), bool(down), health)

    def write(self, slot: int, peer_id: int, server: str, down: bool, h: PeerHealth) -> None:
        data = bytearray(SLOT_SIZE)
        _SLOT.pack_into(data, 0, 1, STATES.index(h.state) + 1, int(down), 0, peer_id,
                        min(h.fails, 0xFFFFFFFF), min(h.passes, 0xFFFFFFFF), h.checks, h.failed_checks,
                        min(h.transitions, 0xFFFFFFFF), min(h.last_status, 0xFFFF), 0, h.last_probe_msec,
                        h.last_duration, h.since_msec, server.encode()[:128], h.last_reason.encode()[:96])
        store_words(self._u64, self._slot_offset(slot), data)

    def clear(self, slot: int) -> None:
        off = self._slot_offset(slot)
        self.zone.buf[off:off + SLOT_SIZE] = bytes(SLOT_SIZE)

    def _used(self, slot: int) -> bool:
        return bool(self.zone.buf[self._slot_offset(slot)])

    def tracked(self) -> list[Tracked]:
        # the used byte first: most slots are empty, and this runs for every probe result
        return [self.read(i) for i in range(self.slots) if self._used(i)]

    def sync(self, peers, mandatory: bool) -> tuple[list[tuple[Tracked, object]], list[object]]:
        """Make the slots follow the upstream's current peers: forget peers that left, add new
        ones, keep the rest with their counts. A new peer starts healthy, or ``checking`` under
        ``mandatory`` — those the instance starts with too, as in NGINX Plus and as upstreams
        routes them (its contract: ``require_health_checks``). Returns (tracked, peer) in the
        order of ``peers``, and the peers with no free slot."""
        checking = mandatory
        by_key = {(t.peer_id, t.server): t for t in self.tracked()}
        wanted = {(p.id, p.server[:128]): p for p in peers}
        for key, t in by_key.items():
            if key not in wanted:
                self.clear(t.slot)
        free = [i for i in range(self.slots) if not self._used(i)]
        out, overflow = [], []
        for key, peer in wanted.items():
            t = by_key.get(key)
            if t is None:
                if not free:
                    overflow.append(peer)
                    continue
                t = Tracked(free.pop(0), peer.id, key[1], bool(peer.down), PeerHealth.new(checking))
            elif t.down != bool(peer.down):
                t = Tracked(t.slot, t.peer_id, t.server, bool(peer.down), t.health)
            else:
                out.append((t, peer))
                continue
            self.write(t.slot, t.peer_id, t.server, t.down, t.health)
            out.append((t, peer))
        return out, overflow

    # -- the service --------------------------------------------------------------------------

    def _head(self) -> tuple[str | None, int, int]:
        service, _, _, transitions, since = _SECTION_HEAD.unpack_from(self.zone.buf, self.offset)
        return _SERVICE.get(service), transitions, since

    def role(self) -> str | None:
        """This instance's part in probing the upstream under ``scope=cluster`` (None: not yet known)."""
        return _ROLES[self.zone.buf[self.offset + 1]] if self.zone.buf[self.offset + 1] < len(_ROLES) else None

    def set_role(self, role: str) -> str | None:
        """Record ``role``; returns the one it replaces."""
        old = self.role()
        self.zone.buf[self.offset + 1] = _ROLES.index(role)
        return old

    def service(self) -> tuple[str | None, int, int]:
        """(``up``/``down``/None before the first look, transitions, since wall ms)."""
        return self._head()

    def update_service(self) -> ServiceChange | None:
        """Recompute the service from the peers that are not ``down``; the change, if it flipped.
        The first look only records it: nothing flips at start (nor while every peer is still
        ``checking``, under ``mandatory``: the service is not known yet)."""
        live = [t for t in self.tracked() if not t.down]
        old, transitions, since = self._head()
        if old is None and live and all(t.health.state == CHECKING for t in live):
            return None
        new = service_state([t.health for t in live])
        if old == new:
            return None
        if old is not None:
            transitions += 1
        data = bytearray(_SECTION_HEAD.size)
        _SECTION_HEAD.pack_into(data, 0, _SERVICE_BYTE[new], self.zone.buf[self.offset + 1], 0, transitions, now_msec())
        store_words(self._u64, self.offset, data)
        if old is None:
            return None
        return ServiceChange(self.upstream, old, new, sum(t.health.healthy for t in live), len(live))


class HealthStore:
    """The zone's sections, one per checked upstream."""

    def __init__(self, zone, upstreams: list[str], slots: int = SLOTS):
        if zone.usable < zone_size(len(upstreams), slots):
            raise ValueError(f'zone "{zone.name}" is too small for {len(upstreams)} upstreams')
        self.zone = zone
        self.sections = {name: Section(zone, i * section_size(slots), name, slots) for i, name in enumerate(upstreams)}

    def section(self, upstream: str) -> Section:
        return self.sections[upstream]


def _text(raw: bytes) -> str:
    return raw.rstrip(b"\0").decode("utf-8", "replace")
