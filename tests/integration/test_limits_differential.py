"""limit_req and limit_conn against real nginx: the same configs, the same requests, the same
status sequences.

Sequential, paced and concurrent bursts; with nodelay, with the delay (burst, delay=N); at the
location and at the server level (a request no location matches); with a cache in front (nginx's
preaccess runs before the cache answers a hit); dry run and ``$limit_req_status``; the same
``-t`` errors. limit_conn: concurrent requests to a slow backend over and under the limit,
server level, dry run and ``$limit_conn_status``, released once answered. ngxsim runs
``ngxsim -c`` with two workers: the limits hold across workers.
Skipped, saying why, where no nginx binary is installed.
"""

from __future__ import annotations

import http.client
import re
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from ngxsim.testing import config_errors, find_nginx

COMMON = """
limit_req_zone $binary_remote_addr zone=seq:1m rate=1r/s;
limit_req_zone $binary_remote_addr zone=paced:1m rate=2r/s;
limit_req_zone $binary_remote_addr zone=burst:1m rate=2r/s;
limit_req_zone $binary_remote_addr zone=dl:1m rate=2r/s;
limit_req_zone $binary_remote_addr zone=srv:1m rate=1r/s;
limit_req_zone $binary_remote_addr zone=cached:1m rate=1r/s;
limit_req_zone $binary_remote_addr zone=dry:1m rate=1r/s;
limit_req_zone $binary_remote_addr zone=st:1m rate=1r/s;
limit_req_zone $uri zone=byuri:1m rate=1r/s;
limit_conn_zone $binary_remote_addr zone=addr:1m;
limit_conn_zone $binary_remote_addr zone=addr2:1m;
limit_conn_zone $server_name zone=srvconn:1m;
limit_conn_zone $binary_remote_addr zone=dryconn:1m;
proxy_cache_path {cachedir} keys_zone=pc:1m;

server {
    listen 127.0.0.1:{port} default_server;
    location /seq/ { limit_req zone=seq burst=2 nodelay; proxy_pass http://{backend}; }
    location /paced/ { limit_req zone=paced burst=1 nodelay; proxy_pass http://{backend}; }
    location /burst/ { limit_req zone=burst burst=3; proxy_pass http://{backend}; }
    location /delay/ { limit_req zone=dl burst=3 delay=1; limit_req_status 429; proxy_pass http://{backend}; }
    location /cached/ {
        limit_req zone=cached burst=2 nodelay;
        proxy_cache pc;
        proxy_cache_valid 200 10m;
        proxy_pass http://{backend};
    }
    location /dry/ {
        limit_req zone=dry;
        limit_req_dry_run on;
        add_header X-LR $limit_req_status always;
        proxy_pass http://{backend};
    }
    location /status/ { limit_req zone=st burst=1 nodelay; add_header X-LR $limit_req_status always; proxy_pass http://{backend}; }
    location /uri/ { limit_req zone=byuri nodelay; proxy_pass http://{backend}; }
    location /two/ { limit_req zone=seq nodelay; limit_req zone=byuri burst=1 nodelay; proxy_pass http://{backend}; }
    location /conn/ { limit_conn addr 2; proxy_pass http://{backend}; }
    location /conn429/ { limit_conn addr2 3; limit_conn_status 429; proxy_pass http://{backend}; }
    location /conndry/ {
        limit_conn dryconn 1;
        limit_conn_dry_run on;
        add_header X-LR $limit_conn_status always;
        proxy_pass http://{backend};
    }
}
server {
    listen 127.0.0.1:{port};
    server_name srv.test;
    limit_req zone=srv burst=1 nodelay;
    location /p/ { proxy_pass http://{backend}; }
}
server {
    listen 127.0.0.1:{port};
    server_name conn.test;
    limit_conn srvconn 1;
    add_header X-LR $limit_conn_status always;
    location /c/ { proxy_pass http://{backend}; }
}
"""

NGXSIM_HEAD = """load_module worker_events;
load_module upstreams;
load_module cache_purge;
load_module limit_req;
load_module limit_conn;
worker_processes 2;
http {
    worker_events_zone bus;
"""

NGINX = find_nginx()
pytestmark = pytest.mark.skipif(NGINX is None, reason="no nginx binary on PATH or in /usr/sbin "
                                "(apt-get install nginx-light to run the differential tests)")


