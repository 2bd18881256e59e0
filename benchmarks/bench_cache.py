"""cache_purge under ``gunicorn -w 4`` (sync workers): hits from each level next to a bare Flask
app returning the same bytes, an uncached proxied request, and how long a purge takes to reach
every worker's memory — all measured in one run.

    python benchmarks/bench_cache.py [--seconds S] [--rounds R] [--samples N]

1. req/s with ``wrk -t2 -c8`` (Debian package ``wrk``; without it the script says so and stops),
   rounds alternating between the servers, medians shown:
   - bare Flask (``bare_bytes_app.py``, same gunicorn settings) answering the same 4 KiB;
   - a memory-level hit (every worker holds the response: no disk, no shared memory);
   - a shared-level hit (a cache whose memory level holds nothing: ``mem_size=1``);
   - an uncached proxied request (ngxsim -> the bare Flask app as origin).
   Goal: memory hit >= 90% of bare Flask.
   The same three as CPU time per request in one process (a WSGI call, no HTTP): a number the
   other processes of a busy machine do not move, unlike wrk's.
2. Purge -> every worker evicted: the time from sending a purge to the moment cache_purge's
   event hook has run in all 4 workers (a bench module loaded after cache_purge records each
   delivery), p50/p99; the purge's own round trip; and, as the floor, the same for an event
   POSTed through the worker_events API (no purge work at all).
"""

from __future__ import annotations

import io
import json
import os
import struct
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import median, percentile, ratio_rows, table, throughput_args, wrk_run  # noqa: E402

from ngxsim.testing import start_server, wait_for  # noqa: E402

WORKERS = 4
BODY_BYTES = 4096
CONF = """
load_module worker_events;
load_module upstreams;
load_module cache_purge;
load_module ngxsim_bench_evict;
http {
    worker_events_zone bus;
    proxy_cache_path DIR/mem keys_zone=mem:1m;
    proxy_cache_path DIR/disk keys_zone=disk:1m mem_size=1;
    upstream origin { zone origin 256k; server ORIGIN; }
    server {
        listen 127.0.0.1:{port};
        location /mem/ { proxy_pass http://origin; proxy_cache mem; proxy_cache_valid 200 1h; }
        location /disk/ { proxy_pass http://origin; proxy_cache disk; proxy_cache_valid 200 1h; }
        location /proxy/ { proxy_pass http://origin; }
        location /api/cache { cache_purge_api mem; }
        location /internal/worker-events {
            worker_events_api;
            worker_events_zone bus;
            worker_events_channel cache.invalidate;
        }
    }
}
"""
_REC = struct.Struct("<QQ")


def get(url: str) -> tuple[bytes, dict]:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read(), dict(r.headers)


def post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.load(r)


def every_worker_holds(server, path: str) -> None:
    """GET ``path`` on new connections until every worker reports it in its memory level."""
    holding: set[int] = set()

    def all_hold():
        get(server.url(path))
        memory = json.loads(get(server.url("/api/cache"))[0])["memory"]
        if memory["entries"]:
            holding.add(memory["pid"])
        return len(holding) == WORKERS

    wait_for(all_hold, 30, interval=0, what="every worker to hold the asset in memory")


def deliveries(folder: Path) -> dict[int, list[int]]:
    """generation -> the delivery times (monotonic ns) recorded by the workers."""
    out: dict[int, list[int]] = {}
    for path in folder.glob("*.evict"):
        for gen, ns in _REC.iter_unpack(path.read_bytes()):
            out.setdefault(gen, []).append(ns)
    return out


def to_all(sent: dict[int, int], folder: Path) -> list[float]:
    """Microseconds from sending to the last of the workers having run its hook, per sample."""
    got = deliveries(folder)
    missing = [g for g in sent if len(got.get(g, ())) != WORKERS]
    assert not missing, f"generations {missing[:5]} did not reach all {WORKERS} workers"
    return [(max(got[g]) - sent[g]) / 1000 for g in sent]


