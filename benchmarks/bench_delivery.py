"""Delivery latency and bursts of worker_events under real ``gunicorn -w 4``.

    python benchmarks/bench_delivery.py [--samples N]
    python benchmarks/bench_delivery.py --only-busy --rounds 1   # case 2 alone: run it with two
                                                                  # checkouts' Pythons in turn (A/B)

1. Latency from publish to the subscriber having run in **all 4** workers (idle workers),
   p50/p99, next to Redis pub/sub to 4 subscriber processes (a ``redis-server`` started on
   loopback from Debian's package if installed; "skipped" otherwise) and a 1 s poll of the
   ring (lua-resty-worker-events' default interval), all measured in this run.
2. The same with every worker's Python busy (a spinning thread per worker: the dispatcher
   waits for the GIL, bounded by the interpreter's switch interval).
3. Burst: 20 000 publishes from one worker as fast as it can into a 32 768 ring: time until
   every worker delivered all, lost events (must be 0), wake-ups per worker.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import percentile, table  # noqa: E402

from ngxsim.core.conf.loader import load_configuration  # noqa: E402
from ngxsim.core.instance import Instance, process_start_time  # noqa: E402
from ngxsim.core.shm import attach_zone  # noqa: E402
from ngxsim.testing import free_port, start_server, wait_for  # noqa: E402
from ngxsim_plugins.worker_events.ring import Ring, encode_event  # noqa: E402

WORKERS = 4
RING = 32768
CONF = f"""
load_module worker_events;
load_module ngxsim_bench_latency;
worker_processes {WORKERS};
http {{
    worker_events_gil_switch_interval {{switch}};
    server {{
        listen 127.0.0.1:{{port}};
        location /internal/worker-events {{
            worker_events_api;
            worker_events_zone bus;
            worker_events_channel bench;
            worker_events_ring_size {RING};
        }}
        location /burst {{ bench_burst; }}
    }}
}}
"""
_REC = struct.Struct("<QQ")


def api(server, path="/internal/worker-events?limit=0"):
    return json.load(urllib.request.urlopen(server.url(path), timeout=30))


def attach_ring(server, capacity: int = RING) -> Ring:
    """The server's ring "bus", attached in this process (a publisher from outside)."""
    spec = load_configuration(str(server.conf)).zones["bus"]
    instance = Instance(server.master, process_start_time(server.master), "worker")
    return Ring(attach_zone(instance, "bus", spec.size, spec.tag), capacity)


def latency_to_all(folder: Path, workers: int = WORKERS, upto: int | None = None) -> list[float]:
    """Microseconds until the last of the ``workers`` receivers had each sample (generations up
    to ``upto``), from the (generation, latency ns) records they wrote to folder/*.lat; partial
    samples are dropped."""
    per_gen: dict[int, list[int]] = {}
    for path in folder.glob("*.lat"):
        for gen, ns in _REC.iter_unpack(path.read_bytes()):
            if upto is None or gen <= upto:
                per_gen.setdefault(gen, []).append(ns)
    return [max(v) / 1000 for v in per_gen.values() if len(v) == workers]


def publish_samples(server, samples: int, workers: int = WORKERS) -> int:
    """Publish ``samples`` latency samples ~2 ms apart into the server's ring from this process
    and wait until every worker delivered them; returns the last generation."""
    wait_for(lambda: len(api(server)["workers"]) == workers, 60, what="workers")
    ring = attach_ring(server)
    for _ in spaced(samples):
        ring.publish(*encode_event("bench", "lat", str(time.monotonic_ns())))
    newest = ring.newest
    ring.publish(*encode_event("bench", "flush", ""))  # the workers write what they recorded
    ring.zone.close()
    wait_for(lambda: all(w["delivered_generation"] > newest for w in api(server)["workers"]), 60,
             what="every worker to deliver")
    return newest


def spaced(n: int):
    """Publish moments ~2 ms apart, with jitter, so wake-ups do not coalesce."""
    for _ in range(n):
        time.sleep(0.0015 + random.random() * 0.001)
        yield


def conf(switch: str = "1ms") -> str:
    return CONF.replace("{switch}", switch)


