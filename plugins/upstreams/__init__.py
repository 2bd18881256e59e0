"""upstreams: upstream groups, ``proxy_pass`` to real backends, and a dynamic API whose changes
reach every worker through the event bus.

- directives: ``upstream NAME { server ...; zone ...; state ...; upstream_refresh ...; }``,
  ``proxy_pass``, ``proxy_set_header``, ``proxy_connect_timeout``, ``proxy_read_timeout``,
  ``proxy_next_upstream``, ``upstreams_api``, ``upstreams_api_key``;
- variables: ``$proxy_host``, ``$proxy_port``, ``$proxy_add_x_forwarded_for``, ``$upstream_addr``,
  ``$upstream_status``, ``$upstream_response_time``;
- events on channel ``upstreams`` of the http-level ``worker_events_zone``: ``snapshot_activated``,
  ``peer_draining``, ``peer_drained``, ``refresh_failed`` (docs/events.md);
- public functions other modules use (healthchecks): ``location_upstream``, ``upstream_names``,
  ``require_health_checks``, ``peers``, ``set_peer_health``, ``PeerInfo``.

See docs/upstreams.md.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field, fields

from ngxsim import (
    FLAG, HTTP, LOCATION, NOTICE, SERVER, ConfigError, Directive, Subscription, Variable, hookimpl, http_event_zone,
    process_alive, register_secret_arg,
)

from . import dynamic, snapshots, sync, unsupported
from .api import UpstreamsApi, UpstreamsSection
from .balancer import Peer
from .conf import (
    NEXT_UPSTREAM, ProxyPass, Redirect, UpstreamConf, parse_header_name, parse_http_version, parse_keepalive,
    parse_keepalive_requests, parse_keepalive_time, parse_keepalive_timeout, parse_next_upstream, parse_proxy_pass, parse_refresh, parse_server,
    parse_redirect, parse_set_header, parse_timeout, parse_zone,
)
from .proxy import ProxyHandler
from .refresh import refresh_job
from .state import CHANNEL, NAME, state
from .zone import HEALTH_CHECKING, HEALTH_DOWN, HEALTH_UP, UpstreamZone, slot_count

HEALTH_CHANNEL = "healthchecks"
log = logging.getLogger("ngxsim")
UPSTREAM = "upstream"  # the context an upstream block opens
DRAIN_CHECK_INTERVAL = 1.0


# -- configuration -------------------------------------------------------------------------------


def _api_key(args: list[str]) -> str:
    if not args[0]:
        raise ValueError('"upstreams_api_key" must not be empty')
    return args[0]


@hookimpl
def ngxsim_directives(register):
    levels = (HTTP, SERVER, LOCATION)
    register(Directive("upstream", (HTTP,), 1, block=UPSTREAM, multiple=True, doc="`NAME { ... }`: a group of peers"))
    register(Directive("server", (UPSTREAM,), (1, 6), parse=parse_server, multiple=True,
                       doc="`ADDR [weight=N] [max_fails=N] [fail_timeout=T] [backup] [down]`"))
    register(Directive("zone", (UPSTREAM,), (1, 2), parse=parse_zone,
                       doc="`NAME [SIZE]`: the shared zone of the group's peers and snapshots (default 256k)"))
    register(Directive("state", (UPSTREAM,), 1, doc="file that keeps dynamic changes across restarts"))
    register(Directive("keepalive", (UPSTREAM,), 1, parse=parse_keepalive,
                       doc="`N`: idle connections to the peers each worker keeps"))
    register(Directive("keepalive_requests", (UPSTREAM,), 1, parse=parse_keepalive_requests, default=1000,
                       doc="requests over one kept connection"))
    register(Directive("keepalive_time", (UPSTREAM,), 1, parse=parse_keepalive_time, default=3600.0,
                       doc="how long one kept connection serves requests"))
    register(Directive("keepalive_timeout", (UPSTREAM,), 1, parse=parse_keepalive_timeout, default=60.0,
                       doc="how long a kept connection may stay idle"))
    register(Directive("upstream_refresh", (UPSTREAM,), (1, 4), parse=parse_refresh,
                       doc="`file=PATH|url=URL [interval=5s] [timeout=2s]`: re-read the servers, once per instance"))
    register(Directive("proxy_pass", (LOCATION,), 1, parse=parse_proxy_pass, inherit=False,
                       doc="`http://UPSTREAM[/URI]` or `http://ADDR:PORT[/URI]`"))
    register(Directive("proxy_set_header", levels, 2, parse=parse_set_header, multiple=True, default=[],
                       doc="`NAME VALUE`; an empty value removes the header; `Host` defaults to `$proxy_host`"))
    register(Directive("proxy_redirect", levels, (1, 2), parse=parse_redirect, multiple=True,
                       default=[Redirect("default")],
                       doc="`default | off | FROM TO`: rewrite the peer's `Location` (default: the proxy_pass URL "
                           "to the location's prefix)"))
    register(Directive("proxy_hide_header", levels, 1, parse=parse_header_name, multiple=True, default=[],
                       doc="`NAME`: a peer's response header not passed (besides Date, Server, X-Accel-...)"))
    register(Directive("proxy_pass_header", levels, 1, parse=parse_header_name, multiple=True, default=[],
                       doc="`NAME`: pass a peer's header hidden by default (Date, Server, X-Accel-...)"))
    register(Directive("proxy_http_version", levels, 1, parse=parse_http_version, default="1.0",
                       doc="`1.0 | 1.1`: the HTTP version of requests to the peers"))
    register(Directive("proxy_connect_timeout", levels, 1, parse=parse_timeout, default=60.0))
    register(Directive("proxy_read_timeout", levels, 1, parse=parse_timeout, default=60.0))
    register(Directive("proxy_next_upstream", levels, (1, len(NEXT_UPSTREAM)),
                       parse=parse_next_upstream, default=frozenset(("error", "timeout")),
                       doc="when to try the next peer: `error timeout http_502 http_503 http_504 ... | off`"))
    register(Directive("upstreams_api", (LOCATION,), 0, type=FLAG, default=False, inherit=False,
                       doc="this location is the upstreams API"))
    register(Directive("upstreams_api_key", (LOCATION,), 1, parse=_api_key,
                       doc="writes need `?key=SECRET`"))
    for declared in unsupported.declarations(UPSTREAM):
        register(declared)


def _xff(ctx) -> str:
    given = ctx.environ.get("HTTP_X_FORWARDED_FOR", "")
    addr = ctx.environ.get("REMOTE_ADDR", "")
    return f"{given}, {addr}" if given else addr


def _proxy_var(field_name: str):
    """``$proxy_host``/``$proxy_port``: what the location's ``proxy_pass`` names, known before
    the request is proxied (a cache key is computed before the content handler runs)."""

    def get(ctx) -> str:
        spec = ctx.location.get("proxy_pass") if ctx.location is not None else None
        if spec is None:
            return ""
        if spec.template is not None:  # evaluated once per request (a cache key needs it first)
            conf = ctx.runtime.config.stash[NAME]
            spec = dynamic.current(ctx, spec, conf.groups, conf.implicit)
            if spec is None:
                return ""
        return spec.host if field_name == "host" else str(spec.port)

    return get


@hookimpl
def ngxsim_variables(register):
    register(Variable("proxy_host", _proxy_var("host")))
    register(Variable("proxy_port", _proxy_var("port")))
    for name in ("upstream_addr", "upstream_status", "upstream_response_time"):
        register(Variable(name, lambda ctx, _n=name: ctx.vars.get(_n, "")))
    register(Variable("proxy_add_x_forwarded_for", _xff))


@dataclass
class ProxySettings:
    proxy_pass: ProxyPass
    prefix: str
    set_headers: list
    connect_timeout: float
    read_timeout: float
    next_upstream: frozenset
    http_version: str = "1.0"  # proxy_http_version
    redirects: list = field(default_factory=list)  # proxy_redirect lines
    hide: list = field(default_factory=list)  # proxy_hide_header
    pass_: list = field(default_factory=list)  # proxy_pass_header


@dataclass
class UpstreamsConf:
    """What the module built from the config (``config.stash["upstreams"]``)."""

    bus: str | None
    upstreams: dict[str, UpstreamConf] = field(default_factory=dict)
    cluster: bool = False  # the bus's "upstreams" channel is bridged: peers are cluster-wide (sync.py)
    # proxy_pass with variables (dynamic.py): the groups by their lower-case names, and the static
    # proxy_pass addresses (nginx's implicit upstreams) by (lower-case host, port)
    groups: dict[str, str] = field(default_factory=dict)
    implicit: dict[tuple[str, int], tuple[str, int]] = field(default_factory=dict)


@hookimpl
def ngxsim_postconfiguration(config):
    bus = http_event_zone(config, NAME)
    conf = UpstreamsConf(bus)
    zones_used: dict[str, str] = {}
    for block in config.blocks(UPSTREAM):
        name = block.value[0] if isinstance(block.value, list) else block.value
        if name in conf.upstreams:
            raise ConfigError(f'duplicate upstream "{name}"', block.statement.file, block.statement.line)
        servers = block.get("server") or []
        zone_name, zone_size = block.get("zone") or (f"upstream.{name}", 256 * 1024)
        if zone_name in zones_used:
            raise block.error("zone", f'zone "{zone_name}" is already used by upstream "{zones_used[zone_name]}": '
                                      f'give each upstream a zone of its own')
        zones_used[zone_name] = name
        state_path = block.get("state")
        if state_path is not None:
            state_path = os.path.abspath(state_path)
            folder = os.path.dirname(state_path)
            if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
                raise block.error("state", f'the folder of state file "{state_path}" does not exist or is not writable')
            try:
                saved = snapshots.read_state(state_path)
            except ValueError as exc:
                raise block.error("state", f"invalid state file: {exc}") from None
            config.warnings.extend(_overridden(name, state_path, saved, block))
        elif not servers and block.get("upstream_refresh") is None:
            raise ConfigError(f'no servers are inside upstream "{name}"', block.statement.file, block.statement.line)
        seen = set()
        for spec, stmt in zip(servers, _server_statements(block)):
            if spec.server in seen:
                raise stmt.error(f'server "{spec.server}" is listed twice in upstream "{name}"')
            seen.add(spec.server)
        up = UpstreamConf(name, zone_name, zone_size, servers, state_path, block.get("upstream_refresh"), block,
                          keepalive=block.get("keepalive"), keepalive_requests=block.get("keepalive_requests"),
                          keepalive_time=block.get("keepalive_time"), keepalive_timeout=block.get("keepalive_timeout"))
        conf.upstreams[name] = up
        usable = zone_size - 64
        if len(servers) > slot_count(usable):
            raise block.error("zone", f'zone "{zone_name}" has room for {slot_count(usable)} peers, '
                                      f'upstream "{name}" lists {len(servers)}')
        config.zones.declare(zone_name, zone_size, owner=NAME, where=block.where_of("zone") or block.statement,
                             tag=f"{NAME} v3 {name}")  # v3: peer slots of 416 bytes (times, codes)
        if up.refresh is not None:
            config.jobs.declare(f"upstreams.refresh.{name}", up.refresh.interval, refresh_job(name, up.refresh, {}),
                                owner=NAME, where=block.where_of("upstream_refresh"))
    if conf.upstreams:
        config.jobs.declare("upstreams.drained", DRAIN_CHECK_INTERVAL, _drain_job, owner=NAME)
        conf.cluster = _cluster_wide(config, bus)
        for up in conf.upstreams.values():
            if conf.cluster and up.refresh is not None:
                raise up.block.error("upstream_refresh", f'"upstream_refresh" cannot be used while the "{CHANNEL}" '
                                     f'channel of event zone "{bus}" is bridged (the peers are cluster-wide, changed '
                                     f'through the API): remove it, or leave "{CHANNEL}" out of "cluster_bridge"')
        if conf.cluster:
            config.jobs.declare_service(sync.SERVICE, sync.run_service, owner=NAME)
    conf.groups = {name.lower(): name for name in conf.upstreams}
    for loc in config.blocks(LOCATION):
        spec: ProxyPass | None = loc.get("proxy_pass")
        if spec is not None and spec.template is not None:
            _check_variable_pass(loc)
        elif spec is not None:
            if spec.upstream is not None and spec.upstream not in conf.upstreams:
                if spec.host == "localhost":
                    loc.own["proxy_pass"] = loc.effective["proxy_pass"] = ProxyPass("localhost", None, ("localhost", 80), spec.uri)
                else:
                    raise loc.error("proxy_pass", f'host not found in upstream "{spec.host}"')
            if spec.uri is not None and loc.value.modifier in ("~", "~*"):
                raise loc.error("proxy_pass", '"proxy_pass" cannot have URI part in location given by regular '
                                              'expression, or inside named location, or inside "if" statement, '
                                              'or inside "limit_except" block')
            address = loc.get("proxy_pass").address  # localhost's, made above, too
            if address is not None:
                conf.implicit.setdefault((address[0].lower(), address[1]), address)
        if loc.get("upstreams_api") and loc.get("upstreams_api_key"):
            register_secret_arg(config, "key")
    config.stash[NAME] = conf


def _check_variable_pass(loc) -> None:
    """What nginx refuses beside a ``proxy_pass`` with variables: ``proxy_redirect default``
    after it in the same location (before it, nginx says it should be placed after)."""
    own = loc.statement.block or []
    seen_pass = False
    for stmt in own:
        if stmt.name == "proxy_pass":
            seen_pass = True
        elif stmt.name == "proxy_redirect" and stmt.args == ["default"] and seen_pass:
            raise stmt.error('"proxy_redirect default" cannot be used with "proxy_pass" directive with variables')


def _server_statements(block) -> list:
    """The block's ``server`` statements, in order (each error and warning names its own line)."""
    return [stmt for stmt in block.statement.block or () if stmt.name == "server"]


