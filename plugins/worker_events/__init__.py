"""worker_events: a shared-memory event ring that every worker of a server sees.

- directives: ``worker_events_api``, ``worker_events_zone NAME [SIZE]``,
  ``worker_events_channel``, ``worker_events_ring_size``, ``worker_events_publish_key``;
- ``ngxsim_publish``: any module publishes through it (``runtime.publish(...)``);
- a JSON API on the locations that say ``worker_events_api`` (see ``api.py``);
- in every worker a dispatcher delivers each event to the modules' ``ngxsim_event`` hooks
  (see ``dispatcher.py``);
- ``ngxsim_status``: each ring's fill, counters and per-worker lag (see ``status.py``);
- public functions for a module that carries events between instances (the cluster bridge):
  ``publish_remote``, ``publish_remote_gap``, ``events_after``, ``ring_birth``,
  ``add_zone_view`` (see docs/worker_events.md, "For a bridge").

See docs/worker_events.md for the user's guide.
"""

from __future__ import annotations

import contextlib

import sys
import time
from dataclasses import dataclass

from ngxsim import (
    FLAG, HTTP, LOCATION, MAX_ZONE_SIZE, SERVER, TIME, Directive, OutOfRange, hookimpl, parse_number, parse_size, register_secret_arg,
)
from ngxsim import ZONE_HEADER_SIZE as HEADER_SIZE

from .api import WorkerEventsApi
from .dispatcher import REMOTE_GAP_CHANNEL, Dispatcher, collect_subscribers
from .ring import CHANNEL_MAX, LAYOUT_VERSION, MAX_CAPACITY, ORIGIN_MAX, Ring, Scan, encode_event, ring_bytes
from .state import NAME, State, state
from .status import ring_status

DEFAULT_RING_SIZE = 1024
# GET needs no key: one answer holds at most this many events (a client pages on with since)
DEFAULT_PAGE_SIZE = 1000
MAX_PAGE_SIZE = 10_000
# Python's default is 5 ms: a worker whose Python is busy would hand the GIL to its dispatcher
# only that often. 1 ms bounds the delay at a cost nobody measures: the interval only matters
# while a second thread waits for the GIL.
DEFAULT_SWITCH_INTERVAL = 0.001


def _parse_zone(args: list[str]) -> tuple[str, int | None]:
    name = args[0]
    if len(args) == 1:
        return (name, None)
    try:
        return (name, parse_size(args[1], 1, MAX_ZONE_SIZE))
    except OutOfRange as exc:
        raise ValueError(f'invalid zone size "{args[1]}" in "worker_events_zone" directive: {exc}') from None
    except ValueError:
        raise ValueError(f'invalid zone size "{args[1]}" in "worker_events_zone" directive') from None


def _parse_ring_size(args: list[str]) -> int:
    try:
        return parse_number(args[0], 1, MAX_CAPACITY)
    except ValueError:
        raise ValueError(f'"worker_events_ring_size" must be a number of entries from 1 to {MAX_CAPACITY}, not "{args[0]}"') from None


def _parse_page_size(args: list[str]) -> int:
    try:  # ASCII digits only, and no int() of thousands of digits
        return parse_number(args[0], 1, MAX_PAGE_SIZE)
    except ValueError:
        raise ValueError(f'"worker_events_page_size" must be a number of events from 1 to {MAX_PAGE_SIZE}, not "{args[0]}"') from None


def _parse_channel(args: list[str]) -> str:
    channel = args[0]
    size = len(channel.encode())
    if not channel or size > CHANNEL_MAX:
        raise ValueError(f'"worker_events_channel" must be 1 to {CHANNEL_MAX} bytes of UTF-8, not {size}')
    return channel


def _parse_long_poll_limit(args: list[str]) -> int | None:
    if args[0] == "auto":
        return None
    try:
        return parse_number(args[0], 0, 1024)
    except ValueError:
        raise ValueError(f'"worker_events_long_poll_limit" must be "auto" or a number from 0 to 1024, not "{args[0]}"') from None