def purge_latency(server, folder: Path, samples: int) -> tuple[list[float], list[float], list[float]]:
    """(purge round trips, purge -> all evicted, API publish -> all delivered), in microseconds."""
    round_trips, purges, publishes = [], [], {}
    sent: dict[int, int] = {}
    for i in range(samples):
        path = f"/mem/purge-{i}"
        get(server.url(path))  # something to purge: a purge that matches nothing publishes nothing
        time.sleep(0.002)
        start = time.monotonic_ns()
        answer = post(server.url("/api/cache"), {"key": f"http://origin{path}"})
        round_trips.append((time.monotonic_ns() - start) / 1000)
        sent[answer["generation"]] = start
    wait_for(lambda: all(len(v) == WORKERS for g, v in deliveries(folder).items() if g in sent) and
             set(sent) <= set(deliveries(folder)), 30, what="every purge delivered")
    purges = to_all(sent, folder)
    for _ in range(samples):
        time.sleep(0.002)
        start = time.monotonic_ns()
        answer = post(server.url("/internal/worker-events"), {"type": "bench", "payload": "x"})
        publishes[answer["generation"]] = start
    wait_for(lambda: set(publishes) <= set(deliveries(folder)) and
             all(len(deliveries(folder)[g]) == WORKERS for g in publishes), 30, what="every publish delivered")
    return round_trips, purges, to_all(publishes, folder)


def _environ(path: str, port: int) -> dict:
    return {"REQUEST_METHOD": "GET", "PATH_INFO": path, "QUERY_STRING": "", "SERVER_NAME": "127.0.0.1",
            "SERVER_PORT": str(port), "SERVER_PROTOCOL": "HTTP/1.1", "wsgi.url_scheme": "http",
            "wsgi.input": io.BytesIO(b""), "wsgi.errors": sys.stderr, "wsgi.multithread": False,
            "wsgi.multiprocess": True, "wsgi.run_once": False, "HTTP_HOST": f"127.0.0.1:{port}", "REMOTE_ADDR": "127.0.0.1"}


def _wsgi_get(app, path: str, port: int) -> bytes:
    body = app(_environ(path, port), lambda status, headers, exc_info=None: None)
    try:
        return b"".join(body)
    finally:
        getattr(body, "close", lambda: None)()


def cpu_per_request(folder: Path, conf: str, env: dict, rounds: int, n: int = 2000) -> dict[str, list[float]]:
    """CPU microseconds (``time.process_time``: what other processes on a busy box do not move)
    per WSGI call in this process, no HTTP: the bare Flask view, an ngxsim memory-level hit, a
    shared-level hit (memory level emptied before each call)."""
    os.environ.update(env)
    import bare_bytes_app  # noqa: E402 - reads $BARE_BYTES when imported

    from ngxsim.core.process import build_application
    from ngxsim_plugins.cache_purge.cache import state

    port = 8999
    path = folder / "inproc.conf"
    path.write_text(conf.replace("{port}", str(port)).replace(f"{folder}/mem", f"{folder}/inproc-mem")
                    .replace(f"{folder}/disk", f"{folder}/inproc-disk"))
    app = build_application(str(path), role="standalone")
    try:
        want = _wsgi_get(bare_bytes_app.app, "/a.css", port)
        for p in ("/mem/a.css", "/disk/a.css"):
            _wsgi_get(app, p, port)
            assert _wsgi_get(app, p, port) == want, f"{p} must answer the same bytes"
        memory = state(app.runtime).caches["mem"].memory

        def shared_hit():
            memory.clear()
            _wsgi_get(app, "/mem/a.css", port)

        cases = {
            "bare Flask view, same bytes": lambda: _wsgi_get(bare_bytes_app.app, "/a.css", port),
            "ngxsim memory-level hit": lambda: _wsgi_get(app, "/mem/a.css", port),
            "ngxsim shared-level hit": shared_hit,
        }
        out: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(rounds):
            for name, call in cases.items():
                start = time.process_time()
                for _ in range(n):
                    call()
                out[name].append((time.process_time() - start) / n * 1e6)
        return out
    finally:
        app.runtime.close()


