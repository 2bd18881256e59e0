"""limit_req: nginx's ``ngx_http_limit_req_module`` (the leaky bucket), on ngxsim's public API.

Directives (nginx's): ``limit_req_zone KEY zone=NAME:SIZE rate=Nr/s|Nr/m;`` (http),
``limit_req zone=NAME [burst=N] [nodelay | delay=N];`` (http, server, location; several per
level, a level with its own inherits none), ``limit_req_status CODE;`` (400 to 599, default
503), ``limit_req_log_level info|notice|warn|error;`` (default error; a delay is logged one level
lower), ``limit_req_dry_run on|off;``, and the variable ``$limit_req_status`` (PASSED, DELAYED,
REJECTED, DELAYED_DRY_RUN, REJECTED_DRY_RUN).

How it maps onto ngxsim: the handler is a ``PREACCESS`` phase handler (so it runs for a
server-level limit when no location matches, and before a cache's ``PRECONTENT`` hit); each zone
is a ``SharedTable`` in a shared-memory zone (a record per key: excess in thousandths of a
request, the last time in ms of the monotonic clock every process shares, the count of requests
between lookup and accounting); a delayed request returns ``Delay`` and holds no thread. The
arithmetic is ``ngx_http_limit_req_lookup`` and ``ngx_http_limit_req_account`` line for line.
Not loaded by default: ``load_module limit_req;``.
"""

from __future__ import annotations

import logging
import struct
import time
from dataclasses import dataclass

from ngxsim import (ALERT, HTTP, LIMIT_LOG_LEVELS, LOCATION, LOG_LEVELS, PREACCESS, SERVER, CounterRows, Delay,
                    Directive, PhaseHandler, SharedTable, TableFull, Template, Variable, check_zone_references,
                    counters_section, declare_keyed_zones, error_context, error_page, hookimpl, key_values,
                    limit_directives, positive_param, rate_param, require_param, zone_name_param, zone_param)

NAME = "limit_req"
STATUS_VAR = "limit_req_status"
log = logging.getLogger("ngxsim")

# a record: excess (thousandths of a request), last (ms), count (requests between lookup and accounting)
RECORD = struct.Struct("<qqq")
KEY_MAX = 64  # longer keys are stored as their SHA-256 (SharedTable does it)
NODELAY = (2**63 - 1) // 1000  # nginx's NGX_MAX_INT_T_VALUE / 1000
LEVELS = LIMIT_LOG_LEVELS
# NGINX Plus's statistics of each zone (/api/N/http/limit_reqs), in a zone of their own
STATS_ZONE = "limit_req.stats"
FIELDS = ("passed", "delayed", "rejected", "delayed_dry_run", "rejected_dry_run")
# nginx: the rc of ngx_http_limit_req_lookup
DECLINED, OK, AGAIN, BUSY, ERROR = "declined", "ok", "again", "busy", "error"


@dataclass(frozen=True)
class ZoneSpec:
    """One ``limit_req_zone``: the key, the zone's name and size, the rate (requests per 1000 s)."""

    key: Template
    name: str
    size: int
    rate: int
    source: str  # the key as written, for nginx's "already bound to key" message


@dataclass(frozen=True)
class Limit:
    """One ``limit_req``: its zone's name, burst and delay in thousandths of a request."""

    zone: str
    burst: int
    delay: int


def _parse_zone(args: list[str]) -> ZoneSpec:
    found = key_values(args[1:], {"zone": zone_param(), "rate": rate_param})
    name, size = require_param(found, "zone", "limit_req_zone")
    return ZoneSpec(Template(args[0]), name, size, found.get("rate", 1000), args[0])


def _parse_limit(args: list[str]) -> Limit:
    found = key_values(args, {"zone": zone_name_param, "burst": positive_param("burst value"),
                              "delay": positive_param("delay value"), "nodelay": None})
    zone = require_param(found, "zone", "limit_req")
    delay = NODELAY if "nodelay" in found else found.get("delay", 0)
    return Limit(zone, found.get("burst", 0) * 1000, delay * 1000)


LEVELS_HERE = (HTTP, SERVER, LOCATION)
DIRECTIVES = (
    Directive("limit_req_zone", (HTTP,), 3, parse=_parse_zone, multiple=True, default=[]),
    Directive("limit_req", LEVELS_HERE, (1, 3), parse=_parse_limit, multiple=True, default=[]),
    *limit_directives(NAME),  # limit_req_status, limit_req_log_level, limit_req_dry_run
)


