"""The core module: nginx's core and HTTP-core directives, declared like any module's.

It is registered in every plugin manager (``BUILTIN_MODULES``), so a config needs no
``load_module`` for ``http``, ``server``, ``location``, ``listen`` and the rest.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from ...hookspecs import hookimpl
from ..conf.directive import FLAG, HTTP, LOCATION, MAIN, MAX_TIME, SERVER, SIZE, STRING, TIME, Directive, parse_number
from ..workers import LAYOUT_TAG as WORKERS_TAG
from ..workers import WORKERS_ZONE, ZONE_SIZE, WorkerTable
from .location import LocationMatcher, LocationSpec, nesting_error, parse_location
from .api import ApiHandler, collect_sections
from .status import StatusPage
from .stub_status import handler as stub_status_handler
from .server import InvalidServerName, Listen, ServerTable, parse_listen, parse_server_name, primary_name
from .variables import Template

ALL = (MAIN, HTTP, SERVER, LOCATION)
HTTP_LEVELS = (HTTP, SERVER, LOCATION)
# gevent/eventlet are left out on purpose: the event dispatcher blocks a real thread in a futex
# "ngxsim": ngxsim.worker.Worker (gthread that reads requests in its event loop, see worker.py)
WORKER_CLASSES = ("sync", "gthread", "ngxsim")
LOG_LEVELS = ("debug", "info", "notice", "warn", "error", "crit", "alert", "emerg")
DEFAULT_LISTEN = Listen("127.0.0.1", 8080)
MAX_WORKER_PROCESSES = 1024  # nginx's NGX_MAX_PROCESSES


@dataclass(frozen=True)
class Return:
    code: int
    text: Template | None

    @property
    def is_redirect(self) -> bool:
        return self.code in (301, 302, 303, 307, 308)


@dataclass(frozen=True)
class AddHeader:
    name: str
    value: Template
    always: bool


def parse_return(args: list[str]) -> Return:
    first = args[0]
    if len(args) == 1 and first.startswith(("http://", "https://", "$scheme")):
        return Return(302, Template(first))
    if not re.fullmatch("[0-9]{1,3}", first):
        raise ValueError(f'invalid return code "{first}"')
    return Return(int(first), Template(args[1]) if len(args) > 1 else None)


def parse_add_header(args: list[str]) -> AddHeader:
    name, value, *rest = args
    if rest and rest[0] != "always":
        raise ValueError(f'invalid parameter "{rest[0]}"')
    if not name or any(c in name for c in " \t:\r\n"):
        raise ValueError(f'invalid header name "{name}"')
    return AddHeader(name, Template(value), bool(rest))


def parse_types(lines) -> dict[str, str]:
    """The lines of a ``types { TYPE EXT ...; }`` block -> {extension: type}; a later line wins
    an extension, as in nginx (which warns about it)."""
    table: dict[str, str] = {}
    for line in lines:
        if line.block is not None:
            raise line.error('unexpected "{"')
        for ext in line.args:
            table[ext.lower()] = line.name
    return table


def parse_access_log(args: list[str]) -> tuple[str, str] | None:
    """``PATH [FORMAT]`` or ``off``; FORMAT is checked against the ``log_format`` names once the
    whole config is read (``ngxsim_postconfiguration``)."""
    if args == ["off"]:
        return None
    return (args[0], args[1] if len(args) == 2 else "combined")


# nginx's predefined format
COMBINED = ('$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent '
            '"$http_referer" "$http_user_agent"')


@dataclass(frozen=True)
class LogFormat:
    name: str
    template: Template


def parse_log_format(args: list[str]) -> LogFormat:
    """``log_format NAME STRING...``: the strings are joined, as nginx does."""
    name, *parts = args
    if name == "combined":
        raise ValueError('duplicate "log_format" name "combined"')
    return LogFormat(name, Template("".join(parts)))


def parse_error_log(args: list[str]) -> tuple[str, str]:
    level = args[1] if len(args) > 1 else "error"
    if level not in LOG_LEVELS:
        raise ValueError(f'invalid log level "{level}"')
    return (args[0], level)


def parse_worker_processes(args: list[str]) -> int:
    if args[0] == "auto":
        return os.cpu_count() or 1
    if not re.fullmatch("[0-9]+", args[0]):
        raise ValueError('"worker_processes" directive invalid value')  # nginx's wording
    if len(args[0].lstrip("0")) > 8 or int(args[0]) > MAX_WORKER_PROCESSES:  # (no int of 5000 digits)
        raise ValueError(f'"worker_processes" directive invalid value: at most {MAX_WORKER_PROCESSES}')
    if int(args[0]) < 1:  # nginx takes 0 (a master without workers, serving nothing)
        raise ValueError('"worker_processes" directive invalid value: ngxsim needs at least one worker')
    return int(args[0])


def parse_worker_class(args: list[str]) -> str:
    if args[0] not in WORKER_CLASSES:
        raise ValueError(f'invalid value "{args[0]}" in "worker_class" directive, it must be one of {", ".join(WORKER_CLASSES)}')
    return args[0]


def parse_worker_threads(args: list[str]) -> int:
    try:
        return parse_number(args[0], 1, 1024)
    except ValueError:
        raise ValueError(f'invalid value "{args[0]}" in "worker_threads" directive, it must be from 1 to 1024') from None


def parse_api(args: list[str]) -> dict:
    """``api [write=on|off]`` (nginx: ``invalid parameter "x"``)."""
    write = False
    for arg in args:
        if arg in ("write=on", "write=off"):
            write = arg == "write=on"
        else:
            raise ValueError(f'invalid parameter "{arg}"')
    return {"write": write}


def parse_stub_status(args: list[str]) -> bool:
    if args and args[0] not in ("on", "off"):  # old nginx took "stub_status on;"
        raise ValueError(f'invalid parameter "{args[0]}"')
    return not args or args[0] == "on"


CORE_DIRECTIVES = (
    Directive("load_module", (MAIN,), 1, multiple=True, inherit=False, doc="load a module by entry point or dotted path"),
    Directive("worker_processes", (MAIN,), 1, parse=parse_worker_processes, default=1,
              doc="number of gunicorn workers under `ngxsim -c`; `auto` = CPU count"),
    Directive("worker_class", (MAIN,), 1, parse=parse_worker_class, default="ngxsim",
              doc="ngxsim extension: gunicorn worker class under `ngxsim -c` (`ngxsim`, `gthread` or `sync`)"),
    Directive("worker_threads", (MAIN,), 1, parse=parse_worker_threads, default=4,
              doc="ngxsim extension: threads per worker under `ngxsim -c` (default 4; sync workers have 1)"),
    Directive("client_header_timeout", (HTTP,), 1, type=TIME, default=60.0, range=(0.001, MAX_TIME),
              doc="a request header must be complete within this (else 408); applied by `worker_class ngxsim`"),
    Directive("client_body_timeout", (HTTP,), 1, type=TIME, default=60.0, range=(0.001, MAX_TIME),
              doc="longest pause between two reads of a request body (else 408); applied by `worker_class ngxsim`"),
    Directive("error_log", ALL, (1, 2), parse=parse_error_log, default=("stderr", "notice"),
              doc="where the server's own log goes (`stderr` or a path) and from which level (default "
                  "`stderr notice`: start, reload and stop are logged; a LEVEL left out is `error`, as nginx's)"),
    Directive("http", (MAIN,), 0, block=HTTP, doc="the HTTP context"),
    Directive("server", (HTTP,), 0, block=SERVER, multiple=True, doc="a virtual server"),
    Directive("listen", (SERVER,), (1, None), parse=parse_listen, multiple=True, inherit=False,
              default=[DEFAULT_LISTEN], doc="`ADDR:PORT [default_server]`"),
    Directive("server_name", (SERVER,), (1, None), parse=parse_server_name, multiple=True, inherit=False,
              default=[[""]], doc="names: exact, `*.x`, `x.*`, `~regex`, `_`"),
    Directive("location", (SERVER, LOCATION), (1, 2), parse=parse_location, block=LOCATION, multiple=True,
              doc="`[=|^~|~|~*] PATH` or `@name`; nests as nginx allows"),
    Directive("return", (SERVER, LOCATION), (1, 2), parse=parse_return, inherit=False,
              doc="`CODE [TEXT|URL]` or `URL`"),
    Directive("add_header", HTTP_LEVELS, (2, 3), parse=parse_add_header, multiple=True, default=[],
              doc="`NAME VALUE [always]`; a level with its own add_header inherits none"),
    Directive("client_max_body_size", HTTP_LEVELS, 1, type=SIZE, default=1024 * 1024,
              doc="largest request body; 0 = no limit"),
    Directive("access_log", HTTP_LEVELS, (1, 2), parse=parse_access_log, default=None,
              doc="`PATH [FORMAT]` (FORMAT: `combined` or a `log_format` name) or `off` (default)"),
    Directive("log_format", (HTTP,), (2, None), parse=parse_log_format, multiple=True, default=[],
              doc="`NAME STRING...`: an access log line with variables (`$upstream_addr`...)"),
    Directive("default_type", HTTP_LEVELS, 1, type=STRING, default="text/plain",
              doc="Content-Type of `return` text bodies whose URI has no extension nginx knows"),
    Directive("types", HTTP_LEVELS, 0, data=parse_types, multiple=True, default=[],
              doc="`{ TYPE EXT ...; }`: Content-Type by the URI's extension; none set: nginx's built-in three"),
    Directive("absolute_redirect", HTTP_LEVELS, 1, type=FLAG, default=True,
              doc="a `Location` starting with `/` is sent as an absolute URL"),
    Directive("port_in_redirect", HTTP_LEVELS, 1, type=FLAG, default=True,
              doc="that absolute URL names the port (unless it is 80)"),
    Directive("server_name_in_redirect", HTTP_LEVELS, 1, type=FLAG, default=False,
              doc="that absolute URL names the server's first name instead of the request's host"),
    Directive("ngxsim_status", (LOCATION,), 0, type=FLAG, default=False, inherit=False,
              doc="this location answers the instance's status: workers, zones, modules (JSON or a page)"),
    Directive("api", (LOCATION,), (0, 1), parse=parse_api, default=None, inherit=False,
              doc="`[write=on|off]`: NGINX Plus's API (`/api/N/...`), read by its clients (docs/api.md)"),
    Directive("stub_status", (LOCATION,), (0, 1), parse=parse_stub_status, default=False, inherit=False,
              doc="nginx's basic status page (active, accepts, handled, requests, reading, writing, waiting)"),
)




@hookimpl
def ngxsim_directives(register):
    for directive in CORE_DIRECTIVES:
        register(directive)


@dataclass
class HttpCore:
    """What the core built from the ``http`` block: the server table and each server's matcher."""

    servers: ServerTable
    listens: list[Listen]


