"""The NGINX Plus-shaped ``api`` location and ``stub_status`` against real servers with several
workers and real backends: shapes, counts shared by every worker, writes, errors; then read by a
client nobody here wrote, Debian's prometheus-nginx-exporter, whose exported numbers must equal
ngxsim's own."""

from __future__ import annotations

import calendar
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from unittest.mock import ANY

import pytest
import requests

from ngxsim.testing import ReloadRejected, free_port, wait_for

EXPORTER = shutil.which("prometheus-nginx-exporter") or "/usr/bin/prometheus-nginx-exporter"
CONF = """
load_module worker_events; load_module upstreams; load_module cache_purge;
http {
    worker_events_zone bus;
    proxy_cache_path {tmp}/cache keys_zone=assets:1m inactive=10m;  # the API shows its counts
    upstream backend { zone backend 256k; %(servers)s }
    server {
        listen 127.0.0.1:{port};
        add_header X-Cache-Status $upstream_cache_status always;
        location / { proxy_pass http://backend; }
        location /static/ { proxy_pass http://backend; proxy_cache assets; proxy_cache_valid 200 10m;
                            proxy_cache_bypass $arg_nocache; }
        location /api { api write=on; }
        location /ro/ { api; }
        location = /basic_status { stub_status; }
        location /internal/status { ngxsim_status; }
        location /api/upstreams { upstreams_api; }
        location /internal/worker-events { worker_events_api; worker_events_zone bus; worker_events_channel ops; }
    }
}
"""
UPS = "/api/8/http/upstreams/backend"


def start(ngxsim_server, backends, params: str = "", **kw):
    servers = " ".join(f"server {b.address} max_fails=1 fail_timeout=30s{params if i == 0 else ''};"
                       for i, b in enumerate(backends))
    return ngxsim_server(CONF % {"servers": servers}, ready_path="/api/", **kw)


def peers(server) -> dict[str, dict]:
    return {p["server"]: p for p in server.get(UPS).json()["peers"]}


def stub(server) -> dict[str, int]:
    text = server.get("/basic_status").text
    m = re.fullmatch(r"Active connections: (\d+) \nserver accepts handled requests\n (\d+) (\d+) (\d+) \n"
                     r"Reading: (\d+) Writing: (\d+) Waiting: (\d+) \n", text)
    assert m, repr(text)
    return dict(zip(("active", "accepts", "handled", "requests", "reading", "writing", "waiting"), map(int, m.groups())))


