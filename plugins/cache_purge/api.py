"""The purge API of a ``cache_purge_api NAME;`` location.

POST ``{"key": K}`` (``"/static/*"``: a prefix, as in NGINX Plus), ``{"keys": [..]}``,
``{"prefix": P}``, ``{"tag": T}`` or ``{"tags": [..]}`` -> ``200 {"purged": N, "type":
"purged"|"purge_batch", "generation": G}``, or ``404`` when nothing matched (and no event).
GET/HEAD -> the zone's numbers. Every error is a JSON body naming the problem, and a bad request
purges nothing.
"""

from __future__ import annotations

import json
import os

from ngxsim import ApiError, Methods, check_key, json_error, json_response, read_json

from .cache import purge, state
from .conf import CachePath
from .events import Invalidation
from .storage import StorageError

MAX_BODY = 64 * 1024
_ONE = ("key", "prefix", "tag")
_MANY = ("keys", "tags")
FIELDS = ("key", "keys", "prefix", "tag", "tags")


def invalidation(body: dict) -> Invalidation:
    """The purge a request body asks for, or ApiError(400) naming what is wrong with it."""
    unknown = [k for k in body if k not in FIELDS]
    if unknown:
        raise ApiError(400, f"unknown field(s) {', '.join(map(json.dumps, unknown))}; use one of {', '.join(FIELDS)}")
    given = [k for k in FIELDS if k in body]
    if len(given) != 1:
        what = "none" if not given else ", ".join(map(json.dumps, given))
        raise ApiError(400, f'give exactly one of "key", "keys", "prefix", "tag", "tags" (got {what})')
    name = given[0]
    value = body[name]
    if name in _ONE:
        if not isinstance(value, str) or (not value and name != "prefix"):
            raise ApiError(400, f'"{name}" must be a non-empty string' if name != "prefix" else '"prefix" must be a string')
        if name == "key":
            return Invalidation(prefix=value[:-1]) if value.endswith("*") else Invalidation(keys=(value,))
        return Invalidation(prefix=value) if name == "prefix" else Invalidation(tags=(value,))
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise ApiError(400, f'"{name}" must be a non-empty array of non-empty strings')
    return Invalidation(**{name: tuple(dict.fromkeys(value))})


def describe(inv: Invalidation) -> str:
    if inv.prefix is not None:
        return f"prefix {json.dumps(inv.prefix)}"
    if inv.keys:
        return ("key " if len(inv.keys) == 1 else "keys ") + ", ".join(map(json.dumps, inv.keys[:5])) + \
            (" ..." if len(inv.keys) > 5 else "")
    return ("tag " if len(inv.tags) == 1 else "tags ") + ", ".join(map(json.dumps, inv.tags[:5])) + \
        (" ..." if len(inv.tags) > 5 else "")


class PurgeApi:
    """The content handler of one purge API location."""

    def __init__(self, location, spec: CachePath):
        self.spec = spec
        self.zone = spec.zone
        self.key = location["cache_purge_key"]
        self.handle = Methods(GET=self.inspect, HEAD=self.inspect, POST=self.purge)

    def purge(self, ctx):
        check_key(ctx, self.key, action="purging")
        inv = invalidation(read_json(ctx, MAX_BODY))
        try:
            outcome = purge(ctx.runtime, self.zone, inv)
        except StorageError as error:
            return self._disk_failed(ctx, error, "writing", f"purging {describe(inv)}")
        if not outcome.purged:
            sent = "" if outcome.generation is None else \
                f"; sent to the other hosts of the cluster (generation {outcome.generation})"
            raise ApiError(404, f'nothing cached in zone "{self.zone}" matches {describe(inv)}{sent}')
        return json_response({"purged": outcome.purged, "type": outcome.type, "generation": outcome.generation})

    def _disk_failed(self, ctx, error: StorageError, verb: str, doing: str):
        """507 when the disk is full, else 503: JSON naming the path and the errno (null when the
        failure has none), and the worker's rate-bounded [crit] line."""
        state(ctx.runtime).caches[self.zone].report(error, verb, doing)
        status = 507 if error.disk_full else 503
        return json_error(status, f'{doing} in cache "{self.zone}" failed: {verb} {error}', zone=self.zone,
                          path=error.path, errno=error.errno)

    def inspect(self, ctx):
        cache = state(ctx.runtime).caches[self.zone]
        spec = self.spec
        try:
            shared = cache.shared.stats()
        except StorageError as error:
            return self._disk_failed(ctx, error, "reading", "reading the numbers")
        return json_response({
            "module": "cache_purge",
            "zone": self.zone,
            "path": spec.path,
            "max_size": spec.max_size,
            "inactive": spec.inactive,
            "shared": shared,
            "memory": {"pid": os.getpid(), **cache.memory.stats()},
        })
