"""The periodic job that probes one upstream's peers, run by one worker for the whole instance.

Each run: read the upstream's current peers (``upstreams.peers``), make the zone's slots follow
them, probe every peer not marked ``down`` in parallel, and apply each result as soon as it
arrives, under the zone lock: count it (hysteresis), tell upstreams (``set_peer_health``) and,
when the peer flipped, publish ``peer_transition`` — then ``service_transition`` when the upstream
lost its last healthy peer or got its first one back. The flip is found under the lock, so it is
published exactly once for the instance even if a hung prober and its successor overlap; and
``set_peer_health`` comes before the event, which upstreams reacts to by re-reading health.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass

from ngxsim import NOTICE, compact_json

from .conf import HealthCheck
from .machine import PeerHealth, ProbeResult
from .match import Match
from .probe import probe
from .store import HealthStore, Section, ServiceChange, Tracked

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
