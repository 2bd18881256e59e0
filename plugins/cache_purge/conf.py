"""cache_purge's directives: nginx's names and argument shapes, checked with nginx's wording.

- ``proxy_cache_path PATH keys_zone=NAME:SIZE [inactive=TIME] [max_size=SIZE] [mem_size=SIZE];``
- ``proxy_cache NAME | off;``  ``proxy_cache_key STRING;``  ``proxy_cache_valid [CODE...] TIME;``
- ``proxy_cache_bypass STRING...;``  ``proxy_no_cache STRING...;``  ``proxy_ignore_headers FIELD...;``
- ``proxy_cache_purge on | off | METHOD [from all | ADDR...];`` (ngx_cache_purge's same-location form)
- ``cache_purge_api NAME;``  ``cache_purge_key SECRET;``

Values are parsed here; ``check`` (run from ``ngxsim_postconfiguration``) ties them together:
every ``proxy_cache`` names a declared keys zone, zones and paths are not used twice, and so on,
each error pointing at the line that caused it.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass

from ngxsim import FLAG, HTTP, NUMBER, TIME, LOCATION, SERVER, Directive, Template, parse_size, parse_time

NAME = "cache_purge"
LEVELS = (HTTP, SERVER, LOCATION)
# nginx's key without proxy_cache_key: the proxy_pass URL's "http://host" and the request URI (its cache
# file's "KEY:" line; its documentation writes $scheme$proxy_host$request_uri, which would lack "://")
DEFAULT_KEY = "http://$proxy_host$request_uri"
DEFAULT_INACTIVE = 600.0           # nginx: 10m
DEFAULT_MEM_SIZE = 16 * 1024**2    # per worker
MIN_KEYS_ZONE = 8192               # nginx: two pages
# nginx's proxy_cache_path parameters that have no meaning for a diskcache directory
_UNSUPPORTED = ("levels", "use_temp_path", "min_free", "manager_files", "manager_sleep", "manager_threshold",
                "loader_files", "loader_sleep", "loader_threshold", "purger", "purger_files", "purger_sleep",
                "purger_threshold")
_DEFAULT_VALID_CODES = (200, 301, 302)
_METHOD = re.compile(r"[A-Z][A-Z_-]{0,31}")
_ZONE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")


@dataclass(frozen=True)
class CachePath:
    """One ``proxy_cache_path``: a shared level on disk and its keys zone."""

    path: str
    zone: str
    zone_size: int
    inactive: float = DEFAULT_INACTIVE
    max_size: int | None = None   # None: bounded by the disk only (nginx's default)
    mem_size: int = DEFAULT_MEM_SIZE


def parse_cache_path(args: list[str]) -> CachePath:
    path, params = args[0], args[1:]
    found: dict = {}
    for param in params:
        name, eq, value = param.partition("=")
        if not eq:
            raise ValueError(f'invalid parameter "{param}"')
        if name in _UNSUPPORTED:
            raise ValueError(f'"{name}" parameter of "proxy_cache_path" is not supported by ngxsim '
                             f'(the shared level is a diskcache directory); remove it')
        if name == "keys_zone":
            zone, colon, size = value.partition(":")
            if not colon or not _ZONE.fullmatch(zone):
                raise ValueError(f'invalid keys zone size "{param}"')
            try:
                found["zone_size"] = parse_size(size)
            except ValueError:
                raise ValueError(f'invalid keys zone size "{param}"') from None
            if found["zone_size"] < MIN_KEYS_ZONE:
                raise ValueError(f'keys zone "{zone}" is too small')
            found["zone"] = zone
        elif name == "inactive":
            found["inactive"] = _convert(parse_time, value, f'invalid inactive value "{param}"')
            if found["inactive"] <= 0:
                raise ValueError(f'invalid inactive value "{param}"')
        elif name in ("max_size", "mem_size"):
            found[name] = _convert(parse_size, value, f'invalid {name} value "{param}"')
            if found[name] <= 0:
                raise ValueError(f'invalid {name} value "{param}"')
        else:
            raise ValueError(f'invalid parameter "{param}"')
    if "zone" not in found:
        raise ValueError('"proxy_cache_path" must have "keys_zone" parameter')
    return CachePath(path, **found)


def _convert(fn, value: str, message: str):
    try:
        return fn(value)
    except ValueError:
        raise ValueError(message) from None


def parse_cache(args: list[str]) -> str | None:
    return None if args[0] == "off" else args[0]


def parse_key(args: list[str]) -> Template:
    return Template(args[0])  # compiled while the config loads: an unknown variable fails here


@dataclass(frozen=True)
class Valid:
    """One ``proxy_cache_valid``: the statuses (empty: any) and for how long."""

    codes: frozenset[int]
    seconds: float
    any: bool = False


def parse_valid(args: list[str]) -> Valid:
    *codes, time_text = args
    try:
        seconds = parse_time(time_text)
    except ValueError:
        raise ValueError(f'invalid time value "{time_text}"') from None
    if not codes:
        return Valid(frozenset(_DEFAULT_VALID_CODES), seconds)
    statuses: set[int] = set()
    for code in codes:
        if code == "any":  # nginx lets "any" stand with codes; it covers them all
            continue
        if not code.isascii() or not code.isdigit() or not 100 <= int(code) <= 599:
            raise ValueError(f'invalid status "{code}"')
        statuses.add(int(code))
    return Valid(frozenset(statuses), seconds, any="any" in codes)


def parse_predicates(args: list[str]) -> tuple[Template, ...]:
    return tuple(Template(a) for a in args)


@dataclass(frozen=True)
class PurgeMethod:
    """``proxy_cache_purge METHOD [from ...]``: who may purge a URL's key with ``METHOD``."""

    method: str
    networks: tuple = ()      # empty with allow_all False never happens: no "from" means all
    allow_all: bool = True

    def allows(self, addr: str) -> bool:
        if self.allow_all:
            return True
        try:
            ip = ipaddress.ip_address(addr)
        except ValueError:
            return False
        return any(ip in net for net in self.networks)


