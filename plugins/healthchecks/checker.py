"""The periodic job that probes one upstream's peers, run by one worker for the whole instance.

Each run: read the upstream's current peers (``upstreams.peers``), make the zone's slots follow
them, probe every peer not marked ``down`` in parallel, and apply each result as soon as it
arrives, under the zone lock: count it (hysteresis), tell upstreams (``set_peer_health``) and,
when the peer flipped, publish ``peer_transition`` — then ``service_transition`` when the upstream
lost its last healthy peer or got its first one back. The flip is found under the lock, so it is
published exactly once for the instance even if a hung prober and its successor overlap; and
``set_peer_health`` comes before the event, which upstreams reacts to by re-reading health.

Under ``scope=cluster`` (``UpstreamCheck.tick``) the job ticks three times an interval: each tick
takes or renews the cluster-wide lease of the upstream in the cluster's engine, and only the
instance holding it probes (once an interval); its events cross to the other hosts, which apply
each ``peer_transition`` (``apply_remote``). An instance that cannot reach the engine probes by
itself until it can again.
"""

from __future__ import annotations

import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass

from ngxsim import NOTICE, compact_json

from .conf import CLUSTER, HealthCheck
from .machine import HEALTHY, STATES, PeerHealth, ProbeResult, now_msec
from .match import Match
from .probe import probe
from .store import ALONE, FOLLOWER, PROBER, HealthStore, Section, ServiceChange, Tracked

NAME = "healthchecks"
CHANNEL = "healthchecks"
ZONE = "healthchecks.peers"
MAX_PROBE_THREADS = 64
log = logging.getLogger("ngxsim.healthchecks")


class ProcessState:
    """This process's view: the store over the zone, and the probe threads (in the prober)."""

    def __init__(self, runtime, upstreams: list[str]):
        self.store = HealthStore(runtime.zone(ZONE), upstreams)
        self._executor: ThreadPoolExecutor | None = None
        self.warned: set[tuple[str, int, str]] = set()
        self.last_round: dict[str, float] = {}  # scope=cluster: when this process last probed (monotonic)
        self.shared: dict[str, dict] = {}       # scope=cluster: the verdicts this process last put in the engine

    @property
    def executor(self) -> ThreadPoolExecutor:
        # made on first use: only the worker holding a job probes
        if self._executor is None:
            self._executor = ThreadPoolExecutor(MAX_PROBE_THREADS, thread_name_prefix="ngxsim-healthcheck")
        return self._executor

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None


def process_state(runtime) -> ProcessState:
    st = runtime.stash.get(NAME)
    if st is None:
        st = runtime.stash[NAME] = ProcessState(runtime, list(runtime.config.stash[NAME].checks))
    return st


