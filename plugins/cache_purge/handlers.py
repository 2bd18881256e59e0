"""A location with ``proxy_cache``: answer hits and ``PURGE`` before the content handler, and keep
a copy of cacheable responses as they stream to the client.

- pre-content (nginx's precontent phase): GET/HEAD -> memory level, then shared level; a fresh
  entry is the answer (``HIT``); otherwise the request goes on (``MISS``, ``EXPIRED``,
  ``BYPASS``; a HEAD as a GET, nginx's ``proxy_cache_convert_head``) and the body filter may
  store what comes back. The client's conditional headers are withheld from the origin and
  judged against the answer (conditional.py). The purge method (``PURGE``) ->
  ngx_cache_purge's answer.
- body filter: decide from the status and headers (``policy.freshness``) whether to store; if so,
  wrap the body so the bytes streamed to the client are also kept, and store them when the body
  is complete — before its last bytes go out when its length is known (a client that hangs up,
  or a body shorter than its Content-Length, stores nothing).
"""

from __future__ import annotations

import html
import json
import logging
import time
from typing import Iterable, Iterator

from werkzeug.wrappers import Response

from ngxsim import ApiError, Delay, error_page, request_body, run_in_background, run_subrequest, subrequest

from . import conditional

from . import stats
from .cache import announce_refresh, purge
from .conf import NAME, CachePath, cache_key
from .events import Invalidation
from .lock import POLL, CacheLock, KeyRecords
from .levels import NOT_STORED, REPLACED, VARIANT, Entry
from .policy import ascii_number, freshness, stored_headers, tags, vary, variant
from .storage import StorageError

log = logging.getLogger("ngxsim.cache_purge")
STATUS = "upstream_cache_status"  # ctx.vars name of $upstream_cache_status
_PURGED_PAGE = ("<html>\r\n<head><title>Successful purge</title></head>\r\n<body>\r\n"
                "<center><h1>Successful purge</h1>\r\n<br>Key : {key}\r\n</center>\r\n"
                "<hr><center>ngxsim</center>\r\n</body>\r\n</html>\r\n")


class _Pending:
    """A request that may store its response: what the lookup saw before the response was made."""

    __slots__ = ("cache", "key", "epoch", "mem_epoch", "stale", "held")

    def __init__(self, cache, key: str, epoch: int, mem_epoch: int, stale: Entry | None = None):
        self.cache, self.key, self.epoch, self.mem_epoch = cache, key, epoch, mem_epoch
        self.stale = stale  # the expired entry (proxy_cache_use_stale, proxy_cache_revalidate)
        self.held: tuple | None = None  # (KeyRecords, name): the lock or updating mark this request holds


def _any_set(templates: Iterable, ctx) -> bool:
    """nginx's proxy_cache_bypass / proxy_no_cache test: a value not empty and not "0"."""
    for t in templates:
        value = t.render(ctx)
        if value and value != "0":
            return True
    return False


