"""Health checks under real ``gunicorn -w 4`` with real loopback backends.

    python benchmarks/bench_healthchecks.py [--repeats N] [--intervals N]

1. Detection time. Four client threads keep sending requests through the proxy while one
   backend's ``/health`` flips to 503. Measured per flip: flip -> ``peer_transition`` published
   (its timestamp in the ring), flip -> the last request any worker forwarded to that backend
   (the backend's own record), and publish -> every worker delivered the event. The theory:
   the flip lands at a random point of the probe interval, so detection takes between
   ``(fails - 1) x interval`` and ``fails x interval`` plus one probe; routing follows one
   delivery later.
2. Probe load: ``/health`` requests each backend receives per interval with 4 workers, for
   healthchecks (one prober for the instance) and, as the baseline in the same run, a naive
   checker whose every worker probes on its own (``ngxsim_bench_perworker_probe``).
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import median, table  # noqa: E402

from ngxsim.testing import Backend, start_server, stop_all, wait_for  # noqa: E402

WORKERS = 4
EVENTS = "/internal/worker-events"
CONF = """
load_module worker_events;
load_module upstreams;
load_module healthchecks;
{extra_module}
worker_processes 4;
{perworker}
http {{
    worker_events_zone bus;
    upstream backend {{ zone backend 256k; server {a}; server {b}; }}
    server {{
        listen 127.0.0.1:{{port}};
        add_header X-Worker-Pid $pid always;
        location / {{ proxy_pass http://backend; {check} }}
        location /api/health {{ health_check_status; }}
        location /internal/worker-events {{ worker_events_api; worker_events_zone bus; worker_events_channel ops; }}
    }}
}}
"""


def conf(a: Backend, b: Backend, check: str = "", perworker: str = "") -> str:
    return CONF.format(a=a.address, b=b.address, check=check, perworker=perworker,
                       extra_module="load_module ngxsim_bench_perworker_probe;" if perworker else "")


def next_event(server, since: int, timeout: float) -> tuple[dict | None, int]:
    """The first healthchecks event after generation ``since`` (long-poll on the ring)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        wait = max(min(deadline - time.monotonic(), 10.0), 0.01)
        data = requests.get(server.url(EVENTS), params={"since": since, "channel": "healthchecks", "wait": f"{wait:.3f}"},
                            timeout=wait + 10).json()
        for event in data["events"]:
            return event, event["generation"]
        since = max(since, data["newest_generation"])
    return None, since


class Load:
    """Client threads sending GET / through the proxy until stopped."""

    def __init__(self, server, threads: int = 4):
        self.server = server
        self.stop = threading.Event()
        self.count = 0
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        session = requests.Session()
        while not self.stop.is_set():
            try:
                session.get(self.server.url("/"), timeout=5)
                self.count += 1
            except requests.RequestException:
                pass
        session.close()

    def __enter__(self) -> "Load":
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(10)


def detection(folder: Path, interval: float, fails: int, repeats: int) -> dict:
    a, b = Backend("a").start(), Backend("b").start()
    check = f"health_check interval={int(interval * 1000)}ms fails={fails} passes=1 uri=/health timeout=200ms;"
    server = start_server(folder, conf(a, b, check), workers=WORKERS, ready_path="/api/health")
    to_event, to_last, delivered = [], [], []
    try:
        since = requests.get(server.url(EVENTS), params={"limit": 0}, timeout=10).json()["newest_generation"]
        with Load(server) as load:
            for _ in range(repeats):
                time.sleep(random.uniform(0, interval))  # land the flip at a random phase of the interval
                t0 = time.time()
                b.set_healthy(False)
                event, since = next_event(server, since, fails * interval + 10)
                if event is None:
                    raise RuntimeError("no peer_transition within fails x interval + 10 s")
                published = event["timestamp_msec"] / 1000
                time.sleep(max(2 * interval, 0.3))  # traffic goes on: b must get nothing more
                ring = requests.get(server.url(EVENTS), params={"limit": 0}, timeout=10).json()
                late = [w for w in ring["workers"] if w["delivered_generation"] < event["generation"]]
                if late:
                    raise RuntimeError(f"workers that never delivered the transition: {late}")
                delivered.append(max(w["last_delivery_msec"] for w in ring["workers"]) / 1000 - published)
                after = [r.time for r in b.requests_for("/") if r.time >= t0]
                to_event.append(published - t0)
                to_last.append((max(after) if after else t0) - t0)
                b.set_healthy(True)
                _, since = next_event(server, since, 10)  # its recovery
                b.reset()
        served = load.count
    finally:
        stop_all([server, a, b])
    return {"interval": interval, "fails": fails, "event": to_event, "last": to_last, "delivered": delivered,
            "requests": served}


def probe_load(folder: Path, intervals: int) -> list[list[object]]:
    interval = 0.2
    rows = []
    for design in ("healthchecks (one prober per instance)", "per-worker prober (baseline)"):
        a, b = Backend("a").start(), Backend("b").start()
        if design.startswith("healthchecks"):
            text = conf(a, b, check=f"health_check interval={int(interval * 1000)}ms uri=/health;")
        else:
            text = conf(a, b, perworker=f"bench_perworker_probe {int(interval * 1000)}ms {a.url('/health')} {b.url('/health')};")
        server = start_server(folder, text, workers=WORKERS, ready_path="/api/health", pythonpath=[HERE])
        try:
            wait_for(lambda: a.requests_for("/health"), 10, what="the first probe")
            time.sleep(2 * interval)
            a.reset()
            b.reset()
            time.sleep(intervals * interval)
            probes = [len(a.requests_for("/health")), len(b.requests_for("/health"))]
            senders = len(a.worker_pids("/health") | b.worker_pids("/health"))
        finally:
            stop_all([server, a, b])
        per = median(probes) / intervals
        rows.append([design, WORKERS, intervals, f"{probes[0]} / {probes[1]}", senders, f"{per:.2f}"])
    return rows


def ms(seconds: float) -> str:
    return f"{seconds * 1000:,.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="flips per configuration")
    parser.add_argument("--intervals", type=int, default=25, help="intervals of the probe-load window")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ngxsim-bench-hc-") as tmp:
        folder = Path(tmp)
        rows = []
        for interval, fails in ((0.2, 1), (0.2, 2), (0.2, 4), (0.5, 2), (1.0, 2)):
            r = detection(folder, interval, fails, args.repeats)
            rows.append([f"{interval:g}s", fails, ms(fails * interval), f"{ms((fails - 1) * interval)}..{ms(fails * interval)}",
                         f"{ms(median(r['event']))} / {ms(max(r['event']))}",
                         f"{ms(median(r['last']))} / {ms(max(r['last']))}",
                         f"{median(r['delivered']) * 1000:.1f} / {max(r['delivered']) * 1000:.1f}",
                         r["requests"]])
        print(table(f"Detection time, gunicorn -w {WORKERS}, 4 client threads, {args.repeats} flips each "
                    "(median / max, ms)",
                    ["interval", "fails", "fails x interval", "expected range", "flip -> event",
                     "flip -> last request to it", "event -> all 4 delivered", "requests served"], rows))
        print(table(f"Probe load per backend, gunicorn -w {WORKERS}, interval 200ms, over {args.intervals} intervals",
                    ["design", "workers", "intervals", "probes a / b", "probing processes", "per backend per interval"],
                    probe_load(folder, args.intervals)))


if __name__ == "__main__":
    main()
