"""``ngxsim events tail`` run as a command against a real gunicorn -w 4 server and real HTTP
servers that are not the API."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time

import pytest

from ngxsim.testing import start_server, stop_all

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
    }
}
""" % (RING, KEY)
API_FIELDS = {"module": "worker_events", "zone": "bus", "newest_generation": 5, "oldest_generation": 1, "events": []}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One server for the module (each start costs seconds on 2 cores)."""
    srv = start_server(tmp_path_factory.mktemp("cli"), CONF, workers=4, ready_path="/")
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
        assert "Connection refused; retrying until it answers" in stderr_line(tail)
        api.start()
        api.respond("/ev", body=API_FIELDS, delay=0.1)  # a long-poll that ends empty (not at once)
        assert stderr_line(tail) == f"ngxsim: {api.url('/ev')} answers again\n"
        assert stderr_line(tail).startswith(f"ngxsim: following {api.url('/ev')} (zone bus, channel: any) after generation 5")
        api.respond("/ev", status=404, body={"message": "gone"})  # a final answer ends it
        code, out, err = finish(tail)
    finally:
        if tail.poll() is None:
            tail.kill()
            tail.wait(5)
    assert code == 1 and err.endswith(f"ngxsim: {api.url('/ev')}: 404 Not Found: gone\n"), err
