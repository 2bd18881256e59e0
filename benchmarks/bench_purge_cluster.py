"""cache_purge across hosts: three instances (2 workers each) sharing a real Redis, proxying to
one real backend.

    python benchmarks/bench_purge_cluster.py [--samples N]

Purge a key through A's API -> cache_purge ran (shared level and memory level evicted) in
**every** worker of B and C (the last of the 4), p50/p99, measured from the moment the purge was
sent and from the moment its answer reached the client; beside the same purge's eviction in A's
own 2 workers (same host, same run). Before each purge the key is fetched once on B and on C, so
their shared levels hold it and the removal does real work. The eviction times come from
``ngxsim_bench_evict`` (loaded after cache_purge: it runs right after cache_purge's handler),
on CLOCK_MONOTONIC, one clock for the whole machine. Redis runs with ``appendfsync everysec``.
"""

from __future__ import annotations

import argparse
import os
import random
import struct
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import percentile, table  # noqa: E402

from ngxsim.testing import Backend, start_server, wait_for  # noqa: E402
from ngxsim.testing.engines import RedisServer  # noqa: E402

WORKERS = 2
REC = struct.Struct("<QQ")
CONF = """
load_module worker_events;
load_module upstreams;
load_module cache_purge;
load_module ngxsim_bench_evict;
load_module cluster;
http {
    worker_events_zone bus;
    cluster_bridge bus {engine} channels=cache.invalidate state={state} stream=bench.{stream} instance={name};
    proxy_cache_path {state}/cache keys_zone=assets:1m inactive=10m;
    upstream backend { zone backend 256k; server {backend}; }
    server {
        listen 127.0.0.1:{port};
        location /static/ { proxy_pass http://backend; proxy_cache assets; proxy_cache_valid 200 10m; }
        location /api/cache { cache_purge_api assets; }
        location /ev { worker_events_api; worker_events_channel cache.invalidate; }
    }
}
"""


def start_cluster(folder: Path, engine: RedisServer, backend: Backend, stream: str) -> dict:
    servers = {}
    for name in ("A", "B", "C"):
        out, state = folder / f"evict-{name}", folder / f"state-{name}"
        out.mkdir(parents=True)
        state.mkdir()
        servers[name] = start_server(folder, CONF, workers=WORKERS, pythonpath=[HERE],
                                     extra_env={"NGXSIM_BENCH_DIR": str(out)},
                                     placeholders={"engine": engine.url, "state": state, "stream": stream,
                                                   "name": name, "backend": backend.address})
    for server in servers.values():
        def connected(server=server):
            view = server.get("/ev?limit=0").json().get("cluster", {})
            return view.get("connected") and view.get("cursor")

        wait_for(connected, 30, what="the relays to connect")
    return servers


def evict_files(folder: Path, name: str, server) -> list[Path]:
    return [folder / f"evict-{name}" / f"{pid}.evict" for pid in server.worker_pids()]


def newest_after(files: list[Path], sizes: dict[Path, int]) -> list[int] | None:
    """The last eviction time each file recorded after ``sizes``; None until each has one."""
    out = []
    for path in files:
        data = path.read_bytes() if path.exists() else b""
        if len(data) <= sizes.get(path, 0):
            return None
        out.append(REC.unpack_from(data, len(data) - REC.size)[1])
    return out


def sizes_of(files: list[Path]) -> dict[Path, int]:
    return {p: p.stat().st_size if p.exists() else 0 for p in files}


def measure(folder: Path, servers: dict, samples: int) -> dict[str, list[float]]:
    local = evict_files(folder, "A", servers["A"])
    remote = evict_files(folder, "B", servers["B"]) + evict_files(folder, "C", servers["C"])
    out: dict[str, list[float]] = {"same": [], "cross_sent": [], "cross_answer": []}
    for i in range(samples):
        path = f"/static/s{i}.css"
        for name in ("B", "C"):
            servers[name].get(path)
        time.sleep(0.004 + random.random() * 0.002)
        before = sizes_of(local + remote)
        sent = time.monotonic_ns()
        r = servers["A"].post("/api/cache", json={"key": "http://backend" + path})
        answered = time.monotonic_ns()
        assert r.status_code in (200, 404), r.text
        same = wait_for(lambda: newest_after(local, before), 10, 0.0005, what="A's workers to evict")
        cross = wait_for(lambda: newest_after(remote, before), 10, 0.0005, what="B's and C's workers to evict")
        out["same"].append((max(same) - sent) / 1000)
        out["cross_sent"].append((max(cross) - sent) / 1000)
        out["cross_answer"].append((max(cross) - answered) / 1000)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=300)
    args = parser.parse_args()
    if not RedisServer.available():
        print("redis-server is not installed: skipped")
        return
    with tempfile.TemporaryDirectory(prefix="bench-purge-cluster-") as tmp:
        folder = Path(tmp)
        engine = RedisServer(folder / "redis", fsync="everysec").start()
        backend = Backend(name="origin").start()
        servers = {}
        try:
            servers = start_cluster(folder, engine, backend, f"{os.getpid()}")
            got = measure(folder, servers, args.samples)
        finally:
            for server in servers.values():
                server.stop()
            backend.stop()
            engine.stop()
    print(f"load average at the end: {os.getloadavg()}")
    rows = [[label, len(got[k]), f"{percentile(got[k], 50):,.0f}", f"{percentile(got[k], 99):,.0f}"] for label, k in (
        ("same host (baseline): purge sent -> evicted in A's 2 workers", "same"),
        ("across hosts: purge sent -> evicted in every worker of B and C (4)", "cross_sent"),
        ("across hosts: purge answered -> evicted in every worker of B and C (4)", "cross_answer"),
    )]
    print(table(f"purge on A -> evicted (shared + memory level), µs ({args.samples} purges ~5 ms apart)",
                ["eviction", "samples", "p50 µs", "p99 µs"], rows))


if __name__ == "__main__":
    main()
