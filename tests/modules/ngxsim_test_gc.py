"""Test module: ``test_gc_report;`` makes a location answer what the garbage collector of the
worker sees: ``frozen`` (``gc.get_freeze_count()``: objects moved out of its sight) and
``tracked`` (objects it still walks in a full collection)."""

from __future__ import annotations

import gc
import os

from ngxsim import FLAG, LOCATION, Directive, hookimpl, json_response


@hookimpl
def ngxsim_directives(register):
    register(Directive("test_gc_report", (LOCATION,), 0, type=FLAG, default=False, inherit=False))


@hookimpl
def ngxsim_content_handler(location, config):
    if not location["test_gc_report"]:
        return None

    def report(ctx):
        return json_response({"pid": os.getpid(), "frozen": gc.get_freeze_count(), "tracked": len(gc.get_objects())})

    return report
