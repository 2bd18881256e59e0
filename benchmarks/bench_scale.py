"""How worker_events' costs grow with the number of workers and of subscribing modules, under
real gunicorn (sync workers), each configuration a fresh server:

    python benchmarks/bench_scale.py [--workers 2,4,8,16] [--modules 1,4,16] [--samples N] [--burst N]

For each (workers W, subscribing modules per worker M):

- delivery: publish -> the recording subscriber ran in **all W** workers, p50/p99 over N
  samples ~2 ms apart (the recording module is ``ngxsim_bench_latency``; the M-1 others are
  generated no-op ``ngxsim_event`` modules, loaded before it);
- publish rate: a burst of ``--burst`` publishes from one worker's request (every publish wakes
  the W dispatchers sleeping on the zone's futex), and the time until all W delivered it all;
- memory per worker after the burst (``/proc/PID/smaps_rollup``, median over the workers): RSS,
  PSS (the shared ring split among the processes mapping it) and private (the worker's own).

Baseline in the same run: the first row (2 workers, 1 module); ratios against it in the last
column. Rounds are not repeated (a 16-worker server on 2 cores takes a while): read the growth,
not the third digit.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_delivery import RING, WORKERS, api, latency_to_all, publish_samples, run_burst  # noqa: E402
from bench_delivery import conf as delivery_conf  # noqa: E402
from common import percentile, table  # noqa: E402

from ngxsim.testing import start_server  # noqa: E402

NOOP = '''from ngxsim import hookimpl


@hookimpl
def ngxsim_event(runtime, event):
    pass
'''


def conf(workers: int, modules: int) -> str:
    """bench_delivery's server, with ``workers`` workers and M-1 no-op subscribers loaded first."""
    noops = "".join(f"load_module ngxsim_bench_sub{i};\n" for i in range(modules - 1))
    text = delivery_conf().replace(f"worker_processes {WORKERS};", f"worker_processes {workers};")
    return text.replace("load_module ngxsim_bench_latency;", noops + "load_module ngxsim_bench_latency;")


def memory(pid: int) -> tuple[float, float, float]:
    """(RSS, PSS, private) in MiB."""
    fields = {}
    with open(f"/proc/{pid}/smaps_rollup") as fh:
        for line in fh:
            parts = line.split()
            if len(parts) >= 2 and parts[0].endswith(":") and parts[1].isdigit():
                fields[parts[0][:-1]] = int(parts[1])
    private = fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0)
    return fields["Rss"] / 1024, fields["Pss"] / 1024, private / 1024


def run(folder: Path, mods: Path, workers: int, modules: int, samples: int, burst: int) -> dict:
    out = folder / f"w{workers}-m{modules}"
    out.mkdir()
    server = start_server(out, conf(workers, modules), workers=workers, pythonpath=[HERE, mods],
                          extra_env={"NGXSIM_BENCH_DIR": str(out)}, timeout=120)
    try:
        newest = publish_samples(server, samples, workers)
        answer, done = run_burst(server, burst)
        mem = [memory(w["pid"]) for w in api(server)["workers"]]
    finally:
        server.stop()
    lat = latency_to_all(out, workers, upto=newest)
    return {"lat": lat, "rate": burst / answer["seconds"], "all_ms": done * 1000,
            "rss": statistics.median(m[0] for m in mem), "pss": statistics.median(m[1] for m in mem),
            "private": statistics.median(m[2] for m in mem)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", default="2,4,8,16")
    parser.add_argument("--modules", default="1,4,16")
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--burst", type=int, default=RING)  # fills the ring: memory is that of a full one
    args = parser.parse_args()
    workers = [int(w) for w in args.workers.split(",")]
    modules = [int(m) for m in args.modules.split(",")]
    rows = []
    base = None
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        mods = folder / "modules"
        mods.mkdir()
        sys.path.insert(0, str(mods))  # this process reads the config too (to attach the ring)
        for i in range(max(modules) - 1):
            (mods / f"ngxsim_bench_sub{i}.py").write_text(NOOP)
        for w in workers:
            for m in modules:
                r = run(folder, mods, w, m, args.samples, args.burst)
                p50, p99 = percentile(r["lat"], 50), percentile(r["lat"], 99)
                if base is None:
                    base = (p50, p99, r["rate"])
                rows.append([w, m, f"{len(r['lat'])}", f"{p50:,.0f}", f"{p99:,.0f}", f"{r['rate']:,.0f}",
                             f"{r['all_ms']:,.0f}", f"{r['rss']:.1f} / {r['pss']:.1f} / {r['private']:.1f}",
                             f"{p50 / base[0]:.1f}x / {p99 / base[1]:.1f}x / {r['rate'] / base[2]:.2f}x"])
                print(rows[-1], flush=True)
    print(table(f"worker_events against workers and subscribing modules (ring {RING:,}, {os.cpu_count()} cores, "
                f"{args.samples} delivery samples, burst {args.burst:,})",
                ["workers", "modules/worker", "samples", "p50 us", "p99 us", "publish ev/s (burst)",
                 "burst: all delivered ms", "MiB/worker RSS / PSS / private", "vs first row p50 / p99 / rate"],
                rows))


if __name__ == "__main__":
    main()
