"""nginx's error log, read from real servers: one line format for the master, the workers and
gunicorn's own lines; nginx's wording for "no live upstreams" and health transitions; no
library's exception text."""

from __future__ import annotations

import re

import pytest

from ngxsim.testing import wait_for

from test_healthchecks import conf as health_conf
from test_upstreams import API, conf

# YYYY/MM/DD HH:MM:SS [level] PID#TID: [*CID ]message
LINE = re.compile(r"\d{4}/\d\d/\d\d \d\d:\d\d:\d\d \[(debug|info|notice|warn|error|crit|alert|emerg)\] \d+#\d+: "
                  r"(\*\d+ )?\S")
LIBRARY_TEXT = ("HTTPConnectionPool", "urllib3", "NewConnectionError", "object at 0x", "Errno")


def _log_lines(server) -> list[str]:
    """The lines of the server's output that are log lines (a traceback's lines follow its own)."""
    return [line for line in server.output().splitlines() if line and not line.startswith((" ", "Traceback"))]


@pytest.mark.ngxsim_modes()
def test_master_workers_and_gunicorn_write_nginx_lines(ngxsim_server, ngxsim_backend, ngxsim_mode):
    a = ngxsim_backend(name="a")
    server = ngxsim_server(conf([f"server {a.address} down;"]), ready_path=API)
    r = server.get("/x?y=1")
    assert r.status_code == 502 and r.headers["X-Upstream-Addr"] == "backend"  # nginx names the group
    server.stop()
    lines = _log_lines(server)
    assert lines and [line for line in lines if not LINE.match(line)] == []
    levels = {LINE.match(line).group(1) for line in lines}
    assert {"notice", "error"} <= levels if ngxsim_mode == "ngxsim" else "error" in levels
    master = str(server.master)
    assert any(f"] {master}#" in line for line in lines)  # the master's own lines, in the same format
    assert any("Booting worker" in line for line in lines)  # gunicorn's, too
    expected = (f'[error] ', f'no live upstreams while connecting to upstream, client: 127.0.0.1, server: , '
                f'request: "GET /x?y=1 HTTP/1.1", upstream: "http://backend/x?y=1", host: "{server.address}"')
    assert any(expected[0] in line and line.endswith(expected[1]) for line in lines), "\n".join(lines)
    assert not [line for line in lines if any(text in line for text in LIBRARY_TEXT)]


def test_health_transitions_are_written_as_nginx_plus_writes_them(ngxsim_server, ngxsim_backend):
    a, b = ngxsim_backend(name="a"), ngxsim_backend(name="b")
    for backend in (a, b):
        backend.respond("/health", body={"status": "up"})
    server = ngxsim_server(health_conf([a, b]), ready_path="/api/health", workers=2)
    a.respond("/health", status=503, body={"status": "down"})
    unhealthy = (f'peer is unhealthy while checking status code, health check "ok" of peer {a.address} '
                 f'in upstream "backend"')
    wait_for(lambda: unhealthy in server.output(), 20, what="the unhealthy line")
    line = next(line for line in _log_lines(server) if unhealthy in line)
    assert LINE.match(line) and "[warn]" in line and line.endswith(unhealthy)
    a.respond("/health", body={"status": "up"})
    healthy = f'peer is healthy while checking status code, health check "ok" of peer {a.address} in upstream "backend"'
    wait_for(lambda: healthy in server.output(), 20, what="the healthy line")
    assert "[notice]" in next(line for line in _log_lines(server) if healthy in line)
    b.stop()
    refused = f'peer is unhealthy while connecting to upstream, health check "ok" of peer {b.address} in upstream "backend"'
    wait_for(lambda: refused in server.output(), 20, what="the refused peer's line")


def test_zone_sizes_in_one_unit_and_connection_numbers(ngxsim_server, ngxsim_backend):
    from test_plus_api import start as start_plus

    a = ngxsim_backend(name="a")
    server = start_plus(ngxsim_server, [a], mode="ngxsim", workers=2)
    # keys_zone=assets:1m maps a small zone (the purge epoch, the statistics): both are said
    assert server.logged("notice", 'zone "assets" (256 bytes mapped, 1048576 bytes configured) created')
    assert server.logged("notice", 'zone "backend" (262144 bytes) created')
    # a line written while a request is served carries its connection's number (nginx's *CID),
    # the instance's count of accepted connections (the config counts them: it has stub_status)
    a.stop()
    assert server.get("/x").status_code == 502
    numbers = [int(n) for n in re.findall(r"\[error\] \d+#\d+: \*(\d+) ", server.output())]
    accepted = server.get("/api/8/connections").json()["accepted"]
    assert numbers and all(0 < n < accepted for n in numbers)
