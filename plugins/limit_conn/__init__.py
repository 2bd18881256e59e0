"""limit_conn: nginx's ``ngx_http_limit_conn_module`` (requests in progress per key), on ngxsim's
public API.

Directives (nginx's): ``limit_conn_zone KEY zone=NAME:SIZE;`` (http), ``limit_conn ZONE N;``
(http, server, location; several per level, a level with its own inherits none),
``limit_conn_status CODE;`` (400 to 599, default 503), ``limit_conn_log_level
info|notice|warn|error;`` (default error), ``limit_conn_dry_run on|off;``, and
``$limit_conn_status`` (PASSED, REJECTED, REJECTED_DRY_RUN).

As ``ngx_http_limit_conn_handler``: a ``PREACCESS`` handler counts the request in for each limit
(a record per key in a ``SharedTable``: the count), rejects it when a count is at its limit, and
its ``LOG`` handler counts it out once the response was sent (nginx's pool cleanup); a record
whose count reaches 0 is removed. Not loaded by default: ``load_module limit_conn;``.
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass

from ngxsim import (HTTP, LOCATION, LOG, LOG_LEVELS, PREACCESS, SERVER, Directive, PhaseHandler, SharedTable, Template,
                    Variable, check_zone_references, declare_keyed_zones, error_context, error_page, hookimpl,
                    key_values, limit_directives, require_param, zone_param)

NAME = "limit_conn"
STATUS_VAR = "limit_conn_status"
COUNT = struct.Struct("<q")
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
    config.stash[NAME] = declare_keyed_zones(config, "limit_conn_zone", NAME, tag="limit_conn.1")
    check_zone_references(config, "limit_conn", config.stash[NAME])


@hookimpl
def ngxsim_phase_handlers(block, config):
    if not block.get("limit_conn"):
        return None
    limit = LimitConn(block, [(limit, config.stash[NAME][limit.zone]) for limit in block["limit_conn"]])
    return [PhaseHandler(PREACCESS, limit), PhaseHandler(LOG, release)]


def _count_in(limit: int):
    def change(old: bytes | None):
        count = COUNT.unpack(old)[0] if old is not None else 0
        if old is not None and count >= limit:
            return old, False
        return COUNT.pack(count + 1), True

    return change


def _count_out(old: bytes | None):
    if old is None:
        return None, None
    count = COUNT.unpack(old)[0] - 1
    return (COUNT.pack(count) if count > 0 else None), None  # nginx frees the node at 0


def release(ctx) -> None:
    """Count the request out of every limit it was counted in (nginx's cleanup handlers)."""
    held = ctx.stash.pop(NAME, None) or ()
    for table, key in held:
        table.update(key, _count_out)


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
            if not table.update(key, _count_in(limit.conn)):
                log.log(self.level, 'limiting connections%s by zone "%s"%s', ", dry run," if self.dry_run else "",
                        spec.name, error_context(ctx))
                release(ctx)  # ngx_http_limit_conn_cleanup_all
                if self.dry_run:
                    ctx.vars[STATUS_VAR] = "REJECTED_DRY_RUN"
                    return None
                ctx.vars[STATUS_VAR] = "REJECTED"
                return error_page(self.status_code)
            held.append((table, key))
        return None


def _tables(runtime) -> dict[str, SharedTable]:
    return SharedTable.views(runtime, NAME, runtime.config.stash.get(NAME, {}), KEY_MAX, COUNT.size)
