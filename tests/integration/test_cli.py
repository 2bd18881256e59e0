"""``ngxsim events tail`` and ``ngxsim status`` run as commands against a real gunicorn -w 4
server and real HTTP servers that are not the API; the ``ngxsim_status`` page as JSON and in a
real headless browser."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time

import pytest

from browser import Chromium, chromium_path
from ngxsim.testing import procs, start_server, stop_all, wait_for

KEY = "s3cret-publish-key"
RING = 16
CONF = """
load_module worker_events;
load_module ngxsim_test_recorder;
http {
    worker_events_zone bus;
    worker_events_ring_size %d;
    server {
        listen 127.0.0.1:{port};
        location = / { return 200 "hello\\n"; }
        location /events { worker_events_api; worker_events_channel ops; worker_events_publish_key %s; }
        location = /status { ngxsim_status; }
    }
}
""" % (RING, KEY)
API_FIELDS = {"module": "worker_events", "zone": "bus", "newest_generation": 5, "oldest_generation": 1, "events": []}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One server for the module (each start costs seconds on 2 cores)."""
    srv = start_server(tmp_path_factory.mktemp("cli"), CONF, workers=4, ready_path="/status")
    try:
        srv.events().wait_delivered(0)  # all four dispatchers listen before anything is published
    except BaseException:
        stop_all([srv])
        raise
    yield srv
    stop_all([srv])