def _parse_key(args: list[str]) -> str:
    if not args[0]:
        raise ValueError('"worker_events_publish_key" must not be empty')
    return args[0]


@hookimpl
def ngxsim_directives(register):
    levels = (HTTP, SERVER, LOCATION)
    register(Directive("worker_events_api", (LOCATION,), 0, type=FLAG, default=False, inherit=False,
                       doc="this location is the publish/inspect endpoint"))
    register(Directive("worker_events_zone", levels, (1, 2), parse=_parse_zone,
                       doc="`NAME [SIZE]`: the zone holding the ring (sized to fit when SIZE is omitted)"))
    register(Directive("worker_events_channel", (LOCATION,), 1, parse=_parse_channel,
                       doc="channel every event published through this endpoint is tagged with"))
    register(Directive("worker_events_ring_size", levels, 1, parse=_parse_ring_size, default=DEFAULT_RING_SIZE,
                       doc="ring capacity in entries"))
    register(Directive("worker_events_page_size", levels, 1, parse=_parse_page_size, default=DEFAULT_PAGE_SIZE,
                       doc="most events one GET answers (the default and the cap of ?limit)"))
    register(Directive("worker_events_publish_key", (LOCATION,), 1, parse=_parse_key,
                       doc="POST needs ?key=SECRET"))
    register(Directive("worker_events_long_poll_limit", levels, 1, parse=_parse_long_poll_limit, default=None,
                       doc="`N|auto`: a long-poll here waits only while fewer than N long-polls (of any location) "
                           "wait in its worker; past it the answer is 503 at once. auto: threads - 1 (1 for sync)"))
    register(Directive("worker_events_gil_switch_interval", (HTTP,), 1, type=TIME, default=DEFAULT_SWITCH_INTERVAL,
                       range=(0, 1),
                       doc="Python's GIL switch interval in workers whose modules listen to events "
                           "(bounds how long a busy worker delays its dispatcher); 0 keeps Python's"))


@dataclass
class _ZonePlan:
    capacity: int
    size: int | None
    where_capacity: object
    where_size: object = None


@hookimpl
def ngxsim_postconfiguration(config):
    """Check the API locations, and declare one zone per ring name with the size it needs."""
    plans: dict[str, _ZonePlan] = {}
    for block in config.main.walk():
        api = bool(block.get("worker_events_api"))
        if api:
            for needed in ("worker_events_zone", "worker_events_channel"):
                if not block.is_set(needed):
                    raise block.error("worker_events_api", f'"worker_events_api" requires "{needed}"')
            if block.get("worker_events_publish_key"):
                register_secret_arg(config, "key")
        if not (api or "worker_events_zone" in block.own):
            continue
        name, size = block["worker_events_zone"]
        capacity = block["worker_events_ring_size"]
        where_cap = block.where_of("worker_events_ring_size") or block.where_of("worker_events_zone")
        plan = plans.setdefault(name, _ZonePlan(capacity, None, where_cap))
        if plan.capacity != capacity:
            first = plan.where_capacity
            raise block.error(
                "worker_events_ring_size",
                f'zone "{name}" is used with ring size {capacity} here and with {plan.capacity} at {first.file}:{first.line}',
            )
        if size is not None:
            if plan.size is not None and plan.size != size:
                raise block.error("worker_events_zone", f'zone "{name}" is given size {size} here and {plan.size} elsewhere')
            plan.size, plan.where_size = size, block.where_of("worker_events_zone")
    for name, plan in plans.items():
        needed = HEADER_SIZE + ring_bytes(plan.capacity)
        if plan.size is not None and plan.size < needed:
            raise plan.where_size.error(
                f'zone "{name}" is too small for a ring of {plan.capacity} entries: {needed} bytes needed, {plan.size} given'
            )
        config.zones.declare(name, plan.size or needed, owner=NAME, where=plan.where_size or plan.where_capacity,
                             tag=f"{NAME} v{LAYOUT_VERSION} capacity={plan.capacity}")
    config.stash[NAME] = {name: plan.capacity for name, plan in plans.items()}