@dataclass(frozen=True)
class UpstreamCheck:
    """One upstream's ``health_check`` (from the location that proxies to it)."""

    upstream: str
    check: HealthCheck
    match: Match | None
    event_zone: str

    @property
    def job_name(self) -> str:
        return f"{NAME}.{self.upstream}"

    @property
    def job_interval(self) -> float:
        """How often the job runs: every interval, or three times an interval under
        ``scope=cluster`` (a lease in the engine is renewed every third of its time)."""
        return self.check.interval / 3 if self.check.scope == CLUSTER else self.check.interval

    def tick(self, runtime) -> None:
        """The job's ``run``: under ``scope=cluster``, probe only as the cluster's prober (or
        alone, without the engine), once an interval; else a round every time."""
        if self.check.scope != CLUSTER:
            return self.run(runtime)
        from ngxsim_plugins import cluster

        st = process_state(runtime)
        store = cluster.store(runtime, self.event_zone)
        role = self._role(store, st)
        try:
            if role == FOLLOWER:
                return self._follow(runtime, store)
            now = time.monotonic()
            if now - st.last_round.get(self.upstream, -1e9) >= self.check.interval * 5 / 6:  # ticks jitter
                st.last_round[self.upstream] = now
                self.run(runtime)
            if role == PROBER:
                self._share(runtime, store, st)
        except cluster.EngineError:
            pass  # the verdicts in the engine are brought up to date at a later tick

    @property
    def verdicts_key(self) -> str:
        return f"{NAME}.{self.upstream}.verdicts"

    def _share(self, runtime, store, st) -> None:
        """As the prober: keep the verdicts in the engine (``{server: [state, fails, passes]}``),
        so that a host that starts, or missed events, follows them (``_follow``)."""
        section = st.store.section(self.upstream)
        with section.lock():
            doc = {t.server: [t.health.state, t.health.fails, t.health.passes] for t in section.tracked()}
        text = compact_json({"at": now_msec(), "peers": doc})
        if st.shared.get(self.upstream) == doc:
            return
        _, revision = store.get(self.verdicts_key)
        store.put(self.verdicts_key, text, revision)
        st.shared[self.upstream] = doc

    def _follow(self, runtime, store) -> None:
        """As a follower: apply the prober's verdicts kept in the engine where this host differs
        (it started after them, or missed their events), and tell this host's workers."""
        value, _ = store.get(self.verdicts_key)
        try:
            doc = json.loads(value) if value else {}
            at, peers = int(doc.get("at", 0)), dict(doc.get("peers", {}))
        except (ValueError, TypeError, AttributeError):
            return
        for server, verdict in peers.items():
            try:
                to, fails, passes = str(verdict[0]), int(verdict[1]), int(verdict[2])
            except (TypeError, ValueError, IndexError):
                continue
            changed = self.apply_verdict(runtime, server, to, fails, passes, at)
            if changed is not None:  # only this host was behind: its own workers re-read the peer
                old, peer_id = changed
                self._publish(runtime, "peer_transition", {
                    "upstream": self.upstream, "peer": peer_id, "server": server, "from": old, "to": to,
                    "fails": fails, "passes": passes, "sync": True})

    def _role(self, store, st) -> str:
        """Take or renew the cluster-wide lease of this upstream's probes; say in the error log
        when this instance's part changes to or from probing alone."""
        held = store.lease(f"{NAME}.{self.upstream}", ttl=self.check.interval)
        role = PROBER if held else FOLLOWER if store.connected() else ALONE
        section = st.store.section(self.upstream)
        with section.lock():
            old = section.set_role(role)
        if role == ALONE and old != ALONE:
            log.error("healthchecks: upstream %s: the cluster's engine cannot be reached; this instance probes its "
                      "peers by itself until it can", self.upstream)
        elif old == ALONE and role != ALONE:
            log.warning("healthchecks: upstream %s: the cluster's engine is reached again; %s", self.upstream,
                        "this instance is the cluster's prober" if role == PROBER else "the cluster's prober probes")
        return role

    def apply_remote(self, runtime, event) -> None:
        """A ``peer_transition`` of the cluster's prober on another host: apply it in this worker
        (every worker does: the same values, written once they differ). Not one a follower
        published after catching up from the engine (``sync``): that is this host's business."""
        try:
            data = json.loads(event.payload)
            server, to = data["server"], data["to"]
            fails, passes = int(data.get("fails", 0)), int(data.get("passes", 0))
        except (ValueError, TypeError, KeyError):
            return
        if not data.get("sync"):
            self.apply_verdict(runtime, server, to, fails, passes, event.timestamp_msec)

    def apply_verdict(self, runtime, server: str, to: str, fails: int, passes: int,
                      at_msec: int) -> tuple[str, int] | None:
        """Record the prober's verdict on the peer at ``server`` (made at ``at_msec``) and route by
        it in this worker; returns (the state it replaced, the peer's id here) when it changed.
        The peer is found by its address: ids are each host's. A verdict older than this
        instance's own last probe of the peer (one made elsewhere while the engine was away,
        relayed when it came back) is ignored: the newer result stands."""
        import ngxsim_plugins.upstreams as upstreams

        if to not in STATES:
            return None
        peers = upstreams.peers(runtime, self.upstream)
        section = process_state(runtime).store.section(self.upstream)
        with section.lock():
            targets, _ = section.sync(peers, self.check.mandatory)
            found = next(((t, p) for t, p in targets if t.server == server[:128]), None)
            if found is None or found[0].health.last_probe_msec > at_msec:
                return None
            tracked, peer = found
            health, old = tracked.health, tracked.health.state
            if (old, health.fails, health.passes) != (to, fails, passes):  # else another worker wrote it
                if old != to:
                    health.state, health.since_msec = to, at_msec
                    health.transitions += 1
                health.fails, health.passes = fails, passes
                section.write(tracked.slot, tracked.peer_id, tracked.server, tracked.down, health)
                section.update_service()  # the prober's own service_transition comes across: none here
        # in every worker, whoever wrote the zone: this is what makes this worker route by it
        upstreams.set_peer_health(runtime, self.upstream, peer.id, to == HEALTHY, fails, passes)
        return (old, peer.id) if old != to else None

    def run(self, runtime) -> None:
        """One round of probes (the job's ``run``): bounded by ``timeout`` per probe."""
        import ngxsim_plugins.upstreams as upstreams

        st = process_state(runtime)
        section = st.store.section(self.upstream)
        peers = upstreams.peers(runtime, self.upstream)
        with section.lock():
            targets, overflow = section.sync(peers, self.check.mandatory)
            change = section.update_service()
            if change:
                self._publish(runtime, "service_transition", change.payload())
        for peer in overflow:
            key = (self.upstream, peer.id, peer.server)
            if key not in st.warned:
                st.warned.add(key)
                log.error("healthchecks: upstream %s has more peers than the zone has slots; %s is not checked",
                          self.upstream, peer.server)
        port, uri, timeout, match = self.check.port, self.check.uri, self.check.timeout, self.match
        futures = {
            st.executor.submit(probe, peer.host, port or peer.port, uri, self.upstream, timeout, match): tracked
            for tracked, peer in targets if not peer.down
        }
        for future in as_completed(futures):
            if not future.cancelled():  # cancelled: this worker is exiting
                self.record(runtime, section, futures[future], future.result())

    def record(self, runtime, section: Section, tracked: Tracked, result: ProbeResult) -> None:
        """Count one probe's result for its peer, and say what flipped."""
        import ngxsim_plugins.upstreams as upstreams

        with section.lock():
            now = section.read(tracked.slot)
            if now is None or (now.peer_id, now.server) != (tracked.peer_id, tracked.server):
                return  # the peer left the upstream while it was probed
            health: PeerHealth = now.health
            old = health.apply(result, self.check.fails, self.check.passes)
            section.write(now.slot, now.peer_id, now.server, now.down, health)
            change = section.update_service()
            try:
                upstreams.set_peer_health(runtime, self.upstream, now.peer_id, health.healthy, health.fails,
                                          health.passes)
            except Exception:  # noqa: BLE001 - the peer may have gone from upstreams meanwhile
                log.exception("healthchecks: set_peer_health(%s, %s) failed", self.upstream, now.server)
            if old is not None:
                self._log_transition(now.server, health.healthy, result)
                self._publish(runtime, "peer_transition", {
                    "upstream": self.upstream, "peer": now.peer_id, "server": now.server, "from": old,
                    "to": health.state, "fails": health.fails, "passes": health.passes,
                })
            if change:
                self._publish(runtime, "service_transition", change.payload())

    def _log_transition(self, server: str, healthy: bool, result: ProbeResult) -> None:
        """NGINX Plus's error-log line for a peer whose health flipped: ``peer is unhealthy while
        checking status code, health check "MATCH" of peer ADDR in upstream "NAME"`` (warn), and
        ``peer is healthy while ...`` (notice) when it comes back."""
        text = '%s while %s, health check "%s" of peer %s in upstream "%s"'
        args = (_failed_step(result), self.check.match or "", server, self.upstream)
        if healthy:
            log.log(NOTICE, text, "peer is healthy", *args)
        else:
            log.warning(text, "peer is unhealthy", *args)

    def _publish(self, runtime, type: str, payload: dict) -> None:
        try:
            runtime.publish(self.event_zone, CHANNEL, type, compact_json(payload))
        except Exception:  # noqa: BLE001 - the state is recorded; say what could not be told
            log.exception("healthchecks: could not publish %s %s", type, payload)


def _failed_step(result: ProbeResult) -> str:
    """Where a probe's verdict was made, in nginx's words (``while ...``)."""
    reason = result.reason
    if result.ok or reason.startswith("status"):
        return "checking status code"
    if reason.startswith("header"):
        return "checking response headers"
    if reason.startswith("body"):
        return "checking response body"
    if reason == "connection refused" or reason.startswith("connection failed"):
        return "connecting to upstream"
    return "reading response header from upstream"


__all__ = ["CHANNEL", "NAME", "ZONE", "ProcessState", "ServiceChange", "UpstreamCheck", "process_state"]
