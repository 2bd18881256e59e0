"""healthchecks: active health checks of upstream peers, once per instance, with hysteresis.

- ``match NAME { status ...; header ...; body ...; }`` (http): what a good answer looks like;
- ``health_check [interval=] [fails=] [passes=] [uri=] [port=] [timeout=] [match=] [mandatory];``
  in a location that proxies to an upstream group: its peers are probed over HTTP by one worker
  of the instance (an instance-wide periodic job), their health kept in this module's zone,
  told to upstreams (``set_peer_health``) and published on channel ``healthchecks``
  (``peer_transition``, ``service_transition``) in the http-level ``worker_events_zone``;
- ``health_check_status;``: the state as JSON, or as a self-refreshing page for browsers.

Talks to upstreams only through its public functions (``ngxsim_plugins.upstreams``), and
upstreams follows the events. See docs/healthchecks.md.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass

from ngxsim import FLAG, HTTP, LOCATION, ZONE_HEADER_SIZE, Directive, Subscription, hookimpl, http_event_zone

from .checker import CHANNEL, NAME, ZONE, UpstreamCheck, process_state
from .conf import CLUSTER, parse_health_check
from .match import Match, parse_body, parse_header, parse_status
from .status import StatusPage
from .store import LAYOUT_VERSION, SLOTS, zone_size

MATCH = "match"  # the context a match block opens
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
MAX_UPSTREAM_NAME = 128  # keeps every event payload far below the bus's 512 bytes


def _parse_match_name(args: list[str]) -> str:
    if not _NAME.fullmatch(args[0]):
        raise ValueError(f'invalid match name "{args[0]}": use letters, digits, "_", "-" and "."')
    return args[0]


@hookimpl
def ngxsim_directives(register):
    register(Directive("match", (HTTP,), 1, block=MATCH, multiple=True, parse=_parse_match_name,
                       doc="`NAME { ... }`: tests a probe's response must pass"))
    register(Directive("status", (MATCH,), (1, None), multiple=True, inherit=False, parse=parse_status,
                       doc="`[!] CODE|LOW-HIGH ...`"))
    register(Directive("header", (MATCH,), (1, 3), multiple=True, inherit=False, parse=parse_header,
                       doc="`[!] NAME` or `NAME =|!=|~|!~ VALUE`"))
    register(Directive("body", (MATCH,), 2, multiple=True, inherit=False, parse=parse_body,
                       doc="`~|!~ REGEX`"))
    register(Directive("health_check", (LOCATION,), (0, None), inherit=False, parse=parse_health_check,
                       doc="probe the peers of the location's upstream group"))
    register(Directive("health_check_status", (LOCATION,), 0, type=FLAG, default=False, inherit=False,
                       doc="the health of every checked peer (JSON, or HTML for browsers)"))


@dataclass(frozen=True)
class Plan:
    """What the configuration asks of this module (``config.stash["healthchecks"]``)."""

    checks: dict[str, UpstreamCheck]  # by upstream name, in the order of the zone's sections


@hookimpl
def ngxsim_postconfiguration(config):
    matches = _matches(config)
    checks: dict[str, UpstreamCheck] = {}
    where: dict[str, object] = {}
    event_zone = None
    for location in config.blocks(LOCATION):
        check = location.get("health_check")
        if check is None:
            continue
        stmt = location.where_of("health_check")
        upstreams = _upstreams_module(config, stmt)
        name = upstreams.location_upstream(location)
        if name is None:
            raise stmt.error('"health_check" needs "proxy_pass http://NAME" to an upstream group in its location')
        if len(name.encode()) > MAX_UPSTREAM_NAME:
            raise stmt.error(f'upstream name "{name[:40]}..." is too long for health checks '
                             f'(at most {MAX_UPSTREAM_NAME} bytes)')
        if check.match is not None and check.match not in matches:
            raise stmt.error(f'match "{check.match}" not found')
        if name in checks:
            first = where[name]
            raise stmt.error(f'upstream "{name}" is already health-checked at {first.file}:{first.line}')
        if event_zone is None:
            event_zone = http_event_zone(config, NAME)
        if check.scope == CLUSTER:
            _check_cluster(config, event_zone, stmt)
        upstreams.require_health_checks(config, name, check.mandatory, where=stmt)
        checks[name] = UpstreamCheck(name, check, matches.get(check.match), event_zone)
        where[name] = stmt
    config.stash[NAME] = Plan(checks)
    if not checks:
        return
    names = list(checks)
    first = where[names[0]]
    config.zones.declare(ZONE, ZONE_HEADER_SIZE + zone_size(len(names)), owner=NAME, where=first,
                         tag=f"{NAME} v{LAYOUT_VERSION} s{SLOTS} {_digest(names)}")
    for name, uc in checks.items():
        # a round lasts up to one timeout: the lease must outlive it, or a busy prober would look hung
        config.jobs.declare(uc.job_name, uc.job_interval, uc.tick, owner=NAME, where=where[name],
                            lease=2 * uc.check.interval + uc.check.timeout)


def _check_cluster(config, event_zone: str, stmt) -> None:
    """``scope=cluster`` needs the cluster module and the ``healthchecks`` channel of the
    http-level event zone bridged (the verdicts cross hosts that way)."""
    if "cluster" not in config.module_names():
        raise stmt.error('"health_check" with "scope=cluster" needs the cluster module: add "load_module cluster;"')
    from ngxsim_plugins import cluster

    if not cluster.is_bridged(config, event_zone, CHANNEL):
        raise stmt.error(f'"health_check" with "scope=cluster" needs the "{CHANNEL}" channel of event zone '
                         f'"{event_zone}" bridged: add "cluster_bridge {event_zone} URL channels={CHANNEL} ..." '
                         f'(or "{CHANNEL}" to its "channels=")')


@hookimpl
def ngxsim_event_subscriptions(config):
    plan = config.stash.get(NAME)
    zones = {uc.event_zone for uc in plan.checks.values() if uc.check.scope == CLUSTER} if plan else set()
    return [Subscription(zone, channels=(CHANNEL,)) for zone in zones]


@hookimpl(tryfirst=True)  # before upstreams re-reads the peer's health for the same event
def ngxsim_event(runtime, event):
    if event.origin is None or event.channel != CHANNEL or event.type != "peer_transition":
        return
    plan = runtime.config.stash.get(NAME)
    try:
        upstream = json.loads(event.payload).get("upstream")
    except (ValueError, AttributeError):
        return
    uc = plan.checks.get(upstream) if plan and isinstance(upstream, str) else None
    if uc is not None and uc.check.scope == CLUSTER and uc.event_zone == event.zone:
        uc.apply_remote(runtime, event)


def _matches(config) -> dict[str, Match]:
    out: dict[str, Match] = {}
    seen: dict[str, object] = {}
    for block in config.blocks(MATCH):
        name = block.value
        if name in seen:
            first = seen[name]
            raise block.error(None, f'duplicate match "{name}", first defined at {first.file}:{first.line}')
        seen[name] = block.statement
        out[name] = Match(name, tuple(block.get("status") or ()), tuple(block.get("header") or ()),
                          tuple(block.get("body") or ()))
    return out


def _upstreams_module(config, stmt):
    """The upstreams module, which must be loaded before this one (its peers, its hooks)."""
    me = sys.modules[__name__]
    try:
        import ngxsim_plugins.upstreams as upstreams
    except ImportError:
        upstreams = None
    order = [plugin for _, plugin in config.modules]
    if upstreams is None or upstreams not in order or order.index(upstreams) > order.index(me):
        raise stmt.error('"health_check" needs the upstreams module: put "load_module upstreams;" before '
                         '"load_module healthchecks;"')
    return upstreams


def _digest(names: list[str]) -> str:
    import hashlib

    return hashlib.sha1("\0".join(names).encode()).hexdigest()[:16]


@hookimpl
def ngxsim_content_handler(location, config):
    if location["health_check_status"]:
        return StatusPage(config).handle
    return None


@hookimpl
def ngxsim_exit_worker(runtime):
    st = runtime.stash.pop(NAME, None)
    if st is not None:
        st.close()


__all__ = ["Plan", "process_state"]
