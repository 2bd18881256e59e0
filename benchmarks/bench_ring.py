"""Publishes per second through the ``ngxsim_publish`` hook, in one process and from 4 at once,
next to a bare ``struct.pack_into`` + ``flock`` loop measured in the same run.

    python benchmarks/bench_ring.py [--events N] [--rounds R]

The bare loop is the floor any locked shared-memory ring pays: take an flock, pack a 664-byte
entry into an mmap, release. ngxsim's publish adds the hook call, the UTF-8 checks, the seqlock
and the doorbell (a futex wake). Goal: >= 40% of the bare rate. Medians of R rounds.
"""

from __future__ import annotations

import argparse
import fcntl
import mmap
import os
import struct
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import median, table  # noqa: E402

from ngxsim.core.conf.loader import load_configuration  # noqa: E402
from ngxsim.core.instance import STANDALONE, current_instance  # noqa: E402
from ngxsim.core.process import Runtime  # noqa: E402
from ngxsim.core.shm import remove_zone_files  # noqa: E402

CONF = """
load_module worker_events;
http { worker_events_zone bench; worker_events_ring_size 65536; }
"""
ENTRY = struct.Struct("<QQQBBH4x64s64s512s")


def bare_loop(path: str, n: int) -> float:
    """n locked writes of one entry; returns seconds. Opens its own fd (as a worker must)."""
    fd = os.open(path, os.O_RDWR)
    mm = mmap.mmap(fd, 0)
    slots = len(mm) // ENTRY.size
    ch, ty, pl = b"cache.invalidate", b"purged", b"tag:assets"
    start = time.perf_counter()
    for i in range(n):
        fcntl.flock(fd, fcntl.LOCK_EX)
        ENTRY.pack_into(mm, (i % slots) * ENTRY.size, i, i, 0, len(ch), len(ty), len(pl), ch, ty, pl)
        fcntl.flock(fd, fcntl.LOCK_UN)
    elapsed = time.perf_counter() - start
    mm.close()
    os.close(fd)
    return elapsed


def hook_loop(runtime: Runtime, n: int) -> float:
    publish = runtime.publish
    start = time.perf_counter()
    for _ in range(n):
        publish("bench", "cache.invalidate", "purged", "tag:assets")
    return time.perf_counter() - start


def in_processes(fn, procs: int) -> float:
    """Run fn() in ``procs`` forked processes started together; aggregate wall seconds."""
    r, w = os.pipe()
    go_r, go_w = os.pipe()
    pids = []
    for _ in range(procs):
        pid = os.fork()
        if pid == 0:
            os.close(r)
            os.read(go_r, 1)
            fn()
            os.write(w, b"d")
            os._exit(0)
        pids.append(pid)
    time.sleep(0.2)
    start = time.perf_counter()
    os.write(go_w, b"g" * procs)
    for _ in range(procs):
        os.read(r, 1)
    elapsed = time.perf_counter() - start
    for pid in pids:
        os.waitpid(pid, 0)
    for fd in (r, w, go_r, go_w):
        os.close(fd)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    n, procs = args.events, 4

    config = load_configuration("<bench>", text=CONF)
    runtime = Runtime(config, current_instance(STANDALONE))
    runtime.start_instance()  # zones exist; no dispatcher in this process: we measure publishing
    with tempfile.NamedTemporaryFile(dir="/dev/shm", prefix="ngxsim-bench-bare-") as bare:
        bare.truncate(65536 * ENTRY.size)
        bare.flush()
        rows = []
        try:
            results = {}
            for label, one, many in (
                ("bare pack_into+flock", lambda: bare_loop(bare.name, n), lambda: bare_loop(bare.name, n)),
                ("ngxsim publish hook", lambda: hook_loop(runtime, n), lambda: hook_loop(runtime, n)),
            ):
                single = median([one() for _ in range(args.rounds)])
                multi = median([in_processes(many, procs) for _ in range(args.rounds)])
                results[label] = (n / single, n * procs / multi)
            base1, base4 = results["bare pack_into+flock"]
            for label, (r1, r4) in results.items():
                rows.append([label, f"{r1:,.0f}", f"{1e6 / r1:.2f}", f"{r4:,.0f}",
                             f"{r1 / base1:.0%}", f"{r4 / base4:.0%}"])
        finally:
            runtime.close()
            remove_zone_files(runtime.instance)
    print(table(f"Publish throughput ({n:,} events per process, median of {args.rounds} rounds, {os.cpu_count()} cores)",
                ["loop", "1 proc ev/s", "us/event", f"{procs} procs ev/s (total)", "vs bare, 1 proc", f"vs bare, {procs} procs"],
                rows))
    print("goal: ngxsim >= 40% of bare in both columns")


if __name__ == "__main__":
    main()
