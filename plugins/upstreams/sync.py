"""Upstreams cluster-wide: when the bus's ``upstreams`` channel is bridged by the cluster module,
an upstream's peers are one document in the engine's key-value store, changed by
compare-and-set; its revision is the one order of changes every host applies.

- An API request never talks to the engine: it publishes its change as a local
  ``change_requested`` event and waits (at most ``APPLY_BOUND``) for ``change_applied``.
- One **sync service** per instance (the instance-wide lease; ``run``) takes the change,
  reads the document and its revision, applies the change to it and writes it back only if the
  revision is still the one it read (a conflict re-reads and re-applies: both concurrent changes
  hold, the one written last wins on a field both set). It then routes by the new document (a new
  zone snapshot) and publishes ``snapshot_activated`` with the revision; that event crosses to
  the other hosts, whose sync services read the document of that revision and route by it. The
  same peer ids everywhere: ``add`` takes the document's ``next_id``.
- A new or restarted host's service reads the document first (none yet: it writes its own
  peers as the first revision). Once a second it checks the revision again, which catches an
  event lost on the way.
- The engine away: changes apply to this host's zone at once (``change_applied`` says
  ``"local": true``) and are kept in the zone's snapshot (``unsynced``); when the engine is back
  they are replayed, in order, on the cluster's document (a change that no longer applies — its
  peer was deleted meanwhile — is dropped and logged), then the host routes by the cluster's
  document again.
- A service that starts (or takes over from a dead worker) first takes the changes the ring holds
  that no service answered.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import uuid

from . import snapshots
from .state import CHANNEL, NAME, state

log = logging.getLogger("ngxsim")
SERVICE = "upstreams.sync"
STASH = "upstreams.sync"
APPLY_BOUND = 1.0    # how long an API request waits for its change before answering 202
RECHECK = 1.0        # the service re-reads the revisions this often (a lost event, the engine back)
AWAY_RETRY = 0.25    # while the store is unreachable, it is tried again this often
CAS_TRIES = 20
TAKEN_KEPT = 4096
_ERROR_MAX = 300     # change_applied's payload is at most 512 bytes


def cluster_api():
    """The cluster module's public functions (a module depends on another's public API only)."""
    import ngxsim_plugins.cluster as cluster

    return cluster


def instance_of(config, bus: str) -> str:
    """This instance's id in the cluster (how the other hosts name it)."""
    bridge = cluster_api().bridge_of(config, bus)
    return bridge.instance if bridge is not None else "local"


def key_of(upstream: str) -> str:
    return f"upstreams.{upstream}"


def new_change_id() -> str:
    return uuid.uuid4().hex[:16]