def ngxsim_latency(folder: Path, samples: int, busy: bool, switch: str = "1ms", default_slice: bool = False) -> list[float]:
    out = folder / f"{'busy' if busy else 'idle'}-{switch}{'-default-slice' if default_slice else ''}"
    out.mkdir()
    env = {"NGXSIM_BENCH_DIR": str(out)}
    if default_slice:
        env["NGXSIM_BENCH_DEFAULT_SLICE"] = "1"
    if busy:
        env["NGXSIM_BENCH_BUSY"] = "1"
    server = start_server(folder, conf(switch), workers=WORKERS, pythonpath=[HERE], extra_env=env)
    try:
        publish_samples(server, samples)
    finally:
        server.stop()
    complete = latency_to_all(out)
    assert len(complete) == samples, f"{len(complete)} of {samples} events reached all {WORKERS} workers"
    return complete


# -- Redis pub/sub baseline ---------------------------------------------------------------------


def _resp(*parts: str) -> bytes:
    out = [f"*{len(parts)}\r\n".encode()]
    for p in parts:
        b = p.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


def _redis_subscriber(port: int, ready_w: int, out_path: str) -> None:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(_resp("SUBSCRIBE", "bench"))
    f = sock.makefile("rb")
    fd = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def read_reply():
        line = f.readline()
        if line.startswith(b"*"):
            return [read_reply() for _ in range(int(line[1:]))]
        if line.startswith(b"$"):
            data = f.read(int(line[1:]) + 2)[:-2]
            return data
        return line.strip()

    read_reply()  # subscribe confirmation
    os.write(ready_w, b"r")
    gen = 0
    records = bytearray()  # written at the end, as the ngxsim workers do
    while True:
        msg = read_reply()
        now = time.monotonic_ns()
        if msg[2] == b"stop":
            break
        gen += 1
        records.extend(_REC.pack(gen, now - int(msg[2])))
    os.write(fd, records)


def redis_latency(folder: Path, samples: int) -> list[float] | None:
    if not shutil.which("redis-server"):
        return None
    port = free_port()
    redis = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                              "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pids = []
    try:
        wait_for(lambda: _connects(port), 10, what="redis")
        out = folder / "redis"
        out.mkdir()
        r, w = os.pipe()
        for i in range(WORKERS):
            pid = os.fork()
            if pid == 0:
                try:
                    _redis_subscriber(port, w, str(out / f"{i}.lat"))
                finally:
                    os._exit(0)
            pids.append(pid)
        for _ in range(WORKERS):
            os.read(r, 1)
        pub = socket.create_connection(("127.0.0.1", port))
        pf = pub.makefile("rb")
        for _ in spaced(samples):
            pub.sendall(_resp("PUBLISH", "bench", str(time.monotonic_ns())))
            pf.readline()
        pub.sendall(_resp("PUBLISH", "bench", "stop"))
        pf.readline()
        for pid in pids:
            os.waitpid(pid, 0)
        pids.clear()
        return latency_to_all(out)
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        redis.terminate()
        redis.wait(10)