def test_api_tree_counts_shared_by_every_worker_writes_and_errors(ngxsim_server, ngxsim_backend):
    a, b, c = (ngxsim_backend(name=n) for n in "abc")
    server = start(ngxsim_server, [a, b, c], workers=4)
    assert server.get("/api/").json() == [1, 2, 3, 4, 5, 6, 7, 8, 9]
    assert {"nginx", "connections", "http", "processes", "slabs", "ssl"} <= set(server.get("/api/8/").json())
    assert {"requests", "upstreams", "caches", "server_zones"} <= set(server.get("/api/8/http").json())
    info = server.get("/api/8/nginx").json()
    assert info["ppid"] == server.master and info["pid"] in server.worker_pids()

    responses = server.spray("/x", 60)
    assert len({r.worker_pid for r in responses}) == 4
    got = peers(server)
    hits = {a.address: a.hits, b.address: b.hits, c.address: c.hits}
    assert {s: p["requests"] for s, p in got.items()} == hits  # every worker's, counted at selection
    assert {s: p["responses"]["2xx"] for s, p in got.items()} == hits
    assert all(p["responses"]["total"] == p["responses"]["2xx"] and p["received"] > 0 and p["sent"] > 0
               and p["active"] == 0 and p["state"] == "up" and "selected" in p for p in got.values())
    assert sorted(p["id"] for p in got.values()) == [0, 1, 2]

    # a drain and a failure
    drained = server.request("PATCH", f"{UPS}/servers/{got[a.address]['id']}", json={"drain": True})
    assert drained.status_code == 200 and drained.json()["state"] == "draining"
    c.stop()
    before = peers(server)
    assert all(r.status_code == 200 for r in server.spray("/y", 20))
    after = peers(server)
    assert after[c.address]["fails"] >= 1 and after[c.address]["unavail"] >= 1
    assert after[c.address]["state"] == "unavail" and after[a.address]["requests"] == before[a.address]["requests"]
    # the upstreams_api location is the same code: the same peers
    assert {p["server"]: p["requests"] for p in server.get("/api/upstreams/backend/servers").json()} == \
        {s: p["requests"] for s, p in peers(server).items()}

    # NGINX Plus's errors
    r = server.get("/api/8/http/upstreams/nope")
    body = r.json()
    assert r.status_code == 404 and body["error"] == {"status": 404, "text": 'upstream "nope" not found',
                                                      "code": "UpstreamNotFound"}
    assert re.fullmatch(r"[0-9a-f]{32}", body["request_id"]) and body["href"].startswith("https://nginx.org/")
    assert server.get("/api/7/stream/upstreams").json()["error"]["code"] == "PathNotFound"
    assert server.get("/api/99/nginx").json()["error"]["code"] == "UnknownVersion"
    r = server.request("POST", "/ro/8/http/upstreams/backend/servers", json={"server": c.address})
    assert r.status_code == 405 and r.json()["error"]["code"] == "MethodDisabled"
    r = server.request("POST", f"{UPS}/servers", json={"server": a.address})
    assert r.status_code == 409 and r.json()["error"]["status"] == 409
    r = server.request("POST", f"{UPS}/servers", json={"server": "127.0.0.1:1", "weight": 0})
    assert r.status_code == 400 and '"weight"' in r.json()["error"]["text"]
    assert r.json()["error"]["code"] == "UpstreamConfFormatError"
    added = server.request("POST", f"{UPS}/servers", json={"server": c.address.replace("127.0.0.1", "127.0.0.2")})
    assert added.status_code == 201 and added.json()["id"] == 3
    assert server.request("DELETE", f"{UPS}/servers/3").status_code == 200

    # caches: one miss stored, then hits from any worker
    first = server.get("/static/a")
    assert first.headers["X-Cache-Status"] == "MISS"
    statuses = Counter(r.headers["X-Cache-Status"] for r in server.spray("/static/a", 12))
    server.get("/static/a", params={"nocache": "1"})
    cache = server.get("/api/8/http/caches").json()["assets"]
    size = len(first.content)
    assert cache["miss"] == {"responses": 1, "bytes": size, "responses_written": 1, "bytes_written": size}
    assert cache["hit"] == {"responses": statuses["HIT"], "bytes": statuses["HIT"] * size} and statuses["HIT"] == 12
    assert cache["bypass"]["responses"] == 1 and cache["size"] > 0


def test_downtime_of_an_unavail_peer_is_the_same_clock_in_every_worker(ngxsim_server, ngxsim_backend):
    """NGINX Plus's ``downtime`` counts ``unavail`` (max_fails) too, kept in shared memory: every
    worker reports the interval since the failure that made the peer unavailable."""
    a, c = ngxsim_backend(name="a"), ngxsim_backend(name="c")
    server = start(ngxsim_server, [a, c], params=" max_conns=7", workers=3)
    server.spray("/x", 6)
    assert {p["downtime"] for p in peers(server).values()} == {0}
    assert {s: p["max_conns"] for s, p in peers(server).items()} == {a.address: 7, c.address: 0}
    c.stop()
    first_failure_possible = time.time()

    def unavail():
        server.get("/x")  # answered by a after c fails (proxy_next_upstream)
        return peers(server)[c.address]["state"] == "unavail"

    wait_for(unavail, 20, what=f"{c.address} to become unavail")
    certainly_down = time.time()
    time.sleep(0.5)  # long enough for the bounds below to tell a count from none
    asked = time.time()
    seen = {pid: r.json() for pid, r in server.each_worker(f"{UPS}/servers/{peers(server)[c.address]['id']}").items()}
    answered = time.time()
    assert len(seen) == 3
    for peer in seen.values():
        assert peer["state"] == "unavail" and peer["unavail"] == 1
        assert (asked - certainly_down) * 1000 - 1 <= peer["downtime"] <= (answered - first_failure_possible) * 1000 + 1
    starts = {peer["downstart"] for peer in seen.values()}
    assert len(starts) == 1
    assert first_failure_possible - 0.001 <= _epoch(starts.pop()) <= certainly_down
    assert "downstart" not in peers(server)[a.address] and peers(server)[a.address]["downtime"] == 0