class CachedLocation:
    """The cache part of one location (built once at config load)."""

    def __init__(self, location, spec: CachePath, config, lock_zones: tuple[str, ...] = ()):
        self.zone = spec.zone
        self.max_entry = spec.max_size
        self.key = cache_key(location, config)
        self.valid = tuple(location["proxy_cache_valid"])
        self.bypass = tuple(t for templates in location["proxy_cache_bypass"] for t in templates)
        self.no_cache = tuple(t for templates in location["proxy_no_cache"] for t in templates)
        self.ignore = location["proxy_ignore_headers"]
        self.purge_method = location["proxy_cache_purge"]
        self.methods = location["proxy_cache_methods"]
        self.use_stale = location["proxy_cache_use_stale"]
        self.revalidate = location["proxy_cache_revalidate"]
        self.convert_head = location["proxy_cache_convert_head"]
        self.min_uses = location["proxy_cache_min_uses"]
        self.uses = KeyRecords(spec.zone, lock_zones) if self.min_uses > 1 else None
        self.inactive = spec.inactive
        self.updating = CacheLock(spec.zone, location["proxy_cache_lock_age"], 0.0, lock_zones) \
            if "updating" in self.use_stale else None
        # nginx refreshes in the background only where stale answers are allowed while updating
        self.background_update = location["proxy_cache_background_update"] and self.updating is not None
        self.lock = CacheLock(spec.zone, location["proxy_cache_lock_age"], location["proxy_cache_lock_timeout"],
                              lock_zones) if location["proxy_cache_lock"] else None

    # -- pre-content ------------------------------------------------------------------------------

    def precontent(self, ctx):
        method = ctx.environ["REQUEST_METHOD"]
        if method not in self.methods:
            if self.purge_method is not None and method == self.purge_method.method:
                return self._purge(ctx)
            conditional.withhold(ctx)  # nginx's proxy sends no conditional header where it caches
            return None  # proxy_cache_methods (GET and HEAD always): other methods never touch the cache
        conditional.withhold(ctx)  # judged against the answer (body filter), never sent to the origin
        if method == "HEAD" and self.convert_head:  # to the origin as a GET; the answer as the HEAD's
            ctx.environ["REQUEST_METHOD"] = "GET"  # proxy_cache_convert_head on (nginx's default)
            ctx.stash[_HEAD] = True
        return self._lookup(ctx, None)

    def _lookup(self, ctx, waiting: float | None):
        """The answer from the cache, or None (to the origin), or a wait for the cache lock
        (``waiting``: since when this request waits for it)."""
        cache = ctx.runtime.stash[NAME].caches[self.zone]
        key = self.key.render(ctx)
        memory = cache.memory
        if self.bypass and _any_set(self.bypass, ctx):
            ctx.vars[STATUS] = "BYPASS"
            try:
                self._expect(ctx, cache, key, cache.shared.epoch(), memory.epoch)
            except StorageError as error:  # the shared level cannot be opened: nothing to store into
                cache.report(error, "reading", f"looking up {_quoted(key)}")
            return None
        entry = memory.get(key)
        if entry is not None and entry.vary:
            key, entry = self._variant(ctx, key, entry, memory.get)
        if entry is not None:
            ctx.vars[STATUS] = "HIT"
            return entry.response()
        mem_epoch = memory.epoch  # before the shared read: an invalidation after it voids the copy
        try:
            shared = cache.shared
            epoch = shared.epoch()
            entry = shared.get(key)
            if entry is not None and entry.vary:
                key, entry = self._variant(ctx, key, entry, shared.get)
        except StorageError as error:  # nginx too answers from the backend when its cache cannot be read
            cache.report(error, "reading", f"looking up {_quoted(key)}")
            ctx.vars[STATUS] = "MISS"
            return None
        except Exception:
            log.exception("cache_purge: reading %r from zone %s failed; answering from the backend", key, self.zone)
            ctx.vars[STATUS] = "MISS"
            return None
        if entry is not None and entry.valid_until > time.time():
            memory.put(key, entry, mem_epoch)
            ctx.vars[STATUS] = "HIT"
            return entry.response()
        ctx.vars[STATUS] = "EXPIRED" if entry is not None else "MISS"
        if entry is None and self.uses is not None and waiting is None \
                and self.uses.use(ctx.runtime, key, self.inactive) < self.min_uses:
            return None  # proxy_cache_min_uses: not asked for often enough yet to be stored
        if entry is not None and self.updating is not None:  # use_stale updating: one request refreshes it
            if not self.updating.take(ctx.runtime, _UPDATING + key, time.time()):
                ctx.vars[STATUS] = "UPDATING"
                return entry.response()
            if self.background_update and not ctx.background \
                    and self._update_in_background(ctx, cache, key, epoch, mem_epoch, entry):
                ctx.vars[STATUS] = "STALE"  # nginx: the stale answer now, the refresh beside it
                return entry.response()
            ctx.stash[_LOCKED] = (self.updating, _UPDATING + key)
        lock = self.lock
        if entry is None and lock is not None:  # proxy_cache_lock: one request fills it
            if not lock.take(ctx.runtime, key, time.time()):
                started = time.monotonic() if waiting is None else waiting
                left = lock.timeout - (time.monotonic() - started)
                if left > 0:  # nginx looks again every 500 ms
                    return Delay(min(POLL, left), then=lambda c: self._lookup(c, started))
                return None  # lock_timeout: to the origin, and not stored (nginx)
            ctx.stash[_LOCKED] = (lock, key)
        self._expect(ctx, cache, key, epoch, mem_epoch, entry)
        if entry is not None and self.revalidate:
            conditional.ask_origin(ctx, entry.headers)  # proxy_cache_revalidate: a 304 refreshes it
        return None

    def _update_in_background(self, ctx, cache, key: str, epoch: int, mem_epoch: int, entry: Entry) -> bool:
        """``proxy_cache_background_update``: refresh the expired ``entry`` in a background
        subrequest that holds the key's updating mark (the others answer ``UPDATING`` meanwhile)
        and stores what the origin answers as a request does. False when the worker's background
        work is at its limit, or the request's body cannot be read: this request refreshes it
        itself (``EXPIRED``; the proxy answers the body's error, as nginx does before it looks)."""
        if ctx.environ.get("CONTENT_LENGTH") or ctx.environ.get("HTTP_TRANSFER_ENCODING"):
            try:  # nginx reads the body before its cache looks: the subrequest sends it too
                request_body(ctx)
            except ApiError:
                return False
        sub = subrequest(ctx)
        sub.vars[STATUS] = "EXPIRED"  # what nginx's subrequest is: it finds the entry updating
        sub.stash[_LOCKED] = mark = (self.updating, _UPDATING + key)
        self._expect(sub, cache, key, epoch, mem_epoch, entry)
        pending = sub.stash.get(NAME)
        if self.revalidate:
            conditional.ask_origin(sub, entry.headers)

        def refresh() -> None:
            try:
                run_subrequest(sub)
            finally:  # an answer not stored (a failure, a body cut short) frees the mark at once
                held = pending.held if pending is not None else None
                if held is not None or _LOCKED in sub.stash:
                    if pending is not None:
                        pending.held = None
                    mark[0].release(ctx.runtime, mark[1])

        if run_in_background(ctx.runtime, f"proxy_cache_background_update {_quoted(key)}", refresh):
            return True
        log.warning("[warn] cache_purge: the worker's background work is at its limit: %s is refreshed in the "
                    "request that found it expired", _quoted(key))
        return False

    @staticmethod
    def _variant(ctx, key: str, entry: Entry, get) -> tuple[str, Entry | None]:
        """An entry stored with ``Vary``: the request's variant is that one, or is under its own
        key (nginx's variant key): that key, and what ``get`` finds there."""
        wanted = variant(ctx.environ, entry.vary)
        if wanted == entry.variant or key.find(VARIANT) >= 0:
            return key, entry
        key = key + VARIANT + wanted
        return key, get(key)

    def _expect(self, ctx, cache, key: str, epoch: int, mem_epoch: int, stale: Entry | None = None) -> None:
        # a HEAD is sent as a GET (its body is kept) unless proxy_cache_convert_head is off; a
        # Range request's answer is not the whole resource
        if "HTTP_RANGE" not in ctx.environ and ctx.environ["REQUEST_METHOD"] != "HEAD":
            ctx.stash[NAME] = _Pending(cache, key, epoch, mem_epoch, stale)

    def _purge(self, ctx):
        """ngx_cache_purge: 403 for a client not allowed, 200 with the key when something was
        removed, 404 when nothing was cached. A key ending in ``*`` purges that prefix."""
        if not self.purge_method.allows(ctx.environ.get("REMOTE_ADDR", "")):
            return error_page(403)
        key = self.key.render(ctx)
        inv = Invalidation(prefix=key[:-1]) if key.endswith("*") else Invalidation(keys=(key,))
        try:
            outcome = purge(ctx.runtime, self.zone, inv)
        except StorageError as error:  # ngx_cache_purge answers 500 when it cannot remove the file
            ctx.runtime.stash[NAME].caches[self.zone].report(error, "writing", f"purging {_quoted(key)}")
            return error_page(500)
        if not outcome.purged:
            return error_page(404)
        return Response(_PURGED_PAGE.format(key=html.escape(key)), status=200, content_type="text/html")

    # -- body filter ------------------------------------------------------------------------------

    def body_filter(self, ctx, response):
        head = ctx.stash.pop(_HEAD, False)
        if head:
            ctx.environ["REQUEST_METHOD"] = "HEAD"
        asked = conditional.asked_origin(ctx)
        conditions = conditional.restore(ctx)
        locked = ctx.stash.pop(_LOCKED, None)
        pending = ctx.stash.get(NAME)
        if locked is not None and pending is not None:
            pending.held, locked = locked, None  # released once stored (or given up)
        if asked and response.status_code == 304 and pending is not None and pending.stale is not None:
            response = self._revalidated(ctx, response, pending)
        response = self._stale(ctx, response)
        response, storable = self._keep(ctx, response)
        if pending is not None and pending.held is not None and not storable:
            locked, pending.held = pending.held, None
        if locked is not None:  # nothing will be stored: the others need not wait
            locked[0].release(ctx.runtime, locked[1])
        hit = ctx.vars.get(STATUS) in ("HIT", "STALE", "REVALIDATED")
        # nginx's not-modified filter answers from what the cache has or would store
        answer = conditional.evaluate(conditions, response) if (hit or storable) and conditions else None
        if answer is not None or head:
            _drain(response)  # the whole body is read (and stored) before the short answer goes out
            if answer is None:
                response.response = iter(())  # the HEAD's headers (and length) as the GET's
            else:
                response = answer
        return response

    def _revalidated(self, ctx, response, pending: _Pending):
        """``proxy_cache_revalidate``: the origin answered the expired entry's conditions with
        ``304``: the entry is fresh again (for what the 304's headers say, else
        ``proxy_cache_valid`` for its status) and answers, ``REVALIDATED``."""
        ctx.stash.pop(NAME)
        response.close()
        entry = pending.stale
        now = time.time()
        origin = ctx.upstream_headers
        seconds = freshness(entry.status, origin if origin is not None else response.headers.items(), self.valid, now,
                            self.ignore)
        ctx.vars[STATUS] = "REVALIDATED"
        if seconds is not None:
            refreshed = Entry(entry.status, entry.headers, b"", now + seconds, entry.tags, line=entry.line,
                              sized=entry.sized, vary=entry.vary, variant=entry.variant)
            self._store(pending, refreshed, entry.body, None)
            pending.held = None  # released by the store
        return entry.response()

    def _stale(self, ctx, response):
        """``proxy_cache_use_stale``: refreshing an expired entry met a condition it names (the
        proxy's own 502 or 504 -> ``error``/``timeout``; the origin's status -> ``http_N``):
        answer with the expired entry instead (``STALE``), store nothing."""
        pending = ctx.stash.get(NAME)
        if pending is None or pending.stale is None or not self.use_stale:
            return response
        made = ctx.vars.get("upstream_status") is not None and not getattr(response, "ngxsim_status_line", False)
        if made:  # no backend answered (a failure, or no live upstreams): the proxy's page
            condition = "timeout" if response.status_code == 504 else "error"
        else:
            condition = f"http_{response.status_code}"
        if condition not in self.use_stale:
            return response
        ctx.stash.pop(NAME)
        response.close()
        ctx.vars[STATUS] = "STALE"
        return pending.stale.response()

    def _keep(self, ctx, response):
        """Count the answer and, when it is to be stored, wrap its body so it is: (the
        response, whether it is stored)."""
        status = ctx.vars.get(STATUS, "")
        zone = ctx.runtime.zone(self.zone)
        if status:
            length = response.headers.get("Content-Length")
            if not response.is_streamed:
                size = len(response.get_data())
            else:  # streamed through: what it announced (nothing is buffered to count)
                size = int(length) if (length or "").isdigit() else 0
            stats.count(zone, status, size)
        pending = ctx.stash.pop(NAME, None)
        if pending is None:
            return response, False
        if self.no_cache and _any_set(self.no_cache, ctx):
            return response, False
        if ctx.vars.get("upstream_status") == "":
            return response, False  # made by the proxy itself (no backend answered): never stored
        now = time.time()
        # decided from the headers as the origin sent them (the proxy hides X-Accel-Expires)
        origin = ctx.upstream_headers
        seconds = freshness(response.status_code, origin if origin is not None else response.headers.items(),
                            self.valid, now, self.ignore)
        if seconds is None:
            return response, False
        length = response.headers.get("Content-Length")
        line = response.status if getattr(response, "ngxsim_status_line", False) else ""
        names = vary(origin if origin is not None else response.headers.items(), self.ignore)
        entry = Entry(response.status_code, stored_headers(response.headers), b"", now + seconds, tags(response.headers),
                      line=line, sized=length is not None, vary=names, variant=variant(ctx.environ, names))
        expected = ascii_number(length.strip()) if length is not None else None
        limit = self.max_entry
        if not response.is_streamed:
            self._store(pending, entry, response.get_data(), expected, (zone, status))
            return response, True
        response.response = _Copy(response.response, limit,
                                  lambda body: self._store(pending, entry, body, expected, (zone, status)), expected)
        return response, True

    def _store(self, pending: _Pending, entry: Entry, body: bytes, expected: int | None, counted=None) -> None:
        try:
            self._store_now(pending, entry, body, expected, counted)
        finally:
            held, pending.held = pending.held, None
            if held is not None:  # the requests waiting for it find it (or take the lock)
                held[0].release(pending.cache.runtime, held[1])

    def _store_now(self, pending: _Pending, entry: Entry, body: bytes, expected: int | None, counted=None) -> None:
        if expected is not None and len(body) != expected:
            return  # the backend sent less (or more) than it announced: not the resource
        if self.max_entry is not None and len(body) > self.max_entry:
            return
        entry.body = body
        cache = pending.cache
        try:
            stored = cache.shared.store(pending.key, entry, pending.epoch)
            if stored == REPLACED:  # other workers may hold the old copy in memory: they drop it
                announce_refresh(cache.runtime, self.zone, pending.key)
            if stored != NOT_STORED:
                cache.memory.put(pending.key, entry, pending.mem_epoch)
                if counted is not None:
                    stats.written(counted[0], counted[1], len(body))
        except StorageError as error:  # the client has its answer; the cache just does not keep it
            cache.report(error, "writing", f"storing {_quoted(pending.key)}")
        except Exception:
            log.exception("cache_purge: storing %r in zone %s failed", pending.key, self.zone)


