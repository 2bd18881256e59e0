"""What one GET of the worker_events API costs against the ring's size: the ring read behind
``GET /...`` (``Ring.json_scan``, in-process, no HTTP), on full rings of 1k, 16k, 64k and 256k
entries where 1% of the events are on channel "other" and 99% on "busy".

    python benchmarks/bench_scan.py [--rounds R] [--sizes 1024,16384,65536,262144]

Baseline in the same run: every slot decoded and compared (what the seed's channel filter did,
and what any scan without the channel tags must do). "cold" is a process's first read (no
cached JSON: a fresh worker, or events it never served), "warm" the same read repeated. Each
API read asks for at most one page (``worker_events_page_size``, default 1000). Goal: the
filtered read of a full 65,536 ring <= 30 ms. Medians of R rounds, the sizes interleaved.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import median, table  # noqa: E402

from ngxsim.core.instance import STANDALONE, current_instance  # noqa: E402
from ngxsim.core.shm import HEADER_SIZE, attach_zone, remove_zone_files  # noqa: E402
from ngxsim_plugins.worker_events import Ring  # noqa: E402
from ngxsim_plugins.worker_events.__init__ import DEFAULT_PAGE_SIZE  # noqa: E402
from ngxsim_plugins.worker_events.ring import encode_event, ring_bytes  # noqa: E402

PAGE = DEFAULT_PAGE_SIZE
READS = [  # label, (since, limit, channel) as the API passes them
    ("GET (newest page)", (None, PAGE, None)),
    ("GET ?limit=100", (None, 100, None)),
    ("GET ?since=0 (oldest page)", (0, PAGE, None)),
    ("GET ?channel=other (1%)", (None, PAGE, "other")),
    ("GET ?since=0&channel=other", (0, PAGE, "other")),
    ("GET ?channel=busy (99%)", (None, PAGE, "busy")),
    ("GET ?channel=none (0%)", (None, PAGE, "none")),
]


def fill(capacity: int, index: int) -> Ring:
    zone = attach_zone(current_instance(STANDALONE), f"bench-scan-{index}", HEADER_SIZE + ring_bytes(capacity))
    ring = Ring(zone, capacity)
    busy, other = encode_event("busy", "purged", "tag:assets/" + "x" * 40), encode_event("other", "purged", "tag:x")
    for i in range(capacity):
        ring.publish(*(other if i % 100 == 0 else busy))
    return ring


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000


def every_slot(ring: Ring, channel: str) -> int:
    """The seed's filter: decode every slot the ring holds, keep those on ``channel``."""
    return len([e for e in ring.scan(since=0).events if e.channel == channel])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sizes", default="1024,16384,65536,262144")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    rings = {cap: fill(cap, i) for i, cap in enumerate(sizes)}
    cold: dict = {}
    warm: dict = {}
    base: dict = {}
    try:
        for _ in range(args.rounds):
            for cap, ring in rings.items():  # interleaved: a noisy moment hits every size alike
                for label, q in READS:
                    fresh = Ring(ring.zone, cap)  # no cached JSON
                    cold.setdefault((label, cap), []).append(timed(lambda: fresh.json_scan(*q)))
                    warm.setdefault((label, cap), []).append(timed(lambda: fresh.json_scan(*q)))
                base.setdefault(cap, []).append(timed(lambda: every_slot(ring, "other")))
        header = ["read"] + [f"{cap:,} cold / warm ms" for cap in sizes]
        rows = [[label] + [f"{median(cold[label, cap]):.2f} / {median(warm[label, cap]):.2f}" for cap in sizes]
                for label, _ in READS]
        rows.append(["baseline: every slot decoded, channel=other"] + [f"{median(base[cap]):.1f}" for cap in sizes])
        print(table(f"One GET's ring read against ring size (full rings, 1% on \"other\", page {PAGE}, "
                    f"median of {args.rounds} rounds, {os.cpu_count()} cores)", header, rows))
        if 65536 in rings:
            print(f"goal: GET ?channel=other on the 65,536 ring <= 30 ms cold: "
                  f"{median(cold['GET ?channel=other (1%)', 65536]):.2f} ms "
                  f"(baseline {median(base[65536]):.0f} ms)")
    finally:
        for ring in rings.values():
            ring.zone.close()
        remove_zone_files(current_instance(STANDALONE))


if __name__ == "__main__":
    main()
