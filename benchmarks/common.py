"""Shared bits of the benchmarks: statistics, table printing, and wrk runs."""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def median(values: list[float]) -> float:
    return statistics.median(values)


def table(title: str, header: list[str], rows: list[list[object]]) -> str:
    cells = [header] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    out = [f"\n{title}", line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(r) for r in cells[1:]]
    return "\n".join(out)


def throughput_args(doc: str | None = None, **extra: int) -> argparse.Namespace | None:
    """``--seconds``/``--rounds`` (and ``--NAME`` for each of ``extra``, with its default) of a
    wrk benchmark; None, after saying so, when wrk is not installed."""
    parser = argparse.ArgumentParser(description=doc)
    parser.add_argument("--seconds", type=float, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    for name, default in extra.items():
        parser.add_argument(f"--{name}", type=int, default=default)
    args = parser.parse_args()
    if not shutil.which("wrk"):
        print("skipped: wrk is not installed (apt-get install wrk)")
        return None
    return args


def wrk(url: str, seconds: float, script: str | None = None) -> float:
    """req/s of ``wrk -t2 -c8`` on ``url``; stops the benchmark if any answer was not 2xx/3xx."""
    cmd = ["wrk", "-t2", "-c8", f"-d{seconds:g}s", "--latency"]
    if script:
        cmd += ["-s", script]
    out = subprocess.run(cmd + [url], capture_output=True, text=True, timeout=seconds + 60).stdout
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if not m or errors:
        raise SystemExit(f"wrk failed or saw errors:\n{out}")
    return float(m.group(1))
