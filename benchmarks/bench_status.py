"""What the worker table behind ``ngxsim_status``, ``stub_status`` and ``api`` costs every
request (its count) and every connection (accepted under the zone lock, its state moves), and
what a status request costs, under ``gunicorn -w 4`` (sync workers), in the same run.

    python benchmarks/bench_status.py [--seconds S] [--rounds R]

Two servers with the same ``location = / { return 200 "hi"; }``: the baseline without a status
location (no worker table, nothing counted) and one with ``ngxsim_status;`` (every request
writes its worker's count into the ``@workers`` zone). Rounds alternate; medians. Goal: the
counted ``/`` >= 95% of the baseline. The status request itself (workers, zones, the ring with
its per-worker lag) is shown next to it for scale.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import median, ratio_rows, table, throughput_args, wrk  # noqa: E402

from ngxsim.testing import start_server, stop_all  # noqa: E402

CONF = """
load_module worker_events;
worker_processes 4;
http {
    worker_events_zone bus;
    server {
        listen 127.0.0.1:{port};
        location = / { return 200 "hi"; }
        location /events { worker_events_api; worker_events_channel bench; }
        {status}
    }
}
"""


def per_call_us(fn, n: int = 200_000) -> float:
    began = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - began) / n * 1e6


def count_cost() -> None:
    """One request's count into a real zone, next to an empty call (the hook's floor)."""
    from ngxsim.core.instance import STANDALONE, current_instance
    from ngxsim.core.shm import attach_zone, remove_zone_files
    from ngxsim.core.workers import LAYOUT_TAG, WORKERS_ZONE, ZONE_SIZE, WorkerTable

    instance = current_instance(STANDALONE, os.getpid())
    zone = attach_zone(instance, WORKERS_ZONE, ZONE_SIZE, LAYOUT_TAG)
    try:
        workers = WorkerTable(zone)
        workers.claim()

        def connection() -> None:  # what a worker class counts for one connection (stub_status)
            workers.accepted()
            workers.move(None, "writing")
            workers.move("writing", None)

        rows = []
        for _ in range(3):
            rows.append((per_call_us(lambda: None), per_call_us(workers.count), per_call_us(connection, 50_000)))
        empty, count, opened = (median([r[i] for r in rows]) for i in range(3))
        print(table("one request's count, in-process (medians of 3 rounds)", ["call", "us/call"],
                    [["empty function (baseline)", f"{empty:.3f}"], ["WorkerTable.count()", f"{count:.3f}"],
                     ["a connection: accepted() + 2 x move()", f"{opened:.3f}"]]))
    finally:
        zone.close()
        remove_zone_files(instance)


def main() -> None:
    count_cost()
    args = throughput_args(__doc__)
    if args is None:
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        base = start_server(folder, CONF.replace("{status}", ""), workers=4)
        counted = None
        try:
            counted = start_server(folder, CONF.replace("{status}", "location = /status { ngxsim_status; }"), workers=4)
            results: dict[str, list[float]] = {}
            for _ in range(args.rounds):
                results.setdefault("/ without a status location", []).append(wrk(base.url("/"), args.seconds))
                results.setdefault("/ counted in the worker table", []).append(wrk(counted.url("/"), args.seconds))
                results.setdefault("/status (JSON)", []).append(wrk(counted.url("/status"), args.seconds))
        finally:
            stop_all([s for s in (base, counted) if s is not None])
    rows = ratio_rows(results, "/ without a status location")
    print(table(f"req/s, gunicorn -w 4 sync, wrk -t2 -c8, {args.seconds:g}s x {args.rounds} rounds (medians)",
                ["request", "req/s", "vs baseline"], rows))
    print("goal: the counted / >= 95% of the baseline")


if __name__ == "__main__":
    main()
