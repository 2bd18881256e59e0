"""Which responses are stored and for how long, nginx's way; and the tags a response carries.

Decided from the header lines as the origin sent them (``ctx.upstream_headers``: the proxy hides
``X-Accel-Expires`` from the client, the cache still obeys it), one line at a time in the order
they came, as nginx's ``ngx_http_upstream_process_set_cookie``, ``..._cache_control``,
``..._expires``, ``..._accel_expires`` and ``..._vary`` do:

- ``Set-Cookie``: never stored. ``Vary: *``: never stored; another ``Vary`` names the request
  headers whose values make the variant (``vary``): stored per variant. A ``206``: never stored.
- ``X-Accel-Expires`` (the first one; ASCII digits only, else ignored): ``0`` -> never stored;
  ``N`` -> N seconds, whatever ``Cache-Control`` or ``Expires`` say; ``@T`` -> until the epoch
  time T (ngxsim: not stored when T is not in the future; nginx stores it already stale).
- ``Cache-Control`` (each line; names found case-insensitively anywhere in the value, as nginx's
  ``ngx_strlcasestrn``): ``no-cache``, ``no-store``, ``private`` -> not stored; ``s-maxage=``,
  else ``max-age=`` -> that long, ``0`` -> not stored, anything but ASCII digits up to ``,``
  ``;`` or a space (``max-age=²``, ``max-age="60"``) -> not stored; an invalid
  ``stale-while-revalidate=``/``stale-if-error=`` -> not stored.
- ``Expires`` (the first one), when nothing above set a time: invalid or past -> not stored
  (unless a later ``max-age`` or ``X-Accel-Expires`` sets a time).
- nothing set a time: the first ``proxy_cache_valid`` that names the status (or ``any``).

``proxy_ignore_headers`` names the lines (lower case) left out of all this.
"""

from __future__ import annotations

import re
from email.utils import parsedate_to_datetime
from typing import Iterable

from .conf import Valid

# a 206 answers part of a resource: stored under the key it would later be served as the whole
NEVER_STORED = frozenset((206,))
# hop-by-hop headers (RFC 9110 7.6.1) and what the cache recomputes on a hit
_NOT_STORED_HEADERS = frozenset(("connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
                                 "trailer", "transfer-encoding", "upgrade", "content-length"))
TAG_HEADERS = ("Cache-Tag", "Surrogate-Key")
MAX_TAG_BYTES = 256
MAX_TAGS = 64
_TAG_SPLIT = re.compile(r"[\s,]+")
# the headers proxy_ignore_headers can take out of the storage rules (lower case)
STORAGE_HEADERS = ("x-accel-expires", "expires", "cache-control", "set-cookie", "vary")
_FIRST_ONLY = ("x-accel-expires", "expires")
MAX_SECONDS = 2**63 - 1  # NGX_MAX_INT_T_VALUE: nginx's bound on a delta or a time
# nginx lowers ASCII letters only (ngx_tolower): str.lower() would turn U+212A (Kelvin) into "k"
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def freshness(status: int, lines: Iterable[tuple[str, str]], valid: Iterable[Valid], now: float,
              ignore: frozenset[str] = frozenset()) -> float | None:
    """Seconds the response stays fresh, or None when it must not be stored.

    ``lines`` are the response's header lines in the order received (name, value); ``ignore``
    the lower-case names ``proxy_ignore_headers`` takes out of the rules."""
    rules = _Rules(now, ignore)
    rules.cacheable = status not in NEVER_STORED
    for name, value in lines:
        rules.line(name.lower(), value.strip())
    if not rules.cacheable or rules.no_cache or rules.expired:
        return None
    if rules.valid_until is not None:
        seconds = rules.valid_until - now
        return seconds if seconds > 0 else None
    for rule in valid:
        if rule.any or status in rule.codes:
            return rule.seconds if rule.seconds > 0 else None
    return None