def _connects(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


# -- 1 s poll baseline -------------------------------------------------------------------------


def poll_latency(folder: Path, samples: int) -> list[float]:
    """4 processes look at the ring's newest generation once a second (no wake-ups)."""
    server = start_server(folder, conf(), workers=1, pythonpath=[HERE])  # it only hosts the ring
    out = folder / "poll"
    out.mkdir()
    pids = []
    try:
        ring = attach_ring(server)
        stop_at = time.monotonic() + samples * 0.45 + 2.5
        for i in range(WORKERS):
            pid = os.fork()
            if pid == 0:
                try:
                    fd = os.open(out / f"{i}.lat", os.O_WRONLY | os.O_CREAT, 0o644)
                    cursor = ring.newest
                    while time.monotonic() < stop_at:
                        time.sleep(1.0)
                        now = time.monotonic_ns()
                        newest = ring.newest
                        for gen in range(cursor + 1, newest + 1):
                            ev = ring.read(gen)
                            os.write(fd, _REC.pack(gen, now - int(ev.payload)))
                        cursor = newest
                finally:
                    os._exit(0)
            pids.append(pid)
        time.sleep(0.3)
        for _ in range(samples):
            time.sleep(0.3 + random.random() * 0.3)
            ring.publish(*encode_event("bench", "lat", str(time.monotonic_ns())))
        for pid in pids:
            os.waitpid(pid, 0)
        pids.clear()
        ring.zone.close()
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        server.stop()
    return latency_to_all(out)


# -- burst --------------------------------------------------------------------------------------


def run_burst(server, count: int) -> tuple[dict, float]:
    """``count`` publishes from one worker's request; (its answer, seconds until every worker
    delivered them all)."""
    start = time.monotonic()
    answer = json.load(urllib.request.urlopen(server.url(f"/burst?n={count}"), timeout=300))
    last = answer["first"] + count - 1
    wait_for(lambda: all(w["delivered_generation"] >= last for w in api(server)["workers"]), 120, 0.001,
             what="every worker to deliver the burst")
    return answer, time.monotonic() - start


def burst(folder: Path, count: int) -> list[list[object]]:
    out = folder / "burst"
    out.mkdir()
    server = start_server(folder, conf(), workers=WORKERS, pythonpath=[HERE], extra_env={"NGXSIM_BENCH_DIR": str(out)})
    try:
        wait_for(lambda: len(api(server)["workers"]) == WORKERS, 20, what="workers")
        before = {w["pid"]: w for w in api(server)["workers"]}
        answer, done = run_burst(server, count)
        after = api(server)["workers"]
    finally:
        server.stop()
    rows = [["publishing (one worker)", f"{answer['seconds'] * 1000:.1f} ms", f"{count / answer['seconds']:,.0f} ev/s", ""]]
    rows.append(["until all 4 delivered all", f"{done * 1000:.1f} ms", "", ""])
    for w in after:
        b = before.get(w["pid"], {})
        wakeups = w["wakeups"] - b.get("wakeups", 0)
        delivered = w["events_delivered"] - b.get("events_delivered", 0)
        rows.append([f"worker {w['pid']}", f"{delivered} delivered, {w['lost_events']} lost",
                     f"{wakeups} wake-ups", f"{delivered / max(wakeups, 1):.0f} events/wake-up"])
    return rows


@contextlib.contextmanager
def hogs(count: int):
    """``count`` processes spinning in a loop (nice 0) while the block runs; killed after."""
    pids = []
    try:
        for _ in range(count):
            pid = os.fork()
            if pid == 0:
                try:
                    while True:
                        pass
                finally:
                    os._exit(0)
            pids.append(pid)
        if count:
            print(f"{count} spinning process(es) running beside the rounds")
        yield
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)


def summarize(name: str, values: list[float] | None) -> list[object]:
    if values is None:
        return [name, "skipped", "skipped", "skipped", "redis-server not installed"]
    return [name, len(values), f"{percentile(values, 50):,.0f}", f"{percentile(values, 99):,.0f}",
            f"{max(values):,.0f}"]


def idle_rounds(folder: Path, samples: int, rounds: int, slice_ab: bool = False) -> tuple[list[float], list[float] | None]:
    """``rounds`` x (ngxsim idle, Redis), alternating which goes first so a busy moment of the
    machine hits both alike; prints each round's p50/p99 and ratios, returns all samples."""
    idle: list[float] = []
    redis: list[float] | None = [] if shutil.which("redis-server") else None
    rows = []
    for n in range(rounds):
        sub = folder / f"round{n}"
        sub.mkdir()
        order = ["ngxsim", "redis"] + (["default slice"] if slice_ab else [])
        if n % 2:
            order.reverse()
        got: dict[str, list[float] | None] = {}
        for what in order:
            if what == "redis":
                got[what] = redis_latency(sub, samples)
            else:
                got[what] = ngxsim_latency(sub, samples, busy=False, default_slice=what == "default slice")
        idle += got["ngxsim"]
        row = [n + 1, f"{os.getloadavg()[0]:.1f}", f"{percentile(got['ngxsim'], 50):,.0f}",
               f"{percentile(got['ngxsim'], 99):,.0f}"]
        if got["redis"] is not None:
            redis += got["redis"]
            r50, r99 = percentile(got["redis"], 50), percentile(got["redis"], 99)
            row += [f"{r50:,.0f}", f"{r99:,.0f}", f"{percentile(got['ngxsim'], 50) / r50:.2f}",
                    f"{percentile(got['ngxsim'], 99) / r99:.2f}"]
        else:
            row += ["skipped"] * 4
        if slice_ab:
            row += [f"{percentile(got['default slice'], 50):,.0f}", f"{percentile(got['default slice'], 99):,.0f}"]
        rows.append(row)
    print(table(f"Idle workers, publish -> subscriber ran in all 4 ({samples} samples per round; microseconds)",
                ["round", "load", "ngxsim p50", "ngxsim p99", "Redis p50", "Redis p99", "p50 ratio", "p99 ratio"]
                + (["ngxsim default slice p50", "p99"] if slice_ab else []), rows))
    return idle, redis


