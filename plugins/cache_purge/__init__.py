"""cache_purge: a two-level response cache, a purge API, and purge events that reach every worker.

Each worker keeps its hottest responses in its own memory (no IPC on a hit) in front of one
shared level on disk under ``proxy_cache_path`` (diskcache) that every worker sees and that
survives a restart. A purge (the JSON API of a ``cache_purge_api`` location, or the ``PURGE``
method where ``proxy_cache_purge`` allows it) removes entries from the shared level and
publishes ``purged``/``purge_batch`` on channel ``cache.invalidate`` of the http-level
``worker_events_zone``; every worker drops them from its memory on delivery (all of it on a
``Gap``). Once a purge has answered, no worker serves the purged content from either level. A
store over a copy workers may hold (a ``proxy_cache_bypass`` refresh) publishes ``refreshed``,
which every worker applies the same way.

It works only through the core's hooks: ``ngxsim_precontent_handler`` (hits, ``PURGE``),
``ngxsim_body_filter`` (keeping a copy of a response as it streams), ``ngxsim_variables``
(``$upstream_cache_status``) and the event hooks. See docs/cache_purge.md.
"""

from __future__ import annotations

import logging

from ngxsim import LOCATION, ApiSection, Subscription, Variable, hookimpl, http_event_zone, register_secret_arg

from .api import PurgeApi
from .cache import CHANNEL, apply_event, drop_all, start, state
from .conf import DIRECTIVES, NAME, cache_paths, check_api, check_location
from .handlers import STATUS, CachedLocation
from . import lock, stats
from .levels import EPOCH_ZONE_SIZE, ZONE_TAG, SharedLevel
from .storage import StorageError

log = logging.getLogger("ngxsim.cache_purge")
# how often the cache manager (one worker of the instance) expires and culls the shared level
MANAGER_MIN, MANAGER_MAX = 0.1, 10.0


@hookimpl
def ngxsim_directives(register):
    for directive in DIRECTIVES:
        register(directive)


@hookimpl
def ngxsim_variables(register):
    register(Variable(STATUS, lambda ctx: ctx.vars.get(STATUS, "")))


@hookimpl
def ngxsim_postconfiguration(config):
    caches = cache_paths(config)
    bus = http_event_zone(config, NAME) if caches else None
    for zone, (spec, stmt) in caches.items():
        # the keys zone: the purge epoch every worker's stores check (see levels.py)
        config.zones.declare(zone, EPOCH_ZONE_SIZE, owner=NAME, where=stmt, tag=ZONE_TAG, configured=spec.zone_size)
        config.jobs.declare(f"{NAME}.manager.{zone}", min(MANAGER_MAX, max(MANAGER_MIN, spec.inactive / 4)),
                            _manager(zone), owner=NAME, where=stmt)
    specs = {zone: spec for zone, (spec, _) in caches.items()}
    cached = [(location, check_location(location, specs)) for location in config.blocks(LOCATION)
              if location["cache_purge_api"] is None]
    locked = sorted({spec.zone for location, spec in cached if spec is not None
                     and (location["proxy_cache_lock"] or location["proxy_cache_min_uses"] > 1
                          or "updating" in location["proxy_cache_use_stale"])})
    for zone in locked:  # the keys' records: proxy_cache_lock, proxy_cache_min_uses (lock.py)
        config.zones.declare(lock.zone_name(zone), lock.zone_size(), owner=NAME, where=caches[zone][1],
                             tag=f"{NAME} keys v1")
    lock_zones = tuple(lock.zone_name(zone) for zone in locked)
    for location in config.blocks(LOCATION):
        api = check_api(location, specs)
        if api is not None:
            if location["cache_purge_key"] is not None:
                register_secret_arg(config, "key")
            location.stash[f"{NAME}.api"] = PurgeApi(location, api)
            continue  # the API's own answers are never cached
        spec = check_location(location, specs)
        if spec is not None:
            location.stash[NAME] = CachedLocation(location, spec, config, lock_zones)
    config.stash[NAME] = {"caches": specs, "bus": bus, "bridged": bool(bus) and _bridged(config, bus)}