def parse_purge(args: list[str]) -> PurgeMethod | None:
    first, rest = args[0], args[1:]
    if first == "off":
        if rest:
            raise ValueError(f'invalid parameter "{rest[0]}"')
        return None
    method = "PURGE" if first == "on" else first
    if not _METHOD.fullmatch(method):
        raise ValueError(f'invalid method "{first}" in "proxy_cache_purge" directive (ngxsim has the same-location '
                         f'form "on|off|METHOD [from all|ADDR...]"; purge other keys with "cache_purge_api")')
    if not rest:
        return PurgeMethod(method)
    if rest[0] != "from" or len(rest) == 1:
        raise ValueError(f'invalid parameter "{rest[0] if rest[0] != "from" else "from"}"'
                         + ('' if rest[0] != "from" else ': "from" needs "all" or addresses'))
    addrs = rest[1:]
    if addrs == ["all"]:
        return PurgeMethod(method)
    networks = []
    for addr in addrs:
        try:
            networks.append(ipaddress.ip_network(addr, strict=False))
        except ValueError:
            raise ValueError(f'invalid parameter "{addr}"') from None
    return PurgeMethod(method, tuple(networks), allow_all=False)


# proxy_ignore_headers' values (nginx's ngx_http_upstream_ignore_headers_masks); ngxsim acts on
# the storage rules' five, and accepts the others (X-Accel-Redirect... it does not implement)
IGNORABLE = ("X-Accel-Redirect", "X-Accel-Expires", "X-Accel-Limit-Rate", "X-Accel-Buffering", "X-Accel-Charset",
             "Expires", "Cache-Control", "Set-Cookie", "Vary")


def parse_ignore_headers(args: list[str]) -> frozenset[str]:
    """``proxy_ignore_headers FIELD...`` -> the lower-case names (nginx compares them case-blind)."""
    known = {name.lower() for name in IGNORABLE}
    for arg in args:
        if arg.lower() not in known:
            raise ValueError(f'invalid value "{arg}"')
    return frozenset(arg.lower() for arg in args)


# proxy_cache_use_stale's values (nginx's ngx_http_proxy_next_upstream_masks and "updating")
STALE_CONDITIONS = ("error", "timeout", "invalid_header", "http_500", "http_502", "http_503", "http_504",
                    "http_403", "http_404", "http_429")


def parse_use_stale(args: list[str]) -> frozenset[str]:
    """``proxy_cache_use_stale off | CONDITION...`` -> the conditions (empty: off)."""
    for arg in args:
        if arg == "off" and len(args) > 1:
            raise ValueError('invalid value "off"')  # nginx: off stands alone
        if arg != "off" and arg != "updating" and arg not in STALE_CONDITIONS:
            raise ValueError(f'invalid value "{arg}"')
    found = frozenset(a for a in args if a != "off")
    # nginx: "error" covers "no live upstreams" too; "invalid_header" answers as an error here
    return found


