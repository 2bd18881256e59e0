"""Test module: ``test_publish_burst;`` makes a location publish ``?n=`` events on zone ``bus``,
channel ``?channel=``, as fast as it can in one request (a busy worker), and answer its pid."""

from __future__ import annotations

import os

from ngxsim import FLAG, LOCATION, Directive, hookimpl, json_response


@hookimpl
def ngxsim_directives(register):
    register(Directive("test_publish_burst", (LOCATION,), 0, type=FLAG, default=False, inherit=False))


@hookimpl
def ngxsim_content_handler(location, config):
    if not location["test_publish_burst"]:
        return None

    def burst(ctx):
        n, channel = int(ctx.arg("n") or 1000), ctx.arg("channel") or "c"
        for i in range(n):
            ctx.runtime.publish("bus", channel, "burst", str(i))
        return json_response({"count": n, "pid": os.getpid()})

    return burst