def _overridden(name: str, path: str, saved, block) -> list[str]:
    """nginx's ``[warn]`` lines (``-t``, start, reload) for each ``server`` line the existing
    state file overrides: no edit of a server line is ignored silently. NGINX Plus refuses
    ``state`` beside ``server`` lines; ngxsim keeps them as the first start's peers (the state file
    does not exist yet), and says when they no longer count."""
    if saved is None:
        return []
    kept = {peer.spec for peer in saved}
    out = []
    for spec, stmt in zip(block.get("server") or [], _server_statements(block)):
        if spec not in kept:
            out.append(f'"server {spec.server}" of upstream "{name}" is overridden by the state file "{path}" '
                       f'(edit the file, or use the API) in {stmt.file}:{stmt.line}')
    return out


def _cluster_wide(config, bus: str | None) -> bool:
    """Whether the cluster module bridges the bus's ``upstreams`` channel (its public API)."""
    if bus is None or "cluster" not in config.module_names():
        return False
    return bool(sync.cluster_api().is_bridged(config, bus, CHANNEL))


def _drain_job(runtime) -> None:
    """Catch drains that finished without a request ending (a worker died mid-request)."""
    st = state(runtime)
    for name in st.zones:
        st.check_drained(name)


@hookimpl
def ngxsim_content_handler(location, config):
    conf = config.stash.get(NAME)
    if location["upstreams_api"]:
        return UpstreamsApi(location, conf)
    spec = location.get("proxy_pass")
    if spec is None:
        return None
    prefix = location.value.path if location.value.modifier in ("", "^~", "=") else ""
    settings = ProxySettings(spec, prefix, location["proxy_set_header"], location["proxy_connect_timeout"],
                             location["proxy_read_timeout"], location["proxy_next_upstream"],
                             location["proxy_http_version"], location["proxy_redirect"],
                             location["proxy_hide_header"], location["proxy_pass_header"])
    return ProxyHandler(location, state, settings)


