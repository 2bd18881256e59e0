"""Benchmark module for bench_cluster.py.

Each worker's subscriber computes ``time.monotonic_ns() - int(payload)`` (the publisher, on
the same machine, put its CLOCK_MONOTONIC reading in the payload) and keeps ``(sent_ns,
latency_ns, remote)`` in memory, keyed by the send time (generations differ between the
instances' rings); an event of type ``flush`` appends them to ``$NGXSIM_BENCH_DIR/<pid>.lat``.
``bench_publish_burst;`` makes a location publish ``?n=`` events on channel ``?channel=`` as
fast as it can and answer how long that took (wall clock and the request thread's CPU time) and
in which worker and thread (``pid``, ``tid``).
"""

from __future__ import annotations

import os
import struct
import threading
import time

from ngxsim import FLAG, LOCATION, Directive, hookimpl, json_response

REC = struct.Struct("<QQB")
_RECORDS = bytearray()


@hookimpl
def ngxsim_directives(register):
    register(Directive("bench_publish_burst", (LOCATION,), 0, type=FLAG, default=False, inherit=False))


@hookimpl
def ngxsim_event(runtime, event):
    now = time.monotonic_ns()
    if event.payload.isdigit():
        sent = int(event.payload)
        _RECORDS.extend(REC.pack(sent, now - sent, event.origin is not None))
    elif event.type == "flush":
        folder = os.environ.get("NGXSIM_BENCH_DIR")
        if folder:
            with open(os.path.join(folder, f"{os.getpid()}.lat"), "ab") as fh:
                fh.write(_RECORDS)
        _RECORDS.clear()


@hookimpl
def ngxsim_content_handler(location, config):
    if not location["bench_publish_burst"]:
        return None

    def burst(ctx):
        n, channel = int(ctx.arg("n") or 1000), ctx.arg("channel") or "bench"
        publish = ctx.runtime.publish
        cpu, start = time.thread_time(), time.perf_counter()
        for _ in range(n):
            publish("bus", channel, "burst", "b")
        seconds, cpu = time.perf_counter() - start, time.thread_time() - cpu
        return json_response({"count": n, "seconds": seconds, "cpu_seconds": cpu, "pid": os.getpid(),
                              "tid": threading.get_native_id()})

    return burst
