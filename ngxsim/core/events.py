"""The value types of the event hooks (see ``hookspecs.py``, events group)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import NamedTuple


class Event(NamedTuple):
    """One published event as stored in a zone's ring (a named tuple: readers make many).

    - ``generation``: its place in the zone's global order (1, 2, 3...; never reused);
    - ``zone``: the worker_events zone it was published into;
    - ``channel``: the channel it was published on (at most 64 bytes of UTF-8);
    - ``type``: what happened (at most 64 bytes, never empty);
    - ``payload``: the data (at most 512 bytes; structured payloads are compact JSON);
    - ``timestamp_msec``: when it was published, in milliseconds since the epoch (at its origin);
    - ``origin``: None for an event published on this instance; for one relayed from another
      instance of a cluster (see docs/cluster.md), that instance's id;
    - ``origin_generation``: None for a local event; for a remote one its number at its origin
      (increasing per origin, also across the origin's restarts: what de-duplicates it).
    """

    generation: int
    zone: str
    channel: str
    type: str
    payload: str
    timestamp_msec: int
    origin: str | None = None
    origin_generation: int | None = None

    def as_json(self) -> dict:
        """The event's JSON form in the HTTP API (the zone is implied by the endpoint)."""
        return {
            "generation": self.generation,
            "channel": self.channel,
            "type": self.type,
            "payload": self.payload,
            "timestamp_msec": self.timestamp_msec,
            "origin": self.origin,
            "origin_generation": self.origin_generation,
        }


@dataclass(frozen=True)
class Gap:
    """Generations ``first`` to ``last`` of ``zone`` were overwritten before this worker read them.

    ``origin`` None: a local gap (generations of this instance's ring). Otherwise events of
    another instance of the cluster were lost on their way here (its ring overflowed before its
    relay read them, or the engine dropped them before this instance read them): ``first`` to
    ``last`` are origin generations of instance ``origin`` (some of them may have been on
    channels that are not bridged), or ``origin`` is ``"*"`` when the engine could not say whose
    (``count`` then is how many entries the engine dropped).
    """

    zone: str
    first: int
    last: int
    origin: str | None = None

    @property
    def count(self) -> int:
        """How many events were lost."""
        return self.last - self.first + 1

    def as_json(self) -> dict:
        """The gap's JSON form: ``zone``, ``first``, ``last``, ``origin``, ``count``."""
        return asdict(self) | {"count": self.count}


@dataclass(frozen=True)
class Subscription:
    """What a module wants to hear: a zone, some channels (None: all), and whether a worker that
    starts replays what the ring still holds (otherwise it begins at the newest generation).

    With ``once=True`` each event of the subscription is handled by **one** worker of the
    instance instead of every worker (an audit log, a job to run once per event): the first
    worker to deliver a generation claims it in shared memory (a watermark per zone and module,
    under a lock the kernel releases if its holder dies), the others skip it. At most once: a
    worker killed between its claim and its handler loses that event."""

    zone: str
    channels: tuple[str, ...] | None = None
    replay: bool = False
    once: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.channels, str):
            object.__setattr__(self, "channels", (self.channels,))
        elif self.channels is not None:
            object.__setattr__(self, "channels", tuple(self.channels))