class Sync:
    """The sync service's state in the worker that runs it (``runtime.stash[STASH]``)."""

    def __init__(self, runtime, lease):
        self.runtime = runtime
        self.lease = lease
        self.st = state(runtime)
        self.conf = self.st.conf
        self.changes: queue.SimpleQueue = queue.SimpleQueue()
        self.taken: dict[str, None] = {}  # ids of the changes taken (the hook and the ring may both hand one)
        self.wake = threading.Event()
        self.store = None
        self.away = False                # the last call to the store failed: this host goes on alone

    # -- what the hooks hand over -----------------------------------------------------------

    def take(self, change: dict) -> None:
        if change.get("id") in self.taken:
            return
        self.taken[change.get("id")] = None
        while len(self.taken) > TAKEN_KEPT:
            del self.taken[next(iter(self.taken))]
        self.changes.put(change)
        self.wake.set()

    def take_from_ring(self) -> None:
        """A service that starts (the instance's start, a takeover after its worker died) takes
        the changes the ring holds that no service answered yet: a request that got ``202``
        is applied even when the worker that had its change died."""
        requested: dict[str, dict] = {}
        answered: set[str] = set()
        for event, data in ring_events(self.runtime, self.conf.bus, ("change_requested", "change_applied"),
                                       self.lease.stopping):
            if event.origin is not None:
                continue
            if event.type == "change_applied":
                answered.add(data.get("change"))
            elif isinstance(data.get("id"), str) and data.get("upstream") in self.conf.upstreams:
                requested[data["id"]] = data
        for change_id, change in requested.items():
            if change_id not in answered:
                self.take(change)

    def revision_heard(self, upstream: str, revision: int) -> None:
        zone = self.st.zones.get(upstream)
        if zone is not None and revision > ((zone.read_snapshot() or {}).get("revision") or 0):
            self.wake.set()

    # -- the loop ---------------------------------------------------------------------------

    def run(self) -> None:
        next_check = 0.0
        while not self.lease.stopping.is_set():
            self.wake.wait(max(0.0, next_check - time.monotonic()))
            self.wake.clear()
            if self.store is None:
                self.store = cluster_api().store(self.runtime, self.conf.bus)
            if not self.away:
                self._replay()
            while not self.lease.stopping.is_set():
                try:
                    change = self.changes.get_nowait()
                except queue.Empty:
                    break
                answer(self.runtime, change, self._apply(change))
            # the catch-up: the cluster's newest revisions (and, while away, the probe of the engine)
            was_away = self.away
            for name in self.conf.upstreams:
                self._catch_up(name)
                if self.away:
                    break  # one failed call says it: the next try is in AWAY_RETRY
            if was_away and not self.away:
                log.warning("upstreams: the cluster store is reachable again: %d change(s) made here meanwhile "
                            "go to the cluster", sum(len(self._unsynced(name)) for name in self.conf.upstreams))
                self.wake.set()  # replay at once
            next_check = time.monotonic() + (AWAY_RETRY if self.away else RECHECK)

    # -- one change -------------------------------------------------------------------------

    def _apply(self, change: dict) -> dict:
        name = change["upstream"]
        if not self.away and not self._unsynced(name):
            try:
                return self._apply_cluster(name, change)
            except _EngineAway:
                pass
        return self._apply_here(name, change)

    def _apply_here(self, name: str, change: dict) -> dict:
        """The engine is away (or this host's changes made meanwhile are not replayed yet): the
        change applies on this host alone, and is kept in its zone's snapshot (``unsynced``, in
        order) until the engine is back, so a service that takes over replays it too."""
        try:
            doc = snapshots.document(self.st.zone(name).read_snapshot())
            new, peer = snapshots.apply_command(doc, change)
            self._route(name, new, revision=None, unsynced=change)
        except Exception as exc:
            return _failure(exc)
        return {"status": 201 if change["op"] == "add" else 200, "peer": peer["id"], "local": True}

    def _unsynced(self, name: str) -> list[dict]:
        return (self.st.zone(name).read_snapshot() or {}).get("unsynced") or []

    def _apply_cluster(self, name: str, change: dict) -> dict:
        for _ in range(CAS_TRIES):
            doc, revision = self._read(name)
            try:
                new, peer = snapshots.apply_command(doc, change)
                # checked against this host's zone before it is written for every host
                snapshots.adopt(self.st.zone(name).read_snapshot(), new, self.st.zone(name).layout.slots)
            except Exception as exc:
                return _failure(exc)
            try:
                written = self._write(name, new, revision)
            except TooLarge as exc:
                return _failure(exc)
            if written is None:
                continue  # another host changed it first: apply the change to the new state
            self._route(name, new, written)
            return {"status": 201 if change["op"] == "add" else 200, "peer": peer["id"], "revision": written}
        return {"status": 503, "error": f"the change conflicted {CAS_TRIES} times with other hosts' changes: try again"}

    def _replay(self) -> None:
        """The engine is back: changes made here meanwhile go onto the cluster's document, in order."""
        for name in self.conf.upstreams:
            pending = self._unsynced(name)
            for i, change in enumerate(pending):
                try:
                    result = self._apply_cluster(name, change)
                except _EngineAway:
                    # away (again): the zone still keeps them all, unless some went to the cluster
                    # (the zone routes by its document then): keep what is left again
                    for rest in pending[i:] if i else ():
                        self._apply_here(name, rest)
                    return
                if result["status"] >= 400:
                    log.warning('upstreams: upstream "%s": a change made while the cluster store was away no longer '
                                'applies and is dropped: %s', name, result.get("error"))
            if pending:
                self._catch_up(name)

    def _catch_up(self, name: str) -> None:
        """Route by the cluster's document when it is newer than what this host routes by; write
        this host's peers as the first revision when the cluster has none."""
        try:
            doc, revision = self._read(name, create=True)
        except _EngineAway:
            return
        mine = self.st.zone(name).read_snapshot() or {}
        if mine.get("unsynced"):
            self.wake.set()  # this host's own changes go to the cluster first (_replay)
            return
        if revision != mine.get("revision") or mine.get("apart"):
            try:
                self._route(name, doc, revision)
            except Exception as exc:
                log.error('upstreams: upstream "%s": cannot route by the cluster\'s revision %s: %s', name, revision, exc)

    # -- the engine -------------------------------------------------------------------------

    def _read(self, name: str, create: bool = False) -> tuple[dict, int]:
        """The cluster's document of the upstream and its revision. With ``create``, a cluster
        that has none gets this host's peers as its first revision."""
        try:
            value, revision = self.store.get(key_of(name))
        except Exception as exc:  # the engine's failure, whatever its client raised
            raise self._gone(exc) from None
        self.away = False
        if value is not None:
            return json.loads(value), revision
        doc = snapshots.document(self.st.zone(name).read_snapshot())
        if not create:
            return doc, revision
        written = self._write(name, doc, revision)
        return (doc, written) if written is not None else self._read(name)

    def _write(self, name: str, doc: dict, revision: int) -> int | None:
        """The new revision, or None when another host wrote first (compare-and-set)."""
        text = json.dumps(doc, separators=(",", ":"))
        try:
            return self.store.put(key_of(name), text, revision)
        except ValueError as exc:  # too large for the store: the change is refused, not the engine
            raise TooLarge(str(exc)) from None
        except cluster_api().Conflict:
            return None
        except Exception as exc:
            raise self._gone(exc) from None

    def _gone(self, exc: Exception) -> "_EngineAway":
        if not self.away:
            log.warning("upstreams: the cluster store is unreachable (%s): API changes apply on this host only "
                        "until it is back", exc)
        self.away = True
        return _EngineAway(str(exc))

    # -- this host --------------------------------------------------------------------------

    def _route(self, name: str, doc: dict, revision: int | None, unsynced: dict | None = None) -> None:
        """Make ``doc`` this host's snapshot (``revision`` None: change ``unsynced`` made here
        while apart)."""
        st, up = self.st, self.conf.upstreams[name]
        zone = st.zone(name)
        before, made = {}, []

        def change(cur):
            if revision is not None and cur is not None and cur.get("revision") == revision and not cur.get("apart"):
                return None
            made.append(True)
            before.update({p["id"]: p for p in (cur or {"peers": []})["peers"]})
            new = snapshots.adopt(cur, doc, zone.layout.slots, checking_new=up.mandatory)
            if revision is None:
                new["revision"], new["apart"] = (cur or {}).get("revision"), True
                new["unsynced"] = (cur or {}).get("unsynced", []) + [unsynced]
            else:
                new["revision"] = revision
            if up.state:
                snapshots.write_state(up.state, new)
            return new

        new, _ = zone.update(change)
        if not made:
            return
        st.publish("snapshot_activated", {"upstream": name, "version": new["version"], "revision": new.get("revision")})
        st.reload(name)
        for peer in new["peers"]:
            old = before.get(peer["id"])
            if peer.get("drain") and not (old is not None and old.get("drain")):
                zone.clear_drained_flag(peer["slot"])
                st.publish("peer_draining", {"upstream": name, "peer": peer["id"], "server": peer["server"]})
        st.check_drained(name)


