"""The cluster bridge's engines: append → read (push) latency, and what losing a NATS node costs.

    python benchmarks/bench_engines.py [--samples N] [--rounds R]

1. Latency from ``append`` (returning once acknowledged) to a reader in another process having
   the entry from its blocked ``read``: p50/p99 of NATS JetStream through ``NatsEngine`` on one
   node (R1) and on a 3-node loopback cluster (R3 stream), next to raw redis-py ``XADD MAXLEN ~``
   → ``XREAD BLOCK`` (the Redis engine's own calls, without an engine around them) as the
   baseline, all in this run, rounds interleaved. One entry in flight at a time (the reader
   answers over a pipe before the next append). The ack time alone (``append``'s own round
   trip) is in its own columns.
2. NATS R3 failover: appends one after another while a node goes away, in turn: the one the
   writer is connected to killed (``SIGKILL``), the stream's leader killed, the leader stopped
   the way maintenance does (``SIGTERM``); the longest wait between two acknowledged appends (the pause), how
   many appends raised EngineError and were retried the relay's way (close, connect; after a
   reconnect of the client's own, Reconnected: the last acknowledged append checked, then on), and
   that nothing acknowledged is missing afterwards. Several rounds: the pause depends on where
   the stream leader was.

Servers are Debian's ``nats-server`` and ``redis-server`` on free loopback ports with their data
in a temp folder; a missing one is reported as skipped.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import percentile, table  # noqa: E402

from ngxsim.testing import free_port, wait_for  # noqa: E402
from ngxsim.testing.nats_server import nats_cluster, nats_node, nats_server_missing  # noqa: E402
from ngxsim_plugins.cluster.engine import EngineError, Reconnected, Record  # noqa: E402
from ngxsim_plugins.cluster.engines.nats import NatsEngine, encode  # noqa: E402

RETENTION = 100_000
VICTIMS = ("connected", "leader", "leader stopped")


def record(generation: int) -> Record:
    # the send time rides in the payload: CLOCK_MONOTONIC is one clock for every process here
    return Record("bench-a", generation, "upstreams", "peer_down", str(time.monotonic_ns()), 0)


# -- readers (each in its own process, as another instance's relay would be) ----------------------


def _nats_reader(url: str, stream: str, count: int, conn) -> None:
    engine = NatsEngine(url, stream, retention=RETENTION, timeout=5.0)
    engine.connect()
    cursor = engine.newest() or "0"
    conn.send("ready")
    got = 0
    while got < count:
        batch = engine.read(cursor, block=5.0)
        now = time.monotonic_ns()
        for entry in batch.entries:
            conn.send((now - int(entry.record.payload)) / 1e6)
            got += 1
        cursor = batch.cursor
    engine.close()


def _redis_reader(port: int, key: str, count: int, conn) -> None:
    import redis

    client = redis.Redis(port=port)
    last = "0-0"  # from the start: the stream is new, the first append may come before this read
    conn.send("ready")
    got = 0
    while got < count:
        answer = client.xread({key: last}, block=5000, count=512)
        now = time.monotonic_ns()
        for _, entries in answer:
            for entry_id, fields in entries:
                origin, generation, channel, type_, timestamp, payload = json.loads(fields[b"r"])
                conn.send((now - int(payload)) / 1e6)
                got += 1
                last = entry_id
    client.close()


def _measure(reader, reader_args, append, samples: int) -> tuple[list[float], list[float]]:
    """(append → read latencies, append ack times) in ms, one entry in flight at a time."""
    ctx = multiprocessing.get_context("spawn")
    ours, theirs = ctx.Pipe()
    proc = ctx.Process(target=reader, args=(*reader_args, samples, theirs), daemon=True)
    proc.start()
    try:
        if not ours.poll(30) or ours.recv() != "ready":
            raise RuntimeError("the reader did not start")
        latencies, acks = [], []
        for generation in range(1, samples + 1):
            started = time.monotonic_ns()
            append(record(generation))
            acks.append((time.monotonic_ns() - started) / 1e6)
            if not ours.poll(10):
                raise RuntimeError(f"entry {generation} did not reach the reader within 10s")
            latencies.append(ours.recv())
        return latencies, acks
    finally:
        proc.join(10)
        if proc.is_alive():
            proc.kill()


def nats_latency(url: str, samples: int, replicas: int) -> tuple[list[float], list[float]]:
    stream = f"bench-{time.monotonic_ns()}"
    writer = NatsEngine(f"{url}?replicas={replicas}", stream, retention=RETENTION, timeout=5.0)
    writer.connect()
    try:
        return _measure(_nats_reader, (url, stream), lambda r: writer.append([r]), samples)
    finally:
        writer.close()


def redis_latency(port: int, samples: int) -> tuple[list[float], list[float]]:
    import redis

    key = f"bench-{time.monotonic_ns()}"
    client = redis.Redis(port=port)
    try:
        return _measure(_redis_reader, (port, key),
                        lambda r: client.xadd(key, {"r": encode(r)}, maxlen=RETENTION, approximate=True), samples)
    finally:
        client.close()


def start_redis(folder: Path):
    port = free_port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(folder)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def answers():
        import redis

        try:
            return redis.Redis(port=port, socket_timeout=1).ping()
        except redis.RedisError:
            return False

    wait_for(answers, 10, what="redis-server")
    return proc, port


# -- failover --------------------------------------------------------------------------------------


def failover_round(folder: Path, victim: str, before: int = 200, after: int = 300) -> dict:
    """``victim``: "connected" (the writer's node) or "leader" (the stream's leader), killed;
    "leader stopped": the leader stopped the way maintenance does (``SIGTERM``)."""
    cluster = nats_cluster(folder)
    try:
        writer = NatsEngine(f"{cluster.url}?replicas=3", "failover", retention=RETENTION, timeout=2.0)
        writer.connect()
        leader = cluster.stream_leader(writer.name).name
        names = [node.name for node in cluster.nodes]
        connected = [node.client_count() for node in cluster.nodes].index(1)
        doomed = connected if victim == "connected" else names.index(leader)
        acked_at, errors, generation, position, lost_after_reconnect = [], 0, 1, "0", 0
        while generation <= before + after:
            if generation == before + 1:
                if victim == "leader stopped":
                    cluster.nodes[doomed].signal(signal.SIGTERM)
                else:
                    cluster.nodes[doomed].kill()
            try:
                position = writer.append([record(generation)])[0]
                acked_at.append(time.monotonic())
                generation += 1
            except Reconnected:  # the relay's way: the last acknowledged one still held, go on
                try:
                    if generation > 1 and writer.record_at(position) is None:
                        lost_after_reconnect += 1
                    writer.epoch()
                except EngineError:
                    errors += 1
            except EngineError:
                errors += 1
                writer.close()
                time.sleep(0.1)
                try:
                    writer.connect()
                except EngineError:
                    pass
        writer.close()
        survivor = next(n for i, n in enumerate(cluster.nodes) if i != doomed)
        reader = NatsEngine(survivor.url, "failover", retention=RETENTION, timeout=5.0)
        reader.connect()
        stored = int(reader.newest() or 0)
        reader.close()
        gaps = [b - a for a, b in zip(acked_at, acked_at[1:])]
        roles = [role for role, yes in (("leader", names[doomed] == leader), ("writer's", doomed == connected)) if yes]
        how = "stopped (SIGTERM)" if victim == "leader stopped" else "killed"
        assert not lost_after_reconnect, "an R3 stream lost an acknowledged append"
        return {"pause_ms": max(gaps) * 1e3, "errors": errors, "stored": stored, "acked": len(acked_at),
                "killed": f"{' + '.join(roles) or 'other'}, {how}"}
    finally:
        cluster.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--failover-rounds", type=int, default=5)
    args = parser.parse_args()
    missing = nats_server_missing()
    if missing:
        print(f"skipped: {missing}")
        return
    have_redis = shutil.which("redis-server") is not None
    results: dict[str, tuple[list[float], list[float]]] = {}

    def add(name, got):
        lat, ack = results.setdefault(name, ([], []))
        lat.extend(got[0])
        ack.extend(got[1])

    with tempfile.TemporaryDirectory(prefix="bench-engines-") as tmp:
        folder = Path(tmp)
        node = nats_node(folder / "single")
        cluster = nats_cluster(folder / "cluster")
        redis_proc, redis_port = start_redis(folder) if have_redis else (None, None)
        try:
            for round_ in range(args.rounds):
                if have_redis:
                    add("redis-py XADD → XREAD BLOCK (baseline)", redis_latency(redis_port, args.samples))
                add("NATS JetStream R1, 1 node", nats_latency(node.url, args.samples, 1))
                add("NATS JetStream R3, 3 nodes", nats_latency(cluster.url, args.samples, 3))
                print(f"round {round_ + 1}/{args.rounds} done", flush=True)
        finally:
            node.stop()
            cluster.stop()
            if redis_proc is not None:
                redis_proc.terminate()
                redis_proc.wait(10)
        failovers = [failover_round(folder / f"failover{i}", VICTIMS[i % len(VICTIMS)])
                     for i in range(args.failover_rounds)]

    base = next(iter(results)) if have_redis else None
    rows = []
    for name, (lat, ack) in results.items():
        p50, p99 = percentile(lat, 50), percentile(lat, 99)
        ratio = f"{p50 / percentile(results[base][0], 50):.2f} / {p99 / percentile(results[base][0], 99):.2f}" \
            if base else "-"
        rows.append([name, len(lat), f"{p50:.3f}", f"{p99:.3f}", ratio,
                     f"{percentile(ack, 50):.3f}", f"{percentile(ack, 99):.3f}"])
    if not have_redis:
        rows.append(["redis-py XADD → XREAD BLOCK (baseline)", "skipped: redis-server not installed",
                     "", "", "", "", ""])
    print(table(f"append → read in another process, ms ({args.rounds} rounds × {args.samples}, interleaved)",
                ["engine", "samples", "p50", "p99", "vs Redis p50 / p99", "ack p50", "ack p99"], rows))
    print(table("NATS R3 on 3 nodes: a node lost mid-flow, the writer's or the stream leader",
                ["round", "node killed", "longest pause between acks, ms", "appends retried",
                 "acked", "stored (newest seq)", "acked missing"],
                [[i + 1, f["killed"], f"{f['pause_ms']:.0f}", f["errors"], f["acked"], f["stored"],
                  max(0, f["acked"] - f["stored"])] for i, f in enumerate(failovers)]))
    kinds: dict[str, list[float]] = {}
    for f in failovers:
        kind = "leader stopped" if "SIGTERM" in f["killed"] else "leader killed" if "leader" in f["killed"] \
            else "a follower killed"
        kinds.setdefault(kind, []).append(f["pause_ms"])
    for kind, pauses in sorted(kinds.items()):
        pauses.sort()
        print(f"failover pause, {kind}: median {pauses[len(pauses) // 2]:.0f} ms, max {pauses[-1]:.0f} ms "
              f"over {len(pauses)} rounds")


if __name__ == "__main__":
    main()
