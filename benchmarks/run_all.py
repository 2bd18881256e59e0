"""Run every benchmark, one after the other (each prints its own table with its baseline).

    python benchmarks/run_all.py
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

for script in ("bench_ring.py", "bench_scan.py", "bench_http.py", "bench_delivery.py", "bench_tail.py", "bench_scale.py",
               "bench_healthchecks.py", "bench_cache.py", "bench_starvation.py", "bench_proxy.py", "bench_proxy_body.py",
               "bench_status.py", "bench_engines.py", "bench_limit_conn.py"):
    print(f"\n=== {script}", flush=True)
    subprocess.run([sys.executable, str(HERE / script)], check=True)