def _bridged(config, bus: str) -> bool:
    """Does channel cache.invalidate of ``bus`` cross hosts (``cluster_bridge``)?"""
    if "cluster" not in config.module_names():
        return False
    from ngxsim_plugins.cluster import is_bridged

    return is_bridged(config, bus, CHANNEL)


def _manager(zone: str):
    def run(runtime):  # nginx's cache manager: one worker of the instance at a time
        cache = state(runtime).caches[zone]
        try:
            cache.shared.manage()
        except StorageError as error:
            cache.report(error, "writing", "expiring entries")

    return run


@hookimpl
def ngxsim_content_handler(location, config):
    api = location.stash.get(f"{NAME}.api")
    return api.handle if api is not None else None


@hookimpl
def ngxsim_precontent_handler(location, config):
    cached = location.stash.get(NAME)
    return cached.precontent if cached is not None else None


@hookimpl
def ngxsim_body_filter(location, config):
    cached = location.stash.get(NAME)
    return cached.body_filter if cached is not None else None


@hookimpl
def ngxsim_init_master(runtime):
    plan = runtime.config.stash.get(NAME)
    for spec in (plan["caches"].values() if plan else ()):
        try:
            SharedLevel.prepare(spec)
        except StorageError as error:  # nginx starts too; its cache loader fails later, and so do stores
            log.critical('[crit] cache_purge: creating the databases of cache "%s" failed: %s; the cache stores '
                         "nothing until they can be made", spec.zone, error)


@hookimpl
def ngxsim_init_worker(runtime):
    start(runtime)


@hookimpl
def ngxsim_exit_worker(runtime):
    st = runtime.stash.get(NAME)
    if st is not None:
        for cache in st.caches.values():
            cache.close()


@hookimpl
def ngxsim_event_subscriptions(config):
    plan = config.stash.get(NAME)
    bus = plan["bus"] if plan else None
    # no cache, no bus: an empty list subscribes to nothing (None would mean every channel)
    return Subscription(bus, channels=(CHANNEL,)) if bus else []


@hookimpl
def ngxsim_event(runtime, event):
    if event.channel == CHANNEL:
        apply_event(runtime, event)


@hookimpl
def ngxsim_event_gap(runtime, gap):
    drop_all(runtime, gap)


__all__ = ["CHANNEL"]


@hookimpl
def ngxsim_api_sections(config):
    """NGINX Plus's ``http/caches`` in the core's ``api`` location: each keys zone's size and its
    responses and bytes by cache status, the instance's counts."""
    plan = config.stash.get(NAME)
    if not plan or not plan["caches"]:
        return None

    def caches(request):
        st = state(request.runtime)
        out = {}
        for zone, cache in st.caches.items():
            spec = plan["caches"][zone]
            out[zone] = {"size": cache.shared.disk.volume(), "max_size": spec.max_size or 0, "cold": False,
                         **stats.read(request.runtime.zone(zone))}
        return out

    return ApiSection("http/caches", caches)


@hookimpl
def ngxsim_status(runtime):
    """Each cache at a glance (``ngxsim status``, the status page): its size and hit ratio, the
    instance's counts."""
    plan = runtime.config.stash.get(NAME)
    if not plan or not plan["caches"]:
        return None
    out = {}
    for zone, cache in state(runtime).caches.items():
        counts = stats.read(runtime.zone(zone))
        answered = sum(counts[k]["responses"] for k in ("hit", "stale", "miss", "expired", "bypass"))
        hits = counts["hit"]["responses"]
        out[zone] = {"size": cache.shared.disk.volume(), "hits": hits, "misses": counts["miss"]["responses"],
                     "expired": counts["expired"]["responses"], "bypassed": counts["bypass"]["responses"],
                     "hit_ratio": round(hits / answered, 3) if answered else None}
    return {"caches": out}