class _EngineAway(Exception):
    pass


class TooLarge(ValueError):
    """The upstream's document is larger than the cluster store keeps (400)."""


def ring_events(runtime, bus: str, types: tuple[str, ...], stopping=None):
    """``(event, payload object)`` of every event of ``types`` on the upstreams channel that the
    bus's ring still holds, oldest first (worker_events' public ``events_after``)."""
    from ngxsim_plugins.worker_events import events_after

    after = 0
    while stopping is None or not stopping.is_set():
        scan = events_after(runtime, bus, after)
        for event in scan.events:
            if event.channel == CHANNEL and event.type in types:
                yield event, json_object(event.payload)
        if not scan.events or scan.events[-1].generation >= scan.newest:
            return
        after = scan.events[-1].generation


def json_object(text: str) -> dict:
    """``text`` as a JSON object, or {} when it is not one."""
    try:
        data = json.loads(text)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _failure(exc: Exception) -> dict:
    if isinstance(exc, snapshots.Conflict):
        status = 409
    elif isinstance(exc, LookupError):
        status = 404
    elif isinstance(exc, (ValueError, OverflowError)):
        status = 400
    elif isinstance(exc, OSError):
        status = 500
    else:
        raise exc
    message = str(exc) if status != 500 else f"cannot write the state file: {exc.strerror}"
    return {"status": status, "error": message.encode()[:_ERROR_MAX].decode("utf-8", "ignore")}


def run_service(runtime, lease) -> None:
    sync = runtime.stash[STASH] = Sync(runtime, lease)  # from now on the hook hands changes over
    try:
        sync.take_from_ring()
        sync.run()
    finally:
        if runtime.stash.get(STASH) is sync:
            del runtime.stash[STASH]


def publish_change(runtime, change: dict) -> None:
    state(runtime).publish("change_requested", change)


def answer(runtime, change: dict, result: dict) -> None:
    state(runtime).publish("change_applied", {"change": change["id"], **result})


__all__ = ["APPLY_BOUND", "CHANNEL", "NAME", "SERVICE", "STASH", "Sync", "run_service"]