@hookimpl
def ngxsim_directives(register):
    list(map(register, DIRECTIVES))


@hookimpl
def ngxsim_variables(register):
    register(Variable.recorded(STATUS_VAR))


@hookimpl
def ngxsim_postconfiguration(config):
    zones = declare_keyed_zones(config, "limit_req_zone", NAME, tag="limit_req.1")
    check_zone_references(config, "limit_req", zones)
    config.stash[NAME] = zones
    if zones:
        CounterRows.declare(config, STATS_ZONE, NAME, zones, FIELDS)


@hookimpl
def ngxsim_api_sections(config):
    """NGINX Plus's ``http/limit_reqs``: each zone's ``passed``, ``delayed``, ``rejected``,
    ``delayed_dry_run``, ``rejected_dry_run``, the instance's counts; ``DELETE`` resets a zone's."""
    zones = config.stash.get(NAME)
    if not zones:
        return None
    return counters_section("http/limit_reqs", zones, _stats, "limit_req", "LimitReqNotFound")


def _stats(runtime) -> CounterRows:
    return CounterRows.of(runtime, STATS_ZONE, FIELDS, runtime.config.stash.get(NAME, {}))


@hookimpl
def ngxsim_phase_handlers(block, config):
    limits = block.get("limit_req") or []
    if not limits:
        return None
    zones = config.stash[NAME]
    return PhaseHandler(PREACCESS, LimitReq(block, [(limit, zones[limit.zone]) for limit in limits]))


def _now_ms() -> int:
    # nginx's ngx_current_msec: a monotonic clock, the same in every process of the host
    return int(time.monotonic() * 1000)


def _elapsed(now: int, last: int) -> int:
    ms = now - last
    return 1 if ms < -60000 else 0 if ms < 0 else ms