KEEPALIVE_CONF = """
load_module worker_events; load_module upstreams;
http {
    worker_events_zone bus;
    upstream backend { zone backend 256k; server {backend}; keepalive 4; }
    server {
        listen 127.0.0.1:{port};
        location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection ""; }
        location /api { api; }
        location /rw { api write=on; }
    }
}
"""


def test_keepalive_counts_the_idle_connections_of_every_live_worker(ngxsim_server, ngxsim_backend):
    """NGINX Plus's upstream ``keepalive``: the idle connections kept to its peers, every worker's."""
    be = ngxsim_backend(name="be")
    server = ngxsim_server(KEEPALIVE_CONF, workers=3, ready_path="/api/", placeholders={"backend": be.address})
    assert server.get("/api/8/http/upstreams/backend").json()["keepalive"] == 0
    server.each_worker("/x")  # one request at a time in each worker: each keeps the one connection it used
    wait_for(lambda: server.get("/api/8/http/upstreams/backend").json()["keepalive"] == 3, 10,
             what="3 idle connections, one per worker")
    assert be.connections == 3
    server.kill_worker(path="/x")  # its kept connection dies with it; its replacement keeps one of its own
    wait_for(lambda: server.get("/api/8/http/upstreams/backend").json()["keepalive"] == 3, 10,
             what="3 idle connections of the live workers")


def test_a_peer_removed_while_a_request_to_it_runs_is_a_zombie_until_it_ends(ngxsim_server, ngxsim_backend):
    be = ngxsim_backend(name="be")
    release = threading.Event()
    be.respond("/slow", body=lambda r: "late" if release.wait(20) else "never released")
    server = ngxsim_server(KEEPALIVE_CONF, workers=2, ready_path="/api/", placeholders={"backend": be.address})
    upstream = "/api/8/http/upstreams/backend"
    assert server.get(upstream).json()["zombies"] == 0
    answers = []
    slow = threading.Thread(target=lambda: answers.append(server.get("/slow", timeout=30)))
    slow.start()
    try:
        be.wait_hits(1, path="/slow")
        (peer,) = server.get(upstream).json()["peers"]
        assert peer["active"] == 1
        assert server.request("DELETE", f"/rw/8/http/upstreams/backend/servers/{peer['id']}").status_code == 200
        gone = server.get(upstream).json()
        assert gone["peers"] == [] and gone["zombies"] == 1
        # a peer added meanwhile does not take the zombie's slot (it would inherit its request)
        added = server.request("POST", "/rw/8/http/upstreams/backend/servers", json={"server": be.address})
        assert added.status_code == 201 and added.json()["active"] == 0
        now = server.get(upstream).json()
        assert now["zombies"] == 1 and [p["active"] for p in now["peers"]] == [0]
    finally:
        release.set()
        slow.join(30)
    assert answers[0].text == "late"
    wait_for(lambda: server.get(upstream).json()["zombies"] == 0, 10, what="the zombie to go")


@pytest.mark.ngxsim_modes()
def test_stub_status_counts_every_workers_connections(ngxsim_server, ngxsim_backend):
    a = ngxsim_backend(name="a")
    server = start(ngxsim_server, [a], workers=2)
    before = stub(server)
    responses = server.spray("/x", 10)
    assert len({r.worker_pid for r in responses}) == 2
    after = stub(server)
    # every worker's requests: the 10 and the second status request (spray also opens connections
    # it closes unanswered, to find each worker: they are accepted, not requests)
    assert after["requests"] - before["requests"] == 11 and after["accepts"] - before["accepts"] >= 11
    before = after
    for _ in range(10):  # one connection each, one request each
        assert requests.get(server.url("/x"), headers={"Connection": "close"}, timeout=10).status_code == 200
    after = stub(server)
    assert after["requests"] - before["requests"] == 11 and after["accepts"] - before["accepts"] == 11
    assert after["handled"] == after["accepts"] and after["writing"] >= 1
    assert after["active"] == after["reading"] + after["writing"] + after["waiting"]
    api = server.get("/api/8/connections").json()
    assert api["accepted"] == after["accepts"] + 1 and api["active"] >= 1


