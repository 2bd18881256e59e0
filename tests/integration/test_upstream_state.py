"""The upstream state across restarts and reloads, as an operator meets it: the state file beside
``server`` lines (a ``[warn]`` per overridden line), drain kept, peer ids kept, the load logged,
and a broken refresh source logged every time but published once per reason."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

from ngxsim.testing import wait_for

from test_upstreams import API, api, conf as _conf, events, spray


def conf(*args, **kw):
    """test_upstreams' config with two workers (enough for what is kept across processes)."""
    return _conf(*args, **kw).replace("worker_processes 4;", "worker_processes 2;")


def _servers(server):
    return {p["server"]: p for p in api(server, "GET", "/backend/servers").json()}


def test_state_file_beside_server_lines_warns_at_test_start_and_reload(ngxsim_server, ngxsim_backend, tmp_path):
    a, b = ngxsim_backend(name="a"), ngxsim_backend(name="b")
    state = tmp_path / "backend.state"
    text = conf([f"server {a.address};", f"server {b.address};"], upstream_extra=f"state {state};")
    server = ngxsim_server(text, mode="ngxsim", ready_path=API)
    # no state file at the first start: the server lines are its peers, and nothing is overridden
    assert "overridden" not in server.output()
    edited = server.conf.read_text().replace(f"server {b.address};", f"server {b.address} weight=5;")
    server.conf.write_text(edited)
    line = next(i for i, text_line in enumerate(edited.splitlines(), 1) if f"server {b.address} weight=5;" in text_line)
    expected = (f'[warn] "server {b.address}" of upstream "backend" is overridden by the state file "{state}" '
                f'(edit the file, or use the API) in {server.conf}:{line}')
    tested = subprocess.run([sys.executable, "-m", "ngxsim.cli", "-t", "-c", str(server.conf)], capture_output=True,
                            text=True, timeout=60, env=server.env)
    assert tested.returncode == 0 and expected in tested.stderr, tested.stderr
    # the unchanged line is not named
    assert f'"server {a.address}"' not in tested.stderr
    server.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: expected in server.output(), 30, what="the reload's [warn] line")
    assert _servers(server)[b.address]["weight"] == 1  # the state file still rules, as said


def test_drain_and_ids_survive_a_restart_and_a_reload(ngxsim_server, ngxsim_backend, tmp_path):
    a, b, c, d = (ngxsim_backend(name=n) for n in "abcd")
    state = tmp_path / "backend.state"
    text = conf([f"server {a.address};", f"server {b.address};", f"server {c.address};"],
                upstream_extra=f"state {state};")
    server = ngxsim_server(text, mode="ngxsim", ready_path=API)
    ids = {s: p["id"] for s, p in _servers(server).items()}
    assert sorted(ids.values()) == [0, 1, 2]  # NGINX Plus numbers peers from 0
    assert api(server, "DELETE", f"/backend/servers/{ids[a.address]}").status_code == 200
    added = api(server, "POST", "/backend/servers", json={"server": d.address}).json()
    assert added["id"] == 3
    assert api(server, "PATCH", f"/backend/servers/{ids[b.address]}", json={"drain": True}).json()["state"] == "draining"
    before = {s: (p["id"], p["state"]) for s, p in _servers(server).items()}
    server.stop()

    again = ngxsim_server(text, mode="ngxsim", ready_path=API)
    assert {s: (p["id"], p["state"]) for s, p in _servers(again).items()} == before
    assert f'[notice] ' in again.output() and f'upstream "backend": state file "{state}" loaded, 3 peers' in again.output()
    b.reset()
    assert all(r.status_code == 200 for r in spray(again, count=30)) and b.hits == 0  # still drained
    # a script's PATCH /servers/ID still means the same peer
    assert api(again, "PATCH", f"/backend/servers/{added['id']}", json={"weight": 7}).json()["server"] == d.address
    # a reload rebuilds the zone from the state file: same ids, the drain kept
    pids = again.worker_pids()
    again.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: again.worker_pids() and not set(again.worker_pids()) & set(pids), 30, what="new workers")
    again.wait_ready(API)
    after = _servers(again)
    assert {s: (p["id"], p["state"]) for s, p in after.items()} == before and after[d.address]["weight"] == 7
    # the highest id deleted, then a restart: a new peer does not get that id (a script holding
    # it must not change another peer)
    assert api(again, "DELETE", f"/backend/servers/{added['id']}").status_code == 200
    again.stop()
    third = ngxsim_server(text, mode="ngxsim", ready_path=API)
    assert api(third, "POST", "/backend/servers", json={"server": a.address}).json()["id"] == added["id"] + 1


def test_a_broken_refresh_source_is_logged_every_time_and_published_once_per_reason(ngxsim_server, ngxsim_backend,
                                                                                     tmp_path):
    a = ngxsim_backend(name="a")
    source = tmp_path / "servers.json"
    server = ngxsim_server(conf([f"server {a.address};"], upstream_extra=f"upstream_refresh file={source} interval=100ms;"),
                           ready_path=API)
    missing = f'upstream "backend": refresh from "{source}" failed: open() "{source}" failed (2: No such file or directory)'
    wait_for(lambda: server.output().count(missing) >= 5, 20, what="five logged failures")
    assert "[error] " in next(line for line in server.output().splitlines() if missing in line)
    failed = events(server, "refresh_failed")
    assert len(failed) == 1, failed  # the same reason again and again: one event
    source.write_text("[{")  # another reason: one more event
    wait_for(lambda: len(events(server, "refresh_failed")) == 2, 20, what="the second reason's event")
    reasons = [json.loads(e["payload"])["reason"] for e in events(server, "refresh_failed")]
    assert reasons[0] == 'open() "%s" failed (2: No such file or directory)' % source
    assert reasons[1].startswith("invalid JSON at line 1")
    wait_for(lambda: server.output().count("invalid JSON at line 1") >= 3, 20, what="three logged failures")
    assert len(events(server, "refresh_failed")) == 2
