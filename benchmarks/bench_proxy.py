"""The upstreams module as a reverse proxy under ``gunicorn -w 4`` (sync workers), and the time
an upstreams API change takes to reach every worker.

    python benchmarks/bench_proxy.py [--seconds S] [--rounds R] [--changes N] [--compare REV] [--kib K]

``--compare REV`` adds the two ngxsim rows as they were at git revision REV (its ``ngxsim`` and
``plugins`` run from a temp folder ahead of the installed ones): a before/after of a change in one
run, on the same backend, in the same rounds. ``--kib K`` makes the backend's body K KiB (a
file nginx serves) instead of the small fixed one.

1. Throughput and p99 latency (``wrk -t2 -c8 --latency``, Debian package ``wrk``; without it the
   script says so and stops), every row against the SAME backend in the same run, rounds
   alternating between the servers (the order rotates each round and reverses every other one;
   each run follows 1 s of unmeasured warm-up on the same URL), medians shown: the backend
   hit directly; gunicorn's own floor on the machine at that moment (a WSGI hello answering the
   same body, proxy_backend_app.py); a minimal Flask + urllib3 pooled proxy (bare_proxy_app.py)
   under the same gunicorn settings — the baseline; ngxsim ``proxy_pass http://backend`` (an
   ``upstream`` group of that backend with ``keepalive 16``, ``proxy_http_version 1.1`` and
   ``proxy_set_header Connection ""``: connections reused, as the reference nginx row) and
   ``proxy_pass http://127.0.0.1:PORT`` (a new connection per request, as nginx without
   ``keepalive``); real nginx
   ``proxy_pass`` with a keepalive upstream as a reference. The backend is nginx (Debian's
   nginx-light, run unprivileged from a temp folder) answering a fixed body with ``return 200``;
   without nginx a gunicorn-served WSGI app stands in and the output says so. Besides req/s,
   each row shows its workers' CPU time per request (utime + stime from /proc over the run),
   which other load on a shared machine disturbs far less. Goal: ngxsim >= 85% of the minimal
   proxy.
2. API change -> every worker routes by the new snapshot. An upstream of three addresses of the
   backend: A primary, B backup, and C added and deleted at run time, so that each change sends
   ALL traffic to one known peer: PATCH A down -> B, POST C -> C, DELETE C -> B, PATCH A up -> A.
   Seen from outside: after the API answered, 8 client threads send requests (new connections,
   as gunicorn's sync workers close each one) until each of the 4 workers (``X-Worker-Pid:
   $pid``) answered through the new peer (``X-Upstream: $upstream_addr``); every answer through
   the old peer breaks read-your-write and is counted. The same probe with no change gives the
   floor (how long 8 clients take to reach all 4 workers at all). Done on idle workers and with
   a background ``wrk -c4`` keeping the workers busy. The API call's own latency is timed too.
   "Quiet" changes (no requests for 100 ms after the answer) time the delivery of
   ``snapshot_activated`` to all 4 dispatchers: ngxsim_bench_snapshot.py stamps the publish and
   each delivery with CLOCK_MONOTONIC; the worker_events API's ``delivered_generation`` and
   ``last_delivery_msec`` (1 ms resolution) are read as a cross-check.
3. In-process, on a real zone: what ``proxy_pass http://GROUP`` does per request beyond a fixed
   address (unhealthy check, round-robin pick, in-flight counts, ``finish``: atomic adds, no
   lock), to set against a whole proxied request's cost from part 1.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import timeit
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import WrkRun, median, percentile, table, throughput_args, wrk_run  # noqa: E402
from ngxsim_bench_snapshot import REC  # noqa: E402

from ngxsim import process_alive  # noqa: E402
from ngxsim.core.instance import Instance, process_start_time  # noqa: E402
from ngxsim.core.shm import attach_zone, remove_zone_files  # noqa: E402
from ngxsim.testing import children, free_port, start_server, wait_for  # noqa: E402
from ngxsim_plugins.upstreams import snapshots as upstream_snapshots  # noqa: E402
from ngxsim_plugins.upstreams.balancer import Peer, Snapshot  # noqa: E402
from ngxsim_plugins.upstreams.conf import parse_server  # noqa: E402
from ngxsim_plugins.upstreams.zone import UpstreamZone  # noqa: E402

WORKERS = 4
BODY = "a fixed small body from the backend, the same for every row\n"
NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None)
API = "/api/upstreams"
EVENTS = "/internal/worker-events"
PROBE_CLIENTS = 8
PROBE_MAX_REQUESTS = 400  # per probe: a bound, never reached when all is well
PROBE_DEADLINE = 5.0  # seconds, per probe
QUIET = 0.1  # seconds without requests after a quiet change
SETTLE = 0.3  # seconds of silence before each cycle of 4 changes
BASE_ROW = "minimal Flask + urllib3 proxy (baseline)"
GROUP_ROW = "ngxsim proxy_pass http://backend (upstream group, keepalive 16)"
FIXED_ROW = "ngxsim proxy_pass http://127.0.0.1:PORT (fixed address, a connection per request)"

PROXY_CONF = """
load_module worker_events;
load_module upstreams;
worker_processes 4;
http {
    worker_events_zone bus;
    upstream backend {
        zone backend 256k;
        server {backend};
        keepalive 16;
    }
    server {
        listen 127.0.0.1:{port};
        location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection ""; }
        location /fixed/ { proxy_pass http://{backend}; }
    }
}
"""
CHANGE_CONF = """
load_module worker_events;
load_module upstreams;
load_module ngxsim_bench_snapshot;
worker_processes 4;
http {
    worker_events_zone bus;
    upstream backend {
        zone backend 256k;
        server {a};
        server {b} backup;
    }
    server {
        listen 127.0.0.1:{port};
        add_header X-Worker-Pid $pid always;
        add_header X-Upstream $upstream_addr always;
        location / { proxy_pass http://backend; }
        location /api/upstreams { upstreams_api; }
        location /internal/worker-events { worker_events_api; worker_events_zone bus; worker_events_channel ops; }
    }
}
"""


# -- nginx, run unprivileged from a folder of its own ---------------------------------------------


def nginx_conf(prefix: Path, workers: int, servers: str) -> str:
    temp = "\n".join(f"    {kind}_temp_path {prefix}/{kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return f"""daemon off;
master_process on;
worker_processes {workers};
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    default_type text/plain;
{temp}
{servers}
}}
"""


class Nginx:
    """``nginx -p FOLDER`` in the foreground (``daemon off``, a master and its workers)."""

    def __init__(self, folder: Path, name: str, workers: int, servers: str, port: int):
        self.prefix = folder / name
        self.prefix.mkdir()
        self.port = port
        conf = self.prefix / "nginx.conf"
        conf.write_text(nginx_conf(self.prefix, workers, servers))
        with open(self.prefix / "stdout.log", "wb") as out:
            self.proc = subprocess.Popen([NGINX, "-p", str(self.prefix), "-c", str(conf), "-e", str(self.prefix / "error.log")],
                                         stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_for(self._answers, 10, what=f"nginx {name} to answer")
        except BaseException:
            self.stop()
            raise

    def _answers(self) -> bool:
        if self.proc.poll() is not None:
            raise SystemExit(f"nginx exited with {self.proc.returncode}:\n{(self.prefix / 'error.log').read_text(errors='replace')}")
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
        except OSError:
            return False
        return True

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def worker_pids(self) -> list[int]:
        return children(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)  # fast shutdown: the master ends its workers, then itself
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the group start_new_session gave this nginx
            self.proc.wait(5)


def body_env(folder: Path) -> dict:
    """How proxy_backend_app.py gets BODY: in the environment, or (a long one, --kib) in a file."""
    if len(BODY) <= 1024:
        return {"BACKEND_BODY": BODY}
    path = folder / "body.txt"
    if not path.exists():
        path.write_text(BODY)
        path.chmod(0o644)
        folder.chmod(0o711)  # nginx's workers (nobody, under a root master) read it too
    return {"BACKEND_BODY_FILE": str(path)}


class Backends:
    """The backend of every row: one nginx listening on ``count`` loopback ports (or, without
    nginx, ``count`` gunicorn-served WSGI apps)."""

    def __init__(self, folder: Path, count: int):
        self.started: list = []
        ports = [free_port() for _ in range(count)]
        body = BODY.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        if NGINX:
            self.kind = "nginx, 1 worker"
            listens = "".join(f"        listen 127.0.0.1:{p};\n" for p in ports)
            answer = f'return 200 "{body}";'
            if len(BODY) > 1024:  # longer than a config token may be: a file
                body_env(folder)
                answer = f"root {folder}; try_files /body.txt =404;"
                self.kind += f", a {len(BODY) // 1024} KiB file"
            servers = f"    server {{\n{listens}        location / {{ {answer} }}\n    }}"
            self.started.append(Nginx(folder, "backend", 1, servers, ports[0]))
            self.addresses = [f"127.0.0.1:{p}" for p in ports]
        else:
            self.kind = "gunicorn WSGI app, 2 sync workers (nginx missing)"
            for _ in range(count):
                self.started.append(start_server(folder, "", workers=2, app="proxy_backend_app:app", pythonpath=[HERE],
                                                 extra_env=body_env(folder)))
            self.addresses = [f"127.0.0.1:{s.port}" for s in self.started]

    def url(self, path: str = "/") -> str:
        return f"http://{self.addresses[0]}{path}"

    def worker_pids(self) -> list[int]:
        return self.started[0].worker_pids()  # the one serving addresses[0]

    def stop(self) -> None:
        for thing in self.started:
            thing.stop()


# -- load -----------------------------------------------------------------------------------------


def body_of(url: str) -> str:
    host, _, rest = url.removeprefix("http://").partition("/")
    conn = http.client.HTTPConnection(*host.split(":"), timeout=10)
    try:
        conn.request("GET", "/" + rest)
        resp = conn.getresponse()
        data = resp.read().decode()
        if resp.status != 200:
            raise SystemExit(f"{url} answered {resp.status}: {data[:200]}")
        return data
    finally:
        conn.close()


def code_at(rev: str, folder: Path) -> Path:
    """A folder from which ``ngxsim`` and ``ngxsim_plugins`` import as they were at git revision
    ``rev`` (put first on a server's PYTHONPATH, it wins over the installed package), with this
    tree's built shared-memory accelerator, so both sides run the same C path."""
    root = HERE.parent
    out = folder / f"code-at-{rev}"
    out.mkdir()
    archive = subprocess.run(["git", "-C", str(root), "archive", rev, "ngxsim", "plugins"], capture_output=True,
                             check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(out, filter="data")
    (out / "plugins").rename(out / "ngxsim_plugins")
    for accelerator in (root / "ngxsim" / "core").glob("_shm_accel*.so"):
        shutil.copy(accelerator, out / "ngxsim" / "core")
    return out


def throughput(folder: Path, backends: Backends, seconds: float, rounds: int, compare: str = ""):
    addr = backends.addresses[0]
    rows: list[tuple[str, str, object]] = [(f"backend hit directly ({backends.kind})", backends.url("/"), backends)]
    started = []
    try:
        bare = start_server(folder, "", workers=WORKERS, app="bare_proxy_app:app", pythonpath=[HERE],
                            extra_env={"BARE_BACKEND": addr})
        started.append(bare)
        ngx = start_server(folder, PROXY_CONF.replace("{backend}", addr), workers=WORKERS)
        started.append(ngx)
        hello = start_server(folder, "", workers=WORKERS, app="proxy_backend_app:app", pythonpath=[HERE],
                             extra_env=body_env(folder))
        started.append(hello)
        rows += [("gunicorn -w 4 floor: a WSGI hello, no proxying", hello.url("/"), hello),
                 (BASE_ROW, bare.url("/"), bare),
                 (GROUP_ROW, ngx.url("/"), ngx),
                 (FIXED_ROW, ngx.url("/fixed/"), ngx)]
        if compare:
            before = start_server(folder, PROXY_CONF.replace("{backend}", addr), workers=WORKERS,
                                  pythonpath=[code_at(compare, folder)])
            started.append(before)
            rows += [(f"{GROUP_ROW} at {compare}", before.url("/"), before),
                     (f"{FIXED_ROW} at {compare}", before.url("/fixed/"), before)]
        if NGINX:
            port = free_port()
            servers = (f"    upstream backend {{ server {addr}; keepalive 16; }}\n"
                       f"    server {{ listen 127.0.0.1:{port}; location / {{ proxy_pass http://backend; "
                       f"proxy_http_version 1.1; proxy_set_header Connection \"\"; }} }}")
            ref = Nginx(folder, "reference", 2, servers, port)
            started.append(ref)
            rows.append(("nginx proxy_pass (2 workers, keepalive upstream) - reference", ref.url("/"), ref))
        for name, url, _ in rows:
            assert body_of(url) == BODY, f"{name} must answer the backend's body"
        results: dict[str, list[WrkRun]] = {name: [] for name, _, _ in rows}
        for r in range(rounds):
            order = rows[r % len(rows):] + rows[:r % len(rows)]  # rotate who goes first
            if r % 2:
                order.reverse()  # and who follows whom (the two ngxsim rows share a server)
            for name, url, server in order:
                wrk_run(url, 1)  # unmeasured: every row starts warm, not only one that follows its own server
                results[name].append(wrk_run(url, seconds, pids=server.worker_pids()))
    finally:
        for thing in reversed(started):
            thing.stop()
    return rows, results


# -- API change -> every worker ---------------------------------------------------------------------


_REQUEST = b"GET /probe HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"


def one_request(port: int) -> tuple[int, int, str]:
    """(status, worker pid, upstream address) of one request on a new connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(_REQUEST)
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    head = b"".join(chunks).split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in head[1:] if ": " in line)
    return int(head[0].split()[1]), int(headers.get("X-Worker-Pid", 0)), headers.get("X-Upstream", "")


def probe(pool: ThreadPoolExecutor, port: int, expect: str, start: float) -> dict:
    """8 clients send requests until each worker answered through ``expect``: how long after
    ``start`` the last worker did, how many answers went through another peer (the old
    snapshot), how many workers answered their first request through it."""
    lock = threading.Lock()
    first_new: dict[int, float] = {}
    first_any: dict[int, str] = {}
    counts = {"sent": 0, "old": 0, "errors": 0}
    done = threading.Event()

    def client():
        while not done.is_set() and time.perf_counter() - start < PROBE_DEADLINE:
            with lock:
                if counts["sent"] >= PROBE_MAX_REQUESTS:
                    return
                counts["sent"] += 1
            status, pid, addr = one_request(port)
            now = time.perf_counter() - start
            with lock:
                if status != 200:
                    counts["errors"] += 1
                    continue
                first_any.setdefault(pid, addr)
                if addr == expect:
                    first_new.setdefault(pid, now)
                else:
                    counts["old"] += 1
                if len(first_new) == WORKERS:
                    done.set()

    for future in [pool.submit(client) for _ in range(PROBE_CLIENTS)]:
        future.result(timeout=PROBE_DEADLINE + 30)
    return {"all": max(first_new.values()) if len(first_new) == WORKERS else None, "old": counts["old"],
            "sent": counts["sent"], "errors": counts["errors"],
            "first_old": sum(1 for a in first_any.values() if a != expect)}


def api_call(port: int, method: str, path: str, body: dict | None = None) -> tuple[int, object, float, float]:
    """(status, JSON answer, time sent, time the answer was read) on a new connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if body is not None else {}
        t0 = time.perf_counter()
        conn.request(method, API + path, body=data, headers=headers)
        resp = conn.getresponse()
        answer = resp.read()
        t1 = time.perf_counter()
        return resp.status, json.loads(answer), t0, t1
    finally:
        conn.close()


def get_json(port: int, path: str):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


def records(folder: Path, kind: str) -> dict[int, dict[int, tuple[int, int]]]:
    """version -> {pid: (monotonic ns, flag)} from ngxsim_bench_snapshot's files."""
    out: dict[int, dict[int, tuple[int, int]]] = {}
    for path in folder.glob(f"*.{kind}"):
        pid = int(path.stem)
        for _gen, version, ns, flag in REC.iter_unpack(path.read_bytes()):
            out.setdefault(version, {})[pid] = (ns, flag)
    return out


class LoadInBackground:
    """``wrk -t1 -c4`` on the proxy for as long as the ``with`` lasts (bounded by its -d)."""

    def __init__(self, url: str):
        self.url = url

    def __enter__(self):
        self.proc = subprocess.Popen(["wrk", "-t1", "-c4", "-d120s", self.url], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        time.sleep(0.2)  # connected and busy
        return self

    def __exit__(self, *exc):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def api_change(folder: Path, backends: Backends, changes: int) -> dict:
    a, b, c = backends.addresses[:3]
    marks = folder / "marks"
    marks.mkdir()
    conf = CHANGE_CONF.replace("{a}", a).replace("{b}", b)
    server = start_server(folder, conf, workers=WORKERS, pythonpath=[HERE], extra_env={"NGXSIM_BENCH_DIR": str(marks)},
                          ready_path=API)
    pool = ThreadPoolExecutor(PROBE_CLIENTS)
    out = {"api": {}, "probe": {"idle": [], "busy": []}, "floor": {"idle": [], "busy": []}, "modes": {},
           "cross": []}
    try:
        pids = server.worker_pids()
        wait_for(lambda: len(get_json(server.port, EVENTS + "?limit=0")["workers"]) == WORKERS, 20, what="4 dispatchers")
        first = get_json(server.port, API + "/backend")
        ids = {p["server"]: p["id"] for p in first["peers"]}
        assert set(ids) == {a, b}, first
        version = first["version"]
        new_id = [0]

        def steps():
            yield "PATCH down", "PATCH", f"/backend/servers/{ids[a]}", {"down": True}, b, 200
            yield "POST", "POST", "/backend/servers", {"server": c}, c, 201
            yield "DELETE", "DELETE", f"/backend/servers/{new_id[0]}", None, b, 200
            yield "PATCH up", "PATCH", f"/backend/servers/{ids[a]}", {"down": False}, a, 200

        cycles = max(1, changes // 4)
        for cycle in range(cycles):
            mode = ("idle", "quiet", "busy")[cycle % 3]
            time.sleep(SETTLE)  # the previous cycle's load and probes are over in every worker
            with LoadInBackground(server.url("/")) if mode == "busy" else contextlib.nullcontext():
                for kind, method, path, body, expect, status in steps():
                    code, answer, t0, t1 = api_call(server.port, method, path, body)
                    if code != status:
                        raise SystemExit(f"{method} {path} answered {code}: {answer}")
                    if kind == "POST":
                        new_id[0] = answer["id"]
                    version += 1
                    out["modes"][version] = mode
                    out["api"].setdefault((mode, kind), []).append((t1 - t0) * 1000)
                    if mode == "quiet":
                        time.sleep(QUIET)
                        newest = get_json(server.port, EVENTS + "?channel=upstreams&limit=1")
                        event = newest["events"][-1]
                        workers = newest["workers"]
                        assert json.loads(event["payload"])["version"] == version, (event, version)
                        delivered = len(workers) == WORKERS and all(w["delivered_generation"] >= event["generation"] for w in workers)
                        out["cross"].append((delivered, max(w["last_delivery_msec"] for w in workers) - event["timestamp_msec"]))
                    else:
                        out["probe"][mode].append(probe(pool, server.port, expect, t1))
                        out["floor"][mode].append(probe(pool, server.port, expect, time.perf_counter()))
        final = get_json(server.port, API + "/backend")["version"]
        assert final == version, f"the upstream is at version {final}, {version} expected: a change was lost or doubled"
        assert server.worker_pids() == pids, "a worker was replaced during the run: its numbers would mix"
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        server.stop()
    out["pub"], out["del"] = records(marks, "pub"), records(marks, "del")
    return out


# -- the upstream group's own per-request work, in-process ----------------------------------------


def accounting_cost(repeat: int = 5, number: int = 20000) -> list[list[object]]:
    """What ``proxy_pass http://GROUP`` does per request beyond a fixed address — the unhealthy
    check, the round-robin pick (which reads the peer's shared counters for ``max_fails``), the
    in-flight count up and down in the worker's row, and ``finish`` (atomic adds, no lock) — on
    a real zone of this process, best of ``repeat`` x ``number`` (us per request)."""
    instance = Instance(os.getpid(), process_start_time(os.getpid()), "worker")
    try:
        shm = attach_zone(instance, "bench-accounting", 256 * 1024, "bench")
        zone = UpstreamZone(shm)
        zone.update(lambda cur: upstream_snapshots.from_specs([parse_server(["127.0.0.1:9"])], cur, zone.layout.slots))
        zone.claim_row(process_alive)
        data = zone.read_snapshot()
        snap = Snapshot("bench", data["version"], [Peer.from_json(p) for p in data["peers"]])
        snap.health = {p.slot: zone.health(p.slot) for p in snap.peers}
        peer = snap.peers[0]

        def whole():
            snap.all_unhealthy()
            chosen = snap.pick(zone, set(), time.monotonic())
            zone.add_active(chosen.slot, +1)
            zone.add_active(chosen.slot, -1)
            zone.finish(chosen.slot, chosen.id, False, True, time.monotonic(), chosen.max_fails)

        parts = [("all_unhealthy()", snap.all_unhealthy),
                 ("pick()", lambda: snap.pick(zone, set(), time.monotonic())),
                 ("add_active() +1 and -1", lambda: (zone.add_active(peer.slot, 1), zone.add_active(peer.slot, -1))),
                 ("finish() (atomic adds, no lock)", lambda: zone.finish(peer.slot, peer.id, False, True, time.monotonic(), 1)),
                 ("all of it", whole)]
        rows = [[name, f"{min(timeit.repeat(fn, number=number, repeat=repeat)) / number * 1e6:.1f}"] for name, fn in parts]
        zone.release_row()
        shm.close()
        return rows
    finally:
        remove_zone_files(instance)


# -- report ---------------------------------------------------------------------------------------


def ms(values: list[float], p: float) -> str:
    return f"{percentile(values, p):.2f}" if values else "-"


def report_throughput(rows, results, seconds: float, rounds: int, kind: str) -> None:
    base = results[BASE_ROW]
    base_rps, base_cpu = median([r.rps for r in base]), median([r.cpu_us_per_request for r in base])
    lines = []
    socket_errors = 0
    for name, _, _ in rows:
        rps = [r.rps for r in results[name]]
        p99 = [r.p99_ms for r in results[name]]
        cpu = median([r.cpu_us_per_request for r in results[name]])
        socket_errors += sum(r.socket_errors for r in results[name])
        lines.append([name, f"{median(rps):,.0f}", f"{min(rps):,.0f}-{max(rps):,.0f}", f"{median(p99):.2f}",
                      f"{median(rps) / base_rps:.0%}", f"{cpu:,.0f}", f"{cpu / base_cpu:.0%}"])
    print(table(f"Proxied GET, one backend ({kind}), gunicorn -w 4 sync, wrk -t2 -c8, "
                f"{seconds:g}s x {rounds} rounds (medians; min-max shows the noise)",
                ["server", "req/s", "req/s min-max", "p99 ms", "req/s vs minimal proxy", "worker CPU us/req",
                 "CPU/req vs minimal proxy"], lines))
    if socket_errors:
        print(f"wrk socket errors over all runs: {socket_errors}")
    group, fixed = results[GROUP_ROW], results[FIXED_ROW]
    for what, runs in (("upstream group", group), ("fixed address", fixed)):
        ratios = [a.rps / b.rps for a, b in zip(runs, base)]
        print(f"ngxsim {what} / minimal proxy, req/s paired round by round: median {median(ratios):.0%}, "
              f"{sum(x >= 0.85 for x in ratios)} of {len(ratios)} rounds >= 85%")
    for name in [n for n, _, _ in rows if " at " in n]:  # --compare: now against then, round by round
        now, then = results[name.rpartition(" at ")[0]], results[name]
        rps = [a.rps / b.rps for a, b in zip(now, then)]
        cpu = [a.cpu_us_per_request / b.cpu_us_per_request for a, b in zip(now, then)]
        print(f"{name.rpartition(' at ')[0]}: this tree / {name.rpartition(' at ')[2]}, paired round by round: "
              f"req/s median {median(rps):.0%} ({sum(x >= 1 for x in rps)} of {len(rps)} rounds >= 100%), "
              f"CPU per request median {median(cpu):.0%}")
    ratios = [a.cpu_us_per_request / b.cpu_us_per_request for a, b in zip(group, fixed)]
    print(f"upstream group / fixed address (one server), CPU per request paired round by round: median "
          f"{median(ratios):.0%}, {sum(x > 1 for x in ratios)} of {len(ratios)} rounds above 100%")
    print("goal: ngxsim >= 85% of the minimal proxy's req/s. Worker CPU per request (utime+stime of the "
          "server's workers over the run / requests; the backend's CPU not counted) is far less sensitive "
          "to other load on the machine than req/s.")


def report_changes(out: dict) -> None:
    rows = []
    labels = {"quiet": "quiet changes", "idle": "idle workers", "busy": "workers busy (wrk -c4 running)"}
    for mode in ("quiet", "idle", "busy"):
        label = labels[mode]
        for kind in ("PATCH down", "POST", "DELETE", "PATCH up"):
            v = out["api"].get((mode, kind), [])
            rows.append([f"API call {kind}, {label}", ms(v, 50), ms(v, 99), ms(v, 100), len(v)])
    for mode in ("idle", "busy"):
        label = "idle" if mode == "idle" else "busy"
        got = [p["all"] * 1000 for p in out["probe"][mode] if p["all"] is not None]
        floor = [p["all"] * 1000 for p in out["floor"][mode] if p["all"] is not None]
        rows.append([f"API answer -> all 4 workers answered via the new peer, {label}", ms(got, 50), ms(got, 99),
                     ms(got, 100), len(got)])
        rows.append([f"  floor: 8 clients reach all 4 workers, no change, {label}", ms(floor, 50), ms(floor, 99),
                     ms(floor, 100), len(floor)])
    quiet = [v for v, m in out["modes"].items() if m == "quiet"]
    to_all, others, own, spread = [], [], [], []
    for version in quiet:
        pub, dels = out["pub"].get(version), out["del"].get(version, {})
        if not pub or len(dels) != WORKERS:
            continue
        (pub_pid, (pub_ns, _)), = pub.items()
        times = {pid: (ns - pub_ns) / 1e6 for pid, (ns, _) in dels.items()}
        to_all.append(max(times.values()))
        others.append(max(t for pid, t in times.items() if pid != pub_pid))
        own.append(times[pub_pid])
        spread.append(max(times.values()) - min(times.values()))
    rows.append(["publish -> snapshot_activated delivered in all 4 workers (quiet)", ms(to_all, 50), ms(to_all, 99),
                 ms(to_all, 100), len(to_all)])
    rows.append(["  ... in the 3 other workers", ms(others, 50), ms(others, 99), ms(others, 100), len(others)])
    rows.append(["  ... in the publishing (API) worker itself", ms(own, 50), ms(own, 99), ms(own, 100), len(own)])
    cross = [float(d) for ok, d in out["cross"]]
    rows.append(["  cross-check: worker_events API last_delivery_msec - timestamp_msec", ms(cross, 50), ms(cross, 99),
                 ms(cross, 100), len(cross)])
    print(table("API change -> every worker routes by the new snapshot (ms; gunicorn -w 4 sync)",
                ["measure", "p50", "p99", "max", "n"], rows))
    for mode in ("idle", "busy"):
        probes = out["probe"][mode]
        old = sum(p["old"] for p in probes)
        sent = sum(p["sent"] for p in probes)
        first_old = sum(p["first_old"] for p in probes)
        missing = sum(1 for p in probes if p["all"] is None)
        errors = sum(p["errors"] for p in probes)
        print(f"{mode}: requests sent after the API answered that went by the OLD snapshot: {old} of {sent}; "
              f"workers whose first such request did: {first_old} of {len(probes) * WORKERS}; "
              f"probes that never saw all 4 workers on the new peer: {missing}; non-200 answers: {errors}")
    probe_versions = [v for v, m in out["modes"].items() if m != "quiet"]
    by_request = sum(1 for v in probe_versions for _, flag in out["del"].get(v, {}).values() if flag == 0)
    total = sum(len(out["del"].get(v, {})) for v in probe_versions)
    print(f"probed changes: {by_request} of {total} deliveries were made by a request thread draining pending "
          f"events before its handler (the read-your-write path), the rest by the dispatcher threads")
    not_delivered = sum(1 for ok, _ in out["cross"] if not ok)
    print(f"quiet changes: workers listed behind the event after {QUIET * 1000:.0f} ms: {not_delivered} of {len(out['cross'])} checks")


def main() -> None:
    global BODY
    args = throughput_args(__doc__, rounds=5, changes=240, compare="", kib=0)  # changes: a third each idle, quiet, busy
    if args is None:
        return
    if args.kib:
        BODY = ("x" * 63 + "\n") * (args.kib * 16)
    if not NGINX:
        print("nginx is not installed (apt-get install nginx-light): the backend is a gunicorn-served WSGI app "
              "that closes every connection, and there is no nginx reference row")
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-proxy-") as tmp:
        folder = Path(tmp)
        backends = Backends(folder, 3)
        try:
            rows, results = throughput(folder, backends, args.seconds, args.rounds, args.compare)
            changes = api_change(folder, backends, args.changes)
        finally:
            backends.stop()
    report_throughput(rows, results, args.seconds, args.rounds, backends.kind)
    print(table("The upstream group's own per-request work, in-process on a real zone (best of 5 x 20 000)",
                ["part", "us per request"], accounting_cost()))
    report_changes(changes)
    print(f"machine: {os.cpu_count()} cores, 1-minute load average {load_before:.1f} at the start, "
          f"{os.getloadavg()[0]:.1f} at the end (other work on the machine shows up in every row)")


if __name__ == "__main__":
    main()