NGINX_CONF = """
load_module worker_events;
http {
    worker_events_zone bus;
    server {
        listen 127.0.0.1:{port};
        location /api { api; }
        location = /ev { worker_events_api; worker_events_channel ops; }
    }
}
"""


def _nginx_of_every_worker(server) -> dict[int, dict]:
    return {pid: r.json() for pid, r in server.each_worker("/api/8/nginx").items()}


def _epoch(iso: str) -> float:
    return calendar.timegm(time.strptime(iso[:19], "%Y-%m-%dT%H:%M:%S")) + int(iso[20:23]) / 1000


def test_generation_counts_accepted_reloads_in_every_worker_a_respawned_one_too(ngxsim_server):
    """NGINX Plus's ``generation`` counts the reloads and ``load_timestamp`` is the last one's
    time; a rejected reload keeps both. The master decides them: every worker reports the same,
    a worker respawned after the reload too."""
    before_start = time.time()
    server = ngxsim_server(NGINX_CONF, mode="ngxsim", workers=3, ready_path="/api/")
    first = _nginx_of_every_worker(server)
    assert len(first) == 3 and {(n["generation"], n["load_timestamp"], n["ppid"]) for n in first.values()} == \
        {(1, first[min(first)]["load_timestamp"], server.master)}
    assert {pid: n["pid"] for pid, n in first.items()} == {pid: pid for pid in first}
    loaded = _epoch(first[min(first)]["load_timestamp"])
    assert before_start - 0.001 <= loaded <= time.time()

    good = server.conf.read_text()
    hup = time.time()
    new = server.reload(good.replace("location /api { api; }", "location /api { api; }  # reloaded"))
    accepted = time.time()
    second = _nginx_of_every_worker(server)
    assert sorted(second) == new
    stamps = {n["load_timestamp"] for n in second.values()}
    assert {n["generation"] for n in second.values()} == {2} and len(stamps) == 1
    reloaded = _epoch(stamps.pop())
    assert hup - 0.001 <= reloaded <= accepted and reloaded > loaded

    with pytest.raises(ReloadRejected, match=r'unknown directive "bogus"'):
        server.reload(good.replace("location /api { api; }", "location /api { api; bogus; }"))
    assert server.worker_pids() == new  # the old workers serve on, with the old generation
    assert _nginx_of_every_worker(server) == {pid: {**n, "timestamp": ANY} for pid, n in second.items()}

    assert server.get("/api/8/processes").json() == {"respawned": 0}
    replacement = server.kill_worker(new[0])
    third = _nginx_of_every_worker(server)
    assert replacement in third and {(n["generation"], _epoch(n["load_timestamp"])) for n in third.values()} == \
        {(2, reloaded)}
    assert server.get("/api/8/processes").json() == {"respawned": 1}


# -- read by the real Prometheus exporter -----------------------------------------------------------


