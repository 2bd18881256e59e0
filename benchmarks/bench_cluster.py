"""worker_events across hosts: three instances (2 workers each) sharing a real engine, Redis
Streams or NATS JetStream (one ``nats-server -js`` node).

    python benchmarks/bench_cluster.py [--engine redis|nats|both] [--samples N] [--rounds N]

1. Cross-host delivery: publish on instance A -> the subscriber ran in **every** worker of B
   and C (the last of the 4), p50/p99; beside same-host delivery (A's own 2 workers, same
   events, same run) and beside Kong's way, ``cluster_events`` polling its database every
   ``db_update_frequency`` (5 s by default): an event waits for the next poll, uniformly 0-5 s,
   so its p50 is 2.5 s and its p99 4.95 s whatever the database does (stated, not measured:
   measuring it takes 5 s a sample).
2. Fan-out (``--fanout 2,10,25``): clusters of 2, 10, 25 instances of 1 worker each on this
   machine, latency to the last worker of all the others and the engine's CPU per event.
3. Publish cost on a bridged channel vs an unbridged one: ``?n=5000`` publishes in a request of
   A, one burst per channel a round, the order alternated round by round, each burst started
   with every relay idle; events/s in the request (medians), also apart for the bursts that
   landed in the worker holding A's relay lease (it started the relay's own process, at nice 10)
   and in the other, with CPU per event from /proc (the request's thread; A's workers and relay
   process; B's and C's) beside it, and the CPU A's relay process used while the request ran.
   The unbridged baseline is measured in the same run with the same settings. Each round
   measures both channels in three modes: **plain** (B, C and the engine at the priority they
   were started with: the measure), with **B, C and the engine at nice 19**, as if they were the
   other hosts they stand for (in production they do not share A's cores; at nice 19 they get
   only what A's processes leave), and **pinned**: A's processes (its relay's too) on one half of
   the CPUs and B's, C's and the engine's on the other (their work cannot spill onto A's core at
   all; A's relay still shares A's core with the request, which is what the goal is about). The
   modes alternate round by round. ``--plain-only`` skips the other two.

Redis runs with ``appendfsync everysec`` (the usual production setting; the tests use
``always``); NATS with JetStream file storage (its default sync). Each engine's floor is one hop
through it in the same run: Redis ``XADD`` -> ``XREAD BLOCK`` returned in another process, NATS
an acknowledged JetStream publish -> the push consumer's delivery in another process (both
through the engine contract's calls). ``--engine both`` runs the engines one after the other
in the same run. Goal: cross-host p99 <= 5 ms on loopback; bridged publish >= 90% of unbridged.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_delivery import api, attach_ring  # noqa: E402
from common import median, percentile, table  # noqa: E402
from ngxsim_bench_cluster import REC  # noqa: E402

from ngxsim.testing import start_server, wait_for  # noqa: E402
from ngxsim.testing.procs import children  # noqa: E402
from ngxsim.testing.engines import RedisServer  # noqa: E402
from ngxsim.testing.nats_server import NatsServer, nats_server_missing  # noqa: E402
from ngxsim_plugins.worker_events.ring import encode_event  # noqa: E402

WORKERS = 2
RELAY_PARAMS = ""  # --relay-nice N: "relay_nice=N" on every instance's bridge
RING = 8192
CONF = f"""
load_module worker_events;
load_module cluster;
load_module ngxsim_bench_cluster;
worker_processes {WORKERS};
http {{
    worker_events_zone bus;
    worker_events_ring_size {RING};
    cluster_bridge bus {{engine}} channels=bench state={{state}} stream=bench.{{stream}} instance={{name}} {{relay}};
    server {{
        listen 127.0.0.1:{{port}};
        location /ev {{ worker_events_api; worker_events_channel bench; }}
        location /burst {{ bench_publish_burst; }}
    }}
}}
"""


def start_engine(kind: str, folder: Path):
    """A started engine server (``.url``, ``.proc``, ``.stop()``)."""
    if kind == "nats":
        return NatsServer("bench", folder).start()
    return RedisServer(folder, fsync="everysec").start()


def engine_missing(kind: str) -> str | None:
    if kind == "nats":
        return nats_server_missing()
    return None if RedisServer.available() else "redis-server is not installed"


def view(server) -> dict:
    return api(server, "/ev?limit=0").get("cluster", {})


def start_cluster(folder: Path, engine, stream: str, names=("A", "B", "C"), workers=WORKERS) -> dict:
    servers = {}
    for name in names:
        out = folder / f"lat-{name}"
        state = folder / f"state-{name}"
        out.mkdir(parents=True)
        state.mkdir()
        servers[name] = start_server(folder, CONF.replace(f"worker_processes {WORKERS};", f"worker_processes {workers};"),
                                     workers=workers, pythonpath=[HERE], extra_env={"NGXSIM_BENCH_DIR": str(out)},
                                     placeholders={"engine": engine.url, "state": state, "stream": stream,
                                                   "name": name, "relay": RELAY_PARAMS})
    for server in servers.values():
        wait_for(lambda: view(server).get("connected") and view(server).get("cursor"), 30, what="the relays to connect")
    return servers


def latencies(folder: Path, name: str, remote: bool) -> dict[int, list[int]]:
    per: dict[int, list[int]] = {}
    for path in (folder / f"lat-{name}").glob("*.lat"):
        for sent, ns, is_remote in REC.iter_unpack(path.read_bytes()):
            if bool(is_remote) == remote:
                per.setdefault(sent, []).append(ns)
    return per


def delivery(folder: Path, servers: dict, samples: int, workers: int = WORKERS) -> tuple[list[float], list[float]]:
    """Publish ``samples`` events into the first instance's ring ~5 ms apart; returns (same-host
    µs to its last worker, cross-host µs to the last worker of all the others)."""
    first, *others = servers
    ring = attach_ring(servers[first], RING)
    for _ in range(samples):
        time.sleep(0.004 + random.random() * 0.002)
        ring.publish(*encode_event("bench", "lat", str(time.monotonic_ns())))
    ring.publish(*encode_event("bench", "flush", ""))
    ring.zone.close()
    for name in others:
        wait_for(lambda: view(servers[name])["relayed_in"] >= samples + 1, 60, what=f"{name} to relay in")
    time.sleep(0.5)  # the flush reaches every worker's subscriber
    local = latencies(folder, first, remote=False)
    remote: dict[int, list[int]] = {}
    for name in others:
        for sent, v in latencies(folder, name, remote=True).items():
            remote.setdefault(sent, []).extend(v)
    same = [max(v) / 1000 for v in local.values() if len(v) == workers]
    cross = [max(v) / 1000 for v in remote.values() if len(v) == len(others) * workers]
    return same, cross


def cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime, in clock ticks


def fanout(kind: str, folder: Path, sizes: list[int], samples: int) -> list[list[str]]:
    """Instances of 1 worker each sharing one engine: latency to the last worker of all the
    others, and the engine's CPU per event, for each cluster size."""
    rows = []
    for size in sizes:
        sub = folder / f"fanout-{kind}-{size}"
        sub.mkdir()
        engine = start_engine(kind, sub / kind)
        servers = {}
        try:
            servers = start_cluster(sub, engine, f"fanout{size}", names=[f"i{n}" for n in range(size)], workers=1)
            before = cpu_ticks(engine.proc.pid)
            _, cross = delivery(sub, servers, samples, workers=1)
            ticks = cpu_ticks(engine.proc.pid) - before
        finally:
            for server in servers.values():
                server.stop()
            engine.stop()
        per_event = ticks / os.sysconf("SC_CLK_TCK") / (samples + 1) * 1e6
        rows.append([kind, size, size - 1, len(cross), f"{percentile(cross, 50):,.0f}", f"{percentile(cross, 99):,.0f}",
                     f"{per_event:,.0f}"])
    return rows


