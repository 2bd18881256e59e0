"""Publishes per second through the ``ngxsim_publish`` hook, in one process and from 4 at once,
next to a bare ``struct.pack_into`` + ``flock`` loop measured in the same run.

    python benchmarks/bench_ring.py [--events N] [--rounds R]

The bare loop is the floor any locked shared-memory ring pays: take an flock, pack a 664-byte
entry into an mmap, release. ngxsim's publish adds the hook call, the UTF-8 checks, the seqlock
and the doorbell (a futex wake). Goal: >= 60% of the bare rate. Medians of R rounds, the loops
interleaved round by round.

The hook is measured twice: with the core's C accelerator (``ngxsim.core._shm_accel``, what a
``pip install`` with a compiler runs) and on the pure-Python path (what runs without it, or with
``NGXSIM_PURE_PYTHON=1``), each on its own zone of the same server instance. A fourth row adds
what every worker does after a publish (``Runtime.check_master``: is the master alive?). A fifth
publishes from a process set up as a worker whose module listens (``ngxsim_bench_noop``): its
dispatcher thread runs, and ``runtime.publish`` delivers to the no-op subscriber before it
returns, what a publish costs in a worker with listeners.

Each rate is given twice: by wall clock, and by the CPU time the loop's process spent (user +
system, so the flock syscalls count). On a machine that other work keeps busy the wall clock
mostly measures the scheduler; CPU time measures the loop.
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
from ngxsim.core import shm  # noqa: E402
from ngxsim.core.shm import remove_zone_files  # noqa: E402

CONF = """
load_module worker_events;
%s
http { worker_events_zone %s; worker_events_ring_size 65536; }
"""
ENTRY = struct.Struct("<QQQBBH4x64s64s512s")


def bare_loop(path: str, n: int) -> tuple[float, float]:
    """n locked writes of one entry; returns (wall, CPU) seconds. Opens its own fd (as a worker
    must)."""
    fd = os.open(path, os.O_RDWR)
    mm = mmap.mmap(fd, 0)
    slots = len(mm) // ENTRY.size
    ch, ty, pl = b"cache.invalidate", b"purged", b"tag:assets"
    start, cpu = time.perf_counter(), time.thread_time()
    for i in range(n):
        fcntl.flock(fd, fcntl.LOCK_EX)
        ENTRY.pack_into(mm, (i % slots) * ENTRY.size, i, i, 0, len(ch), len(ty), len(pl), ch, ty, pl)
        fcntl.flock(fd, fcntl.LOCK_UN)
    elapsed = time.perf_counter() - start, time.thread_time() - cpu
    mm.close()
    os.close(fd)
    return elapsed


def hook_loop(runtime: Runtime, zone: str, n: int) -> tuple[float, float]:
    publish = runtime.publish
    start, cpu = time.perf_counter(), time.thread_time()
    for _ in range(n):
        publish(zone, "cache.invalidate", "purged", "tag:assets")
    return time.perf_counter() - start, time.thread_time() - cpu


def worker_loop(runtime: Runtime, zone: str, n: int) -> tuple[float, float]:
    """hook_loop as in a worker of a live master: ``Runtime.check_master`` (one getppid) runs after
    each publish, as it does in every worker. (A standalone runtime has no master to check; the
    parent of this process stands in for it.)"""
    runtime._master = os.getppid()
    try:
        return hook_loop(runtime, zone, n)
    finally:
        runtime._master = None


def in_processes(fn, procs: int) -> tuple[float, float]:
    """Run fn() in ``procs`` forked processes started together; (aggregate wall seconds, the
    processes' mean CPU seconds)."""
    r, w = os.pipe()
    go_r, go_w = os.pipe()
    pids = []
    for _ in range(procs):
        pid = os.fork()
        if pid == 0:
            os.close(r)
            os.read(go_r, 1)
            _, cpu = fn()
            os.write(w, struct.pack("<d", cpu))
            os._exit(0)
        pids.append(pid)
    time.sleep(0.2)
    start = time.perf_counter()
    os.write(go_w, b"g" * procs)
    cpus = [struct.unpack("<d", os.read(r, 8))[0] for _ in range(procs)]
    elapsed = time.perf_counter() - start
    for pid in pids:
        os.waitpid(pid, 0)
    for fd in (r, w, go_r, go_w):
        os.close(fd)
    return elapsed, sum(cpus) / procs


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    n, procs = args.events, 4

    instance = current_instance(STANDALONE)
    runtime = Runtime(load_configuration("<bench>", text=CONF % ("", "bench")), instance)
    runtime.start_instance()  # zones exist; no dispatcher in this process: we measure publishing
    accel, shm.accel = shm.accel, None  # zones attached now get the pure-Python lock and writer
    try:
        pure = Runtime(load_configuration("<bench>", text=CONF % ("", "benchpy")), instance)
        pure.start_instance()
    finally:
        shm.accel = accel
    listening = Runtime(load_configuration("<bench>", text=CONF % ("load_module ngxsim_bench_noop;", "benchsub")),
                        instance)
    listening.start_instance()
    listening.start_worker()  # its dispatcher thread runs: a worker where a module listens
    with tempfile.NamedTemporaryFile(dir="/dev/shm", prefix="ngxsim-bench-bare-") as bare:
        bare.truncate(65536 * ENTRY.size)
        bare.flush()
        rows = []
        try:
            loops = {
                "bare pack_into+flock": lambda: bare_loop(bare.name, n),
                "ngxsim publish hook, pure Python": lambda: hook_loop(pure, "benchpy", n),
            }
            if accel is not None:
                loops["ngxsim publish hook, C accelerator"] = lambda: hook_loop(runtime, "bench", n)
                loops["  the same, with a worker's master check"] = lambda: worker_loop(runtime, "bench", n)
                loops["  the same, in a worker with 1 no-op subscriber"] = lambda: hook_loop(listening, "benchsub", n)
            runs: dict = {label: ([], []) for label in loops}
            for _ in range(args.rounds):  # interleaved: a busy moment hits both loops alike
                for label, fn in loops.items():
                    runs[label][0].append(fn())
                    runs[label][1].append(in_processes(fn, procs))
            results = {}
            for label, (single, multi) in runs.items():
                results[label] = (n / median([w for w, _ in single]), n / median([c for _, c in single]),
                                  n * procs / median([w for w, _ in multi]), n / median([c for _, c in multi]))
            base = results["bare pack_into+flock"]
            for label, (r1, c1, r4, c4) in results.items():
                rows.append([label, f"{r1:,.0f}", f"{1e6 / c1:.2f}", f"{r4:,.0f}", f"{1e6 / c4:.2f}",
                             f"{r1 / base[0]:.0%} / {c1 / base[1]:.0%}", f"{r4 / base[2]:.0%} / {c4 / base[3]:.0%}"])
        finally:
            runtime.close()
            pure.close()
            listening.stop_worker()
            listening.close()
            remove_zone_files(runtime.instance)
    print(table(f"Publish throughput ({n:,} events per process, median of {args.rounds} rounds, {os.cpu_count()} cores)",
                ["loop", "1 proc ev/s", "CPU us/event", f"{procs} procs ev/s (total)", "CPU us/event",
                 "vs bare, 1 proc (wall / CPU)", f"vs bare, {procs} procs (wall / CPU)"],
                rows))
    if accel is None:
        print("the C accelerator is not built here: only the pure-Python path was measured")
    print("goal: ngxsim >= 60% of bare in both columns")


if __name__ == "__main__":
    main()