@hookimpl
def ngxsim_content_handler(location, config):
    if location["worker_events_api"]:
        return WorkerEventsApi(location, config).handle
    return None


@hookimpl
def ngxsim_publish(runtime, zone, channel, type, payload):
    st = state(runtime)
    ring = st.rings.get(zone)
    if ring is None:
        raise ValueError(f'unknown worker_events zone "{zone}"')
    generation = ring.publish_text(channel, type, payload)
    dispatcher = st.dispatchers.get(zone)
    if dispatcher is not None:  # this worker's subscribers see it before the publish returns
        dispatcher.deliver_own(generation)
    return generation


@hookimpl
def ngxsim_init_worker(runtime):
    st = state(runtime)
    subscribers = collect_subscribers(runtime.config)
    for name, ring in st.rings.items():
        dispatcher = Dispatcher(runtime, ring, subscribers)
        st.dispatchers[name] = dispatcher
        if dispatcher.active:
            dispatcher.start()
            runtime.on_request_start.append(dispatcher.drain)
    interval = _switch_interval(runtime.config)
    if interval and any(d.active for d in st.dispatchers.values()):
        sys.setswitchinterval(interval)


def _switch_interval(config) -> float:
    http = config.blocks(HTTP)
    return http[0]["worker_events_gil_switch_interval"] if http else DEFAULT_SWITCH_INTERVAL


@hookimpl
def ngxsim_worker_stopping(runtime, fast):
    """Ring every ring's doorbell: a long-poll waiting in this worker wakes, sees
    ``runtime.stopping`` and answers with what it has (the others' waiters see nothing new and
    sleep on)."""
    st = runtime.stash.get(NAME)
    if st is not None:
        for ring in st.rings.values():
            ring.zone.doorbell.ring()


@hookimpl
def ngxsim_status(runtime):
    """Each ring: fill, generations, dropped events, and every worker's delivery lag."""
    rings = state(runtime).rings
    return {"rings": {name: ring_status(ring) | zone_views(runtime, name) for name, ring in rings.items()}} if rings else None


@hookimpl
def ngxsim_exit_worker(runtime):
    st = runtime.stash.get(NAME)
    if st is not None:
        for dispatcher in st.dispatchers.values():
            dispatcher.stop()
        st.dispatchers.clear()


# -- public functions for a bridge between instances (docs/worker_events.md, "For a bridge") ----


def _ring(runtime, zone: str) -> Ring:
    ring = state(runtime).rings.get(zone)
    if ring is None:
        raise ValueError(f'unknown worker_events zone "{zone}"')
    return ring


def _deliver_here(runtime, zone: str, generation: int) -> None:
    dispatcher = state(runtime).dispatchers.get(zone)
    if dispatcher is not None:
        dispatcher.deliver_own(generation)


def publish_remote(runtime, zone: str, channel: str, type: str, payload: str, *, origin: str,
                   origin_generation: int, timestamp_msec: int) -> int:
    """Append an event that another instance published (``origin``, its id, and
    ``origin_generation``, its number there) to ``zone``'s ring: every worker's modules get it
    through ``ngxsim_event`` like a local one, with ``event.origin`` set. Returns its local
    generation; ValueError names a field that is wrong (the limits of a publish, and an origin of
    1 to 64 bytes). De-duplicating is the caller's business."""
    fields = encode_event(channel, type, payload)
    origin_bytes = origin.encode("utf-8", "strict") if isinstance(origin, str) else b""
    if not 0 < len(origin_bytes) <= ORIGIN_MAX:
        raise ValueError(f'"origin" must be 1 to {ORIGIN_MAX} bytes of UTF-8')
    generation = _ring(runtime, zone).publish(*fields, timestamp_msec, origin_bytes, origin_generation)
    _deliver_here(runtime, zone, generation)
    return generation