@pytest.fixture
def exporter():
    if not os.access(EXPORTER, os.X_OK):
        pytest.skip(f"{EXPORTER} is not installed (Debian's prometheus-nginx-exporter; .ci/run installs it)")
    procs = []

    def run(scrape_uri: str, plus: bool) -> str:
        port = free_port()
        cmd = [EXPORTER, f"--nginx.scrape-uri={scrape_uri}", f"--web.listen-address=127.0.0.1:{port}"]
        proc = subprocess.Popen(cmd + (["--nginx.plus"] if plus else []), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        procs.append(proc)
        url = f"http://127.0.0.1:{port}/metrics"

        def up() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"the exporter exited: {proc.stderr.read().decode(errors='replace')}")
            try:
                return requests.get(url, timeout=5).status_code == 200
            except requests.ConnectionError:
                return False

        wait_for(up, 20, what="the exporter to serve /metrics")
        return url

    yield run
    for proc in procs:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def metrics(url: str) -> dict[str, float]:
    out = {}
    for line in requests.get(url, timeout=10).text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def test_the_prometheus_exporter_reads_what_ngxsim_counts(ngxsim_server, ngxsim_backend, exporter):
    a, b, c = (ngxsim_backend(name=n) for n in "abc")
    server = start(ngxsim_server, [a, b, c], workers=4)
    plus = exporter(server.url("/api"), plus=True)
    basic = exporter(server.url("/basic_status"), plus=False)
    # a scripted sequence: requests, a drain, a failure, more requests
    server.spray("/x", 30)
    ids = {s: p["id"] for s, p in peers(server).items()}
    server.request("PATCH", f"{UPS}/servers/{ids[b.address]}", json={"drain": True})
    c.stop()
    server.spray("/y", 20)

    seen = metrics(plus)
    assert seen["nginxplus_up"] == 1
    ours = peers(server)
    for address, peer in ours.items():
        labels = f'{{server="{address}",upstream="backend"}}'
        assert seen[f"nginxplus_upstream_server_requests{labels}"] == peer["requests"]
        assert seen[f"nginxplus_upstream_server_fails{labels}"] == peer["fails"]
        assert seen[f"nginxplus_upstream_server_unavail{labels}"] == peer["unavail"]
        assert seen[f"nginxplus_upstream_server_active{labels}"] == peer["active"]
        assert seen[f"nginxplus_upstream_server_sent{labels}"] == peer["sent"]
        assert seen[f"nginxplus_upstream_server_received{labels}"] == peer["received"]
        code = f'{{code="2xx",server="{address}",upstream="backend"}}'
        assert seen[f"nginxplus_upstream_server_responses{code}"] == peer["responses"]["2xx"]
        # the averages of the recent responses and the responses by code (0.11 exports a fixed list of codes)
        assert seen[f"nginxplus_upstream_server_header_time{labels}"] == peer.get("header_time", 0)
        assert seen[f"nginxplus_upstream_server_response_time{labels}"] == peer.get("response_time", 0)
        by_code = {name.split('"')[1]: value for name, value in seen.items()
                   if name.startswith("nginxplus_upstream_server_responses_codes") and f'"{address}"' in name}
        assert {c: n for c, n in by_code.items() if n} == peer["responses"]["codes"] and "200" in by_code
    states = {"up": 1, "draining": 2, "down": 3, "unavail": 4, "checking": 5, "unhealthy": 6}
    assert {a: seen[f'nginxplus_upstream_server_state{{server="{a}",upstream="backend"}}'] for a in ours} == \
        {a: states[p["state"]] for a, p in ours.items()} == {a.address: 1, b.address: 2, c.address: 4}
    assert ours[c.address]["fails"] >= 1 and ours[a.address]["requests"] == a.hits
    assert ours[a.address]["responses"]["codes"] == {"200": a.hits} and ours[a.address]["header_time"] >= 0

    first = stub(server)
    seen = metrics(basic)  # the exporter's own request to stub_status comes between the two reads
    assert seen["nginx_up"] == 1
    assert seen["nginx_http_requests_total"] == first["requests"] + 1
    assert seen["nginx_connections_accepted"] == first["accepts"] + 1
    assert seen["nginx_connections_handled"] == first["handled"] + 1
    assert stub(server)["requests"] == first["requests"] + 2


def test_the_prometheus_exporter_reads_the_limit_req_and_limit_conn_counts(ngxsim_server, ngxsim_backend, exporter):
    backend = ngxsim_backend()
    server = ngxsim_server(LIMITS_CONF, workers=2, mode="ngxsim", ready_path="/api/",
                           placeholders={"backend": backend.address})
    plus = exporter(server.url("/api"), plus=True)
    limited_traffic(server, backend)
    seen = metrics(plus)
    reqs = server.get("/api/8/http/limit_reqs").json()
    conns = server.get("/api/8/http/limit_conns").json()
    assert reqs["nodelay"]["rejected"] == 2 and conns["conn"]["rejected"] == 3  # (what the traffic makes)
    for zone, counts in reqs.items():
        for field, value in counts.items():
            assert seen[f'nginxplus_limit_request_{field}{{zone="{zone}"}}'] == value, (zone, field)
    for zone, counts in conns.items():
        for field, value in counts.items():
            assert seen[f'nginxplus_limit_connection_{field}{{zone="{zone}"}}'] == value, (zone, field)


