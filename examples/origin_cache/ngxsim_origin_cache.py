"""origin_cache: a small third-party ngxsim module — and an example of testing one with real
processes through the ngxsim pytest plugin (see tests/ next to this file).

Each worker keeps the pages it fetched from an origin server in its own memory. A purge through
any worker publishes an event on the http-level bus, and every worker drops that page: no worker
serves stale content after the purge answered.

    load_module worker_events;
    load_module ngxsim_origin_cache;
    http {
        worker_events_zone bus;                              # the bus purges travel on
        server {
            listen 127.0.0.1:8080;
            location / { origin_cache_pass 127.0.0.1:8081; }   # pages come from there
            location = /purge { origin_cache_purge; }         # POST /purge?path=/page
        }
    }

Events: channel ``origin_cache``, type ``purged``, payload ``{"path":"/page"}``. A worker that
missed events (a gap) empties its cache: any page may be stale.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request

from flask import Response

from ngxsim import FLAG, LOCATION, Directive, Subscription, compact_json, hookimpl, http_event_zone, json_error, json_response

NAME = "origin_cache"
CHANNEL = "origin_cache"
# this worker's pages: request URI -> (status, content type, body)
CACHE: dict[str, tuple[int, str, bytes]] = {}


@hookimpl
def ngxsim_directives(register):
    register(Directive("origin_cache_pass", (LOCATION,), 1, inherit=False,
                       doc="host:port of the origin server this location's pages come from"))
    register(Directive("origin_cache_purge", (LOCATION,), 0, type=FLAG, default=False, inherit=False,
                       doc="POST ?path=URI here drops URI from every worker's cache"))


@hookimpl
def ngxsim_postconfiguration(config):
    if any(loc["origin_cache_pass"] or loc["origin_cache_purge"] for loc in config.blocks(LOCATION)):
        config.stash[NAME] = http_event_zone(config, NAME)  # fails the load, with the fix, if missing


@hookimpl
def ngxsim_content_handler(location, config):
    if location["origin_cache_purge"]:
        return _purge_handler(config.stash[NAME])
    if location["origin_cache_pass"]:
        return _cache_handler(location["origin_cache_pass"])
    return None


def _purge_handler(zone):
    def purge(ctx):
        if ctx.environ["REQUEST_METHOD"] != "POST":
            return json_error(405, "purge with POST", headers={"Allow": "POST"})
        path = ctx.arg("path")
        if not path.startswith("/"):
            return json_error(400, 'parameter "path" must be a URI starting with "/"')
        generation = ctx.runtime.publish(zone, CHANNEL, "purged", compact_json({"path": path}))
        return json_response({"purged": path, "generation": generation})

    return purge


def _cache_handler(origin):
    def serve(ctx):
        uri = ctx.request_uri
        page, status = CACHE.get(uri), "HIT"
        if page is None:
            try:
                with urllib.request.urlopen(f"http://{origin}{uri}", timeout=5) as answer:
                    page = (answer.status, answer.headers.get("Content-Type", "text/plain"), answer.read())
            except urllib.error.HTTPError as exc:  # the origin's error passes through, uncached
                return Response(exc.read(), exc.code, content_type=exc.headers.get("Content-Type"),
                                headers={"X-Cache": "MISS"})
            except OSError as exc:
                return json_error(502, f"origin {origin}: {exc}")
            CACHE[uri], status = page, "MISS"
        code, content_type, body = page
        return Response(body, code, content_type=content_type, headers={"X-Cache": status})

    return serve


@hookimpl
def ngxsim_event_subscriptions(config):
    zone = config.stash.get(NAME)
    return Subscription(zone, channels=(CHANNEL,)) if zone else None


@hookimpl
def ngxsim_event(runtime, event):
    if event.channel == CHANNEL and event.type == "purged":
        CACHE.pop(json.loads(event.payload)["path"], None)


@hookimpl
def ngxsim_event_gap(runtime, gap):
    CACHE.clear()  # purges were lost: any page may be stale
