"""Which responses are stored and for how long, nginx's way; and the tags a response carries.

nginx's order (``ngx_http_upstream_process_headers``, ``..._cache_control``): a response with
``Set-Cookie`` or ``Vary`` (nginx: ``Vary: *``; ngxsim keeps no variants) is never stored; ``X-Accel-Expires`` decides when present;
otherwise ``Cache-Control`` (``no-cache``, ``no-store``, ``private`` -> not stored;
``s-maxage``, else ``max-age`` -> that long, 0 -> not stored); otherwise ``Expires``; otherwise
the first ``proxy_cache_valid`` that names the status (or ``any``).
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


def freshness(status: int, headers, valid: Iterable[Valid], now: float) -> float | None:
    """Seconds the response stays fresh, or None when it must not be stored.

    ``headers`` is a werkzeug ``Headers`` (case-insensitive ``get``/``getlist``)."""
    if status in NEVER_STORED or headers.get("Set-Cookie") is not None:
        return None
    if headers.get("Vary") is not None:
        return None  # nginx never stores "Vary: *"; ngxsim keeps no variants, so no Vary at all (see docs)
    accel = headers.get("X-Accel-Expires")
    if accel is not None:
        seconds = _accel_expires(accel.strip(), now)
        if seconds is not None:
            return seconds if seconds > 0 else None
    control = cache_control(headers.getlist("Cache-Control"))
    if control:
        if "no-cache" in control or "no-store" in control or "private" in control:
            return None
        age = control.get("s-maxage") or control.get("max-age")
        if age is not None:
            return float(age) if age.isdigit() and int(age) > 0 else None
    expires = headers.get("Expires")
    if expires is not None:
        try:
            seconds = parsedate_to_datetime(expires).timestamp() - now
        except (TypeError, ValueError, IndexError, OverflowError):
            return None  # RFC 9111: an invalid Expires means "already expired"
        return seconds if seconds > 0 else None
    for rule in valid:
        if rule.any or status in rule.codes:
            return rule.seconds if rule.seconds > 0 else None
    return None


def _accel_expires(text: str, now: float) -> float | None:
    if text.startswith("@"):
        return float(text[1:]) - now if text[1:].isdigit() else None
    return float(text) if text.isdigit() else None


def cache_control(values: list[str]) -> dict[str, str | None]:
    """``Cache-Control`` lines -> {directive (lower case): value or None}; the first wins."""
    out: dict[str, str | None] = {}
    for line in values:
        for part in line.split(","):
            name, eq, value = part.strip().partition("=")
            name = name.strip().lower()
            if name and name not in out:
                out[name] = value.strip().strip('"') if eq else None
    return out


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