def busy_rounds(folder: Path, samples: int, rounds: int) -> None:
    """``rounds`` x the busy-workers case alone, each round's load and p50/p99 printed."""
    rows = []
    for n in range(rounds):
        sub = folder / f"busy{n}"
        sub.mkdir()
        load = os.getloadavg()[0]
        got = ngxsim_latency(sub, samples, busy=True)
        rows.append([n + 1, f"{load:.1f}", f"{percentile(got, 50):,.0f}", f"{percentile(got, 99):,.0f}"])
    print(table(f"Busy workers, publish -> subscriber ran in all {WORKERS} workers ({samples:,} samples a round)",
                ["round", "load", "p50 us", "p99 us"], rows))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=5000,
                        help="per round and case (a p99 of 5,000 is the 50th slowest: steadier than of 2,000)")
    parser.add_argument("--poll-samples", type=int, default=12)
    parser.add_argument("--burst", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3,
                        help="idle ngxsim and Redis rounds, alternated (each round's ratio is printed)")
    parser.add_argument("--slice-ab", action="store_true",
                        help="also run ngxsim with the dispatcher on the kernel's default time slice")
    parser.add_argument("--only-idle", action="store_true", help="skip the busy, poll and burst parts")
    parser.add_argument("--hogs", type=int, default=0,
                        help="processes that spin on the CPU during the idle rounds (a loaded machine, the same "
                             "for ngxsim and Redis)")
    parser.add_argument("--only-busy", action="store_true",
                        help="only the busy-workers case (1 ms switch interval), --rounds times; for A/B runs "
                             "of two checkouts (run this script with each checkout's Python, alternately)")
    args = parser.parse_args()
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if args.only_busy:
            busy_rounds(folder, args.samples, args.rounds)
            return
        with hogs(args.hogs):
            idle, redis = idle_rounds(folder, args.samples, args.rounds, args.slice_ab)
        if args.only_idle:
            return
        busy = ngxsim_latency(folder, args.samples, busy=True)
        busy_default = ngxsim_latency(folder, args.samples, busy=True, switch="0")
        poll = poll_latency(folder, args.poll_samples)
        rows = [summarize("ngxsim worker_events, idle workers", idle),
                summarize("Redis pub/sub, 4 subscriber processes", redis),
                summarize("ngxsim, busy workers, GIL switch interval 1 ms (default)", busy),
                summarize("ngxsim, busy workers, Python's 5 ms switch interval", busy_default),
                summarize("1 s poll of the ring (lua-resty-worker-events default)", poll)]
        print(table("Publish -> subscriber ran in all 4 workers (microseconds)",
                    ["mechanism", "samples", "p50 us", "p99 us", "max us"], rows))
        if redis:
            r50 = percentile(idle, 50) / percentile(redis, 50)
            r99 = percentile(idle, 99) / percentile(redis, 99)
            print(f"ngxsim / Redis, all rounds: p50 {r50:.2f}, p99 {r99:.2f} (goal <= 1 in every round); "
                  f"busy p99 = {percentile(busy, 99) / 1000:.2f} ms (goal <= 2 ms)")
        print(table(f"Burst: {args.burst:,} publishes from one worker into a {RING:,} ring",
                    ["what", "value", "", ""], burst(folder, args.burst)))


if __name__ == "__main__":
    main()
