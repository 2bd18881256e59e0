"""Ordinary requests while clients misbehave: answer times under long-polls and slow clients.

    python benchmarks/bench_starvation.py [--seconds 6] [--misbehaving 32]

For each server (gunicorn -w 4: sync; gthread --threads 4 without and with worker_events' long-poll
limit; ngxsim.worker.Worker --threads 4)
and each scenario (nobody misbehaving = the baseline; M long-polls with ?wait=30 that retry
after a 503's Retry-After; M slow-header clients sending one byte every 0.5 s; M slow-body
clients doing the same with a declared body), N=4 ordinary clients GET / in a loop for the
measured seconds, each request with a 5 s timeout. Printed: ordinary requests answered, answer
time p50/p99/max, and how many failed (timed out or refused).
"""

from __future__ import annotations

import argparse
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import percentile, table  # noqa: E402

from ngxsim.testing import start_server  # noqa: E402

CONF = """
load_module worker_events;
worker_processes 4;
http {
    server {
        listen 127.0.0.1:{port};
        location = / { return 200 ok; }
        location /api {
            worker_events_api;
            worker_events_zone bus;
            worker_events_channel c;
        }
    }
}
"""
NO_LIMIT = "worker_events_long_poll_limit 1024;"  # what every server did before the limit
SERVERS = [
    ("sync -w 4", "sync", {}, ""),
    ("gthread -w 4 --threads 4, no long-poll limit", "gthread", {}, NO_LIMIT),
    ("gthread -w 4 --threads 4", "gthread", {}, ""),
    ("ngxsim.worker.Worker -w 4 --threads 4", "ngxsim.worker.Worker", {"GUNICORN_CMD_ARGS": "--threads 4"}, ""),
]
ORDINARY_CLIENTS = 4
TIMEOUT = 5.0


def long_poller(url: str, stop: threading.Event) -> None:
    with requests.Session() as s:
        while not stop.is_set():
            try:
                r = s.get(f"{url}/api?since=999999999&wait=30", timeout=35)
                if r.status_code == 503:
                    stop.wait(float(r.headers.get("Retry-After", "1")))
            except requests.RequestException:
                stop.wait(0.5)


def slow_client(port: int, stop: threading.Event, body: bool) -> None:
    """Send a request a byte every 0.5 s; reconnect when the server closes (a 408)."""
    head = b"GET / HTTP/1.1\r\nHost: x\r\nUser-Agent: slowloris\r\nX-Padding: " + b"a" * 4096 + b"\r\n\r\n"
    if body:
        head = b"POST /api HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 4000\r\n\r\n" + b" " * 4000
    while not stop.is_set():
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                start = head.index(b"\r\n\r\n") + 4 if body else 0
                sock.sendall(head[:start])
                for i in range(start, len(head)):
                    if stop.wait(0.5):
                        return
                    sock.sendall(head[i:i + 1])
        except OSError:
            stop.wait(0.2)


def ordinary(url: str, stop: threading.Event, times: list[float], failures: list[int]) -> None:
    with requests.Session() as s:
        while not stop.is_set():
            started = time.perf_counter()
            try:
                r = s.get(url + "/", timeout=TIMEOUT)
                if r.status_code != 200:
                    raise requests.RequestException(r.status_code)
                times.append(time.perf_counter() - started)
            except requests.RequestException:
                failures.append(1)


def run(server, scenario: str, misbehaving: int, seconds: float) -> list[object]:
    stop, ordinary_stop = threading.Event(), threading.Event()
    bad = []
    for _ in range(misbehaving if scenario != "none" else 0):
        if scenario == "long-polls":
            target, args = long_poller, (server.base, stop)
        else:
            target, args = slow_client, (server.port, stop, scenario == "slow bodies")
        bad.append(threading.Thread(target=target, args=args, daemon=True))
    for t in bad:
        t.start()
    time.sleep(1.0)  # let them settle in
    times: list[float] = []
    failures: list[int] = []
    clients = [threading.Thread(target=ordinary, args=(server.base, ordinary_stop, times, failures)) for _ in range(ORDINARY_CLIENTS)]
    for t in clients:
        t.start()
    time.sleep(seconds)
    ordinary_stop.set()
    for t in clients:
        t.join(TIMEOUT + 5)
    stop.set()
    ms = [t * 1000 for t in times]
    return [len(times), f"{percentile(ms, 50):.1f}", f"{percentile(ms, 99):.1f}", f"{max(ms, default=float('nan')):.0f}", len(failures)]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--misbehaving", type=int, default=32)
    args = parser.parse_args()
    rows = []
    for name, worker_class, env, extra in SERVERS:
        with tempfile.TemporaryDirectory() as folder:
            conf = CONF.replace("http {", "http {\n    " + extra, 1)
            server = start_server(Path(folder), conf, workers=4, worker_class=worker_class, extra_env=env)
            try:
                for scenario in ("none", "long-polls", "slow headers", "slow bodies"):
                    rows.append([name, scenario if scenario == "none" else f"{args.misbehaving} {scenario}",
                                 *run(server, scenario, args.misbehaving, args.seconds)])
                    print(rows[-1], flush=True)
            finally:
                server.stop(timeout=60)
    print(table(f"Ordinary GET / from {ORDINARY_CLIENTS} clients for {args.seconds:g} s while clients misbehave "
                f"(timeout {TIMEOUT:g} s)", ["server", "misbehaving", "answered", "p50 ms", "p99 ms", "max ms", "failed"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
