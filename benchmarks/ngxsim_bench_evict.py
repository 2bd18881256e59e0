"""Benchmark module for bench_cache.py: in every worker, right after cache_purge (load it after
``load_module cache_purge;``: modules hear an event in load order), record when each event of
channel ``cache.invalidate`` was delivered: ``(generation, time.monotonic_ns())`` appended to
``$NGXSIM_BENCH_DIR/<pid>.evict``. CLOCK_MONOTONIC is one clock for the whole machine, so the
benchmark compares it with the moment it sent the purge."""

from __future__ import annotations

import os
import struct
import time

from ngxsim import Subscription, hookimpl

_REC = struct.Struct("<QQ")
_OUT: list[int] = []


@hookimpl
def ngxsim_init_worker(runtime):
    folder = os.environ.get("NGXSIM_BENCH_DIR")
    if folder:
        _OUT.append(os.open(os.path.join(folder, f"{os.getpid()}.evict"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644))


@hookimpl
def ngxsim_event_subscriptions(config):
    return Subscription("bus", channels=("cache.invalidate",))


@hookimpl
def ngxsim_event(runtime, event):
    if _OUT:
        os.write(_OUT[0], _REC.pack(event.generation, time.monotonic_ns()))