def test_ngxsim_status_shows_upstream_peers_and_caches(ngxsim_server, ngxsim_backend):
    a, b = ngxsim_backend(name="a"), ngxsim_backend(name="b")
    server = start(ngxsim_server, [a, b], workers=2)
    server.spray("/x", 8)
    ids = {s: p["id"] for s, p in peers(server).items()}
    server.request("PATCH", f"{UPS}/servers/{ids[b.address]}", json={"drain": True})
    for _ in range(4):
        server.get("/static/a")  # one miss, three hits
    modules = server.get("/internal/status").json()["modules"]
    shown = {p["server"]: p for p in modules["upstreams"]["upstreams"]["backend"]}
    assert {s: (p["state"], p["requests"]) for s, p in shown.items()} == \
        {a.address: ("up", a.hits), b.address: ("draining", b.hits)}
    assert shown[a.address]["healthy"] is None  # no health checks
    cache = modules["cache_purge"]["caches"]["assets"]
    assert (cache["hits"], cache["misses"], cache["hit_ratio"]) == (3, 1, 0.75) and cache["size"] > 0
    text = subprocess.run([sys.executable, "-m", "ngxsim.cli", "status", "-c", server.url("/internal/status")],
                          capture_output=True, text=True, timeout=60).stdout
    assert "upstreams:" in text and "draining" in text and b.address in text
    assert "cache_purge:" in text and "hit_ratio" in text and "0.75" in text


# -- limit_req and limit_conn: each module answers its own section ----------------------------------

LIMITS_CONF = """
load_module worker_events; load_module upstreams; load_module limit_req; load_module limit_conn;
worker_threads 16;
http {
    worker_events_zone bus;
    log_format limits '$uri $status $limit_req_status $limit_conn_status';
    limit_req_zone $arg_k zone=nodelay:64k rate=1r/m;
    limit_req_zone $arg_k zone=delay:64k rate=10r/s;
    limit_req_zone $arg_k zone=dry:64k rate=1r/m;
    limit_req_zone $arg_k zone=first:64k rate=1r/m;
    limit_req_zone $arg_k zone=second:64k rate=1r/m;
    limit_conn_zone $arg_k zone=conn:64k;
    limit_conn_zone $arg_k zone=conndry:64k;
    server {
        listen 127.0.0.1:{port};
        access_log {tmp}/access.log limits;
        location / { proxy_pass http://{backend}; }
        location /nodelay/ { limit_req zone=nodelay burst=2 nodelay; proxy_pass http://{backend}; }
        location /delay/ { limit_req zone=delay burst=3; proxy_pass http://{backend}; }
        location /dry/ { limit_req zone=dry burst=1; limit_req_dry_run on; proxy_pass http://{backend}; }
        location /both/ { limit_req zone=first burst=5 nodelay; limit_req zone=second; proxy_pass http://{backend}; }
        location /conn/ { limit_conn conn 1; proxy_pass http://{backend}; }
        location /conndry/ { limit_conn conndry 1; limit_conn_dry_run on; proxy_pass http://{backend}; }
        location /api { api write=on; }
        location /ro/ { api; }
    }
}
"""
REQ_FIELDS = {"PASSED": "passed", "DELAYED": "delayed", "REJECTED": "rejected", "DELAYED_DRY_RUN": "delayed_dry_run",
              "REJECTED_DRY_RUN": "rejected_dry_run"}
CONN_FIELDS = {"PASSED": "passed", "REJECTED": "rejected", "REJECTED_DRY_RUN": "rejected_dry_run"}