def parse_methods(args: list[str]) -> frozenset[str]:
    """``proxy_cache_methods GET | HEAD | POST ...`` (nginx's mask: those three; GET and HEAD
    are always in)."""
    for arg in args:
        if arg not in ("GET", "HEAD", "POST"):
            raise ValueError(f'invalid value "{arg}"')
    return frozenset(("GET", "HEAD", *args))


def parse_api_zone(args: list[str]) -> str:
    return args[0]


def parse_secret(args: list[str]) -> str:
    if not args[0]:
        raise ValueError('"cache_purge_key" must not be empty')
    return args[0]


DIRECTIVES = (
    Directive("proxy_cache_path", (HTTP,), (2, None), parse=parse_cache_path, multiple=True, inherit=False, default=[],
              doc="`PATH keys_zone=NAME:SIZE [inactive=TIME] [max_size=SIZE] [mem_size=SIZE]`: a shared level on "
                  "disk and its keys zone"),
    Directive("proxy_cache", LEVELS, 1, parse=parse_cache, default=None, doc="`NAME | off`: cache responses here"),
    Directive("proxy_cache_key", LEVELS, 1, parse=parse_key, default=None,
              doc=f"the key of a response; default `{DEFAULT_KEY}`"),
    Directive("proxy_cache_valid", LEVELS, (1, None), parse=parse_valid, multiple=True, default=[],
              doc="`[CODE...|any] TIME`: how long responses with these statuses stay fresh (no codes: 200 301 302)"),
    Directive("proxy_cache_bypass", LEVELS, (1, None), parse=parse_predicates, multiple=True, default=[],
              doc="`STRING...`: when one is not empty and not \"0\", answer from the backend (BYPASS)"),
    Directive("proxy_no_cache", LEVELS, (1, None), parse=parse_predicates, multiple=True, default=[],
              doc="`STRING...`: when one is not empty and not \"0\", do not store the response"),
    Directive("proxy_ignore_headers", LEVELS, (1, None), parse=parse_ignore_headers, default=frozenset(),
              doc="`FIELD...`: the storage rules leave out these origin header lines (`X-Accel-Expires`, `Expires`, "
                  "`Cache-Control`, `Set-Cookie`, `Vary`)"),
    Directive("proxy_cache_use_stale", LEVELS, (1, None), parse=parse_use_stale, default=frozenset(),
              doc="`off | error | timeout | invalid_header | http_500 | http_502 | http_503 | http_504 | http_403 | "
                  "http_404 | http_429 ...`: answer with the expired entry (`STALE`) when refreshing it meets one"),
    Directive("proxy_cache_background_update", LEVELS, 1, type=FLAG, default=False,
              doc="`on | off`: with `proxy_cache_use_stale updating`, an expired entry answers at once (`STALE`) "
                  "and a background subrequest refreshes it"),
    Directive("proxy_cache_convert_head", LEVELS, 1, type=FLAG, default=True,
              doc="`on | off`: a HEAD that misses is fetched (and stored) as a GET (nginx's default, on)"),
    Directive("proxy_cache_revalidate", LEVELS, 1, type=FLAG, default=False,
              doc="`on | off`: an expired entry with an ETag or Last-Modified is asked for again conditionally; "
                  "a 304 makes it fresh again (`REVALIDATED`)"),
    Directive("proxy_cache_methods", LEVELS, (1, None), parse=parse_methods, default=frozenset(("GET", "HEAD")),
              doc="`GET | HEAD | POST ...`: the methods whose answers are cached (GET and HEAD always)"),
    Directive("proxy_cache_min_uses", LEVELS, 1, type=NUMBER, default=1, range=(1, 2**31 - 1),
              doc="`NUMBER`: an answer is stored once its key was asked for this many times (within `inactive`)"),
    Directive("proxy_cache_lock", LEVELS, 1, type=FLAG, default=False,
              doc="`on | off`: of the requests that miss one key, one goes to the origin, the others wait for it"),
    Directive("proxy_cache_lock_timeout", LEVELS, 1, type=TIME, default=5.0,
              doc="`TIME`: a request waits for the lock this long, then goes to the origin (not stored)"),
    Directive("proxy_cache_lock_age", LEVELS, 1, type=TIME, default=5.0,
              doc="`TIME`: a lock older than this lets one more request go to the origin"),
    Directive("proxy_cache_purge", LEVELS, (1, None), parse=parse_purge, default=None,
              doc="`on | off | METHOD [from all | ADDR...]`: METHOD on a URL purges its key"),
    Directive("cache_purge_api", (LOCATION,), 1, parse=parse_api_zone, default=None, inherit=False,
              doc="`NAME`: this location is the purge API of the keys zone NAME"),
    Directive("cache_purge_key", (LOCATION,), 1, parse=parse_secret, default=None, inherit=False,
              doc="purging through the API needs `?key=SECRET`"),
)


