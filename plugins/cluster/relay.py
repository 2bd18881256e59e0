"""The relay: one per bridged zone per instance, a service under the instance-wide lease.

Two threads, each with its own connection to the engine:

- **out** (local → engine): blocks on the zone's doorbell (``wait_for_events``), reads the ring
  after the last relayed generation (in order; what the ring overwrote first is a gap, sent on
  as a ``@gap`` record so the others learn of it), and appends each local event of a bridged
  channel, with this instance's id and its origin generation, in one pipelined batch;
- **in** (engine → local): blocks in the engine's read after the durable cursor, skips its own
  origin (no echo), drops what its per-origin watermark says was delivered already (at least
  once becomes once), and publishes the rest into the local ring with their origin
  (``publish_remote``): every worker gets them through ``ngxsim_event``.

An event's origin generation is ``ring birth (µs) + local generation``: increasing for an
instance across its restarts (a restarted instance's ring starts at 1 again), so one watermark
per origin de-duplicates. Requests never wait on any of this: the engine is only ever reached
from these two threads.

When the engine is unreachable each thread reconnects with exponential backoff and jitter; the
error log says so once per change of state, never per retry. Meanwhile the ring keeps what is
published; what it overwrote before the relay read it is a counted gap. Told to stop, the relay
first sends what the ring still holds (``_drain``, bounded), and says what it could not.
"""

from __future__ import annotations

import collections
import logging
import os
import random
import threading
import time

from ngxsim import NOTICE

from .engine import EngineError, Reconnected, Record
from .state import RelayState, state_path
from .view import View

log = logging.getLogger("ngxsim")

BLOCK = 0.5       # the longest a read or a ring wait blocks (how soon a stop is noticed)
KEEP_EVERY = 0.05  # while events keep coming, the state file is written at most this often
BATCH = 512
# a batch taken less than this after the previous one waits out the rest first (unless a whole
# BATCH is waiting): a burst of publishes is sent in a few large appends rather than one per
# engine round trip, each of which woke the relay (and, through the engine, its reader) anew
# beside the requests; an event after a quiet spell goes at once
COALESCE = 0.002
BACKOFF_FIRST, BACKOFF_MAX = 0.05, 2.0
GAP_CHANNEL = "@gap"
# a relay told to stop sends what the ring still holds for at most this long (the worker kills
# its process ngxsim.core.helper.STOP_WAIT, 2.5 s, after telling it)
DRAIN = 1.5