@pytest.fixture
def servers(ngxsim_server, ngxsim_nginx, ngxsim_backend, tmp_path):
    backend = ngxsim_backend()
    backend.respond(body="ok")
    for prefix in ("/conn/", "/conn429/", "/conndry/", "/c/"):  # held long enough to overlap
        for i in range(8):
            backend.respond(f"{prefix}{i}", body="slow", delay=1.0)
    nginx = ngxsim_nginx(COMMON, placeholders={"backend": backend.address, "cachedir": "{prefix}/cache"})
    ngxsim = ngxsim_server(NGXSIM_HEAD + COMMON + "}\n", mode="ngxsim",
                           placeholders={"backend": backend.address, "cachedir": tmp_path / "ngxsim-cache"})
    return nginx, ngxsim


@pytest.fixture
def pair(servers):
    return servers[0].port, servers[1].port


def get(port: int, path: str, host: str = "localhost") -> tuple[int, str | None]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path, headers={"Host": host})
        response = conn.getresponse()
        response.read()
        return response.status, response.getheader("X-LR")
    finally:
        conn.close()


def sequential(port, path, n, host="localhost"):
    return [get(port, path, host) for _ in range(n)]


def concurrent(port, path, n, host="localhost"):
    with ThreadPoolExecutor(n) as pool:
        return sorted(f.result() for f in [pool.submit(get, port, f"{path}{i}", host) for i in range(n)])


def concurrent_then_sequential(port, path, n, host="localhost"):
    """A concurrent batch, then (every request of it answered, so counted out) two more."""
    return concurrent(port, path, n, host) + [get(port, f"{path}x", host) for _ in range(2)]


def paced(port, path):
    first = sequential(port, path, 3)
    time.sleep(0.6)  # input pacing (a leak of 1.2 requests at 2r/s), not an assertion on time
    return first + sequential(port, path, 2)


def cached(port, path):
    get(port, path)  # fills the cache (and counts, as in nginx)
    time.sleep(2.2)  # the bucket drains before the hits
    return sequential(port, path, 6)


SCENARIOS = {
    "sequential-nodelay": lambda port: sequential(port, "/seq/x", 6),
    "paced-nodelay": lambda port: paced(port, "/paced/x"),
    "concurrent-burst-delayed": lambda port: concurrent(port, "/burst/", 8),
    "concurrent-delay-param-own-status": lambda port: concurrent(port, "/delay/", 8),
    "server-level-no-location": lambda port: sequential(port, "/zzz", 5, host="srv.test"),
    "server-level-inherited": lambda port: sequential(port, "/p/x", 4, host="srv.test"),
    "cache-hits-are-limited": lambda port: cached(port, "/cached/x"),
    "dry-run-variable": lambda port: sequential(port, "/dry/x", 3),
    "status-variable": lambda port: sequential(port, "/status/x", 3),
    "key-by-uri": lambda port: sequential(port, "/uri/a", 2) + sequential(port, "/uri/b", 2),
    "two-limits": lambda port: sequential(port, "/two/x", 3),
    "conn-concurrent": lambda port: concurrent_then_sequential(port, "/conn/", 6),
    "conn-own-status": lambda port: concurrent_then_sequential(port, "/conn429/", 6),
    "conn-dry-run-variable": lambda port: concurrent(port, "/conndry/", 4),
    "conn-server-level": lambda port: concurrent_then_sequential(port, "/c/", 4, host="conn.test"),
}


# nginx finds these once the whole file is read and names no place; ngxsim names the line that
# causes them (every config error names its file and line): name -> that line
PLACED_HERE = {"unknown-zone": 3, "unknown-variable": 3, "conn-unknown-zone": 3}


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_same_statuses_as_nginx(pair, name):
    nginx_port, ngxsim_port = pair
    expected = SCENARIOS[name](nginx_port)
    assert len(set(expected)) > 1 or name == "server-level-inherited", \
        f"the scenario does not reach the limit in nginx: {expected}"
    assert SCENARIOS[name](ngxsim_port) == expected


_LINE = re.compile(r"(limiting (?:requests|connections).*|delaying request.*)")


def _lines(text: str) -> list[str]:
    """The limit modules' error log messages with nginx's context suffix; the excess, which
    depends on the milliseconds between requests, as X."""
    return [re.sub(r"excess: [0-9.]+", "excess: X", m.group(1)) for m in map(_LINE.search, text.splitlines()) if m]