_HEAD = f"{NAME}.head"  # ctx.stash: a HEAD sent to the origin as a GET
_LOCKED = f"{NAME}.locked"  # ctx.stash: (KeyRecords, name) of the lock or updating mark this request holds
_UPDATING = "updating "  # the name of a key's updating mark in the keys table


def _drain(response) -> None:
    """Read a response's whole body here (a copy being kept stores it), then release it."""
    if response.is_streamed:
        try:
            for _ in response.response:
                pass
        finally:
            close = getattr(response.response, "close", None)
            if close is not None:
                close()


def _quoted(key: str) -> str:
    """A key in a log line: quoted, escaped, at most 200 characters."""
    return json.dumps(key[:200] + ("..." if len(key) > 200 else ""))


class _Copy:
    """A response body that keeps a copy of what it yields and hands the whole to ``done``.

    With a Content-Length, ``done`` runs as soon as the last byte is in hand and before it goes
    out: a client that has read the whole response knows it is stored (a purge it sends next
    finds it). Without one, ``done`` runs after the last chunk went out (a purge racing it is
    caught by the purge epoch). At most ``limit`` bytes are kept (more: nothing stored), and a
    body longer or shorter than announced is not stored. ``close`` reaches the wrapped body
    (the proxy releases its connection there)."""

    def __init__(self, body, limit: int | None, done, expected: int | None = None):
        self.body = body
        self.limit = limit
        self.done = done
        self.expected = expected

    def __iter__(self) -> Iterator[bytes]:
        parts: list[bytes] | None = []
        size = 0
        expected = self.expected
        for chunk in self.body:
            if parts is not None:
                data = chunk.encode() if isinstance(chunk, str) else bytes(chunk)
                size += len(data)
                if (self.limit is not None and size > self.limit) or (expected is not None and size > expected):
                    parts = None
                else:
                    parts.append(data)
                    if size == expected:
                        self.done(b"".join(parts))
                        parts = None  # stored: keep no more
            yield chunk
        if parts is not None and (expected is None or size == expected):  # no length given, or 0
            self.done(b"".join(parts))

    def close(self) -> None:
        close = getattr(self.body, "close", None)
        if close is not None:
            close()