@hookimpl
def ngxsim_api_sections(config):
    """NGINX Plus's ``http/upstreams`` in the core's ``api`` location."""
    conf = config.stash.get(NAME)
    return UpstreamsSection(conf).section() if conf is not None else None


@hookimpl
def ngxsim_status(runtime):
    """Each upstream's peers at a glance (``ngxsim status``, the status page): state, health,
    traffic, the instance's counts."""
    conf = runtime.config.stash.get(NAME)
    if not conf or not conf.upstreams:
        return None
    section, st = UpstreamsSection(conf), state(runtime)
    keys = ("id", "server", "state", "weight", "backup", "active", "requests", "fails", "unavail")
    out = {}
    for name in conf.upstreams:
        out[name] = [{**{k: peer[k] for k in keys}, "healthy": (peer["health"] or {}).get("healthy")}
                     for peer in section.upstream_json(st, name)["peers"]]
    return {"upstreams": out}


# -- processes -----------------------------------------------------------------------------------


def _first_snapshot(up, zone: UpstreamZone, rebuild: bool) -> None:
    """Give the upstream its snapshot from the state file when it exists (dynamic changes survive
    a restart), else from the config's server lines. Without ``rebuild`` this does nothing when a
    snapshot is there already: under plain gunicorn every worker calls it at start, and the first
    one (under the zone lock) makes it."""
    saved = snapshots.read_state(up.state) if up.state else None
    specs = [peer.spec for peer in saved] if saved is not None else up.servers

    def change(cur):
        if cur is not None and not rebuild:
            return None
        # under mandatory health checks every peer new to the zone waits for its first probe, as
        # in NGINX Plus; a peer a reload keeps keeps its health (NGINX Plus's "persistent")
        new = snapshots.from_specs(specs, cur, zone.layout.slots, checking_new=up.mandatory, saved=saved)
        if up.state:
            snapshots.write_state(up.state, new)
        made.append(new)
        return new

    made = []
    zone.update(change)
    if made and saved is not None:
        log.log(NOTICE, 'upstream "%s": state file "%s" loaded, %d peer%s', up.name, up.state, len(saved),
                "" if len(saved) == 1 else "s")