def collect_subscriptions(config, loaded_at: dict) -> dict[str, "list[Subscription] | None"]:
    """Each event listener's subscriptions (module -> list, or None: every zone), checked.

    Called once per config load, after every module's postconfiguration (so the zones are all
    declared). A subscription nothing would ever deliver, or a ``config.publishes(zone, ...)``
    that would fail at the first publish, fails the load with the fix: no loaded module
    publishes events (``load_module worker_events;`` missing), or the zone is not one a
    publishing module declared. A module that listens to every zone while nothing publishes
    gets a warning: it may well work without events. ``loaded_at`` maps a module to its
    ``load_module`` line, where the error points.
    """
    from .conf.errors import ConfigError
    from .modules import call_impl

    hook = config.pm.hook

    def fail(module: str, message: str) -> ConfigError:
        where = loaded_at.get(module)
        return where.error(message) if where else ConfigError(message)

    publishers = {impl.plugin_name for impl in hook.ngxsim_publish.get_hookimpls()}
    event_zones = sorted(spec.name for spec in config.zones if spec.owner in publishers)
    consequence = {"subscribes to": "so nothing would be delivered", "publishes into": "so every publish would fail"}

    def check_zone(zone: str, module: str, verb: str, where=None) -> None:
        if not publishers:
            message = (f'module "{module}" {verb} zone "{zone}", but no loaded module publishes events: '
                       f'add "load_module worker_events;" and "worker_events_zone {zone};"')
        elif zone not in event_zones:
            known = ", ".join(f'"{z}"' for z in event_zones) or "none"
            message = (f'module "{module}" {verb} zone "{zone}", which is no event zone (declared: {known}), '
                       f'{consequence[verb]}: declare it with "worker_events_zone {zone};" or use one of those')
        else:
            return
        raise where.error(message) if where is not None else fail(module, message)

    for zone, module, where in config.publications:
        check_zone(zone, module, "publishes into", where)
    wanted: dict[str, list[Subscription] | None] = {}
    for impl in hook.ngxsim_event_subscriptions.get_hookimpls():
        result = call_impl(impl, config=config)
        if result is None:
            continue
        items = [result] if isinstance(result, Subscription) else result
        if not isinstance(items, (list, tuple)) or not all(isinstance(i, Subscription) for i in items):
            raise fail(impl.plugin_name, f'module "{impl.plugin_name}" (ngxsim_event_subscriptions): returned '
                                         f'{str(result)[:80]}; return a Subscription, a list of them, or None')
        wanted[impl.plugin_name] = list(items)
        for sub in items:
            check_zone(sub.zone, impl.plugin_name, "subscribes to")
    listeners = {impl.plugin_name for caller in (hook.ngxsim_event, hook.ngxsim_event_gap)
                 for impl in caller.get_hookimpls()}
    out: dict[str, list[Subscription] | None] = {}
    for name in config.module_names():
        if name in listeners:
            out[name] = wanted.get(name)
            if out[name] is None and not publishers:
                config.warnings.append(f'module "{name}" listens to events (ngxsim_event) but no loaded module '
                                       f'publishes any, so it hears none: add "load_module worker_events;"'
                                       + (f" in {loaded_at[name].file}:{loaded_at[name].line}" if name in loaded_at else ""))
    return out


def http_event_zone(config, module: str, subscribes: bool = False) -> str | None:
    """The zone of the http-level ``worker_events_zone`` that consumer modules publish into.

    Every first-party consumer (upstreams, cache_purge, healthchecks) publishes into this one bus.
    Fails the load with the fix when the bus is missing: no module declares the directive
    (``load_module worker_events;`` missing) or the http block does not set it; the message says
    the module publishes, or with ``subscribes=True`` (a module that only listens, from its
    ``ngxsim_event_subscriptions``) that it subscribes. None when the config has no http block
    (nothing to serve, nothing to publish).
    """
    blocks = config.blocks("http")
    if not blocks:
        return None
    http = blocks[0]
    does, where = ("subscribes to events", "of") if subscribes else ("publishes events", "into")
    if config.table.get("worker_events_zone") is None:
        raise http.error(None, f'module "{module}" {does}, but no loaded module provides them: '
                               f'add "load_module worker_events;" and "worker_events_zone NAME;" in the http block')
    if "worker_events_zone" not in http.own:
        raise http.error(None, f'module "{module}" {does} {where} the http-level "worker_events_zone": '
                               f'add "worker_events_zone NAME;" to this http block')
    return http.own["worker_events_zone"][0]


# the core's zone of once-per-instance watermarks (a SharedTable: "zone\0module" -> generation)
ONCE_ZONE = "@once"
_ONCE_KEY_MAX, _ONCE_VALUE = 200, 8


def declare_once_zone(config) -> None:
    """Declare the core's ``@once`` zone when a subscription asks for ``once`` (none: no zone)."""
    from .table import SharedTable

    pairs = sorted({(sub.zone, module) for module, subs in config.subscriptions.items() for sub in subs or ()
                    if sub.once})
    if pairs:
        size = SharedTable.size_for(max(16, 2 * len(pairs)), _ONCE_KEY_MAX, _ONCE_VALUE, stripes=4)
        config.zones.declare_core(ONCE_ZONE, size, owner="core", tag=f"once {len(pairs)}")


def claim_once(runtime, zone: str, module: str, generation: int) -> bool:
    """Whether this worker is the one to handle ``generation`` of ``zone`` for ``module``'s
    ``once`` subscription (the first worker to ask for it since it is above the watermark)."""
    from .table import SharedTable

    table = SharedTable.views(runtime, "core.once", (ONCE_ZONE,), _ONCE_KEY_MAX, _ONCE_VALUE, stripes=4)[ONCE_ZONE]

    def change(old):
        if old is not None and int.from_bytes(old, "little") >= generation:
            return old, False
        return generation.to_bytes(8, "little"), True

    return table.update(f"{zone}\0{module}", change)
