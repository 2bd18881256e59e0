"""What cache_purge's disk guard costs a shared-level read, in one process (no HTTP).

    python benchmarks/bench_cache_guard.py [--rounds R] [--reads N]

Each ``SharedLevel`` operation first checks that its databases are still the ones it opened (the
keys zone's generation: a memory read; the files' inodes: two stat calls, at most every 0.1 s)
and turns disk failures into one ``StorageError``. Baseline, same run: the same read without the
guard (``SharedLevel.get.__wrapped__``). Rounds alternate; medians shown.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import median, table  # noqa: E402

from ngxsim_plugins.cache_purge.levels import Entry, SharedLevel  # noqa: E402


class _Spec:
    max_size = None
    inactive = 600.0

    def __init__(self, path: str):
        self.path = path


class _Zone:  # the keys zone's bytes (the real one is shared memory; a read is a read)
    buf = bytearray(64)

    def lock(self):
        return contextlib.nullcontext()


def per_read_us(read, level, reads: int) -> float:
    start = time.perf_counter()
    for _ in range(reads):
        read(level, "k")
    return (time.perf_counter() - start) / reads * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--reads", type=int, default=20000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        spec = _Spec(folder)
        SharedLevel.prepare(spec)
        level = SharedLevel(spec, _Zone())
        level.store("k", Entry(200, [("Content-Type", "text/plain")], b"x" * 4096, time.time() + 600), 0)
        bare, guarded = [], []
        for _ in range(args.rounds):
            bare.append(per_read_us(SharedLevel.get.__wrapped__, level, args.reads))
            guarded.append(per_read_us(SharedLevel.get, level, args.reads))
        level.close()
    base = median(bare)
    print(table(f"shared-level read of a 4 KiB entry, us per read (medians of {args.rounds} x {args.reads})",
                ["read", "us", "vs baseline"],
                [["without the guard (baseline)", f"{base:.1f}", "1.00"],
                 ["with the guard", f"{median(guarded):.1f}", f"{median(guarded) / base:.2f}"]]))


if __name__ == "__main__":
    main()
