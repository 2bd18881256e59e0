"""Health checks across hosts: instances (1 worker each) sharing a real Redis, probing two real
loopback backends every second.

    python benchmarks/bench_healthchecks_cluster.py [--sizes 3,10] [--intervals N] [--takeovers N]

1. Probes per backend per interval, counted at the backends over ``--intervals`` intervals,
   for ``scope=instance`` (each instance probes: NGINX Plus's way, the baseline, same run) and
   ``scope=cluster`` (one prober for the cluster), with 3 and 10 instances.
2. Takeover (``scope=cluster``): the prober's instance is SIGKILLed (master and workers, as a
   host that dies); the time until another instance's first probe reaches a backend, in
   intervals (the goal: within 2). Repeated ``--takeovers`` times per size on what remains.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import median, table  # noqa: E402

from ngxsim.testing import Backend, instance_files, start_server, wait_for  # noqa: E402
from ngxsim.testing.engines import RedisServer  # noqa: E402
from ngxsim.testing.server import shm_dir  # noqa: E402

INTERVAL = 1.0
CONF = """
load_module worker_events;
load_module upstreams;
load_module healthchecks;
load_module cluster;
http {
    worker_events_zone bus;
    cluster_bridge bus {engine} channels=healthchecks state={state} stream=bench.{stream} instance={name};
    upstream backend { zone backend 256k; server {b1}; server {b2}; }
    server {
        listen 127.0.0.1:{port};
        location / { proxy_pass http://backend; health_check interval=1s uri=/health timeout=250ms scope={scope}; }
        location /api/health { health_check_status; }
        location /ev { worker_events_api; worker_events_channel healthchecks; }
    }
}
"""


def start_cluster(folder: Path, engine, backends, size: int, scope: str) -> dict:
    servers = {}
    for n in range(size):
        name = f"i{n}"
        state = folder / f"state-{scope}-{size}-{name}"
        state.mkdir(parents=True)
        servers[name] = start_server(folder, CONF, workers=1, placeholders={
            "engine": engine.url, "state": state, "stream": f"{os.getpid()}.{scope}.{size}", "name": name,
            "scope": scope, "b1": backends[0].address, "b2": backends[1].address})
    return servers


def role(server) -> str | None:
    return server.get("/api/health").json()["upstreams"]["backend"].get("cluster", {}).get("role")


def settled(servers: dict) -> str:
    """Until exactly one instance is the prober and the others follow; returns the prober."""
    def check():
        roles = {name: role(s) for name, s in servers.items()}
        probers = [n for n, r in roles.items() if r == "prober"]
        return probers[0] if len(probers) == 1 and all(r == "follower" for n, r in roles.items() if n != probers[0]) \
            else None

    return wait_for(check, 60, 0.2, what="one prober")


def probes_per_interval(backends, intervals: int) -> float:
    before = [len(b.requests_for("/health")) for b in backends]
    time.sleep(intervals * INTERVAL)
    return sum(len(b.requests_for("/health")) - n for b, n in zip(backends, before)) / len(backends) / intervals


def kill(server) -> None:
    """As a host that dies: SIGKILL the master and its workers at once, then remove its zone files."""
    tag, pids = server.tag, [server.master, *server.worker_pids()]
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    server.proc.wait(10)
    time.sleep(0.2)
    for name in instance_files(tag):
        os.unlink(os.path.join(shm_dir(), name))


def takeover(servers: dict, prober: str, backends) -> float:
    """Kill the prober's instance; seconds until another instance's probe reaches a backend."""
    pids = {pid: name for name, s in servers.items() if name != prober for pid in s.worker_pids()}
    seen = [len(b.requests_for("/health")) for b in backends]
    kill(servers.pop(prober))
    t0 = time.monotonic()

    def probed():
        for b, n in zip(backends, seen):
            for r in b.requests_for("/health")[n:]:
                if r.worker_pid in pids:
                    return True
        return None

    wait_for(probed, 30, 0.01, what="another instance to probe")
    return time.monotonic() - t0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="3,10")
    parser.add_argument("--intervals", type=int, default=10)
    parser.add_argument("--takeovers", type=int, default=2)
    args = parser.parse_args()
    if not RedisServer.available():
        print("redis-server is not installed: skipped")
        return
    rows, takeovers = [], []
    with tempfile.TemporaryDirectory(prefix="bench-hc-cluster-") as tmp:
        folder = Path(tmp)
        engine = RedisServer(folder / "redis", fsync="everysec").start()
        backends = [Backend(name="b1").start(), Backend(name="b2").start()]
        try:
            for size in [int(n) for n in args.sizes.split(",") if n]:
                got = {}
                for scope in ("instance", "cluster"):
                    servers = start_cluster(folder, engine, backends, size, scope)
                    try:
                        prober = settled(servers) if scope == "cluster" else None
                        if prober is None:
                            time.sleep(2 * INTERVAL)  # every instance's first round is done
                        got[scope] = probes_per_interval(backends, args.intervals)
                        times = []
                        for _ in range(min(args.takeovers, size - 1) if prober else 0):
                            times.append(takeover(servers, prober, backends))
                            prober = settled(servers)
                        if times:
                            takeovers.append([size, len(times), f"{median(times):.2f}", f"{max(times):.2f}",
                                              f"{max(times) / INTERVAL:.2f}"])
                    finally:
                        for server in servers.values():
                            server.stop()
                rows.append([size, f"{got['instance']:.2f}", f"{got['cluster']:.2f}",
                             f"{got['instance'] / got['cluster']:.1f}x"])
        finally:
            for b in backends:
                b.stop()
            engine.stop()
    print(f"load average at the end: {os.getloadavg()}")
    print(table(f"probes per backend per interval (interval 1s, counted at the backends over {args.intervals} "
                "intervals)", ["instances", "scope=instance (baseline)", "scope=cluster", "ratio"], rows))
    print(table("takeover: the prober's instance SIGKILLed -> another instance's first probe at a backend",
                ["instances", "takeovers", "median s", "max s", "max in intervals"], takeovers))


if __name__ == "__main__":
    main()
