"""Test module: reports peer health through upstreams' public functions, like healthchecks does.

``test_health_for UPSTREAM [mandatory];`` (http) declares the upstream checked;
``test_mark_health;`` makes a location that takes ``?upstream=&peer=&healthy=0|1``, records it
with ``upstreams.set_peer_health`` and publishes ``peer_transition`` on channel healthchecks.
"""

from __future__ import annotations

from ngxsim import ARGS, FLAG, HTTP, LOCATION, Directive, compact_json, hookimpl, http_event_zone, json_response

import ngxsim_plugins.upstreams as upstreams


@hookimpl
def ngxsim_directives(register):
    register(Directive("test_health_for", (HTTP,), (1, 2), type=ARGS))
    register(Directive("test_mark_health", (LOCATION,), 0, type=FLAG, default=False, inherit=False))


@hookimpl
def ngxsim_postconfiguration(config):
    for http in config.blocks(HTTP):
        args = http.get("test_health_for")
        if args:
            upstreams.require_health_checks(config, args[0], mandatory=args[1:] == ["mandatory"],
                                            where=http.where_of("test_health_for"))
    config.stash["test_health_bus"] = http_event_zone(config, "ngxsim_test_health")


@hookimpl
def ngxsim_content_handler(location, config):
    if not location["test_mark_health"]:
        return None
    bus = config.stash["test_health_bus"]

    def mark(ctx):
        name, peer = ctx.arg("upstream"), int(ctx.arg("peer"))
        healthy = ctx.arg("healthy") == "1"
        ok = upstreams.set_peer_health(ctx.runtime, name, peer, healthy, fails=0 if healthy else 2, passes=2 if healthy else 0)
        server = next(p.server for p in upstreams.peers(ctx.runtime, name) if p.id == peer)
        payload = {"upstream": name, "peer": peer, "server": server, "from": "healthy" if not healthy else "unhealthy",
                   "to": "healthy" if healthy else "unhealthy", "fails": 0, "passes": 0}
        gen = ctx.runtime.publish(bus, "healthchecks", "peer_transition", compact_json(payload))
        return json_response({"recorded": ok, "generation": gen})

    return mark