class _Rules:
    """nginx's per-request cache flags while the header lines are read (``u->cacheable``,
    ``headers_in.no_cache``, ``headers_in.expired``, ``r->cache->valid_sec``)."""

    __slots__ = ("now", "ignore", "cacheable", "no_cache", "expired", "valid_until", "seen")

    def __init__(self, now: float, ignore: frozenset[str]):
        self.now, self.ignore = now, ignore
        self.cacheable, self.no_cache, self.expired = True, False, False
        self.valid_until: float | None = None  # valid_sec (None: 0, not set)
        self.seen: set[str] = set()  # of _FIRST_ONLY

    def line(self, name: str, value: str) -> None:
        if name not in STORAGE_HEADERS:
            return
        if name in _FIRST_ONLY:  # nginx keeps the first and warns of the others
            if name in self.seen:
                return
            self.seen.add(name)
        if name in self.ignore:
            return
        if name == "set-cookie":
            self.cacheable = False
        elif name == "vary":
            if value == "*":
                self.cacheable = False  # the other values are stored per variant (vary())
        elif name == "x-accel-expires":
            self._accel_expires(value)
        elif name == "cache-control":
            self._cache_control(value.translate(_ASCII_LOWER))
        elif self.valid_until is None:  # expires
            try:
                when = parsedate_to_datetime(value).timestamp()
            except (TypeError, ValueError, IndexError, OverflowError):
                when = None
            if when is None or when < self.now:
                self.expired = True
            else:
                self.valid_until = when

    def _accel_expires(self, value: str) -> None:
        absolute = value.startswith("@")
        n = ascii_number(value[1:] if absolute else value)
        if n is None:
            return  # nginx ignores a value that is not a number
        if not absolute and n == 0:
            self.cacheable = False
            return
        # "@0" or a past time: nginx would store it stale (or fall back to proxy_cache_valid);
        # ngxsim stores nothing the origin dated in the past
        self.valid_until = float(n) if absolute else self.now + n
        if absolute and self.valid_until <= self.now:
            self.cacheable = False
        self.no_cache = self.expired = False

    def _cache_control(self, value: str) -> None:
        if self.valid_until is None or "x-accel-expires" not in self.seen:
            if "no-cache" in value or "no-store" in value or "private" in value:
                self.no_cache = True
                return
            at, skip = value.find("s-maxage="), 9
            if at < 0:
                at, skip = value.find("max-age="), 8
            if at >= 0:
                n = _delta_seconds(value, at + skip)
                if n is None:
                    self.cacheable = False
                    return
                if n == 0:
                    self.no_cache = True
                    return
                self.valid_until = min(self.now + n, float(MAX_SECONDS))
                self.expired = False
        for extension in ("stale-while-revalidate=", "stale-if-error="):
            at = value.find(extension)
            if at >= 0 and _delta_seconds(value, at + len(extension)) is None:
                self.cacheable = False
                return


def vary(lines: Iterable[tuple[str, str]], ignore: frozenset[str] = frozenset()) -> tuple[str, ...]:
    """The request headers (lower case, in order, each once) the ``Vary`` lines name; none when
    ``proxy_ignore_headers Vary``."""
    if "vary" in ignore:
        return ()
    names: dict[str, None] = {}
    for name, value in lines:
        if name.lower() == "vary":
            for part in value.split(","):
                part = part.strip().translate(_ASCII_LOWER)
                if part:
                    names.setdefault(part, None)
    return tuple(names)


def variant(environ, names: tuple[str, ...]) -> str:
    """The request's variant for those headers: each name and the value it came with (nginx's
    ``ngx_http_file_cache_vary``)."""
    return "\n".join(f"{name}:{environ.get('HTTP_' + name.upper().replace('-', '_'), '')}" for name in names)


def ascii_number(text: str) -> int | None:
    """nginx's ``ngx_atoi``: ASCII digits only, at least one, at most NGX_MAX_INT_T_VALUE."""
    if not text or not text.isascii() or not text.isdigit():
        return None
    digits = text.lstrip("0") or "0"
    return int(digits) if len(digits) <= 19 and int(digits) <= MAX_SECONDS else None  # int() refuses 4,300+ digits


def _delta_seconds(value: str, start: int) -> int | None:
    """nginx's ``ngx_http_upstream_process_delta_seconds``: ASCII digits up to ``,``, ``;``, a
    space or the end (none: 0); any other character: invalid (None); capped, not refused."""
    n = 0
    for ch in value[start:]:
        if ch in ",; ":
            break
        if not "0" <= ch <= "9":
            return None
        n = min(n * 10 + ord(ch) - 48, MAX_SECONDS)
    return n


def tags(headers) -> tuple[str, ...]:
    """The tags of a response: ``Cache-Tag`` and ``Surrogate-Key``, space or comma separated,
    in order, each once. Tags longer than 256 bytes and any beyond the 64th are not kept."""
    seen: dict[str, None] = {}
    for name in TAG_HEADERS:
        for line in headers.getlist(name):
            for tag in _TAG_SPLIT.split(line):
                if tag and len(tag.encode()) <= MAX_TAG_BYTES:
                    seen.setdefault(tag, None)
    return tuple(seen)[:MAX_TAGS]


def stored_headers(headers) -> list[tuple[str, str]]:
    """The headers a cached response is answered with (hop-by-hop ones and Content-Length,
    which the hit recomputes, left out)."""
    return [(k, v) for k, v in headers.items() if k.lower() not in _NOT_STORED_HEADERS]
