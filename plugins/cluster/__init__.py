"""cluster: worker_events bridged across hosts through Redis Streams or NATS JetStream.

- ``cluster_bridge ZONE URL channels=... state=DIR [...]`` (http level, see ``config.py``):
  the events of ZONE's bridged channels, published on any instance of the cluster, reach every
  worker of every instance through ``ngxsim_event``;
- one relay per bridged zone per instance, a service under the instance-wide lease
  (``relay.py``), the only thing that talks to the engine;
- its view of the cluster in the worker_events API answer of the zone and in ``ngxsim_status``
  (``view.py``).

For other modules (docs/cluster.md, "For modules"): ``bridge_of(config, zone)``,
``is_bridged(config, zone, channel)`` and ``store(runtime, zone)`` (the cluster's key-value
store and leases, for instance-wide jobs and services only); they never touch an engine.

Uses only ngxsim's public API and worker_events' public functions (``publish_remote``,
``events_after``, ...). See docs/cluster.md.
"""

from __future__ import annotations

from ngxsim import HTTP, Directive, hookimpl

from .config import Bridge, default_instance, parse_bridge
from .engine import Conflict, EngineError
from .kv import BridgeInfo, ClusterStore, store_for
from .view import VIEW_SIZE, View

NAME = "cluster"
LEASE = 2.0


@hookimpl
def ngxsim_directives(register):
    register(Directive("cluster_bridge", (HTTP,), (2, None), parse=parse_bridge, multiple=True,
                       doc="`ZONE URL channels=A,B|* state=DIR [stream=NAME] [instance=ID] [retention=N] "
                           "[password_file=PATH] [timeout=TIME] [tls_ca=PATH] [tls_cert=PATH tls_key=PATH] [relay_nice=N]`: bridge event zone ZONE to the engine at URL "
                           "(redis://, rediss://, nats://)"))


def view_zone(zone: str) -> str:
    return f"cluster.{zone}"[:64]


@hookimpl(trylast=True)  # after worker_events declared its zones
def ngxsim_postconfiguration(config):
    http = config.blocks(HTTP)
    if not http or "cluster_bridge" not in http[0].own:
        return
    block = http[0]
    bridges: list[Bridge] = block.own["cluster_bridge"]
    wheres = block.where_each["cluster_bridge"]
    event_zones = config.stash.get("worker_events")
    if event_zones is None:
        raise wheres[0].error('"cluster_bridge" needs the worker_events module: add "load_module worker_events;"')
    from ngxsim_plugins.worker_events import add_zone_view

    planned: dict[str, dict] = {}
    for bridge, where in zip(bridges, wheres):
        if bridge.zone not in event_zones:
            known = ", ".join(f'"{z}"' for z in sorted(event_zones)) or "none"
            raise where.error(f'unknown event zone "{bridge.zone}" in "cluster_bridge" directive (declared with '
                              f'"worker_events_zone": {known})')
        if bridge.zone in planned:
            raise where.error(f'zone "{bridge.zone}" is bridged twice in "cluster_bridge" directive')
        instance = bridge.instance or default_instance(config)
        planned[bridge.zone] = {"bridge": bridge, "instance": instance}
        config.zones.declare(view_zone(bridge.zone), VIEW_SIZE, owner=NAME, where=where, tag=f"{NAME} view v1")
        # in a process of its own, below the workers' priority: none of its work is taken from
        # a worker's requests (docs/cluster.md, "The relay's own process")
        config.jobs.declare_service(f"cluster.relay.{bridge.zone}", _relay_service(bridge.zone), owner=NAME,
                                    where=where, lease=LEASE, process=True, nice=bridge.relay_nice)
        add_zone_view(config, bridge.zone, "cluster", _view_of(bridge.zone))
    config.stash[NAME] = planned


def _plan(config, zone: str) -> dict | None:
    """{"bridge", "instance"} of ``zone``'s bridge, or None; from the loaded configuration, or,
    before the cluster module's postconfiguration ran, from its directives."""
    planned = config.stash.get(NAME)
    if planned is not None:
        return planned.get(zone)
    http = config.blocks(HTTP)
    for bridge in (http[0].own.get("cluster_bridge") or []) if http else ():
        if bridge.zone == zone:
            return {"bridge": bridge, "instance": bridge.instance or default_instance(config)}
    return None


def bridge_of(config, zone: str) -> BridgeInfo | None:
    """What the cluster bridge of event zone ``zone`` is (this instance's id, the channels
    bridged, the stream, the engine's URL without credentials), or None: ``zone`` is not
    bridged (or the cluster module is not loaded)."""
    plan = _plan(config, zone)
    if plan is None:
        return None
    b = plan["bridge"]
    return BridgeInfo(plan["instance"], b.channels, b.stream, b.engine)


def is_bridged(config, zone: str, channel: str) -> bool:
    """Is an event published on ``channel`` of ``zone`` sent to the other instances?"""
    plan = _plan(config, zone)
    return plan is not None and plan["bridge"].bridges(channel)


def store(runtime, zone: str) -> ClusterStore:
    """The key-value store (with leases) of ``zone``'s cluster, as this instance: one per process,
    connected on its first call. **For instance-wide jobs and services only**, never from a
    request (a request must not wait on an engine): raises RuntimeError when called while a
    request is served, ValueError when ``zone`` is not bridged."""
    plan = _plan(runtime.config, zone)
    if plan is None:
        raise ValueError(f'event zone "{zone}" is not bridged (no "cluster_bridge {zone} ..." in the configuration)')
    return store_for(plan["bridge"], plan["instance"])


def _relay_service(zone: str):
    def run(runtime, lease):
        from .relay import Relay

        plan = runtime.config.stash[NAME][zone]
        Relay(runtime, plan["bridge"], plan["instance"], view_zone(zone), lease).run()

    return run


def _view_of(zone: str):
    def view(runtime) -> dict:
        plan = runtime.config.stash[NAME][zone]
        doc = View(runtime.zone(view_zone(zone))).read()
        if doc is None:  # no relay has run yet
            bridge = plan["bridge"]
            return {"engine": bridge.engine, "stream": bridge.stream, "instance": plan["instance"],
                    "connected": False, "relay_pid": None, "instances": []}
        # the instances as rows (a table in ``ngxsim status``), the most recently seen first
        doc["instances"] = sorted(({"instance": name, **info} for name, info in doc.get("instances", {}).items()),
                                  key=lambda row: -row.get("last_seen_msec", 0))
        return doc

    return view


__all__ = ["Bridge", "BridgeInfo", "ClusterStore", "Conflict", "EngineError", "bridge_of", "is_bridged",
           "parse_bridge", "store"]
