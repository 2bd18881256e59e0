"""Conditional requests where a location caches, as nginx does them.

- To the origin: nginx's proxy sends none of the client's ``If-Modified-Since``,
  ``If-Unmodified-Since``, ``If-None-Match``, ``If-Match`` where ``proxy_cache`` is on
  (``ngx_http_proxy_cache_headers``): what it fetches is the whole resource, to store.
  ``withhold`` takes them out of the request before the content handler runs, ``restore``
  puts them back once the answer is made (for the log and the client's conditions).
- To the client: nginx's ``ngx_http_not_modified_filter`` judges them against the answer it
  sends when that answer is a hit or would be stored (``r->disable_not_modified =
  !u->cacheable``), a ``200`` only: ``If-Unmodified-Since`` or ``If-Match`` failing -> ``412``;
  ``If-Modified-Since`` equal to ``Last-Modified`` (nginx's ``if_modified_since exact``, its
  default) or ``If-None-Match`` naming the ``ETag`` (weak comparison) -> ``304``, with the
  answer's headers but ``Content-Type``, ``Content-Length``, ``Accept-Ranges``,
  ``Content-Encoding``.
"""

from __future__ import annotations

from email.utils import parsedate_to_datetime

from werkzeug.wrappers import Response

from ngxsim import error_page

from .conf import NAME

_NAMES = ("If-Modified-Since", "If-Unmodified-Since", "If-None-Match", "If-Match")
_KEYS = tuple("HTTP_" + n.upper().replace("-", "_") for n in _NAMES)
_STASH = f"{NAME}.conditions"
_NOT_IN_304 = frozenset(("content-type", "content-length", "accept-ranges", "content-encoding"))


def withhold(ctx) -> None:
    """Take the client's conditional headers out of the request (kept in ``ctx.stash``)."""
    env = ctx.environ
    found = {key: env[key] for key in _KEYS if key in env}
    if found:
        ctx.stash[_STASH] = found
        for name in _NAMES:  # out of what the proxy sends too (the header lines as written)
            ctx.set_request_header(name, None)


def restore(ctx) -> dict[str, str]:
    """Put back what ``withhold`` took (or nothing); returns them."""
    found = ctx.stash.pop(_STASH, None)
    if not found:
        return {}
    for name, key in zip(_NAMES, _KEYS):
        if key in found:
            ctx.set_request_header(name, found[key])
    return found


_ASKED = f"{NAME}.asked"


def ask_origin(ctx, stored: list[tuple[str, str]]) -> None:
    """``proxy_cache_revalidate``: ask the origin with the expired entry's ``ETag`` and
    ``Last-Modified`` (nginx's ``If-None-Match``/``If-Modified-Since`` to the origin)."""
    asked = {}
    for name, value in stored:
        low = name.lower()
        if low == "etag":
            asked["If-None-Match"] = value
        elif low == "last-modified":
            asked["If-Modified-Since"] = value
    for name, value in asked.items():
        ctx.set_request_header(name, value)
    if asked:
        ctx.stash[_ASKED] = tuple(asked)


def asked_origin(ctx) -> bool:
    """Whether the origin was asked conditionally (the headers leave the request again)."""
    asked = ctx.stash.pop(_ASKED, None)
    for name in asked or ():
        ctx.set_request_header(name, None)
    return asked is not None


def evaluate(conditions: dict[str, str], response) -> Response | None:
    """nginx's not-modified filter on a ``200``: its 412 or 304, or None (the answer goes as is)."""
    if response.status_code != 200:
        return None
    headers = response.headers
    modified = _http_time(headers.get("Last-Modified"))
    unmodified_since = conditions.get("HTTP_IF_UNMODIFIED_SINCE")
    if unmodified_since is not None and not (modified is not None and _http_time(unmodified_since) is not None
                                             and _http_time(unmodified_since) >= modified):
        return error_page(412)
    if_match = conditions.get("HTTP_IF_MATCH")
    if if_match is not None and not etag_matches(if_match, headers.get("ETag"), weak=False):
        return error_page(412)
    since = conditions.get("HTTP_IF_MODIFIED_SINCE")
    none_match = conditions.get("HTTP_IF_NONE_MATCH")
    if since is None and none_match is None:
        return None
    if since is not None and (modified is None or _http_time(since) != modified):
        return None
    if none_match is not None and not etag_matches(none_match, headers.get("ETag"), weak=True):
        return None
    answer = Response(b"", status=304)
    answer.headers.clear()
    for name, value in headers.items():
        if name.lower() not in _NOT_IN_304:
            answer.headers.add(name, value)
    return answer


def etag_matches(listed: str, etag: str | None, weak: bool) -> bool:
    """nginx's ``ngx_http_test_if_match``: ``*``, or the ETag (``W/`` set aside when ``weak``)
    as one of the comma-separated entries."""
    if listed == "*":
        return True
    if etag is None:
        return False
    if weak and len(etag) > 2 and etag.startswith("W/"):
        etag = etag[2:]
    for entry in listed.split(","):
        entry = entry.strip(" \t")
        if weak and len(entry) > 2 and entry.startswith("W/"):
            entry = entry[2:]
        if entry == etag:
            return True
    return False


def _http_time(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        return parsedate_to_datetime(text).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