@hookimpl
def ngxsim_init_master(runtime):
    """A new instance: each upstream's zone gets its first snapshot. A zone a reload keeps is left
    to ``ngxsim_reload_accepted``: the reload may still be rejected, and the running workers
    (and any respawned one) must go on with the running config's peers."""
    for up, zone in _upstream_zones(runtime):
        _first_snapshot(up, zone, rebuild=False)


@hookimpl
def ngxsim_reload_accepted(runtime):
    """A reload was accepted (``ngxsim -c``, before its workers start): a zone that was kept gets
    rebuilt from the state file or the new config's server lines, as nginx re-reads them."""
    for up, zone in _upstream_zones(runtime):
        if not zone.zone.fresh:
            _first_snapshot(up, zone, rebuild=True)


def _upstream_zones(runtime) -> list[tuple[UpstreamConf, UpstreamZone]]:
    conf = runtime.config.stash.get(NAME)
    return [(up, UpstreamZone(runtime.zone(up.zone))) for up in conf.upstreams.values()] if conf else []


@hookimpl
def ngxsim_init_worker(runtime):
    conf = runtime.config.stash.get(NAME)
    if not conf or not conf.upstreams:
        return
    st = state(runtime)
    for name, zone in st.zones.items():
        _first_snapshot(conf.upstreams[name], zone, rebuild=False)  # the master hook may run in a peer worker
        zone.claim_row(process_alive)
    st.reload_all()
    if conf.cluster:  # a new or respawned worker: what the other hosts said of their drains
        for event, data in sync.ring_events(runtime, conf.bus, ("peer_draining", "peer_drained")):
            _drain_event(st, conf, event, data)