# -- checks across directives (ngxsim_postconfiguration) ---------------------------------------


def cache_paths(config) -> dict[str, tuple[CachePath, object]]:
    """The ``proxy_cache_path`` lines of the http block by zone, each with its statement, with
    relative paths made absolute (from the config file's folder), no zone or path used twice,
    and the directories made (as nginx makes them at start, ``nginx -t`` included)."""
    http = config.blocks(HTTP)
    if not http:
        return {}
    http = http[0]
    statements = [s for s in (http.statement.block or []) if s.name == "proxy_cache_path"]
    base = os.path.dirname(config.path) if os.path.isabs(config.path) else os.getcwd()
    caches: dict[str, tuple[CachePath, object]] = {}
    paths: dict[str, object] = {}
    for spec, stmt in zip(http["proxy_cache_path"], statements):
        path = os.path.normpath(os.path.join(base, spec.path))
        if spec.zone in caches:
            raise stmt.error(f'duplicate zone "{spec.zone}"')
        if path in paths:
            first = paths[path]
            raise stmt.error(f'the same path name "{path}" used in {first.file}:{first.line} and')
        paths[path] = stmt
        _make_dir(path, stmt)
        caches[spec.zone] = (CachePath(path, spec.zone, spec.zone_size, spec.inactive, spec.max_size, spec.mem_size), stmt)
    return caches


def _make_dir(path: str, stmt) -> None:
    """nginx creates cache directories at start (``nginx -t`` too) and stops when it cannot."""
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
    except OSError as exc:
        raise stmt.error(f'mkdir() "{path}" failed ({exc.errno}: {exc.strerror})') from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise stmt.error(f'cache path "{path}" is not writable')


def cache_key(location, config) -> Template:
    """The location's ``proxy_cache_key``, or nginx's default: ``http://$proxy_host$request_uri``
    (for a ``proxy_pass`` with a URI part nginx's key has the URI sent to the origin; ngxsim's
    the request URI).

    ``$proxy_host`` and ``$proxy_port`` come from the upstreams module, which gives them from the
    location's ``proxy_pass`` before the request is proxied (the cache's lookup runs first): the
    group's name or the address as written, as in nginx."""
    key = location["proxy_cache_key"]
    if key is not None:
        return key
    if "upstreams" not in config.module_names():  # nothing gives $proxy_host (another content handler)
        raise location.error("proxy_cache", f'the default "proxy_cache_key" ({DEFAULT_KEY}) needs $proxy_host '
                                            f'("load_module upstreams;" and "proxy_pass"): set "proxy_cache_key" '
                                            f'here')
    return Template(DEFAULT_KEY)


def check_location(location, caches: dict[str, CachePath]) -> CachePath | None:
    """The cache this location uses (None: none), after checking what it names.

    As in nginx, a ``proxy_cache`` inherited from server or http applies where the location
    proxies (``proxy_pass``), not to every location below it (an API, a ``return``). Set in the
    location itself it caches whatever the location's content handler answers."""
    own = location.statement.block or []
    if location["proxy_cache"] is None:
        if location.where_of("proxy_cache_purge") in own and location["proxy_cache_purge"] is not None:
            raise location.error("proxy_cache_purge", '"proxy_cache_purge" requires "proxy_cache"')
        return None
    if location.where_of("proxy_cache") not in own and location.get("proxy_pass") is None:
        return None
    return _named_cache(location, "proxy_cache", caches)


def check_api(location, caches: dict[str, CachePath]) -> CachePath | None:
    """The cache whose purge API this location is (None: not one)."""
    if location["cache_purge_api"] is None and location["cache_purge_key"] is not None:
        raise location.error("cache_purge_key", '"cache_purge_key" requires "cache_purge_api"')
    return _named_cache(location, "cache_purge_api", caches)


def _named_cache(location, directive: str, caches: dict[str, CachePath]) -> CachePath | None:
    zone = location[directive]
    if zone is None:
        return None
    spec = caches.get(zone)
    if spec is None:
        raise location.error(directive, f'"{directive}" zone "{zone}" is unknown')
    return spec


__all__ = ["DIRECTIVES", "CachePath", "PurgeMethod", "Valid", "cache_key", "cache_paths", "check_api", "check_location"]
