"""limit_conn: nginx's ``ngx_http_limit_conn_module`` (requests in progress per key), on ngxsim's
public API.

Directives (nginx's): ``limit_conn_zone KEY zone=NAME:SIZE;`` (http), ``limit_conn ZONE N;``
(http, server, location; several per level, a level with its own inherits none),
``limit_conn_status CODE;`` (400 to 599, default 503), ``limit_conn_log_level
info|notice|warn|error;`` (default error), ``limit_conn_dry_run on|off;``, and
``$limit_conn_status`` (PASSED, REJECTED, REJECTED_DRY_RUN).

As ``ngx_http_limit_conn_handler``: a ``PREACCESS`` handler counts the request in for each limit
(a record per key in a ``SharedTable``), rejects it when a count is at its limit, and its ``LOG``
handler counts it out once the response was sent (nginx's pool cleanup); a record whose count
reaches 0 is removed. A record holds each worker's count apart (pid and start time), so the
requests of a worker that died without counting out (SIGKILL, the OOM killer) stop counting:
a count at its limit drops its dead holders and looks again, and eviction takes a record of dead
holders only. A record a live worker counts in is never evicted (nginx never frees a node with
connections); a new key whose stripe holds only such records is refused as nginx refuses one
when the zone's slab is full (``[crit] ngx_slab_alloc() failed: no memory``, the limit's status).
Not loaded by default: ``load_module limit_conn;``.
"""

from __future__ import annotations

import logging
import os
import struct
import threading
from dataclasses import dataclass

from ngxsim import (HTTP, LOCATION, LOG, LOG_LEVELS, PREACCESS, SERVER, CounterRows, Directive, LivenessWatch,
                    PhaseHandler, SharedTable, TableFull, Template, Variable, check_zone_references, counters_section,
                    declare_keyed_zones, error_context, error_page, hookimpl, key_values, limit_directives,
                    process_start_time, require_param, zone_param)

NAME = "limit_conn"
STATUS_VAR = "limit_conn_status"
# a record: requests counted without a holder (more live workers than HOLDERS at once), then
# HOLDERS holders: a worker's pid, its requests in progress, its start time (0 count: unused)
OVERFLOW_COUNT = struct.Struct("<q")
HOLDER = struct.Struct("<IIQ")
HOLDERS = 8
RECORD_SIZE = OVERFLOW_COUNT.size + HOLDERS * HOLDER.size
OVERFLOW = "overflow"
# NGINX Plus's statistics of each zone (/api/N/http/limit_conns), in a zone of their own
STATS_ZONE = "limit_conn.stats"
FIELDS = ("passed", "rejected", "rejected_dry_run")
KEY_MAX = 64  # longer keys (nginx allows 255 bytes) are stored as their SHA-256 (SharedTable does it)
log = logging.getLogger("ngxsim")


@dataclass(frozen=True)
class ZoneSpec:
    key: Template
    name: str
    size: int
    source: str


@dataclass(frozen=True)
class Limit:
    zone: str
    conn: int


def _parse_zone(args: list[str]) -> ZoneSpec:
    name, size = require_param(key_values(args[1:], {"zone": zone_param()}), "zone", "limit_conn_zone")
    return ZoneSpec(Template(args[0]), name, size, args[0])


def _parse_limit(args: list[str]) -> Limit:
    n = int(args[1]) if args[1].isdigit() and len(args[1]) < 12 else 0
    if n <= 0:
        raise ValueError(f'invalid number of connections "{args[1]}"')
    if n > 65535:
        raise ValueError("connection limit must be less 65536")
    return Limit(args[0], n)


@hookimpl
def ngxsim_directives(register):
    register(Directive("limit_conn_zone", (HTTP,), 2, parse=_parse_zone, multiple=True, default=[]))
    register(Directive("limit_conn", (HTTP, SERVER, LOCATION), 2, parse=_parse_limit, multiple=True, default=[]))
    for directive in limit_directives(NAME):  # limit_conn_status, _log_level, _dry_run
        register(directive)


