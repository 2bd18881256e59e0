"""Zone declarations made at config time (sizes and owners), before any memory exists."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from .errors import ConfigError
from .parser import Statement

ZONE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
# The largest zone a configuration may declare (1 TiB). Whether the machine can hold it is
# found out when the zone is created (its memory is reserved then).
MAX_ZONE_SIZE = 1 << 40


@dataclass(frozen=True)
class ZoneSpec:
    name: str
    size: int
    owner: str
    tag: str = ""  # the owner's layout; a kept zone must have the same (else it is recreated)
    configured: int | None = None  # the size the config gives (keys_zone=NAME:10m), when not ``size``


class ZoneSpecs:
    """The zones a configuration declares (``config.zones``): each name once, by one module, with
    one size. ``name in config.zones`` and ``config.zones[name]`` (its ``ZoneSpec``: ``name``,
    ``size``, ``owner``, ``tag``) tell what is declared; iterate for all of them."""

    def __init__(self) -> None:
        self._specs: dict[str, ZoneSpec] = {}

    def declare(self, name: str, size: int, owner: str, where: Statement | None = None, tag: str = "",
                configured: int | None = None) -> ZoneSpec:
        """Declare zone ``name`` of ``size`` bytes (``ngxsim.ZONE_HEADER_SIZE`` of them the
        core's; ``zone.buf`` is the rest), owned by module ``owner``.

        Call it in ``ngxsim_postconfiguration``; the zone is created (zero-filled) or kept when
        the server starts, and ``runtime.zone(name)`` maps it in every process. ``where`` is the
        statement to blame in errors (``block.where_of("my_zone")``); ``tag`` names the
        layout: a kept zone whose tag changed is recreated. ``configured`` is the size the config
        names when the module maps another (``keys_zone=assets:10m`` whose zone holds a counter):
        the start-up log shows both. Declaring the same zone again with
        the same size and owner returns the first declaration; a different owner, size or tag,
        a bad name or a size out of range raises ``ConfigError``.
        """

        def fail(message: str) -> ConfigError:
            return where.error(message) if where else ConfigError(message)

        if not ZONE_NAME.fullmatch(name):
            raise fail(f'invalid zone name "{name}": use letters, digits, "_", "-" and "." (at most 64)')
        if size <= 0:
            raise fail(f'zone "{name}" is too small')
        if size > MAX_ZONE_SIZE:
            raise fail(f'zone "{name}" of {size} bytes is larger than the largest zone, {MAX_ZONE_SIZE} bytes (1024g)')
        old = self._specs.get(name)
        if old is not None:
            if old.owner != owner:
                raise fail(f'zone "{name}" is already declared by module "{old.owner}"')
            if old.size != size or old.tag != tag:
                raise fail(f'zone "{name}" is already declared with size {old.size}, not {size}')
            return old
        spec = ZoneSpec(name, size, owner, tag or owner, configured if configured != size else None)
        self._specs[name] = spec
        return spec

    def declare_core(self, name: str, size: int, owner: str, tag: str) -> ZoneSpec:
        """A zone of the core's own, under a name no module can declare."""
        spec = ZoneSpec(name, size, owner, tag)
        self._specs[name] = spec
        return spec

    def __iter__(self):
        return iter(self._specs.values())

    def __contains__(self, name: str) -> bool:
        return name in self._specs

    def __getitem__(self, name: str) -> ZoneSpec:
        return self._specs[name]

    def __len__(self) -> int:
        return len(self._specs)


JOBS_ZONE = "@jobs"  # not a valid zone name for modules, so never one of theirs
JOB_SLOT = 64


@dataclass(frozen=True)
class JobSpec:
    name: str
    interval: float
    run: object  # callable(runtime), run in the one worker holding the job's lease
    owner: str
    lease: float  # how long a silent holder keeps the job before another worker takes it
    # a service: run(runtime, lease) runs for as long as the worker holds the lease (interval:
    # how often the holder renews it, and how often the others look)
    service: bool = False
    # a service run in a process of its own (ngxsim/core/helper.py), at this nice value
    process: bool = False
    nice: int = 0


class JobSpecs:
    """The instance-wide periodic jobs a configuration declares (``config.jobs.declare``).

    Each job runs every ``interval`` in exactly one live worker of the instance: the holder of
    its lease, a slot in the core's ``@jobs`` zone. See ``ngxsim/core/jobs.py``.
    """

    def __init__(self) -> None:
        self._specs: dict[str, JobSpec] = {}

    def declare(self, name: str, interval: float, run, owner: str, where: Statement | None = None,
                lease: float | None = None) -> JobSpec:
        """Declare periodic job ``name`` (unique in the instance, e.g. ``"hello.refresh"``):
        ``run(runtime)`` every ``interval`` seconds (10 ms to 1 day) in exactly one live worker.

        Call it in ``ngxsim_postconfiguration``. ``owner`` is the module's name, ``where`` the
        statement to blame in errors; ``lease`` (default ``2 * interval``) is how long a silent
        holder keeps the job before another worker takes it over. A duplicate name or an interval
        out of range raises ``ConfigError``. Make ``run`` idempotent and bounded.
        """

        def fail(message: str) -> ConfigError:
            return where.error(message) if where else ConfigError(message)

        if not name or len(name.encode()) > 200:
            raise fail(f'invalid job name "{name}"')
        if name in self._specs:
            raise fail(f'periodic job "{name}" is already declared by module "{self._specs[name].owner}"')
        if not 0.01 <= interval <= 86400:
            raise fail(f'periodic job "{name}": interval {interval:g}s is outside 10ms..1d')
        spec = JobSpec(name, float(interval), run, owner, float(lease if lease is not None else 2 * interval))
        self._specs[name] = spec
        return spec

    def declare_service(self, name: str, run, owner: str, where: Statement | None = None,
                        lease: float = 2.0, process: bool = False, nice: int = 0) -> JobSpec:
        """Declare instance-wide service ``name``: ``run(runtime, lease)`` runs, in a thread of its
        own, in exactly one live worker: the holder of its lease, for as long as it holds it.

        ``run`` loops until ``lease.stopping`` (a ``threading.Event``) is set: the worker lost the
        lease (it hung past ``lease`` seconds and another worker took over) or is stopping. It
        waits on ``lease.stopping.wait(t)`` (or bounds its blocking calls) so that it notices
        within a second. If it returns or raises while the lease is held, it is started again
        (after a renewal period). When the holder dies another worker takes the lease at its
        next look (within ``lease / 4``) and starts ``run`` there; a hung holder loses it after
        ``lease`` seconds. Make ``run`` resume from durable state: a takeover starts afresh.

        ``process=True``: ``run`` runs in a process of its own (nginx's cache manager is one),
        started by the holding worker, so none of its CPU nor Python's GIL is taken from that
        worker's requests; ``nice`` (0 to 19) is its priority below the workers'. That process
        loads the worker's configuration again and attaches its zones; ``runtime.worker_pid``
        is None there and no ``ngxsim_init_worker`` ran: ``run`` gets what it needs from zones
        and other modules' public functions. It is stopped when the lease is lost or its worker
        stops or dies, and started again (with an ``[alert]``) if it dies while the lease is held.
        See ``ngxsim/core/helper.py``.
        """
        if not 0 <= nice <= 19:
            raise (where.error if where else ConfigError)(f'service "{name}": nice {nice} is outside 0..19')
        spec = self.declare(name, max(lease / 4, 0.01), run, owner, where, lease)
        spec = JobSpec(spec.name, spec.interval, run, owner, spec.lease, service=True, process=process, nice=nice)
        self._specs[name] = spec
        return spec

    def declare_zone(self, zones: ZoneSpecs) -> None:
        """The core's zone of leases, sized for the declared jobs (none: no zone)."""
        if self._specs:
            names = ",".join(self._specs)
            # the tag carries the job list: a reload that changes it gets a fresh zone
            zones.declare_core(JOBS_ZONE, JOB_SLOT * len(self._specs) + 64, owner="core",
                               tag=f"jobs {len(self._specs)} {hash_names(names)}")

    def __iter__(self):
        return iter(self._specs.values())

    def __len__(self) -> int:
        return len(self._specs)


def hash_names(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:16]