def limited_traffic(server, backend) -> None:
    """Requests that limit_req and limit_conn pass, delay and reject (their verdicts are logged)."""
    backend.respond(body="ok")
    backend.respond("/conn/slow", body="slow", delay=3)
    backend.respond("/conndry/slow", body="slow", delay=3)
    for _ in range(5):
        server.get("/nodelay/x?k=a")  # 3 pass (burst=2 nodelay), 2 rejected
    server.get("/nodelay/x?k=b")
    at_once = [threading.Thread(target=server.get, args=("/delay/x?k=a",), kwargs={"timeout": 30}) for _ in range(8)]
    for t in at_once:  # 8 at once at 10r/s burst=3: passed, delayed and rejected
        t.start()
    for t in at_once:
        t.join(30)
    for _ in range(4):
        server.get("/dry/x?k=a")  # passed, delayed (dry run), rejected (dry run) twice: all answered
    for _ in range(2):
        server.get("/both/x?k=a")  # passes both; then "second" refuses it and "first" accounts nothing
    for path in ("/conn/", "/conndry/"):
        holder = []
        slow = threading.Thread(target=lambda p=path: holder.append(server.get(f"{p}slow?k=a", timeout=30)))
        slow.start()
        backend.wait_hits(1, path=f"{path}slow")
        for _ in range(3):
            server.get(f"{path}fast?k=a")  # the key's one is in progress: rejected (dry run: answered)
        slow.join(30)
        assert holder[0].status_code == 200
        server.get(f"{path}fast?k=a")  # nothing in progress any more: passed


def logged_verdicts(server, prefix: str, column: int, fields: dict[str, str]) -> dict[str, int]:
    """The access log's ``$limit_req_status`` (column 2) or ``$limit_conn_status`` (3) of the
    requests under ``prefix``, counted as the API's fields."""
    counts = dict.fromkeys(fields.values(), 0)
    for line in (server.conf.parent / "access.log").read_text().splitlines():
        words = line.split(" ")
        if words[0].startswith(prefix):
            counts[fields[words[column]]] += 1
    return counts


def test_limit_reqs_and_limit_conns_count_what_the_limits_decided(ngxsim_server, ngxsim_backend):
    backend = ngxsim_backend()
    server = ngxsim_server(LIMITS_CONF, workers=3, mode="ngxsim", ready_path="/api/",
                           placeholders={"backend": backend.address})
    zeros = {"passed": 0, "delayed": 0, "rejected": 0, "delayed_dry_run": 0, "rejected_dry_run": 0}
    assert server.get("/api/8/http/limit_reqs").json() == dict.fromkeys(("nodelay", "delay", "dry", "first", "second"),
                                                                        zeros)
    assert server.get("/api/8/http/limit_conns").json() == \
        dict.fromkeys(("conn", "conndry"), {"passed": 0, "rejected": 0, "rejected_dry_run": 0})
    limited_traffic(server, backend)
    expected = sum(n for n in (6, 8, 4, 2, 5, 5))
    wait_for(lambda: len((server.conf.parent / "access.log").read_text().splitlines()) >= expected + 2, 10,
             what="every limited request in the access log")

    reqs = server.get("/api/8/http/limit_reqs").json()
    for zone in ("nodelay", "delay", "dry"):
        assert reqs[zone] == logged_verdicts(server, f"/{zone}/", 2, REQ_FIELDS), zone
    assert reqs["nodelay"] == {**zeros, "passed": 4, "rejected": 2}
    assert reqs["dry"] == {**zeros, "passed": 1, "delayed_dry_run": 1, "rejected_dry_run": 2}
    assert reqs["delay"]["delayed"] >= 1 and reqs["delay"]["rejected"] >= 1 and sum(reqs["delay"].values()) == 8
    # two zones on one location: each counts its own verdict; a zone whose lookup was undone
    # (another zone refused the request) counts nothing
    assert (reqs["first"], reqs["second"]) == ({**zeros, "passed": 1}, {**zeros, "passed": 1, "rejected": 1})
    conns = server.get("/api/8/http/limit_conns").json()
    for zone in ("conn", "conndry"):
        assert conns[zone] == logged_verdicts(server, f"/{zone}/", 3, CONN_FIELDS), zone
    assert conns == {"conn": {"passed": 2, "rejected": 3, "rejected_dry_run": 0},
                     "conndry": {"passed": 2, "rejected": 0, "rejected_dry_run": 3}}

    # the instance's counts, whichever worker answers, and a killed worker's stay
    seen = server.each_worker("/api/8/http/limit_reqs")
    assert len(seen) == 3 and all(r.json() == reqs for r in seen.values())
    server.kill_worker()
    assert server.get("/api/8/http/limit_reqs").json() == reqs
    assert server.get("/api/8/http/limit_conns/conn").json() == conns["conn"]
    # a reload keeps the counts of the zones it keeps; a zone it adds starts at 0
    server.reload(server.conf.read_text().replace("limit_conn_zone $arg_k zone=conn:64k;",
                                                  "limit_conn_zone $arg_k zone=conn:64k; limit_req_zone $arg_k "
                                                  "zone=added:64k rate=1r/s;"))
    assert server.get("/api/8/http/limit_reqs").json() == {**reqs, "added": zeros}
    assert server.get("/api/8/http/limit_conns").json() == conns

    # DELETE resets one zone (NGINX Plus: 204, no body); the others keep theirs
    r = server.delete("/api/8/http/limit_reqs/nodelay")
    assert (r.status_code, r.content) == (204, b"")
    after = server.get("/api/8/http/limit_reqs").json()
    assert after == {**reqs, "nodelay": zeros, "added": zeros}
    server.get("/nodelay/x?k=c")
    assert server.get("/api/8/http/limit_reqs/nodelay").json() == {**zeros, "passed": 1}
    assert server.delete("/api/8/http/limit_conns/conndry").status_code == 204
    assert server.get("/api/8/http/limit_conns").json() == \
        {**conns, "conndry": {"passed": 0, "rejected": 0, "rejected_dry_run": 0}}

    # NGINX Plus's errors
    for section, code in (("limit_reqs", "LimitReqNotFound"), ("limit_conns", "LimitConnNotFound")):
        for method in ("GET", "DELETE"):
            r = server.request(method, f"/api/8/http/{section}/nope")
            assert r.status_code == 404 and r.json()["error"]["code"] == code, (section, method)
            assert '"nope"' in r.json()["error"]["text"]
        r = server.delete(f"/ro/8/http/{section}/{'delay' if section == 'limit_reqs' else 'conn'}")
        assert r.status_code == 405 and r.json()["error"]["code"] == "MethodDisabled"
        r = server.delete(f"/api/8/http/{section}")
        assert r.status_code == 405 and r.json()["error"]["code"] == "MethodNotSupported"
    assert server.get("/api/8/http/limit_reqs").json()["delay"] == reqs["delay"]


