"""Where the delivery tail comes from: publish -> subscriber ran in all 4 workers, each sample
split per worker into publish -> the dispatcher's futex wait returned ("wake": the kernel's
wake-up and the scheduler giving the thread a core, then the GIL for the return from ctypes)
and wake -> the subscriber was called ("ours": reading the ring, building the Event, the
dispatcher's bookkeeping, the hook call).

    python benchmarks/bench_tail.py [--samples N]

Same server and publishing as bench_delivery.py (idle workers, samples ~2 ms apart). Samples
where a worker had no fresh wake-up (delivered by a request's drain, or coalesced) are counted
apart. The table shows, for all samples and for the slowest 1% (by time to all workers), the
median and p99 of each part in the worker that was last.
"""

from __future__ import annotations

import argparse
import os
import struct
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_delivery import WORKERS, conf, publish_samples  # noqa: E402
from common import percentile, table  # noqa: E402

from ngxsim.testing import start_server  # noqa: E402

_WAKE_REC = struct.Struct("<QQq")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        out = folder / "tail"
        out.mkdir()
        server = start_server(folder, conf(), workers=WORKERS, pythonpath=[HERE],
                              extra_env={"NGXSIM_BENCH_DIR": str(out), "NGXSIM_BENCH_WAKE": "1"})
        try:
            newest = publish_samples(server, args.samples)
        finally:
            server.stop()
        per_gen: dict[int, list[tuple[int, int]]] = {}
        for path in out.glob("*.wake"):
            for gen, total, wake in _WAKE_REC.iter_unpack(path.read_bytes()):
                if gen <= newest:
                    per_gen.setdefault(gen, []).append((total, wake))
    last = []  # per complete sample: (total to all, wake part, ours part) of the last worker
    stale = 0
    for records in per_gen.values():
        if len(records) != WORKERS:
            continue
        total, wake = max(records)
        if wake <= 0 or wake > total:
            stale += 1  # no wake-up of its own: delivered by a drain or with an earlier event
            continue
        last.append((total / 1000, wake / 1000, (total - wake) / 1000))
    last.sort()
    slow = last[int(len(last) * 0.99):]
    rows = []
    for name, part in (("all samples", last), ("slowest 1%", slow)):
        for i, what in ((0, "publish -> subscriber (total)"), (1, "publish -> futex wait returned"),
                        (2, "wait returned -> subscriber")):
            values = [p[i] for p in part]
            rows.append([name, what, len(values), f"{percentile(values, 50):,.0f}", f"{percentile(values, 99):,.0f}"])
    print(table(f"Delivery to all {WORKERS} workers, split in the last worker (us; {os.cpu_count()} cores, "
                f"{stale} samples without a wake-up of their own left out)",
                ["samples", "part", "n", "p50 us", "p99 us"], rows))
    if slow:
        share = sorted(p[1] / p[0] for p in slow)
        print(f"slowest 1%: the wake-up is {percentile(share, 50):.0%} of the time (median; "
              f"min {share[0]:.0%}, max {share[-1]:.0%})")


if __name__ == "__main__":
    main()