class LimitReq:
    """The preaccess handler of one block: ``ngx_http_limit_req_handler``."""

    def __init__(self, block, limits: list[tuple[Limit, ZoneSpec]]):
        self.limits = limits
        self.status_code = block["limit_req_status"]
        self.limit_level = LOG_LEVELS[block["limit_req_log_level"]]
        # nginx: a delay is logged one level below the limit (info stays info)
        level = block["limit_req_log_level"]
        self.delay_level = LOG_LEVELS[level if level == "info" else LEVELS[LEVELS.index(level) - 1]]
        self.dry_run = block["limit_req_dry_run"]

    def __call__(self, ctx):
        if STATUS_VAR in ctx.vars:  # r->main->limit_req_status: limited once per request
            return None
        tables = _tables(ctx.runtime)
        touched: list[tuple[SharedTable, bytes, Limit, ZoneSpec]] = []  # the AGAIN lookups (ctx->node)
        rc, excess, n = DECLINED, 0, 0
        last = len(self.limits) - 1
        limit, spec = self.limits[0]
        for n, (limit, spec) in enumerate(self.limits):
            key = spec.key.render(ctx).encode("utf-8", "surrogateescape")
            if not key:
                continue
            if len(key) > 65535:
                log.error('the value of the "%s" key is more than 65535 bytes: "%s"', spec.source, key.decode(
                    "utf-8", "replace"))
                continue
            table = tables[spec.name]
            try:
                rc, excess = table.update(key, _lookup(limit, spec, n == last))
            except TableFull:  # nginx: ngx_http_limit_req_expire(ctx, 0) freed nothing either
                log.log(ALERT, 'could not allocate node in limit_req zone "%s"', spec.name)
                rc = ERROR
                break
            if rc == AGAIN:
                touched.append((table, key, limit, spec))
            if rc != AGAIN:
                break
        if rc == DECLINED:
            return None
        stats = _stats(ctx.runtime)
        if rc in (BUSY, ERROR):
            if rc == BUSY:
                log.log(self.limit_level, 'limiting requests%s, excess: %d.%03d by zone "%s"%s',
                        ", dry run" if self.dry_run else "", excess // 1000, excess % 1000, spec.name,
                        error_context(ctx))
            for table, key, _, _ in touched:  # ngx_http_limit_req_unlock
                table.update(key, _unlock)
            # counted by the zone that refused it; the others' lookups were undone
            stats.add(spec.name, "rejected_dry_run" if self.dry_run else "rejected")
            if self.dry_run:
                ctx.vars[STATUS_VAR] = "REJECTED_DRY_RUN"
                return None
            ctx.vars[STATUS_VAR] = "REJECTED"
            return error_page(self.status_code)
        accounted = [other.name for _, _, _, other in touched] + ([spec.name] if rc == OK else [])
        if rc == AGAIN:
            excess = 0
        delay, excess, spec, delaying = _account(touched, excess, limit, spec)
        # each zone that accounted the request counts what it alone decided: a delay, or passed
        delayed = "delayed_dry_run" if self.dry_run else "delayed"
        for name in accounted:
            stats.add(name, delayed if delay and name in delaying else "passed")
        if not delay:
            ctx.vars[STATUS_VAR] = "PASSED"
            return None
        log.log(self.delay_level, 'delaying request%s, excess: %d.%03d, by zone "%s"%s',
                ", dry run" if self.dry_run else "", excess // 1000, excess % 1000, spec.name, error_context(ctx))
        if self.dry_run:
            ctx.vars[STATUS_VAR] = "DELAYED_DRY_RUN"
            return None
        ctx.vars[STATUS_VAR] = "DELAYED"
        return Delay(delay / 1000)


def _lookup(limit: Limit, spec: ZoneSpec, account: bool):
    """``ngx_http_limit_req_lookup`` on one record: a change for ``SharedTable.update`` whose
    result is (rc, excess)."""

    def change(old: bytes | None):
        now = _now_ms()
        if old is None:  # a new node
            if account:
                return RECORD.pack(0, now, 0), (OK, 0)
            return RECORD.pack(0, 0, 1), (AGAIN, 0)
        lr_excess, lr_last, lr_count = RECORD.unpack(old)
        ms = _elapsed(now, lr_last)
        excess = max(0, lr_excess - spec.rate * ms // 1000 + 1000)
        if excess > limit.burst:
            return old, (BUSY, excess)  # (nginx moved it to the head of the LRU queue: so does update)
        if account:
            return RECORD.pack(excess, now if ms else lr_last, lr_count), (OK, excess)
        return RECORD.pack(lr_excess, lr_last, lr_count + 1), (AGAIN, excess)

    return change


def _unlock(old: bytes | None):
    if old is None:
        return None, None
    lr_excess, lr_last, lr_count = RECORD.unpack(old)
    return RECORD.pack(lr_excess, lr_last, lr_count - 1), None


def _account(touched, excess: int, limit: Limit, spec: ZoneSpec) -> tuple[int, int, ZoneSpec, set[str]]:
    """``ngx_http_limit_req_account``: the delay in ms, the excess and zone that set it, and the
    zones that would delay the request by themselves."""
    max_delay = 0 if excess <= limit.delay else (excess - limit.delay) * 1000 // spec.rate
    delaying = {spec.name} if max_delay else set()
    for table, key, other, other_spec in reversed(touched):  # while (n--)

        def change(old: bytes | None, rate=other_spec.rate):
            if old is None:  # evicted meanwhile: nothing to account
                return None, None
            lr_excess, lr_last, lr_count = RECORD.unpack(old)
            now = _now_ms()
            ms = _elapsed(now, lr_last)
            new_excess = max(0, lr_excess - rate * ms // 1000 + 1000)
            return RECORD.pack(new_excess, now if ms else lr_last, lr_count - 1), new_excess

        new_excess = table.update(key, change)
        if new_excess is None or new_excess <= other.delay:
            continue
        delay = (new_excess - other.delay) * 1000 // other_spec.rate
        if delay:
            delaying.add(other_spec.name)
        if delay > max_delay:
            max_delay, excess, spec = delay, new_excess, other_spec
    return max_delay, excess, spec, delaying


def _tables(runtime) -> dict[str, SharedTable]:
    return SharedTable.views(runtime, NAME, runtime.config.stash.get(NAME, {}), KEY_MAX, RECORD.size, in_use=in_use)


def in_use(value: bytes) -> bool:
    """A record counting requests between lookup and accounting is never evicted (nginx's
    ``ngx_http_limit_req_expire`` stops at a node with ``count``)."""
    return RECORD.unpack(value)[2] > 0