def test_peer_response_codes_and_times_come_from_real_responses(ngxsim_server, ngxsim_backend):
    """NGINX Plus's per-peer ``responses.codes`` and ``header_time``/``response_time`` (ms, the
    average of the recent responses), counted by every worker into the upstream's zone."""
    a, b = ngxsim_backend(name="a"), ngxsim_backend(name="b")
    for backend in (a, b):
        backend.respond(body="ok")
        backend.respond("/missing", status=404, body="no")
        backend.respond("/slow", body="late", delay=0.3)
    server = start(ngxsim_server, [a, b], workers=3)
    assert all("header_time" not in p and p["responses"]["codes"] == {} for p in peers(server).values())
    server.spray("/x", 12)
    server.spray("/missing", 6)
    got = peers(server)
    for backend in (a, b):
        peer = got[backend.address]
        codes = Counter(str(200 if r.path != "/missing" else 404) for r in backend.requests_for())
        assert peer["responses"]["codes"] == dict(codes) and sum(codes.values()) == peer["responses"]["total"]
        assert peer["header_time"] >= 0 and peer["response_time"] >= peer["header_time"]
    # slow answers raise the averages of the peer that gave them above their delay's share
    before = peers(server)[a.address]
    server.request("PATCH", f"{UPS}/servers/{before['id']}", json={"weight": 100})
    slow = [r for r in server.spray("/slow", 6) if r.status_code == 200]
    after = peers(server)[a.address]
    timed = after["responses"]["total"]
    slow_at_a = after["responses"]["codes"]["200"] - before["responses"]["codes"]["200"]
    assert slow and slow_at_a >= 1
    # every slow one took 300 ms to its header: the average holds at least their share of it
    assert after["header_time"] >= 300 * slow_at_a // timed
    assert after["response_time"] >= after["header_time"]
    seen = {pid: r.json() for pid, r in server.each_worker(f"{UPS}/servers/{after['id']}").items()}
    assert {(p["header_time"], p["response_time"], str(p["responses"]["codes"])) for p in seen.values()} == \
        {(after["header_time"], after["response_time"], str(after["responses"]["codes"]))}
