"""An unrelated request's latency while 8 requests wait on a delay, against the same server idle.

    python benchmarks/bench_waits.py [--samples N] [--rounds R]

One worker process of 4 threads, ``location /slow/ { bench_delay 1s; }`` (a preaccess ``Delay``),
``location /limited/`` behind ``limit_req zone=bench burst=64`` at 8r/s (8 looping clients keep
their requests delayed by limit_req itself) and ``location = / { return 200 ok; }``. Per round:
N sequential ``GET /`` idle, then N while 8 clients keep 8 requests waiting at all times. Servers:
ngxsim's worker (``worker_class ngxsim``: a delayed request gives its thread back) and gunicorn's
gthread (``worker_class gthread``: the thread waits, the fallback). Medians over the rounds of
each round's median and p99. Goal: with ngxsim's worker, busy <= 2x idle.
"""

from __future__ import annotations

import argparse
import http.client
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import median, percentile, table  # noqa: E402

from ngxsim.testing import start_server  # noqa: E402

CONF = """
load_module ngxsim_bench_delay;
load_module limit_req;
worker_processes 1;
worker_class {klass};
worker_threads 4;
http {
    limit_req_zone $binary_remote_addr zone=bench:1m rate=8r/s;
    server {
        listen 127.0.0.1:{port};
        location = / { return 200 ok; }
        location /slow/ { bench_delay 1s; }
        location /limited/ { limit_req zone=bench burst=64; bench_delay 1ms; }
    }
}
"""


def one(port: int, path: str, timeout: float = 30) -> float:
    began = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        assert response.status == 200, response.status
    finally:
        conn.close()
    return (time.perf_counter() - began) * 1000


def samples(port: int, n: int) -> list[float]:
    return [one(port, "/") for _ in range(n)]


def waiters(port: int, stop: threading.Event, path: str) -> list[threading.Thread]:
    def loop():
        while not stop.is_set():
            one(port, path)

    threads = [threading.Thread(target=loop, daemon=True) for _ in range(8)]
    for t in threads:
        t.start()
    return threads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rows = []
    for klass in ("ngxsim", "gthread"):
        with tempfile.TemporaryDirectory() as folder:
            server = start_server(Path(folder), CONF.replace("{klass}", klass), mode="ngxsim", pythonpath=[str(HERE)])
            try:
                scenarios = {"idle": None, "8 delayed (Delay 1s)": "/slow/x",
                             "8 delayed by limit_req (8r/s, burst=64)": "/limited/x"}
                got = {name: ([], []) for name in scenarios}
                for _ in range(args.rounds):
                    for name, path in scenarios.items():
                        stop = threading.Event()
                        threads = waiters(server.port, stop, path) if path else []
                        time.sleep(1.5 if path else 0)  # the 8 are waiting (limit_req: its bucket has filled)
                        values = samples(server.port, args.samples)
                        stop.set()
                        for t in threads:
                            t.join(timeout=60)
                        got[name][0].append(median(values))
                        got[name][1].append(percentile(values, 99))
            finally:
                server.stop()
        base = median(got["idle"][0])
        for name, (p50s, p99s) in got.items():
            if klass == "gthread" and "limit_req" in name:
                continue  # the fallback's answer is the same as with Delay: the threads wait
            rows.append([klass, name, f"{median(p50s):.2f}", f"{median(p99s):.2f}", f"{median(p50s) / base:.2f}x"])
    print(table(f"GET / latency (ms), 1 worker x 4 threads, {args.samples} sequential requests x {args.rounds} rounds "
                f"(medians of each round's p50 and p99)",
                ["worker_class", "while", "p50 ms", "p99 ms", "p50 vs idle"], rows))


if __name__ == "__main__":
    main()