@hookimpl
def ngxsim_postconfiguration(config):
    # the worker table exists only for a status location to show (it costs a write per request)
    if any(loc.get("ngxsim_status") or loc.get("stub_status") or loc.get("api") for loc in config.blocks(LOCATION)):
        config.zones.declare_core(WORKERS_ZONE, ZONE_SIZE, owner="core", tag=WORKERS_TAG)
    http_blocks = config.blocks(HTTP)
    if not http_blocks:
        config.stash["core.http"] = None
        return
    formats = {"combined": Template(COMBINED)}
    for fmt in http_blocks[0]["log_format"]:
        if fmt.name in formats:
            raise http_blocks[0].error("log_format", f'duplicate "log_format" name "{fmt.name}"')
        formats[fmt.name] = fmt.template
    for block in config.main.walk():
        if "access_log" in block.own and block.own["access_log"] is not None:
            name = block.own["access_log"][1]
            if name not in formats:
                raise block.error("access_log", f'unknown log format "{name}"')
    config.stash["core.log_formats"] = formats
    table: ServerTable = ServerTable()
    listens: dict[tuple[str, int], Listen] = {}
    for server in config.blocks(SERVER):
        server_listens: list[Listen] = server["listen"]
        names = [n for names in server["server_name"] for n in names]
        try:
            table.add(server_listens, names, server)
        except ValueError as exc:
            raise server.error("listen", str(exc)) from None
        for listen in server_listens:
            listens.setdefault(listen.address, listen)
        server.stash["core.server_name"] = primary_name(names)
        _check_nesting(server, None)
        server.stash["core.locations"] = _locations(server)
    try:
        config.warnings.extend(table.check())
    except InvalidServerName as exc:
        raise exc.server.error("server_name", str(exc)) from None
    _check_binds(list(listens.values()), http_blocks[0])
    config.stash["core.http"] = HttpCore(table, list(listens.values()))


