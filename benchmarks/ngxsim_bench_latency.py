"""Benchmark module for bench_delivery.py.

Each worker's subscriber computes ``time.monotonic_ns() - int(payload)`` (the publisher puts
its own monotonic clock reading in the payload; CLOCK_MONOTONIC is one clock for the whole
machine) and keeps ``(generation, latency_ns)`` in memory; an event of type ``flush`` (the
benchmark publishes one after its samples) appends them to ``$NGXSIM_BENCH_DIR/<pid>.lat``. The
recording writes no file per sample: a write is ~15 us of CPU after a wake-up, and on 2 cores
the last worker to deliver waits for the others' (the Redis subscribers record the same way).
``bench_burst;`` makes a location publish ``?n=`` events as fast as it can.
With ``NGXSIM_BENCH_BUSY=1`` every worker also runs a thread that spins in Python, so the
dispatcher must win the GIL from it. With ``NGXSIM_BENCH_WAKE=1`` (bench_tail.py) the worker
also notes when a thread last returned from a doorbell wait (the dispatcher's wake-up), and
writes ``(generation, latency_ns, wake_ns)`` records to ``<pid>.wake`` instead. With
``NGXSIM_BENCH_DEFAULT_SLICE=1`` the dispatcher thread goes back to the kernel's default time
slice at its first event (the A/B of ``ngxsim.prompt_wakeups``).
"""

from __future__ import annotations

import os
import struct
import threading
import time

from ngxsim import FLAG, LOCATION, Directive, hookimpl, json_response

_REC = struct.Struct("<QQ")
_WAKE_REC = struct.Struct("<QQq")
_OUT: list[int] = []
_WOKE = [0]  # monotonic ns when a doorbell wait last returned in this worker
_RECORDS = bytearray()  # written out at a "flush" event
_MODE = {"wake": False, "default_slice": False}  # read from the environment once, not per event


@hookimpl
def ngxsim_directives(register):
    register(Directive("bench_burst", (LOCATION,), 0, type=FLAG, default=False, inherit=False))


@hookimpl
def ngxsim_init_worker(runtime):
    folder = os.environ.get("NGXSIM_BENCH_DIR")
    _MODE["wake"] = bool(os.environ.get("NGXSIM_BENCH_WAKE"))
    _MODE["default_slice"] = bool(os.environ.get("NGXSIM_BENCH_DEFAULT_SLICE"))
    if folder:
        suffix = "wake" if _MODE["wake"] else "lat"
        _OUT.append(os.open(os.path.join(folder, f"{os.getpid()}.{suffix}"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644))
    if os.environ.get("NGXSIM_BENCH_WAKE"):
        _trace_wakes()
    if os.environ.get("NGXSIM_BENCH_BUSY"):
        threading.Thread(target=_spin, daemon=True, name="bench-busy").start()


def _trace_wakes():
    """Benchmark instrumentation only: wrap the doorbell's wait so the time it returns is kept.
    The dispatcher looks the method up on every wait, so its next wait is the wrapped one."""
    from ngxsim.core.shm import Doorbell

    real = Doorbell.wait

    def wait(self, *args, **kwargs):
        result = real(self, *args, **kwargs)
        _WOKE[0] = time.monotonic_ns()
        return result

    Doorbell.wait = wait


def _spin():
    n = 0
    while True:
        n += 1


_DEFAULT_SLICE_DONE: set[int] = set()


def _default_slice() -> None:
    """Benchmark A/B only: undo the dispatcher thread's short slice (runtime 0 = the default)."""
    import ctypes

    tid = threading.get_ident()
    if tid in _DEFAULT_SLICE_DONE:
        return
    _DEFAULT_SLICE_DONE.add(tid)
    attr = ctypes.create_string_buffer(struct.pack("<IIQiIQQQ", 48, 0, 0, os.getpriority(os.PRIO_PROCESS, 0), 0, 0, 0, 0))
    ctypes.CDLL(None).syscall(314, 0, attr, 0)


@hookimpl
def ngxsim_event(runtime, event):
    now = time.monotonic_ns()
    if _MODE["default_slice"]:
        _default_slice()
    if not _OUT:
        return
    if event.payload.isdigit():
        sent = int(event.payload)
        if _MODE["wake"]:
            _RECORDS.extend(_WAKE_REC.pack(event.generation, now - sent, _WOKE[0] - sent))
        else:
            _RECORDS.extend(_REC.pack(event.generation, now - sent))
    elif event.type == "flush":
        os.write(_OUT[0], _RECORDS)
        _RECORDS.clear()


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