@hookimpl
def ngxsim_exit_worker(runtime):
    st = runtime.stash.get(NAME)
    if st is not None:
        for zone in st.zones.values():
            zone.release_row()
        st.links.clear()


@hookimpl
def ngxsim_event_subscriptions(config):
    conf = config.stash.get(NAME)
    if not conf or not conf.bus or not conf.upstreams:
        return None
    return Subscription(conf.bus, (CHANNEL, HEALTH_CHANNEL))


@hookimpl
def ngxsim_event(runtime, event):
    conf = runtime.config.stash.get(NAME)
    if not conf or event.zone != conf.bus:
        return
    if event.channel == CHANNEL:
        if conf.cluster:
            _cluster_event(runtime, conf, event)
        if event.type == "snapshot_activated" and event.origin is None:
            name = _payload(event).get("upstream")
            if name in conf.upstreams:
                state(runtime).reload(name)
    elif event.channel == HEALTH_CHANNEL and event.type == "peer_transition":
        data = _payload(event)
        if data.get("upstream") in conf.upstreams and isinstance(data.get("peer"), int):
            state(runtime).refresh_health(data["upstream"], data["peer"])


@hookimpl
def ngxsim_event_gap(runtime, gap):
    """Events were lost: re-read every upstream's snapshot and health from its zone."""
    conf = runtime.config.stash.get(NAME)
    if conf and conf.upstreams and gap.zone == conf.bus:
        state(runtime).reload_all()