@hookimpl
def ngxsim_variables(register):
    register(Variable.recorded(STATUS_VAR))


@hookimpl
def ngxsim_postconfiguration(config):
    config.stash[NAME] = declare_keyed_zones(config, "limit_conn_zone", NAME, tag="limit_conn.2")
    check_zone_references(config, "limit_conn", config.stash[NAME])
    if config.stash[NAME]:
        CounterRows.declare(config, STATS_ZONE, NAME, config.stash[NAME], FIELDS)


@hookimpl
def ngxsim_api_sections(config):
    """NGINX Plus's ``http/limit_conns``: each zone's ``passed``, ``rejected``,
    ``rejected_dry_run``, the instance's counts; ``DELETE`` resets a zone's."""
    zones = config.stash.get(NAME)
    if not zones:
        return None
    return counters_section("http/limit_conns", zones, _stats, "limit_conn", "LimitConnNotFound")


def _stats(runtime) -> CounterRows:
    return CounterRows.of(runtime, STATS_ZONE, FIELDS, runtime.config.stash.get(NAME, {}))


@hookimpl
def ngxsim_phase_handlers(block, config):
    if not block.get("limit_conn"):
        return None
    limit = LimitConn(block, [(limit, config.stash[NAME][limit.zone]) for limit in block["limit_conn"]])
    return [PhaseHandler(PREACCESS, limit), PhaseHandler(LOG, release)]


def _count_in(limit: int):
    """A change for ``SharedTable.update`` counting this worker's request in, unless the key's
    count (its live holders') is at ``limit``: the result is where it was counted (a holder's pid
    and start time, or OVERFLOW), or None when refused."""

    def change(old: bytes | None):
        overflow, holders = _unpack(old)
        me = _me()
        if sum(holders.values()) + overflow >= limit:
            # at the limit: a dead worker's requests are not in progress any more (nginx would
            # keep counting them until the zone is recreated); drop them and look again
            if not _forget_dead(holders, me):
                return old, None
            if sum(holders.values()) + overflow >= limit:
                return _pack(overflow, holders), None
        if me in holders or len(holders) < HOLDERS:
            holders[me] = holders.get(me, 0) + 1
            return _pack(overflow, holders), me
        _forget_dead(holders, me)
        if len(holders) < HOLDERS:
            holders[me] = 1
            return _pack(overflow, holders), me
        return _pack(overflow + 1, holders), OVERFLOW  # more live holders than a record has room for

    return change


def _forget_dead(holders: dict[tuple[int, int], int], me: tuple[int, int]) -> bool:
    """Drop the holders (but ``me``) that are no longer running; whether there were any."""
    dead = [owner for owner in holders if owner != me and not _alive(owner)]
    for owner in dead:
        del holders[owner]
    return bool(dead)


def _count_out(where):
    def change(old: bytes | None):
        if old is None:
            return None, None
        overflow, holders = _unpack(old)
        if where == OVERFLOW:
            overflow = max(0, overflow - 1)
        elif where in holders:
            holders[where] -= 1
            if not holders[where]:
                del holders[where]
        if not overflow and not holders:
            return None, None  # nginx frees the node at 0
        return _pack(overflow, holders), None

    return change


def _unpack(value: bytes | None) -> tuple[int, dict[tuple[int, int], int]]:
    """A record: requests counted without a holder, and each holder's (pid, start time) -> count."""
    if value is None:
        return 0, {}
    overflow = OVERFLOW_COUNT.unpack_from(value)[0]
    holders = {}
    for i in range(HOLDERS):
        pid, count, start = HOLDER.unpack_from(value, OVERFLOW_COUNT.size + i * HOLDER.size)
        if count:
            holders[(pid, start)] = count
    return overflow, holders


def _pack(overflow: int, holders: dict[tuple[int, int], int]) -> bytes:
    value = bytearray(RECORD_SIZE)
    OVERFLOW_COUNT.pack_into(value, 0, overflow)
    for i, ((pid, start), count) in enumerate(holders.items()):
        HOLDER.pack_into(value, OVERFLOW_COUNT.size + i * HOLDER.size, pid, count, start)
    return bytes(value)