def ngxsim(*args, env=None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "ngxsim.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def finish(proc: subprocess.Popen, timeout: float = 30) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    return proc.returncode, out, err


def run(*args, env=None) -> tuple[int, str, str]:
    return finish(ngxsim(*args, env=env))


_pending: dict[int, bytes] = {}


def stderr_line(proc: subprocess.Popen, timeout: float = 20) -> str:
    """The next line the command writes on stderr (bounded wait). Reads the pipe itself: a
    buffered readline could take the next lines too, where select no longer sees them."""
    fd = proc.stderr.fileno()
    buf = _pending.pop(fd, b"")
    deadline = time.monotonic() + timeout
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        assert left > 0 and select.select([fd], [], [], left)[0], f"no line on stderr within {timeout}s: {buf!r}"
        chunk = os.read(fd, 4096)
        assert chunk, f"stderr closed (exit {proc.poll()}): {buf!r}"
        buf += chunk
    line, _, _pending[fd] = buf.partition(b"\n")
    return line.decode() + "\n"


def publish(server, payload: str) -> int:
    return server.events(key=KEY).publish("t", payload)["generation"]


# -- events tail ------------------------------------------------------------------------------


def test_tail_without_c_follows_NGXSIM_CONF_and_says_what_and_from_where(server):
    publish(server, "before")
    newest = server.events().newest()
    env = {**server.env, "NGXSIM_CONF": str(server.conf)}
    tail = ngxsim("events", "tail", "--count", "1", env=env)
    try:
        said = stderr_line(tail)
        # only once it said where it starts is it sure to see what is published next
        gen = publish(server, "after")
    finally:
        code, out, err = finish(tail)
    assert said == (f"ngxsim: following {server.url('/events')} (zone bus, channel: any) after generation {newest}, "
                    "the newest (--since 0 for the whole ring)\n")
    assert (code, out) == (0, f"{gen} ops t after\n"), err


def test_tail_since_0_shows_what_the_ring_holds_from_its_start(server):
    publish(server, "first-look")  # the README's order: publish, then tail
    newest = server.events().newest()
    oldest = max(1, newest - RING + 1)
    code, out, err = run("events", "tail", "-c", server.url("/events"), "--since", "0",
                         "--count", str(newest - oldest + 1), "--channel", "ops")
    assert code == 0, err
    lines = out.splitlines()
    assert [int(line.split()[0]) for line in lines] == list(range(oldest, newest + 1))
    assert lines[-1] == f"{newest} ops t first-look"
    assert "channel: ops) from the start (the ring holds" in err
    if oldest > 1:  # the generations before the ring's oldest were overwritten: said, not hidden
        assert f"missed {oldest - 1} event(s)" in err


def test_tail_stops_with_the_reason_on_answers_that_will_not_change(server, ngxsim_backend):
    other = ngxsim_backend("other")
    other.respond("/html", body="<!DOCTYPE html><title>hi</title>", headers={"Content-Type": "text/html"})
    other.respond("/json", body={"hello": "world"})
    other.respond("/denied", status=403, body={"message": "no"})
    other.respond("/login", status=401, body="who are you", headers={"Content-Type": "text/plain"})
    cases = {
        server.url("/nope"): "404 Not Found: nothing there",
        server.url("/"): "the answer is text/plain, not JSON",
        server.url("/status"): "JSON without the worker_events API's fields",
        other.url("/html"): "the answer is text/html, not JSON",
        other.url("/json"): "JSON without the worker_events API's fields",
        other.url("/denied"): "403 Forbidden: no",
        other.url("/login"): "401 Unauthorized: it needs credentials",
    }
    procs = {url: ngxsim("events", "tail", "-c", url) for url in cases}
    for url, reason in cases.items():
        code, out, err = finish(procs[url])
        assert code == 1 and out == "", (url, err)
        assert err.startswith(f"ngxsim: {url}: ") and err.count("\n") == 1 and reason in err, (url, err)


def test_tail_waits_out_a_failing_or_absent_server_and_follows_once_it_answers(ngxsim_backend):
    api = ngxsim_backend("api")
    api.respond("/ev", status=503, body={"message": "busy"})
    tail = ngxsim("events", "tail", "-c", api.url("/ev"))
    try:
        assert stderr_line(tail) == f"ngxsim: {api.url('/ev')}: 503 Service Unavailable: busy; retrying until it answers\n"
        api.wait_hits(3, "/ev")  # it keeps asking, saying so once
        assert tail.poll() is None
        api.stop()
        # a request in flight when the server stopped fails otherwise (reset, closed) first
        lines = [stderr_line(tail)]
        while "Connection refused" not in lines[-1] and len(lines) < 3:
            lines.append(stderr_line(tail))
        assert "Connection refused; retrying until it answers" in lines[-1], lines
        api.respond("/ev", body=API_FIELDS, delay=0.1)  # a long-poll that ends empty (not at once)
        api.start()  # with that reply already: no 503 in between
        assert stderr_line(tail) == f"ngxsim: {api.url('/ev')} answers again\n"
        assert stderr_line(tail).startswith(f"ngxsim: following {api.url('/ev')} (zone bus, channel: any) after generation 5")
        api.respond("/ev", status=404, body={"message": "gone"})  # a final answer ends it
        code, out, err = finish(tail)
    finally:
        if tail.poll() is None:
            tail.kill()
            tail.wait(5)
    assert code == 1 and err.endswith(f"ngxsim: {api.url('/ev')}: 404 Not Found: gone\n"), err


# -- status -----------------------------------------------------------------------------------


def status(server) -> dict:
    r = server.get("/status")
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/json", r.text
    return r.json()


def bus_status(server) -> dict:
    return status(server)["modules"]["worker_events"]["rings"]["bus"]


def lags(ring: dict) -> dict[int, int]:
    return {w["pid"]: w["lag"] for w in ring["workers"]}


def test_status_shows_workers_zones_and_each_workers_delivery_lag_and_losses(server):
    pids = set(server.worker_pids())
    before = {w["pid"]: w["requests"] for w in status(server)["workers"]}
    server.spray("/", 8)
    doc = status(server)
    assert {w["pid"] for w in doc["workers"]} == pids and all(w["alive"] for w in doc["workers"])
    assert sum(w["requests"] for w in doc["workers"]) >= sum(before.values()) + 8 + 1
    assert {(z["name"], z["owner"]) for z in doc["zones"]} == {("bus", "worker_events"), ("@workers", "core")}
    assert doc["ngxsim"]["config"] == str(server.conf) and doc["ngxsim"]["answered_by"] in pids

    # a worker that cannot run falls behind: its lag grows, then the ring overwrites what it missed
    stopped = min(pids)
    server.events().wait_delivered()
    mark = server.events().newest()
    procs.stop(stopped)
    try:
        with server.zone_events("bus") as bus:
            for i in range(RING + 4):
                bus.publish("burst", str(i), channel="ops")
        newest = mark + RING + 4
        expected = {pid: (RING + 4 if pid == stopped else 0) for pid in pids}
        # the running workers catch up (on 2 cores, not at once); the stopped one cannot
        ring = wait_for(lambda: lags(r := bus_status(server)) == expected and r, 10, what=f"lags {expected}")
        assert ring["max_lag"] == RING + 4
        assert (ring["capacity"], ring["used"], ring["newest_generation"]) == (RING, RING, newest)
        assert ring["fill_percent"] == 100.0 and ring["dropped_events"] == newest - RING
    finally:
        os.kill(stopped, signal.SIGCONT)
    ring = wait_for(lambda: (r := bus_status(server))["max_lag"] == 0 and r, 10, what="the stopped worker catching up")
    behind = next(w for w in ring["workers"] if w["pid"] == stopped)
    assert behind["lost_events"] == 4 and behind["gaps"] == 1
    # the burst may outrun the running workers too (2 cores): the ring's count is every worker's
    assert ring["lost_events"] == sum(w["lost_events"] for w in ring["workers"]) >= 4


def test_status_lists_a_killed_worker_as_gone_and_its_replacement(server):
    victim = max(server.worker_pids())
    replacement = server.kill_worker(victim, path="/status")
    workers = {w["pid"]: w for w in status(server)["workers"]}
    assert workers[victim]["alive"] is False and workers[replacement]["alive"] is True
    assert {pid for pid, w in workers.items() if w["alive"]} == set(server.worker_pids())
    server.events().wait_delivered()  # the replacement listens again (the next tests need four)


def test_status_never_shows_the_publish_key(server):
    for params in ({"format": "json"}, {"format": "html"}):
        r = server.get("/status", params=params)
        assert r.status_code == 200 and KEY not in r.text
    code, out, err = run("status", "-c", str(server.conf), env=server.env)
    assert code == 0 and KEY not in out


def test_status_command_prints_the_instance_at_a_glance(server):
    pids = server.worker_pids()
    code, out, err = run("status", "-c", str(server.conf), env=server.env)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith(f"ngxsim 0.1.0 at {server.url('/status')}: master ") and lines[0].endswith(str(server.conf))
    assert lines[1].startswith("workers: 4 alive")
    assert lines[2].split() == ["pid", "alive", "up", "for", "requests", "last", "request"]
    listed = {int(line.split()[0]) for line in lines if line.split() and line.split()[0].isdigit() and line.startswith("  ")
              and "yes" in line.split()[1:2]}
    assert set(pids) <= listed
    assert "  bus       " in out and "worker_events" in out
    assert "worker_events:\n  rings:\n    bus:\n      capacity: 16\n" in out
    assert "lag" in out and "lost_events" in out and "max_lag: 0" in out
    code, out, _ = run("status", "--json", "-c", server.url("/status"))
    assert code == 0 and json.loads(out)["modules"]["worker_events"]["rings"]["bus"]["capacity"] == RING


def test_status_command_stops_with_the_reason_when_there_is_no_status(server, ngxsim_backend):
    code, _, err = run("status", "-c", server.url("/events"))
    assert code == 1 and err.endswith("not an ngxsim_status location\n"), err
    gone = ngxsim_backend("gone")
    url = gone.url("/status")
    gone.stop()
    code, _, err = run("status", "-c", url)
    assert code == 1 and err.startswith(f"ngxsim: {url}: ") and "Connection refused" in err, err


def test_status_page_for_people_in_a_real_browser(server, tmp_path):
    if chromium_path() is None:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium): the status page was "
                    "not tested in a browser")
    pids = server.worker_pids()
    with Chromium.start(tmp_path / "chromium-profile") as browser:
        page = browser.open(server.url("/status"))  # the browser's own Accept asks for the page
        page.wait_for("document.querySelectorAll('#workers tr.worker.alive').length === 4")
        shown = page.evaluate("[...document.querySelectorAll('#workers tr.worker.alive')].map(r => Number(r.dataset.pid))")
        assert sorted(shown) == sorted(pids)
        assert page.evaluate("document.title") == "ngxsim status"
        ring = "document.querySelector('section[data-module=\"worker_events\"] tr[data-key=\"bus\"]')"
        assert page.evaluate(f"{ring}.querySelector('tr[data-key=\"capacity\"] td').textContent") == str(RING)
        lag_cells = page.evaluate(f"[...{ring}.querySelectorAll('td.lag')].map(td => td.textContent)")
        assert lag_cells == ["0"] * 4
        assert page.evaluate("document.querySelector('meta[http-equiv=refresh]').content") == "5"
        assert KEY not in page.evaluate("document.documentElement.outerHTML")


@pytest.mark.ngxsim_modes("ngxsim")
def test_status_under_ngxsim_c_where_the_master_makes_the_worker_table(ngxsim_server):
    """``ngxsim -c`` loads the config in its master (the zones exist before the fork): each
    forked worker still lists itself and counts what it serves."""
    srv = ngxsim_server("http { server { listen 127.0.0.1:{port}; location = /status { ngxsim_status; } } }",
                        workers=2, ready_path="/status")
    served = srv.each_worker("/status")
    doc = srv.get("/status").json()
    workers = {w["pid"]: w for w in doc["workers"]}
    assert set(workers) == set(served) == set(srv.worker_pids()) and doc["ngxsim"]["master_pid"] == srv.master
    assert all(w["alive"] and w["requests"] >= 2 for w in workers.values())  # the ready check and each_worker
    assert doc["modules"] == {} and [z["name"] for z in doc["zones"]] == ["@workers"]
