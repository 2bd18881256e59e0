"""An upstream drain made on one host -> the last worker of another host routes by it.

    python benchmarks/bench_upstreams_cluster.py [--samples N] [--engine redis|nats]

Three instances A, B, C (2 gthread workers each) whose upstreams are cluster-wide (the bus's
``upstreams`` channel bridged to one engine on loopback), and D, a single host (nothing bridged),
in the same run. Each sample toggles ``drain`` on one peer through the API (``PATCH``) and times,
from just before the request is sent:

- **A -> last worker of C**: until every worker of C has delivered the ``snapshot_activated`` of
  the new cluster revision (its sync service read it from the store and made it C's snapshot):
  from then on no worker of C routes a new request to a drained peer;
- A -> last worker of A: the origin itself (the API's change goes through A's sync service, the
  compare-and-set in the engine, then A's workers);
- (baseline) D -> last worker of D: the same change on a single host (no engine).

``ngxsim_bench_upstreams_cluster.py`` stamps each worker's delivery with CLOCK_MONOTONIC (one clock
for the machine). Samples ~20 ms apart; p50/p99 of each.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import percentile, table  # noqa: E402
from ngxsim_bench_upstreams_cluster import REC  # noqa: E402

from ngxsim.testing import Backend, start_server, wait_for  # noqa: E402

WORKERS = 2
CONF = """
load_module worker_events;
load_module cluster;
load_module upstreams;
load_module ngxsim_bench_upstreams_cluster;
http {{
    worker_events_zone bus;
    {bridge}
    upstream backend {{ server {b1}; server {b2}; }}
    server {{
        listen 127.0.0.1:{{port}};
        location / {{ proxy_pass http://backend; }}
        location /api/upstreams {{ upstreams_api; }}
        location /ev {{ worker_events_api; worker_events_channel upstreams; }}
    }}
}}
"""
BRIDGE = "cluster_bridge bus {engine} channels=upstreams state={state} stream=bench.{stream} instance={name};"


def start(folder: Path, name: str, engine_url: str | None, stream: str, backends) -> tuple:
    out, state = folder / f"snap-{name}", folder / f"state-{name}"
    out.mkdir()
    state.mkdir()
    bridge = BRIDGE if engine_url else ""
    text = CONF.format(bridge=bridge, b1=backends[0].address, b2=backends[1].address)
    server = start_server(folder, text, workers=WORKERS, worker_class="gthread", pythonpath=[HERE],
                          extra_env={"NGXSIM_BENCH_DIR": str(out)}, ready_path="/api/upstreams",
                          placeholders={"engine": engine_url, "state": state, "stream": stream, "name": name})
    return server, out


def stamps(out: Path, number: int) -> list[int]:
    """When each worker delivered the snapshot_activated numbered ``number`` (monotonic ns)."""
    got = []
    for path in out.glob("*.snap"):
        for n, ns in REC.iter_unpack(path.read_bytes()):
            if n == number:
                got.append(ns)
    return got


def number_of(server) -> int:
    doc = server.request("GET", "/api/upstreams/backend").json()
    return doc.get("revision") or doc["version"]


def measure(origin, watched: list[tuple], samples: int) -> dict[str, list[float]]:
    """Toggle drain on peer 1 (the second server) through ``origin``'s API; µs until the last worker of each watched
    instance delivered the new snapshot."""
    out = {label: [] for label, _, _ in watched}
    drain = False
    for _ in range(samples):
        time.sleep(0.015 + random.random() * 0.01)
        expected = {label: number_of(server) + 1 for label, server, _ in watched}
        drain = not drain
        t0 = time.monotonic_ns()
        r = origin.request("PATCH", "/api/upstreams/backend/servers/1", json={"drain": drain})
        if r.status_code != 200:
            raise SystemExit(f"PATCH answered {r.status_code}: {r.text}")
        for label, server, folder in watched:
            got = wait_for(lambda: (lambda s: s if len(s) >= WORKERS else None)(stamps(folder, expected[label])),
                           10, 0.001, what=f"{label}'s workers to route by the change")
            out[label].append((max(got) - t0) / 1000)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--engine", choices=("redis", "nats"), default="redis")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-upcluster-") as tmp:
        folder = Path(tmp)
        import shutil

        if shutil.which(f"{args.engine}-server") is None:
            print(f"{args.engine}-server is not installed: skipped")
            return
        if args.engine == "redis":
            from ngxsim.testing.engines import RedisServer

            engine = RedisServer(folder / "engine", fsync="everysec").start()
        else:
            from ngxsim.testing.nats_server import nats_node

            engine = nats_node(folder / "engine")
        backends = [Backend(f"b{i}").start() for i in (1, 2)]
        servers = {}
        try:
            stream = str(random.randrange(1 << 30))
            for name in "ABC":
                servers[name] = start(folder, name, engine.url, stream, backends)
            servers["D"] = start(folder, "D", None, stream, backends)
            for name in "ABC":
                wait_for(lambda: servers[name][0].request("GET", "/ev?limit=0").json().get("cluster", {}).get("connected"),
                         30, what=f"{name}'s relay to connect")
            # every host routes by the cluster's first revision
            wait_for(lambda: len({number_of(servers[n][0]) for n in "ABC"}) == 1 and number_of(servers["A"][0]), 30,
                     what="A, B, C to share a revision")
            cluster = measure(servers["A"][0], [("A -> last worker of C", servers["C"][0], servers["C"][1]),
                                                 ("A -> last worker of A", servers["A"][0], servers["A"][1])],
                              args.samples)
            single = measure(servers["D"][0], [("(baseline) D alone -> last worker of D", servers["D"][0],
                                                servers["D"][1])], args.samples)
        finally:
            for server, _ in servers.values():
                server.stop()
            for b in backends:
                b.stop()
            engine.stop()
    rows = [[label, len(v), f"{percentile(v, 50):,.0f}", f"{percentile(v, 99):,.0f}"]
            for label, v in {**cluster, **single}.items()]
    print(table(f"upstream drain toggled by PATCH ({args.engine}, {WORKERS} gthread workers per instance)",
                ["from the PATCH sent to", "samples", "p50 µs", "p99 µs"], rows))


if __name__ == "__main__":
    main()