class Relay:
    def __init__(self, runtime, bridge, instance: str, view_zone: str, lease):
        from ngxsim_plugins import worker_events as we

        self.we = we
        self.runtime = runtime
        self.bridge = bridge
        self.zone = bridge.zone
        self.instance = instance
        self.lease = lease
        self.state = RelayState.load(state_path(bridge.state_dir, bridge.zone, bridge.stream))
        self.view = View(runtime.zone(view_zone))
        old = self.view.read() or {}
        self.stats = {k: old.get(k, 0) for k in ("relayed_out", "relayed_in", "duplicates", "gaps", "lost_events",
                                                  "engine_errors", "engine_lost")}
        self.instances: dict[str, dict] = old.get("instances") or {}
        self.links = {"out": False, "in": False}
        self.connected = False
        self.last_error: str | None = None
        self.last_error_msec = 0
        self.caught_up = False
        self._lock = threading.Lock()
        self._pending_loss: set[str] = set()
        self._backoff = {"out": 0.0, "in": 0.0}  # the wait before the next connect, per direction
        self._changed = False  # the state file not written since the state changed (_keep)
        self._view_due = False  # the view behind (a scan of events that stay home): shown at idle
        self._kept = 0.0
        self._engines: dict[str, object] = {}  # one per direction, connected again after a failure
        # what the engine acknowledged of ours, oldest first: (position, local generation, record),
        # at most a ring's worth (beyond it the ring could not send them again anyway)
        self._acked: collections.deque = collections.deque()
        self._checked_epoch = 0  # the engine's epoch() when the out thread last checked _acked

    # -- shared bookkeeping ---------------------------------------------------------------------

    def _stopping(self) -> bool:
        return self.lease.stopping.is_set()

    def _link(self, direction: str, ok: bool, error: str | None = None) -> None:
        """Record a direction's connection state. The error log hears of each change once, never
        of each retry: "unreachable" at a failure after the engine last worked (or at the
        first), "connected to" when a read or append works again (``_worked``), not at a mere
        connect (an engine that accepts connections and fails every call stays down)."""
        with self._lock:
            self.links[direction] = ok
            if error:
                self.last_error, self.last_error_msec = error, int(time.time() * 1000)
                self.stats["engine_errors"] += 1
            self.connected = all(self.links.values())
            went_down = not ok and self._said != "down"
            if went_down:
                self._said = "down"
        if went_down:
            log.error("cluster: zone %s: engine %s unreachable (%s); the relay retries with backoff, "
                      "events wait in the ring meanwhile", self.zone, self.bridge.engine, error)
        self.publish_view()

    _said: str | None = None  # what the error log said last: "up", "down"

    def _worked(self, direction: str) -> None:
        """A read or append succeeded: the next failure reconnects at once, and the log says the
        engine works (once per change)."""
        self._backoff[direction] = 0.0
        if self._said == "up":
            return
        with self._lock:
            went_up, self._said = self._said != "up", "up"
        if went_up:
            log.log(NOTICE, "cluster: zone %s: relay (process %d of worker %d) connected to %s, stream %s, as "
                     "instance %s", self.zone, os.getpid(), os.getppid(), self.bridge.engine, self.bridge.stream,
                     self.instance)

    def publish_view(self) -> None:
        b = self.bridge
        with self._lock:
            doc = {
                "engine": b.engine, "stream": b.stream, "instance": self.instance,
                "channels": list(b.channels) if b.channels is not None else "*",
                "connected": self.connected, "links": dict(self.links), "relay_pid": None if self._stopping() else os.getpid(),
                # the worker holding the relay's lease: it started this process (ngxsim's helper)
                "relay_worker": None if self._stopping() else os.getppid(),
                "caught_up": self.caught_up, "cursor": self.state.cursor, "relayed_generation": self.state.relayed,
                **self.stats,
                "last_error": self.last_error, "last_error_msec": self.last_error_msec or None,
                "instances": self.instances,
            }
        self.view.write(doc)

    def _connected_engine(self, direction: str):
        """An engine connected, or None when told to stop; retries with backoff and jitter. The
        backoff grows with each connect that is not followed by a successful read or append
        (``_worked``): an engine that accepts connections and then fails every call is retried
        as slowly as one that refuses them."""
        while not self._stopping():
            delay = self._backoff[direction]
            if delay and self.lease.stopping.wait(delay * random.uniform(0.5, 1.5)):
                break
            self._backoff[direction] = min(max(delay * 2, BACKOFF_FIRST), BACKOFF_MAX)
            engine = None
            try:
                # the same engine connected again (an engine may keep what it knows of the stream
                # across a reconnect: NATS, the last entry read, to check it is still there)
                engine = self._engines.get(direction)
                if engine is None:
                    engine = self._engines[direction] = self.bridge.make_engine()
                engine.password = self.bridge.password()  # (read at each connect: rotated ones too)
                engine.connect()
                self._link(direction, True)
                return engine
            except (EngineError, OSError) as exc:
                if engine is not None:
                    engine.close()
                self._link(direction, False, str(exc))
        return None

    def _reconnect(self, engine, direction: str, exc: EngineError):
        """``engine`` failed with ``exc``: closed, said in the view, and connected again (None
        when told to stop)."""
        engine.close()
        self._link(direction, False, str(exc))
        return self._connected_engine(direction)

    # -- the service ----------------------------------------------------------------------------

    def run(self) -> None:
        self._recover_watermarks()
        out = threading.Thread(target=self._guarded, args=(self._outbound,), name=f"ngxsim-cluster-out-{self.zone}",
                               daemon=True)
        out.start()
        try:
            self._guarded(self._inbound)
        finally:
            out.join(BLOCK + self.bridge.timeout + 1)
            self.state.save()
            with self._lock:
                self.connected = False
            self.publish_view()

    def _keep(self, changed: bool = False, idle: bool = False) -> None:
        """After a change, the view at once (what moved without one, a scan of events that stay
        home, when the thread goes idle); the state file at once when the thread goes idle
        (``idle``: a read or a ring wait came back empty), else at most every KEEP_EVERY, not
        after each batch (a batch is often one event when they come one by one: a file written
        and renamed per event was most of a relay's CPU). What a crash loses of it is redone
        and dropped as a duplicate (state.py)."""
        if changed or (idle and self._view_due):
            self._view_due = False
            self.publish_view()
        self._changed = self._changed or changed
        now = time.monotonic()
        if self._changed and (idle or now - self._kept >= KEEP_EVERY):
            self._changed, self._kept = False, now
            self.state.save()

    def _guarded(self, loop) -> None:
        # (no short time slice, unlike the dispatchers: a wake-up here parses, publishes and
        # writes its state, ~1 ms of CPU that a 0.1 ms slice would cut into many waits)
        while not self._stopping():
            try:
                loop()
            except Exception:  # never let a direction die: log, pause, start it again
                log.exception("cluster: zone %s: relay failed", self.zone)
                self.lease.stopping.wait(1.0)

    def _recover_watermarks(self) -> None:
        """What this instance's ring holds of remote events counts as delivered: a relay killed
        after publishing and before saving its state must not publish them again."""
        seen = self.state.seen
        for _, events in self._scans(0):
            for event in events:
                if event.origin is not None and event.origin_generation > seen.get(event.origin, 0):
                    seen[event.origin] = event.origin_generation

    def _scans(self, after: int):
        """Read what the ring holds after generation ``after``, up to its newest at the first
        read: per read, how many generations it no longer held and the events it did."""
        newest = None
        while newest is None or after < newest:
            scan = self.we.events_after(self.runtime, self.zone, after, BATCH)
            newest = scan.newest if newest is None else newest
            yield scan.missed, [e for e in scan.events if e.generation <= newest]
            if not scan.events:
                return
            after = scan.events[-1].generation

    # -- local -> engine ----------------------------------------------------------------------

    def _outbound(self) -> None:
        we, rt, zone, st = self.we, self.runtime, self.zone, self.state
        birth = we.ring_birth(rt, zone)
        # what the engine acknowledged to this relay's predecessor (a takeover: the same ring; a
        # restart: the previous one's birth), checked like the rest (_check_acked)
        self._inherited = (st.ring_birth, *st.acked) if st.acked else None
        if st.ring_birth != birth:  # a new ring (the instance restarted): all it holds is unsent
            st.ring_birth, st.relayed = birth, 0
        room = we.ring_capacity(rt, zone)
        self._acked = collections.deque(maxlen=room)
        engine = self._connected_engine("out")
        checked = False
        taken = 0.0  # when the last batch was taken (time.monotonic())
        # the origin generation of the last record sent (each record names its predecessor: a
        # receiver then knows exactly what of ours never came); from the durable state, so a
        # successor or a restart goes on with the same chain
        chain = st.acked[1] if st.acked else 0
        with we.events_waiter(rt, zone):  # counted once: its waits take no lock the publishers take
            try:
                while engine is not None and not self._stopping():
                    if not checked:  # (a new connection, or the engine reconnected by itself meanwhile)
                        try:
                            self._check_acked(engine, birth)
                            checked = True
                        except EngineError as exc:
                            engine = self._reconnect(engine, "out", exc)
                            continue
                    newest = we.wait_for_events(rt, zone, st.relayed, BLOCK, registered=True)
                    if newest <= st.relayed:
                        try:  # idle: did the engine reconnect by itself meanwhile? then check at once
                            checked = engine.epoch() == self._checked_epoch
                        except EngineError as exc:
                            engine = self._reconnect(engine, "out", exc)
                            checked = False
                        if not checked:
                            continue
                    since = time.monotonic() - taken
                    if since < COALESCE and newest - st.relayed < BATCH:  # in a burst: let the batch fill
                        self.lease.stopping.wait(COALESCE - since)
                    taken = time.monotonic()
                    try:
                        chain = self._send_batch(engine, birth, chain)
                    except Reconnected:  # (the engine works: check what it holds of ours, then go on)
                        checked = False
                    except EngineError as exc:
                        engine = self._reconnect(engine, "out", exc)
                        checked = False  # the same events again (the others' watermarks drop repeats)
                if engine is not None and checked:
                    self._drain(engine, birth, chain)
                self._say_unsent()
            finally:
                if engine is not None:
                    engine.close()

    def _send_batch(self, engine, birth: int, chain: int) -> int:
        """Send what the ring holds after ``state.relayed`` (at most BATCH events), each record
        naming its predecessor (``chain``: the origin generation of the last record sent);
        returns the new chain. The append's ``EngineError`` (or ``Reconnected``) is raised with
        nothing recorded as sent."""
        we, rt, zone, st = self.we, self.runtime, self.zone, self.state
        scan = we.events_after(rt, zone, st.relayed, BATCH)
        records = []
        previous = chain
        if scan.missed:  # overwritten before we read them: a gap for the others
            first = st.relayed + 1
            gap = f"{birth + first}-{birth + first + scan.missed - 1}"
            records.append(Record(self.instance, birth + first + scan.missed - 1, GAP_CHANNEL, "gap", gap,
                                  int(time.time() * 1000), previous))
            previous = records[-1].origin_generation
            log.warning("cluster: zone %s: the ring overwrote generations %d..%d before the relay sent "
                        "them", zone, first, first + scan.missed - 1)
        bridges = self.bridge.bridges
        for e in scan.events:
            if e.origin is None and bridges(e.channel):
                records.append(Record(self.instance, birth + e.generation, e.channel, e.type, e.payload,
                                      e.timestamp_msec, previous))
                previous = birth + e.generation
        last = scan.events[-1].generation if scan.events else st.relayed + scan.missed
        if last == st.relayed:
            self._keep(idle=True)
            return chain
        if records:
            positions = engine.append(records)
            self._worked("out")
            self._acked.extend(zip(positions, (r.origin_generation - birth for r in records), records))
            st.acked = (positions[-1], records[-1].origin_generation)
            chain = previous
        st.relayed = last
        self._view_due = self._view_due or not records
        if records:  # (a batch of remote events only: nothing to keep, a re-scan skips them again)
            with self._lock:
                self.stats["relayed_out"] += sum(r.channel != GAP_CHANNEL for r in records)
            self._keep(changed=True)
        return chain

    def _drain(self, engine, birth: int, chain: int) -> None:
        """Told to stop (the instance stops, or its worker gives the lease up): what the ring
        holds unsent goes now, on the connection that works, for at most DRAIN seconds. An
        instance that stops takes its ring with it: the events its requests published last
        would otherwise never leave the host."""
        deadline = time.monotonic() + DRAIN
        newest = self.we.events_after(self.runtime, self.zone, self.state.relayed, 1).newest
        while self.state.relayed < newest and time.monotonic() < deadline:
            try:
                chain = self._send_batch(engine, birth, chain)
            except EngineError:  # (Reconnected too): what is left is said below
                return

    def _say_unsent(self) -> None:
        """The relay stops: the events of bridged channels it could not send are said, not lost
        silently (a relay of this instance that takes over sends them, while the ring holds
        them; an instance that stops loses them)."""
        unsent = sum(missed + sum(e.origin is None and self.bridge.bridges(e.channel) for e in events)
                     for missed, events in self._scans(self.state.relayed))
        if unsent:
            log.warning("cluster: zone %s: the relay stops with %d event(s) not sent to engine %s: a relay of this "
                        "instance that takes over sends them; they are lost if the instance stops", self.zone, unsent,
                        self.bridge.engine)

    def _check_acked(self, engine, birth: int) -> None:
        """Does the engine still hold what it acknowledged of ours? An engine that restarted
        without entries it had not stored durably (NATS R1 after kill -9, Redis with
        ``appendfsync everysec``, a failover) lost a tail of them: the relay sends them again
        from the ring, in order and ahead of anything new, with their origin generations (the
        others' watermarks drop what they had already); what the ring overwrote meanwhile goes
        as a gap (the ring scan's). Bisection over the acknowledged positions, oldest first: the
        engine loses only a tail."""
        epoch = engine.epoch()
        acked = self._acked
        if not acked and self._inherited:
            self._check_inherited(engine, birth)
        if acked and not self._holds(engine, acked[-1]):
            low, high = 0, len(acked) - 1
            while low < high:
                middle = (low + high) // 2
                if self._holds(engine, acked[middle]):
                    low = middle + 1
                else:
                    high = middle
            lost = [acked[i] for i in range(low, len(acked))]
            full = len(acked) == acked.maxlen and low == 0  # (older ones of ours may be lost too)
            for _ in lost:
                acked.pop()
            first = 1 if full else lost[0][1]
            st = self.state
            st.relayed = min(st.relayed, first - 1)
            with self._lock:
                self.stats["engine_lost"] += len(lost)
            log.warning("cluster: zone %s: engine %s lost %d%s acknowledged entries of this instance "
                        "(generations %d..%d, restarted without them?): sending them again from the ring",
                        self.zone, self.bridge.engine, len(lost), " or more" if full else "", first, lost[-1][1])
            self._keep(changed=True)
        self._checked_epoch = epoch

    def _check_inherited(self, engine, birth: int) -> None:
        """The last entry the engine acknowledged to this relay's predecessor (state file): still
        there? Else the engine lost a tail of what the predecessor sent, how much is unknown
        here: after a takeover (the same ring) everything the ring holds goes again (the
        others drop what they had) and what it overwrote as a gap; after a restart (a new ring)
        the others get a gap of the previous life's generations up to that entry."""
        before, position, generation = self._inherited
        record = Record(self.instance, generation, "", "", "", 0)
        if not engine.is_position(position) or self._holds(engine, (position, 0, record)):
            self._inherited = None
            return
        st = self.state
        log.warning("cluster: zone %s: engine %s no longer holds the last entry it acknowledged to this "
                    "instance's previous relay (origin generation %d, restarted without it?): %s", self.zone,
                    self.bridge.engine, generation,
                    "sending again what the ring holds" if before == birth else "a gap for the others")
        st.acked = None
        if before == birth:
            st.relayed = 0
        else:
            engine.append([Record(self.instance, generation, GAP_CHANNEL, "gap", f"{before + 1}-{generation}",
                                  int(time.time() * 1000))])
        with self._lock:
            self.stats["engine_lost"] += 1
        self._inherited = None
        self._keep(changed=True)

    @staticmethod
    def _holds(engine, acked) -> bool:
        position, _, record = acked
        found = engine.record_at(position)
        return found is not None and (found.origin, found.origin_generation) == (record.origin, record.origin_generation)

    # -- engine -> local ----------------------------------------------------------------------

    def _inbound(self) -> None:
        st = self.state
        engine = self._connected_engine("in")
        last_look = 0.0
        if engine is not None and st.cursor is not None and not engine.is_position(st.cursor):
            self._foreign_cursor(engine)
        try:
            while engine is not None and st.cursor is None and not self._stopping():
                try:  # a first start: from now on (the engine says where "now" is)
                    self._take(engine.read(None, block=0.01, limit=BATCH))
                    self._worked("in")
                    if st.cursor is None:
                        break  # (an engine that broke the contract: read(None) in the loop below)
                except EngineError as exc:
                    engine = self._reconnect(engine, "in", exc)
            while engine is not None and not self._stopping():
                try:
                    before = st.cursor
                    batch = engine.read(st.cursor, block=BLOCK, limit=BATCH, skip_origin=self.instance)
                    self._worked("in")
                    self._take(batch)  # first: delivery waits for nothing else
                    now = time.monotonic()
                    if now - last_look > 1.0 or not batch.entries:
                        newest = engine.newest()
                        last_look = now
                        self.caught_up = newest is None or newest == engine.position_of(st.cursor)
                    if st.cursor == before:
                        self._keep(idle=True)
                except EngineError as exc:
                    engine = self._reconnect(engine, "in", exc)
        finally:
            if engine is not None:
                engine.close()

    def _foreign_cursor(self, engine) -> None:
        """The stored position is not one of this engine's (the bridge moved to another engine,
        keeping its state folder): what this instance missed is unknown, so every module gets a
        gap, and reading starts at the stream's beginning (the watermarks drop what was
        delivered through the previous engine)."""
        st = self.state
        log.warning("cluster: zone %s: the stored position %r is not one of engine %s (another engine's?): "
                    "reading stream %s from its beginning, modules get a gap", self.zone, st.cursor,
                    self.bridge.engine, self.bridge.stream)
        with self._lock:
            self.stats["gaps"] += 1
        self.we.publish_remote_gap(self.runtime, self.zone, origin="*", first=1, last=1)
        st.cursor = engine.beginning
        st.save()

    def _origin_gap(self, origin: str, first: int, last: int) -> None:
        """Events ``first``..``last`` of ``origin`` (its generations; some of them on channels
        that stay there) never came: the engine lost what it had acknowledged or dropped what
        this instance had not read, or the origin's relay sent them after later ones."""
        with self._lock:
            self.stats["gaps"] += 1
        log.warning("cluster: zone %s: events of instance %s after its generation %d, up to %d, never came "
                    "(the engine lost them)", self.zone, origin, first - 1, last)
        self.we.publish_remote_gap(self.runtime, self.zone, origin=origin, first=first, last=last)

    def _take(self, batch) -> None:
        we, rt, zone, st, me = self.we, self.runtime, self.zone, self.state, self.instance
        if batch.lost:
            count = batch.lost_count
            with self._lock:
                self.stats["gaps"] += 1
                self.stats["lost_events"] += count or 0
            log.warning("cluster: zone %s: the engine dropped %s entries this instance had not read (stream %s)",
                        zone, count if count is not None else "some", self.bridge.stream)
            # every module resyncs now; the origins are named as their next events show them
            we.publish_remote_gap(rt, zone, origin="*", first=1, last=count or 1)
            self._pending_loss = {o for o in st.seen if o != me}
        now_msec = int(time.time() * 1000)
        changed = bool(batch.lost)
        for entry in batch.entries:
            r = entry.record
            if r.origin == me:
                continue  # our own, back from the engine: never echoed
            seen = st.seen.get(r.origin)
            info = self.instances.setdefault(r.origin, {"last_seen_msec": 0, "origin_generation": 0})
            info["last_seen_msec"] = now_msec
            if seen is not None and r.origin_generation <= seen:
                self.stats["duplicates"] += 1
                continue
            if r.previous:  # it names its predecessor: what lies between the last one seen and it never came
                self._pending_loss.discard(r.origin)
                if seen is not None and r.previous > seen:
                    self._origin_gap(r.origin, seen + 1, r.previous)
            elif r.origin in self._pending_loss:  # (naming no predecessor, after the engine dropped some)
                self._pending_loss.discard(r.origin)
                if seen is not None and r.origin_generation > seen + 1:
                    self._origin_gap(r.origin, seen + 1, r.origin_generation - 1)
            try:
                if r.channel == GAP_CHANNEL:
                    first, _, last = r.payload.partition("-")
                    we.publish_remote_gap(rt, zone, origin=r.origin, first=int(first), last=int(last))
                    with self._lock:
                        self.stats["gaps"] += 1
                        self.stats["lost_events"] += int(last) - int(first) + 1
                elif self.bridge.bridges(r.channel):
                    we.publish_remote(rt, zone, r.channel, r.type, r.payload, origin=r.origin,
                                      origin_generation=r.origin_generation, timestamp_msec=r.timestamp_msec)
                    with self._lock:
                        self.stats["relayed_in"] += 1
            except ValueError as exc:  # not an event this ring can hold: say so, go on
                log.warning("cluster: zone %s: entry %s from %s skipped: %s", zone, entry.position, r.origin, exc)
            st.seen[r.origin] = r.origin_generation
            info["origin_generation"] = r.origin_generation
            changed = True
        if batch.cursor is not None and batch.cursor != st.cursor:
            st.cursor = batch.cursor
            changed = True
        self._keep(changed)
