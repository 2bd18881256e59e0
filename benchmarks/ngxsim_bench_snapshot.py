"""Benchmark module for bench_proxy.py: timestamps of upstreams' ``snapshot_activated`` events.

In the worker that publishes one (the API's), a wrapper around the ``ngxsim_publish`` hook
appends ``(generation, version, monotonic ns just before the publish, 0)`` to
``$NGXSIM_BENCH_DIR/<pid>.pub``; in every worker, its delivery appends ``(generation, version,
monotonic ns, 1 if the dispatcher thread delivered it else 0 — a request thread draining
pending events before its handler)`` to ``<pid>.del``. CLOCK_MONOTONIC is one clock for the whole
machine, so the script compares them across processes. (With this wrapper loaded, publishes take
pluggy's regular hook path instead of the direct call to worker_events: a few microseconds more
per publish, only in this benchmark's server.)
"""

from __future__ import annotations

import json
import os
import struct
import threading
import time

from ngxsim import Subscription, hookimpl

REC = struct.Struct("<QQQQ")
_FILES: dict[str, int] = {}


def _write(kind: str, *values: int) -> None:
    folder = os.environ.get("NGXSIM_BENCH_DIR")
    if not folder:
        return
    fd = _FILES.get(kind)
    if fd is None:
        fd = _FILES[kind] = os.open(os.path.join(folder, f"{os.getpid()}.{kind}"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.write(fd, REC.pack(*values))


def _version(payload: str) -> int:
    try:
        return int(json.loads(payload).get("version", 0))
    except (ValueError, AttributeError, TypeError):
        return 0


@hookimpl(wrapper=True)
def ngxsim_publish(runtime, zone, channel, type, payload):
    # stamped BEFORE the publish: after it, the woken dispatcher threads may take the GIL (and
    # the overloaded OS the core) before this thread writes its stamp, which made deliveries
    # look earlier than their publish; this way the publish's own few microseconds are counted
    before = time.monotonic_ns()
    generation = yield
    if channel == "upstreams" and type == "snapshot_activated" and generation:
        _write("pub", generation, _version(payload), before, 0)
    return generation


@hookimpl
def ngxsim_event_subscriptions(config):
    return Subscription("bus", ("upstreams",))


@hookimpl
def ngxsim_event(runtime, event):
    if event.type == "snapshot_activated":
        now = time.monotonic_ns()
        on_dispatcher = threading.current_thread().name.startswith("ngxsim-events-")
        _write("del", event.generation, _version(event.payload), now, int(on_dispatcher))
