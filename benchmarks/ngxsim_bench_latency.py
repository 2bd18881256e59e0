"""Benchmark module for bench_delivery.py.

Each worker's subscriber computes ``time.monotonic_ns() - int(payload)`` (the publisher puts
its own monotonic clock reading in the payload; CLOCK_MONOTONIC is one clock for the whole
machine) and appends ``(generation, latency_ns)`` to ``$NGXSIM_BENCH_DIR/<pid>.lat``.
``bench_burst;`` makes a location publish ``?n=`` events as fast as it can.
With ``NGXSIM_BENCH_BUSY=1`` every worker also runs a thread that spins in Python, so the
dispatcher must win the GIL from it.
"""

from __future__ import annotations

import os
import struct
import threading
import time

from ngxsim import FLAG, LOCATION, Directive, hookimpl, json_response

_REC = struct.Struct("<QQ")
_OUT: list[int] = []


@hookimpl
def ngxsim_directives(register):
    register(Directive("bench_burst", (LOCATION,), 0, type=FLAG, default=False, inherit=False))


@hookimpl
def ngxsim_init_worker(runtime):
    folder = os.environ.get("NGXSIM_BENCH_DIR")
    if folder:
        _OUT.append(os.open(os.path.join(folder, f"{os.getpid()}.lat"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644))
    if os.environ.get("NGXSIM_BENCH_BUSY"):
        threading.Thread(target=_spin, daemon=True, name="bench-busy").start()


def _spin():
    n = 0
    while True:
        n += 1


@hookimpl
def ngxsim_event(runtime, event):
    now = time.monotonic_ns()
    if _OUT and event.payload.isdigit():
        os.write(_OUT[0], _REC.pack(event.generation, now - int(event.payload)))


@hookimpl
def ngxsim_content_handler(location, config):
    if not location["bench_burst"]:
        return None

    def burst(ctx):
        n = int(ctx.arg("n") or 1000)
        publish = ctx.runtime.publish
        start = time.monotonic()
        first = publish("bus", "bench", "burst", "b")
        for _ in range(n - 1):
            publish("bus", "bench", "burst", "b")
        return json_response({"first": first, "count": n, "seconds": time.monotonic() - start})

    return burst
