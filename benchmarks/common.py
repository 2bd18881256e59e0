"""Shared bits of the benchmarks: statistics, table printing, and wrk runs."""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
from dataclasses import dataclass


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


def ratio_rows(results: dict[str, list[float]], baseline: str) -> list[list[str]]:
    """One row per measured thing: its median req/s and its ratio to ``baseline``'s median."""
    base = median(results[baseline])
    return [[name, f"{median(v):,.0f}", f"{median(v) / base:.0%}"] for name, v in results.items()]


def throughput_args(doc: str | None = None, rounds: int = 3, **extra: int | str) -> argparse.Namespace | None:
    """``--seconds``/``--rounds`` (and ``--NAME`` for each of ``extra``, with its default, of its
    default's type) of a wrk benchmark; None, after saying so, when wrk is not installed."""
    parser = argparse.ArgumentParser(description=doc)
    parser.add_argument("--seconds", type=float, default=4)
    parser.add_argument("--rounds", type=int, default=rounds)
    for name, default in extra.items():
        parser.add_argument(f"--{name}", type=type(default), default=default)
    args = parser.parse_args()
    if not shutil.which("wrk"):
        print("skipped: wrk is not installed (apt-get install wrk)")
        return None
    return args


@dataclass(frozen=True)
class WrkRun:
    rps: float
    p99_ms: float
    socket_errors: int  # connect + read + write + timeout, as wrk counts them
    cpu_us_per_request: float  # utime + stime of the given processes over the run / requests (0 without pids)


_UNIT_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def cpu_seconds(pids) -> float:
    """utime + stime of these processes so far (their children not included; gone ones: 0)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as fh:
                fields = fh.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def wrk_run(url: str, seconds: float, script: str | None = None, pids=()) -> WrkRun:
    """One ``wrk -t2 -c8 --latency`` run on ``url``; stops the benchmark if any answer was not
    2xx/3xx. With ``pids``, also the CPU those processes (a server's workers) spent per request:
    far less disturbed than req/s by other load on a shared machine."""
    cmd = ["wrk", "-t2", "-c8", f"-d{seconds:g}s", "--latency"]
    if script:
        cmd += ["-s", script]
    cpu = cpu_seconds(pids)
    out = subprocess.run(cmd + [url], capture_output=True, text=True, timeout=seconds + 60).stdout
    cpu = cpu_seconds(pids) - cpu
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    count = re.search(r"(\d+) requests in", out)
    p99 = re.search(r"^\s*99%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if not rps or not count or not p99 or bad:
        raise SystemExit(f"wrk failed or saw errors on {url}:\n{out}")
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return WrkRun(float(rps.group(1)), float(p99.group(1)) * _UNIT_MS[p99.group(2)],
                  sum(map(int, errors.groups())) if errors else 0, cpu * 1e6 / max(1, int(count.group(1))))


def wrk(url: str, seconds: float, script: str | None = None) -> float:
    """req/s of ``wrk -t2 -c8`` on ``url``; stops the benchmark if any answer was not 2xx/3xx."""
    return wrk_run(url, seconds, script).rps