def publish_remote_gap(runtime, zone: str, *, origin: str, first: int, last: int) -> int:
    """Tell every worker's modules (``ngxsim_event_gap``, with ``gap.origin``) that events
    ``first`` to ``last`` of instance ``origin`` were lost on their way here (``origin`` ``"*"``:
    the engine dropped ``last - first + 1`` entries of unknown origins). Travels through the ring
    as an entry on channel ``@gap`` (shown by the API, never delivered as an event). Returns its
    generation."""
    if not 0 < first <= last:
        raise ValueError("a gap is first..last with 0 < first <= last")
    return publish_remote(runtime, zone, REMOTE_GAP_CHANNEL, "gap", f"{first}-{last}", origin=origin,
                          origin_generation=last, timestamp_msec=int(time.time() * 1000))


def events_after(runtime, zone: str, generation: int, limit: int = 512) -> Scan:
    """Events of ``zone`` after ``generation``, oldest first, at most ``limit``: a ``Scan`` with
    ``events``, ``newest``, ``oldest`` and ``missed`` (generations after ``generation`` the ring
    no longer holds: they precede the first event returned)."""
    return _ring(runtime, zone).scan(since=generation, limit=limit)


def ring_birth(runtime, zone: str) -> int:
    """When ``zone``'s ring was made, in µs since the epoch: the same in every process while the
    zone lives, a later one after the instance restarted (its generations start at 1 again)."""
    return _ring(runtime, zone).birth_usec


def ring_capacity(runtime, zone: str) -> int:
    """How many events ``zone``'s ring holds before it overwrites the oldest."""
    return _ring(runtime, zone).capacity


VIEWS = "worker_events.views"


def add_zone_view(config, zone: str, name: str, view) -> None:
    """Show ``view(runtime)`` (a dict, or None to show nothing) under key ``name`` in the
    worker_events API answer of ``zone`` and in its ``ngxsim_status`` entry. Call it in
    ``ngxsim_postconfiguration`` (the cluster bridge shows its view of the cluster this way)."""
    config.stash.setdefault(VIEWS, {}).setdefault(zone, []).append((name, view))


def zone_views(runtime, zone: str) -> dict:
    """What the views added for ``zone`` show now (a view that fails shows its error)."""
    out = {}
    for name, view in runtime.config.stash.get(VIEWS, {}).get(zone, ()):
        try:
            value = view(runtime)
        except Exception as exc:
            value = {"error": f"{type(exc).__name__}: {exc}"}
        if value is not None:
            out[name] = value
    return out


def wait_for_events(runtime, zone: str, after: int, timeout: float, *, registered: bool = False) -> int:
    """Block (on the zone's doorbell: no polling) until ``zone`` has a generation after
    ``after`` or ``timeout`` seconds pass; returns the newest generation. ``registered``: the
    caller waits inside ``events_waiter(runtime, zone)`` (a loop that waits again and again),
    so a wait takes no lock the publishers take."""
    ring = _ring(runtime, zone)
    bell = ring.zone.doorbell
    seen = bell.value
    newest = ring.newest
    if newest <= after:
        bell.wait(seen, timeout, registered=registered)
        newest = ring.newest
    return newest


@contextlib.contextmanager
def events_waiter(runtime, zone: str):
    """For a loop that waits on ``zone`` for as long as it runs (a bridge's relay): counted
    once as a sleeper on the zone's doorbell, it waits with ``wait_for_events(...,
    registered=True)``. An uncounted wait counts itself and uncounts itself under the zone's
    lock, which every publish takes: a waiter that then lost its CPU to a busier process held
    the publishers up."""
    bell = _ring(runtime, zone).zone.doorbell
    bell.register()
    try:
        yield
    finally:
        bell.unregister()


__all__ = ["Ring", "State", "state", "publish_remote", "publish_remote_gap", "events_after", "ring_birth", "ring_capacity",
           "wait_for_events", "events_waiter", "add_zone_view", "zone_views", "REMOTE_GAP_CHANNEL"]
