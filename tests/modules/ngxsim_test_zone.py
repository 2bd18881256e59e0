"""Test module: a raw core zone, and handlers that exercise it across workers.

``test_zone NAME SIZE;`` (http) declares a zone. In a location, ``test_zone_rw;`` makes POST
write the body at offset 0 (length-prefixed) and GET read it back; ``test_zone_hold NAME;``
makes a GET take NAME's zone lock, write this pid to ``$NGXSIM_TEST_RECORD_DIR/holder``, and
sleep with the lock held (for kill -9 tests).
"""

from __future__ import annotations

import os
import struct
import time

from ngxsim import FLAG, HTTP, LOCATION, Directive, hookimpl, json_response
from ngxsim.core.conf.directive import parse_size


@hookimpl
def ngxsim_directives(register):
    register(Directive("test_zone", (HTTP,), 2, parse=lambda a: (a[0], parse_size(a[1]))))
    register(Directive("test_zone_rw", (LOCATION,), 0, type=FLAG, default=False, inherit=False))
    register(Directive("test_zone_hold", (LOCATION,), 1, inherit=False))


@hookimpl
def ngxsim_postconfiguration(config):
    for http in config.blocks(HTTP):
        if http.get("test_zone"):
            name, size = http["test_zone"]
            config.zones.declare(name, size, owner="ngxsim_test_zone", where=http.where_of("test_zone"))
            config.stash["test_zone"] = name


@hookimpl
def ngxsim_content_handler(location, config):
    if location["test_zone_rw"]:
        return _rw
    if location.get("test_zone_hold"):
        name = location["test_zone_hold"]
        return lambda ctx: _hold(ctx, name)
    return None


def _rw(ctx):
    zone = ctx.runtime.zone(ctx.runtime.config.stash["test_zone"])
    if ctx.environ["REQUEST_METHOD"] == "POST":
        data = ctx.request.get_data()
        with zone.lock():
            struct.pack_into("<I", zone.buf, 0, len(data))
            zone.buf[4 : 4 + len(data)] = data
        return json_response({"written": len(data), "pid": os.getpid()})
    (n,) = struct.unpack_from("<I", zone.buf, 0)
    return json_response({"data": bytes(zone.buf[4 : 4 + n]).decode(), "pid": os.getpid()})


def _hold(ctx, name):
    zone = ctx.runtime.zone(name)
    with zone.lock():
        with open(os.path.join(os.environ["NGXSIM_TEST_RECORD_DIR"], "holder"), "w") as fh:
            fh.write(str(os.getpid()))
        time.sleep(60)
    return json_response({})