@hookimpl
def ngxsim_content_handler(location, config):
    if location["ngxsim_status"]:
        return StatusPage().handle
    if location["stub_status"]:
        return stub_status_handler
    api = location["api"]
    if api is not None:
        sections = config.stash.get("core.api_sections")
        if sections is None:
            try:
                sections = config.stash["core.api_sections"] = collect_sections(config)
            except ValueError as exc:
                raise location.error("api", str(exc)) from None
        return ApiHandler(location, sections, api["write"])
    return None


@hookimpl
def ngxsim_init_worker(runtime):
    if WORKERS_ZONE in runtime.config.zones:
        table = runtime.stash["core.workers"] = WorkerTable(runtime.zone(WORKERS_ZONE))
        if table.claim() is not None:
            runtime.on_request_start.append(table.count)


@hookimpl
def ngxsim_exit_worker(runtime):
    table = runtime.stash.pop("core.workers", None)
    if table is not None:
        table.release()


def _check_nesting(block, parent: LocationSpec | None) -> None:
    """nginx's rules for what may nest, checked in config order (as nginx does while parsing)."""
    for loc in block.children:
        if loc.context != LOCATION or loc.statement.name != "location":
            continue
        if parent is not None:
            problem = nesting_error(parent, loc.value)
            if problem:
                raise loc.statement.error(problem)
        _check_nesting(loc, loc.value)


def _locations(block) -> LocationMatcher | None:
    """The matcher of the locations directly inside ``block`` (each with its own inside)."""
    # a module's own block may open a location context too: only "location" lines are locations
    locs = [loc for loc in block.children if loc.context == LOCATION and loc.statement.name == "location"]
    if not locs:
        return None
    matcher: LocationMatcher = LocationMatcher()
    for loc in locs:
        try:
            matcher.add(loc.value, loc, _locations(loc))
        except ValueError as exc:  # nginx: "duplicate location "/x" in FILE:LINE", the later one
            raise loc.statement.error(str(exc)) from None
    return matcher


def _check_binds(listens: list[Listen], http) -> None:
    """A wildcard and a specific address on one port cannot both be bound by gunicorn."""
    ports_any = {listen.port for listen in listens if listen.host == "*"}
    for listen in listens:
        if listen.host != "*" and listen.port in ports_any:
            raise http.error(None, f'listen {listen} overlaps with a wildcard listen on port {listen.port}')