def test_same_error_log_lines_as_nginx(servers):
    nginx, ngxsim = servers
    for port in (nginx.port, ngxsim.port):
        sequential(port, "/seq/x?a=1", 4)  # one rejected
        sequential(port, "/p/x", 3, host="srv.test")  # one rejected at server level
        with ThreadPoolExecutor(5) as pool:  # three delayed, one rejected (one path: the lines compare)
            list(pool.map(lambda _: get(port, "/burst/x"), range(5)))
    expected = _lines(nginx.log())
    assert len(expected) == 6, nginx.log()
    assert sorted(_lines(ngxsim.output())) == sorted(expected)


BAD = {
    "status-range": "limit_req_status 600;",
    "status-word": "limit_req_status abc;",
    "log-level": "limit_req_log_level foo;",
    "dry-run": "limit_req_dry_run maybe;",
    "unknown-zone": "server { location / { limit_req zone=nope; } }",
    "bound-to-key": "limit_req_zone $binary_remote_addr zone=one:1m rate=1r/s;\n"
                    "limit_req_zone $uri zone=one:1m rate=1r/s;",
    "size-conflict": "limit_req_zone $binary_remote_addr zone=one:1m rate=1r/s;\n"
                     "limit_req_zone $binary_remote_addr zone=one:2m rate=1r/s;",
    "duplicate": "limit_req_zone $binary_remote_addr zone=one:1m rate=1r/s;\n"
                 "server { limit_req zone=one;\n limit_req zone=one burst=2; }",
    "no-zone-param": "limit_req_zone $binary_remote_addr zone=one:1m rate=1r/s;\nserver { limit_req burst=2; }",
    "too-many-args": "limit_req_zone $binary_remote_addr zone=one:1m rate=1r/s;\n"
                     "server { limit_req zone=one burst=2 nodelay delay=1; }",
    "zone-args": "limit_req_zone $binary_remote_addr rate=1r/s;",
    "unknown-variable": "limit_req_zone $nope zone=one:1m rate=1r/s;",
    "zone-too-small": "limit_req_zone $binary_remote_addr zone=one:1k rate=1r/s;",
    "bad-rate": "limit_req_zone $binary_remote_addr zone=one:1m rate=0r/s;",
    "bad-burst": "limit_req_zone $binary_remote_addr zone=one:1m rate=1r/s;\nserver { limit_req zone=one burst=0; }",
    "bad-delay": "limit_req_zone $binary_remote_addr zone=one:1m rate=1r/s;\nserver { limit_req zone=one delay=x; }",
    "bad-parameter": "limit_req_zone $binary_remote_addr zone=one:1m rate=1r/s;\nserver { limit_req zone=one fast; }",
    "zone-param-missing": "limit_req_zone $binary_remote_addr rate=1r/s burst=2;",
    "conn-zero": "limit_conn_zone $binary_remote_addr zone=one:1m;\nserver { limit_conn one 0; }",
    "conn-too-many": "limit_conn_zone $binary_remote_addr zone=one:1m;\nserver { limit_conn one 70000; }",
    "conn-word": "limit_conn_zone $binary_remote_addr zone=one:1m;\nserver { limit_conn one x; }",
    "conn-duplicate": "limit_conn_zone $binary_remote_addr zone=one:1m;\nserver { limit_conn one 1;\n limit_conn one 2; }",
    "conn-zone-word": "limit_conn_zone $binary_remote_addr one:1m;",
    "conn-unknown-zone": "server { limit_conn nope 1; }",
    "conn-bound-to-key": "limit_conn_zone $binary_remote_addr zone=one:1m;\nlimit_conn_zone $uri zone=one:1m;",
    "conn-status-range": "limit_conn_status 399;",
    "conn-log-level": "limit_conn_log_level x;",
    "conn-args": "limit_conn_zone $binary_remote_addr;",
}


@pytest.mark.parametrize("name", sorted(n for n, v in BAD.items() if v))
def test_same_config_error_as_nginx(tmp_path, name):
    expected, got = config_errors(NGINX, tmp_path, BAD[name], ("limit_req", "limit_conn"))
    assert expected, f"nginx accepted the {name} config"
    if name in PLACED_HERE:
        expected += f" in {tmp_path / 't.conf'}:{PLACED_HERE[name]}"
    assert got == expected
