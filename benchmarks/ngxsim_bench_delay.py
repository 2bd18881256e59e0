"""Benchmark module: ``bench_delay TIME;`` (location) delays each request by TIME in the preaccess
phase (``Delay``, as limit_req's delay does), then its content phase answers ``delayed``."""

from werkzeug.wrappers import Response

from ngxsim import CONTENT, LOCATION, PREACCESS, TIME, Delay, Directive, PhaseHandler, hookimpl


@hookimpl
def ngxsim_directives(register):
    register(Directive("bench_delay", (LOCATION,), 1, type=TIME, default=0))


@hookimpl
def ngxsim_phase_handlers(block, config):
    seconds = block["bench_delay"] if block.context == "location" else 0
    if seconds:
        return [PhaseHandler(PREACCESS, lambda ctx: Delay(seconds)),
                PhaseHandler(CONTENT, lambda ctx: Response("delayed", content_type="text/plain"))]
    return None