def main() -> None:
    args = throughput_args(__doc__, samples=300)
    if args is None:
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        body = folder / "asset.css"
        body.write_bytes((b"body { color: #123456; margin: 0 auto; }\n" * 200)[:BODY_BYTES])
        evict = folder / "evict"
        evict.mkdir()
        env = {"BARE_BYTES": str(body), "BARE_TYPE": "text/css"}
        bare = ngx = None
        try:
            bare = start_server(folder, "", workers=WORKERS, app="bare_bytes_app:app", pythonpath=[HERE], extra_env=env)
            conf = CONF.replace("DIR", str(folder)).replace("ORIGIN", f"127.0.0.1:{bare.port}")
            ngx = start_server(folder, conf, workers=WORKERS, pythonpath=[HERE], ready_path="/api/cache",
                               extra_env={"NGXSIM_BENCH_DIR": str(evict)})
            for path in ("/mem/a.css", "/disk/a.css", "/proxy/a.css"):
                data, headers = get(ngx.url(path))
                assert data == body.read_bytes(), f"{path} must answer the same bytes"
            every_worker_holds(ngx, "/mem/a.css")
            urls = {
                "bare Flask, same bytes": bare.url("/a.css"),
                "ngxsim memory-level hit": ngx.url("/mem/a.css"),
                "ngxsim shared-level hit": ngx.url("/disk/a.css"),
                "ngxsim uncached (proxied to the bare app)": ngx.url("/proxy/a.css"),
            }
            servers = {name: bare if url.startswith(bare.url("")) else ngx for name, url in urls.items()}
            results: dict[str, list[float]] = {name: [] for name in urls}
            worker_cpu: dict[str, list[float]] = {name: [] for name in urls}
            for r in range(args.rounds):
                order = list(urls.items())
                if r % 2:
                    order.reverse()  # who follows whom changes each round
                for name, url in order:
                    run = wrk_run(url, args.seconds, pids=servers[name].worker_pids())
                    results[name].append(run.rps)
                    worker_cpu[name].append(run.cpu_us_per_request)
            round_trips, purges, publishes = purge_latency(ngx, evict, args.samples)
            cpu = cpu_per_request(folder, conf, env, args.rounds)
        finally:
            for server in (ngx, bare):
                if server is not None:
                    server.stop()
    rows = ratio_rows(results, "bare Flask, same bytes")
    base_cpu = median(worker_cpu["bare Flask, same bytes"])
    for row in rows:
        cpu_us = median(worker_cpu[row[0]])
        row += [f"{cpu_us:,.0f}", f"{base_cpu / cpu_us:.0%}"]
    print(table(f"req/s for a {BODY_BYTES}-byte asset, gunicorn -w {WORKERS} sync, wrk -t2 -c8, "
                f"{args.seconds:g}s x {args.rounds} rounds (medians)",
                ["request", "req/s", "vs bare Flask", "worker CPU us/req", "CPU throughput vs bare"], rows))
    print("goal: memory-level hit >= 90% of bare Flask. Worker CPU per request: utime + stime of the server's "
          "workers over the run / requests (what other load on the machine moves far less than req/s)")
    base = median(cpu["bare Flask view, same bytes"])
    rows = [[name, f"{median(v):,.0f}", f"{base / median(v):.0%}"] for name, v in cpu.items()]
    print(table(f"CPU per request in one process, WSGI call without HTTP (time.process_time), {args.rounds} rounds "
                f"(medians)", ["request", "CPU us", "throughput vs bare"], rows))
    rows = [[what, f"{percentile(v, 50):,.0f}", f"{percentile(v, 99):,.0f}"] for what, v in (
        ("purge API round trip (client sees the answer)", round_trips),
        ("purge sent -> evicted in all 4 workers", purges),
        ("worker_events API POST -> delivered in all 4 workers (floor)", publishes),
    )]
    print(table(f"purge -> every worker evicted, {args.samples} samples ~2 ms apart", ["what", "p50 us", "p99 us"], rows))


if __name__ == "__main__":
    main()