def engine_hop(engine_url: str, samples: int) -> tuple[list[float], float]:
    """The engine's own floor in this run: an append in this process -> the entry returned by
    a blocked read in another process (one of the relay path's hops, through the engine
    contract, with no ngxsim server in it), µs each; and the reader's CPU per entry, µs."""
    from ngxsim_plugins.cluster.engine import Record
    from ngxsim_plugins.cluster.engines import engine_class

    cls = engine_class(engine_url)
    stream = f"hop.{os.getpid()}"
    r, w = os.pipe()
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the reader: block in read, note when each entry arrived
        try:
            os.close(r)
            reader = cls(engine_url, stream, retention=100_000)
            reader.connect()
            cursor = reader.read(None, block=0.01).cursor
            os.write(ready_w, b"1")
            out = []
            cpu = time.process_time()
            while len(out) < samples:
                batch = reader.read(cursor, block=5.0)
                now = time.monotonic_ns()
                out.extend(now - int(e.record.payload) for e in batch.entries)
                cursor = batch.cursor
            cpu_ns = int((time.process_time() - cpu) * 1e9)  # the reader's CPU, all its threads
            reader.close()
            os.write(w, b"".join(n.to_bytes(8, "little") for n in [cpu_ns, *out]))
        finally:
            os._exit(0)
    os.close(w)
    writer = cls(engine_url, stream, retention=100_000)
    writer.connect()
    os.read(ready_r, 1)  # the reader is blocked in its read
    for i in range(samples):
        time.sleep(0.004 + random.random() * 0.002)
        writer.append([Record("hop", i + 1, "hop", "t", str(time.monotonic_ns()), 0)])
    writer.close()
    with os.fdopen(r, "rb") as fh:
        data = fh.read()
    os.waitpid(pid, 0)
    cpu_ns, *out = [int.from_bytes(data[i:i + 8], "little") for i in range(0, len(data), 8)]
    return [n / 1000 for n in out], cpu_ns / 1000 / max(1, len(out))