def in_use(value: bytes) -> bool:
    """Does a record count a request in progress (of a live worker)? Such a record is never
    evicted (nginx never frees a node with connections)."""
    overflow, holders = _unpack(value)
    return bool(overflow) or any(_alive(owner) for owner in holders)


_ME: list = [0, (0, 0), None]  # this process's pid, its (pid, start time), its _Holders


class _Holders:
    """Which holders (workers that counted in) are running: every holder seen and still alive is
    watched by one ``LivenessWatch`` (a pidfd each, one ``poll`` for all); a dead one is forgotten."""

    def __init__(self) -> None:
        self.watch = LivenessWatch()
        self.known: set[tuple[int, int]] = set()
        self.lock = threading.Lock()

    def alive(self, owner: tuple[int, int]) -> bool:
        with self.lock:
            self.known.add(owner)
            self.known = self.watch.alive(list(self.known))  # asked for all: none loses its pidfd
            return owner in self.known


def _me() -> tuple[int, int]:
    pid = os.getpid()
    if _ME[0] != pid:  # first use in this process (a forked worker has its own)
        _ME[:] = [pid, (pid, process_start_time(pid) or 0), _Holders()]
    return _ME[1]


def _alive(owner: tuple[int, int]) -> bool:
    """Is the worker that counted in as ``owner`` running? Asked only at a limit or on eviction."""
    _me()
    return _ME[2].alive(owner)


def release(ctx) -> None:
    """Count the request out of every limit it was counted in (nginx's cleanup handlers)."""
    held = ctx.stash.pop(NAME, None) or ()
    for table, key, where in held:
        table.update(key, _count_out(where))


class LimitConn:
    """The preaccess handler of one block: ``ngx_http_limit_conn_handler``."""

    def __init__(self, block, limits):
        self.limits = limits
        self.status_code = block["limit_conn_status"]
        self.level = LOG_LEVELS[block["limit_conn_log_level"]]
        self.dry_run = block["limit_conn_dry_run"]

    def __call__(self, ctx):
        if STATUS_VAR in ctx.vars:  # r->main->limit_conn_status
            return None
        tables = _tables(ctx.runtime)
        held = ctx.stash.setdefault(NAME, [])
        counted = []  # the zones the request was counted in
        for limit, spec in self.limits:
            key = spec.key.render(ctx).encode("utf-8", "surrogateescape")
            if not key:
                continue
            if len(key) > 255:
                log.error('the value of the "%s" key is more than 255 bytes: "%s"', spec.source,
                          key.decode("utf-8", "replace"))
                continue
            ctx.vars[STATUS_VAR] = "PASSED"
            table = tables[spec.name]
            try:
                where = table.update(key, _count_in(limit.conn))
            except TableFull:  # every record of the key's stripe counts requests in progress
                log.critical('ngx_slab_alloc() failed: no memory in limit_conn_zone "%s"', spec.name)
                return self._reject(ctx, spec)
            if where is None:
                log.log(self.level, 'limiting connections%s by zone "%s"%s', ", dry run," if self.dry_run else "",
                        spec.name, error_context(ctx))
                return self._reject(ctx, spec)
            held.append((table, key, where))
            counted.append(spec.name)
        stats = _stats(ctx.runtime) if counted else None
        for name in counted:
            stats.add(name, "passed")
        return None

    def _reject(self, ctx, spec):
        release(ctx)  # ngx_http_limit_conn_cleanup_all
        # counted by the zone that refused it; the others counted it out again
        _stats(ctx.runtime).add(spec.name, "rejected_dry_run" if self.dry_run else "rejected")
        if self.dry_run:
            ctx.vars[STATUS_VAR] = "REJECTED_DRY_RUN"
            return None
        ctx.vars[STATUS_VAR] = "REJECTED"
        return error_page(self.status_code)


def _tables(runtime) -> dict[str, SharedTable]:
    return SharedTable.views(runtime, NAME, runtime.config.stash.get(NAME, {}), KEY_MAX, RECORD_SIZE, in_use=in_use)