def _cluster_event(runtime, conf, event) -> None:
    """Cluster-wide upstreams: hand a change to the sync service (when it runs in this worker),
    wake the requests waiting for theirs, wake the service for a revision another host wrote, and
    keep what each host says of its drains."""
    data = _payload(event)
    st = state(runtime)
    service = runtime.stash.get(sync.STASH)
    if event.type == "change_requested" and event.origin is None:
        if service is not None and data.get("upstream") in conf.upstreams:
            service.take(data)
    elif event.type == "change_applied" and event.origin is None:
        if isinstance(data.get("change"), str):
            st.waiters.done(data["change"], data)
    elif event.type == "snapshot_activated" and event.origin is not None:
        if service is not None and data.get("upstream") in conf.upstreams and isinstance(data.get("revision"), int):
            service.revision_heard(data["upstream"], data["revision"])
    elif event.type in ("peer_draining", "peer_drained"):
        _drain_event(st, conf, event, data)


def _drain_event(st, conf, event, data: dict) -> None:
    if data.get("upstream") in conf.upstreams and isinstance(data.get("peer"), int):
        st.drain_heard(data["upstream"], data["peer"], event.origin, event.type == "peer_drained")


def _payload(event) -> dict:
    return sync.json_object(event.payload)


# -- public functions ----------------------------------------------------------------------------


@dataclass(frozen=True)
class PeerInfo:
    """One peer as other modules see it (``peers()``): frozen, and only what the public contract
    promises — the balancer's own ``Peer`` also carries its slot and smooth-WRR weights, which
    may change."""

    id: int
    server: str
    host: str
    port: int
    weight: int
    max_fails: int
    fail_timeout: float
    backup: bool
    down: bool
    drain: bool


def location_upstream(location) -> str | None:
    """The upstream group a location's ``proxy_pass`` names (None: no group)."""
    spec = location.get("proxy_pass")
    return spec.upstream if spec is not None else None


def upstream_names(config) -> list[str]:
    conf = config.stash.get(NAME)
    return list(conf.upstreams) if conf else []


def require_health_checks(config, upstream: str, mandatory: bool, where=None) -> None:
    """Health checks watch ``upstream`` (called by healthchecks at load time). With ``mandatory``
    a peer added at run time takes no traffic until it is reported healthy."""
    conf = config.stash.get(NAME)
    if conf is None or upstream not in conf.upstreams:
        message = f'upstream "{upstream}" is not defined (or "load_module upstreams;" comes after the module that checks it)'
        raise where.error(message) if where is not None else ConfigError(message)
    up = conf.upstreams[upstream]
    up.health_checked = True
    up.mandatory = up.mandatory or mandatory


def peers(runtime, upstream: str) -> list[PeerInfo]:
    """The peers of ``upstream``'s current snapshot, read from its zone."""
    data = state(runtime).zone(upstream).read_snapshot() or {"peers": []}
    names = [f.name for f in fields(PeerInfo)]
    return [PeerInfo(**{name: getattr(peer, name) for name in names}) for peer in map(Peer.from_json, data["peers"])]


def set_peer_health(runtime, upstream: str, peer_id: int, healthy: bool, fails: int = 0, passes: int = 0) -> bool:
    """Record what a health check found for a peer. Every worker routes by it once it delivers
    the ``peer_transition`` event the caller publishes next (this worker: at once). False when the
    peer is gone."""
    st = state(runtime)
    data = st.zone(upstream).read_snapshot() or {"peers": []}
    for p in data["peers"]:
        if p["id"] == peer_id:
            ok = st.zone(upstream).set_health(p["slot"], peer_id, HEALTH_UP if healthy else HEALTH_DOWN, fails, passes,
                                              time.time())
            st.refresh_health(upstream, peer_id)
            return ok
    return False


__all__ = ["CHANNEL", "HEALTH_CHANNEL", "PeerInfo", "location_upstream", "peers", "require_health_checks",
           "set_peer_health", "upstream_names", "HEALTH_CHECKING"]