def thread_cpu_ns(pid: int) -> dict[int, int]:
    """CPU time of each thread of ``pid`` so far, ns (``/proc/PID/task/*/schedstat``)."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out[int(task.name)] = int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            pass  # a thread that ended meanwhile
    return out


def cpu_ns(pid: int) -> int:
    """CPU time of every thread of ``pid`` so far, ns."""
    return sum(thread_cpu_ns(pid).values())


def processes(server) -> list[int]:
    """An instance's workers and their children (the relay's own process, started by the worker
    holding its lease)."""
    workers = server.worker_pids()
    return workers + [child for pid in workers for child in children(pid)]


def instance_cpu(server) -> int:
    return sum(cpu_ns(pid) for pid in processes(server))


CHANNELS = (("unbridged", "local.bench"), ("bridged", "bench"))
PLAIN, NICED, PINNED = "plain", "B, C, engine at nice 19", "B, C, engine on the other core"
CPUS = sorted(os.sched_getaffinity(0))


_STARTED_AT: dict[int, int] = {}  # pid -> the nice it had before renice first changed it


def renice(pids, value: int | None) -> None:
    """Every thread of ``pids`` (Linux's nice is per thread) at nice ``value``, or (None) back at
    the nice each process had at first (a relay's process runs at nice 10 of its own). Lowering
    it back needs root, which the benchmark has where it measures this."""
    for pid in pids:
        base = _STARTED_AT.setdefault(pid, os.getpriority(os.PRIO_PROCESS, pid))
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                os.setpriority(os.PRIO_PROCESS, int(task.name), base if value is None else value)
            except (ProcessLookupError, FileNotFoundError):
                pass  # a thread that ended meanwhile


def pin(pids, cpus) -> None:
    """Every thread of ``pids`` (affinity is per thread; threads made later inherit it) to ``cpus``."""
    for pid in pids:
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                os.sched_setaffinity(int(task.name), cpus)
            except (ProcessLookupError, FileNotFoundError):
                pass


def place(servers: dict, engine, mode: str) -> None:
    """The mode's placement: at nice 19 (NICED) or on the other half of the CPUs (PINNED, A's
    processes on the first half: A's relay still shares A's cores, as on a host of its own) the
    processes standing for the other hosts; else every process as it was."""
    renice(other_hosts(servers, engine), 19 if mode == NICED else None)
    half = max(1, len(CPUS) // 2)
    a = servers["A"]
    own = [a.master, *processes(a)]
    if mode == PINNED and len(CPUS) > 1:
        pin(own, CPUS[:half])
        pin(other_hosts(servers, engine), CPUS[half:])
    else:
        pin(own + other_hosts(servers, engine), CPUS)


def other_hosts(servers: dict, engine) -> list[int]:
    """The processes standing for other hosts: B's and C's masters and workers, and the engine."""
    return [engine.proc.pid] + [pid for name, server in servers.items() if name != "A"
                                for pid in (server.master, *processes(server))]


def publish_cost(servers: dict, rounds: int, engine, modes=(PLAIN, NICED, PINNED), n: int = 5000) -> list[dict]:
    """``rounds`` rounds of one burst of ``n`` publishes on each channel in a request of A, in
    each of ``modes`` (the other hosts' processes at A's priority, at nice 19, or on the other
    core), the modes'
    and the channels' order alternated round by round; before each burst every relay is idle
    (the previous bridged burst relayed in by B and C). Each burst: events/s in the request,
    its thread's CPU per publish, whether it ran in the worker that runs A's relay, and the CPU
    (all threads, /proc schedstat) of A's workers and of B's and C's per event from the burst
    until the others relayed it in."""
    a = servers["A"]
    others = [server for name, server in servers.items() if name != "A"]
    doc = view(a)
    relay, holder = doc["relay_pid"], doc["relay_worker"]
    out = []
    try:
        for i in range(rounds):
            for mode in (modes if i % 2 == 0 else modes[::-1]):
                place(servers, engine, mode)
                for label, channel in (CHANNELS if i % 2 == 0 else CHANNELS[::-1]):
                    targets = [view(o)["relayed_in"] + n for o in others] if label == "bridged" else None
                    cpu_a, cpu_o = instance_cpu(a), sum(instance_cpu(o) for o in others)
                    relay_before = cpu_ns(relay)
                    doc = api(a, f"/burst?n={n}&channel={channel}")
                    # the CPU A's relay process spent while the request ran (from the burst's start
                    # to its answer)
                    beside = (cpu_ns(relay) - relay_before) / 1e6
                    if targets:
                        for o, target in zip(others, targets):
                            wait_for(lambda: view(o)["relayed_in"] >= target, 60, what="the others to relay the burst in")
                    time.sleep(0.2)
                    out.append({"mode": mode, "channel": label, "rate": doc["count"] / doc["seconds"],
                                "request_cpu": doc["cpu_seconds"] / n * 1e6, "relay_worker": doc["pid"] == holder,
                                "beside_ms": beside,
                                "a_cpu": (instance_cpu(a) - cpu_a) / n / 1e3,
                                "others_cpu": (sum(instance_cpu(o) for o in others) - cpu_o) / n / 1e3})
    finally:
        place(servers, engine, PLAIN)
    return out


def cost_rows(kind: str, cost: list[dict]) -> list[list[str]]:
    """Per mode, one row per channel and one of ratios: events/s medians over all bursts, and
    apart for the bursts that ran in the relay's worker and in the other one (like with like)."""
    rows = []
    for mode in dict.fromkeys(c["mode"] for c in cost):
        def med(label, key="rate", where=None):
            values = [c[key] for c in cost if c["mode"] == mode and c["channel"] == label
                      and (where is None or c["relay_worker"] == where)]
            return (median(values), len(values)) if values else (float("nan"), 0)

        for label, _ in CHANNELS:
            (rate, k), (in_relay, k1), (elsewhere, k2) = med(label), med(label, where=True), med(label, where=False)
            rows.append([kind, mode, label, k, f"{rate:,.0f}", f"{in_relay:,.0f} ({k1})", f"{elsewhere:,.0f} ({k2})",
                         f"{med(label, 'beside_ms')[0]:.1f}", f"{med(label, 'request_cpu')[0]:.1f}",
                         f"{med(label, 'a_cpu')[0]:.1f}", f"{med(label, 'others_cpu')[0]:.1f}"])
        ratio = [med("bridged", where=w)[0] / med("unbridged", where=w)[0] for w in (None, True, False)]
        cpu = [med("bridged", key)[0] / med("unbridged", key)[0] for key in ("request_cpu", "a_cpu")]
        rows.append([kind, mode, "**bridged / unbridged**", "", *(f"**{r:.0%}**" for r in ratio), "",
                     *(f"{c:.2f}x" for c in cpu), "—"])
    return rows


def run_engine(kind: str, folder: Path, args) -> dict:
    engine = start_engine(kind, folder / kind)
    servers = {}
    try:
        servers = start_cluster(folder / f"run-{kind}", engine, f"{kind}{os.getpid()}")
        same, cross = delivery(folder / f"run-{kind}", servers, args.samples)
        hop, reader_cpu = engine_hop(engine.url, args.samples)
        modes = {"plain": PLAIN, "niced": NICED, "pinned": PINNED}
        cost = publish_cost(servers, args.rounds, engine,
                            modes=(PLAIN,) if args.plain_only else tuple(modes[m] for m in args.modes.split(",")))
    finally:
        for server in servers.values():
            server.stop()
        engine.stop()
    sizes = [int(n) for n in args.fanout.split(",") if n]
    fan = fanout(kind, folder, sizes, args.fanout_samples) if sizes else []
    return {"same": same, "cross": cross, "hop": hop, "reader_cpu": reader_cpu, "cost": cost, "fan": fan}


HOP = {"redis": "one Redis hop: XADD -> XREAD BLOCK returned in another process",
       "nats": "one NATS hop: acknowledged publish -> push consumer's delivery in another process"}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--engine", choices=("redis", "nats", "both"), default="both")
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--plain-only", action="store_true",
                        help="publish cost: only the plain measure, not also with B, C and the engine at nice 19 "
                             "and on the other core")
    parser.add_argument("--fanout", default="2,10,25", help="cluster sizes of the fan-out table ('' skips it)")
    parser.add_argument("--fanout-samples", type=int, default=200)
    parser.add_argument("--modes", default="plain,niced,pinned",
                        help="publish cost: which of the modes plain, niced, pinned to measure (default all three)")
    parser.add_argument("--relay-nice", type=int, default=None,
                        help="the relays' processes this far below the workers (cluster_bridge relay_nice=; default 10)")
    args = parser.parse_args()
    global RELAY_PARAMS
    RELAY_PARAMS = f"relay_nice={args.relay_nice}" if args.relay_nice is not None else ""
    kinds = ["redis", "nats"] if args.engine == "both" else [args.engine]
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp:
        for kind in kinds:
            why = engine_missing(kind)
            if why:
                print(f"{kind}: {why}: skipped")
                continue
            (Path(tmp) / f"run-{kind}").mkdir()
            results[kind] = run_engine(kind, Path(tmp), args)
    print(f"load average at the end: {os.getloadavg()}")
    rows = []
    for kind, res in results.items():
        same, cross, hop = res["same"], res["cross"], res["hop"]
        rows += [
            [kind, "same host: A's 2 workers", len(same), f"{percentile(same, 50):,.0f}", f"{percentile(same, 99):,.0f}"],
            [kind, "across hosts: every worker of B and C (4)", len(cross), f"{percentile(cross, 50):,.0f}",
             f"{percentile(cross, 99):,.0f}"],
            [kind, f"(floor) {HOP[kind]}", len(hop), f"{percentile(hop, 50):,.0f}", f"{percentile(hop, 99):,.0f}"],
        ]
    rows.append(["-", "Kong cluster_events, 5 s poll (stated)", "-", "2,500,000", "4,950,000"])
    print(table(f"publish on A -> subscriber ran in every worker, µs ({args.samples} events ~5 ms apart)",
                ["engine", "delivery", "samples", "p50 µs", "p99 µs"], rows))
    base_cpu = next(iter(results.values()))["reader_cpu"] if results else 0
    print(table("the engine hop's reader: CPU per entry read (the engine contract's read, as a relay reads)",
                ["engine", "CPU µs/entry", f"vs {next(iter(results), '-')}"],
                [[kind, f"{res['reader_cpu']:,.0f}", f"{res['reader_cpu'] / base_cpu:.2f}x"]
                 for kind, res in results.items()]))
    fan = [row for res in results.values() for row in res["fan"]]
    if fan:
        print(table(f"fan-out: instances of 1 worker sharing one engine, {args.fanout_samples} events published on "
                    "the first -> ran in every worker of all the others",
                    ["engine", "instances", "receivers", "samples", "p50 µs", "p99 µs", "engine CPU µs/event"], fan))
    rows = [row for kind, res in results.items() for row in cost_rows(kind, res["cost"])]
    if rows:
        print(table(f"publish cost in a request of A: 5,000 publishes a burst, {args.rounds} rounds of one burst per "
                    "channel and mode (orders alternated), medians; the request lands in either of A's 2 workers, one "
                    f"of which holds the relay's lease and started its process ({RELAY_PARAMS or 'relay_nice=10'}). "
                    f"Mode \"{PLAIN}\": every process at one priority (the measure); "
                    f"\"{NICED}\": the processes standing for the other hosts get only what A leaves of this box's "
                    f"2 cores; \"{PINNED}\": A's processes on one core, B's, C's and the engine's on the other (as "
                    "on hosts of their own; A's relay still shares A's core with its requests): not measures of "
                    "this box, shown beside the plain one",
                    ["engine", "mode", "channel", "bursts", "events/s", "in the holder's worker", "in the other",
                     "relay process CPU ms", "request CPU µs/ev", "A's CPU µs/ev", "B+C CPU µs/ev"], rows))
        print("(\"relay process CPU ms\": what A's relay process used from a burst's start to its answer, median; "
              "A's and B+C's CPU: their workers and relay processes, from the burst until B and C relayed it in)")


if __name__ == "__main__":
    main()
