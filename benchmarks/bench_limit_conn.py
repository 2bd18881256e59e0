"""limit_conn's cost per request in a worker: counting in and out of a key's record, CPU time.

    python benchmarks/bench_limit_conn.py [--ops N] [--rounds R]

What a request pays in the preaccess and log phases (``SharedTable.update`` twice, the stripe
lock included), in one process on a real zone: the record that holds each worker's count apart
(pid and start time, so a killed worker's requests stop counting) against the baseline measured
in the same run, a bare 8-byte count (the record before: a killed worker's count stayed). Also
the request refused at the limit, where the holders' liveness is looked at (one ``poll`` of
their pidfds). ``time.process_time`` per operation, medians over the rounds. Goal: the in+out
pair within 2x the bare count's (a few µs against the ~200 µs of CPU a request costs).
"""

from __future__ import annotations

import argparse
import os
import struct
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import median, table  # noqa: E402

from ngxsim import SharedTable  # noqa: E402
from ngxsim.core.instance import STANDALONE, current_instance  # noqa: E402
from ngxsim.core.shm import attach_zone, remove_zone_files  # noqa: E402
from ngxsim_plugins.limit_conn import RECORD_SIZE, _count_in, _count_out, in_use  # noqa: E402

COUNT = struct.Struct("<q")


def bare_in(limit):
    def change(old):
        count = COUNT.unpack(old)[0] if old is not None else 0
        return (old, False) if count >= limit else (COUNT.pack(count + 1), True)
    return change


def bare_out(old):
    count = COUNT.unpack(old)[0] - 1
    return (COUNT.pack(count) if count > 0 else None), None


def per_op(fn, ops: int) -> float:
    began = time.process_time()
    for i in range(ops):
        fn(i)
    return (time.process_time() - began) / ops * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ops", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    inst = current_instance(STANDALONE)
    zone = attach_zone(inst, f"bench-conn-{os.getpid()}", 1 << 20)
    try:
        bare = SharedTable(attach_zone(inst, f"bench-bare-{os.getpid()}", 1 << 20), 64, COUNT.size)
        held = SharedTable(zone, 64, RECORD_SIZE, in_use=in_use)
        keys = [f"10.0.{i // 256}.{i % 256}".encode() for i in range(1024)]
        results: dict[str, list[float]] = {"bare count: in + out": [], "per-worker counts: in + out": [],
                                           "per-worker counts: refused at the limit": []}
        held.update(b"full", _count_in(1))  # held by this process: every later count-in is refused
        for _ in range(args.rounds):
            results["bare count: in + out"].append(per_op(
                lambda i: (bare.update(keys[i % 1024], bare_in(10)), bare.update(keys[i % 1024], bare_out)), args.ops))
            results["per-worker counts: in + out"].append(per_op(
                lambda i: held.update(keys[i % 1024], _count_out(held.update(keys[i % 1024], _count_in(10)))),
                args.ops))
            results["per-worker counts: refused at the limit"].append(per_op(
                lambda i: held.update(b"full", _count_in(1)), args.ops))
        base = median(results["bare count: in + out"])
        print(table(f"limit_conn, CPU µs per request ({args.ops} ops x {args.rounds} rounds, medians)",
                    ["what", "µs", "vs bare count"],
                    [[name, f"{median(v):.2f}", f"{median(v) / base:.2f}x"] for name, v in results.items()]))
    finally:
        zone.close()
        remove_zone_files(inst)


if __name__ == "__main__":
    main()
