"""Benchmark module for bench_upstreams_cluster.py: when each worker routes by a new snapshot.

In every worker, the delivery of a *local* ``snapshot_activated`` (the one its own instance
published after making a snapshot: on a cluster member, once it routes by a new cluster revision)
appends ``(revision or version, monotonic ns)`` to ``$NGXSIM_BENCH_DIR/<pid>.snap``. Loaded after
upstreams, its hook runs first (pluggy calls the last registered first): the stamp is taken just
before upstreams re-reads the snapshot (microseconds).
"""

from __future__ import annotations

import json
import os
import struct
import time

from ngxsim import Subscription, hookimpl

REC = struct.Struct("<QQ")
_FD: list[int] = []


@hookimpl
def ngxsim_event_subscriptions(config):
    return Subscription("bus", ("upstreams",))


@hookimpl
def ngxsim_event(runtime, event):
    if event.type != "snapshot_activated" or event.origin is not None:
        return
    now = time.monotonic_ns()
    folder = os.environ.get("NGXSIM_BENCH_DIR")
    if not folder:
        return
    try:
        data = json.loads(event.payload)
        number = int(data.get("revision") or data.get("version") or 0)
    except (ValueError, TypeError, AttributeError):
        return
    if not _FD:
        _FD.append(os.open(os.path.join(folder, f"{os.getpid()}.snap"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644))
    os.write(_FD[0], REC.pack(number, now))
