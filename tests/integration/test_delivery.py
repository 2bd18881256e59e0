"""Delivery to every worker under gunicorn -w 4, with a recording test module."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from ngxsim.testing import procs, wait_for

CONF = """
load_module worker_events;
load_module ngxsim_test_raiser;
load_module ngxsim_test_recorder;
worker_processes 4;
{extra}
http {
    server {
        listen 127.0.0.1:{port};
        location /internal/worker-events {
            worker_events_api;
            worker_events_zone bus;
            worker_events_channel cache.invalidate;
            worker_events_ring_size {size};
        }
        location /dump { recorder_dump; }
    }
}
"""
API = "/internal/worker-events"


def conf(size=1024, extra=""):
    return CONF.replace("{size}", str(size)).replace("{extra}", extra)


@pytest.fixture
def start(ngxsim_server, tmp_path):
    def run(text, **kw):
        server = ngxsim_server(text, workers=4, extra_env={"NGXSIM_TEST_RECORD_DIR": str(tmp_path)}, **kw)
        server.record_dir = tmp_path
        # a worker that starts begins at the newest generation: publish only once all four listen
        server.events(API).wait_delivered(0)
        return server

    return run


def records(server) -> dict[int, list[str]]:
    out = {}
    for pid in server.worker_pids():
        path = server.record_dir / f"{pid}.log"
        out[pid] = path.read_text().splitlines() if path.exists() else []
    return out


def wait_records(server, predicate, what, timeout=15):
    return wait_for(lambda: (lambda r: r if len(r) == 4 and all(predicate(lines) for lines in r.values()) else None)(records(server)),
                    timeout, what=what)


def publish(server, type="t", payload=""):
    r = server.post(API, json={"type": type, "payload": payload})
    assert r.status_code == 201, r.text
    return r


def test_every_worker_sees_every_generation_in_order(start):
    server = start(conf())
    publishers = set()
    for i in range(1, 31):
        publishers.add(publish(server, payload=str(i)).worker_pid)
    assert len(publishers) >= 2  # published through several workers
    expected = [f"E {i} cache.invalidate t {i}" for i in range(1, 31)]
    wait_records(server, lambda lines: len(lines) >= 30, "every worker to record 30 events")
    for pid, lines in records(server).items():
        assert lines == expected, pid
    workers = server.get(API).json()["workers"]
    assert sorted(w["pid"] for w in workers) == server.worker_pids()
    assert all(w["delivered_generation"] == 30 and w["lag"] == 0 and w["gaps"] == 0 for w in workers)


def test_a_burst_larger_than_the_ring_gives_every_worker_a_gap_of_the_right_size(start):
    server = start(conf(size=16))
    publish(server, payload="first")
    wait_records(server, lambda lines: lines == ["E 1 cache.invalidate t first"], "the first event everywhere")
    ring = server.zone_events("bus")  # the test process attaches the ring like one more worker
    pids = server.worker_pids()
    try:
        for pid in pids:
            procs.stop(pid)  # every thread stopped, the dispatcher's too
        for i in range(2, 102):  # 100 events into a ring of 16 while no worker can run
            ring.publish("burst", str(i), channel="cache.invalidate")
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
    ring.close()
    expected = ["E 1 cache.invalidate t first", "G 2 85"] + [f"E {i} cache.invalidate burst {i}" for i in range(86, 102)]
    wait_records(server, lambda lines: len(lines) >= len(expected), "every worker to catch up")
    for pid, lines in records(server).items():
        assert lines == expected, pid
    workers = server.get(API).json()["workers"]
    assert len(workers) == 4 and all((w["gaps"], w["lost_events"]) == (1, 84) for w in workers)


@pytest.mark.parametrize("replay", [False, True], ids=["from-newest", "replay"])
def test_a_respawned_worker_catches_up(start, replay):
    server = start(conf(extra="recorder_replay on;" if replay else ""))
    for i in range(1, 6):
        publish(server, payload=str(i))
    wait_records(server, lambda lines: len(lines) == 5, "5 events everywhere")
    replacement = server.kill_worker(min(server.worker_pids()))
    wait_for(lambda: any(w["pid"] == replacement for w in server.get(API).json()["workers"]), 10,
             what="the replacement to register")
    publish(server, payload="6")
    old = [f"E {i} cache.invalidate t {i}" for i in range(1, 6)]
    expected = (old if replay else []) + ["E 6 cache.invalidate t 6"]
    wait_records(server, lambda lines: lines[-1:] == ["E 6 cache.invalidate t 6"], "event 6 everywhere")
    got = records(server)
    assert got[replacement] == expected
    for pid, lines in got.items():
        if pid != replacement:
            assert lines == old + ["E 6 cache.invalidate t 6"]


def test_a_raising_subscriber_does_not_block_the_others(start):
    server = start(conf())
    publish(server, type="boom")
    publish(server, type="after")
    wait_records(server, lambda lines: lines == ["E 1 cache.invalidate boom ", "E 2 cache.invalidate after "],
                 "both events recorded everywhere")
    wait_for(lambda: server.output().count("module ngxsim_test_raiser failed on generation 1 of zone bus") == 4, 10,
             what="one logged failure per worker")


def test_read_your_publish_across_workers(start):
    server = start(conf())
    for i in range(1, 21):
        gen = publish(server, payload=str(i)).json()["generation"]
        dump = server.get("/dump").json()  # any worker, right after the publish returned
        assert f"E {gen} cache.invalidate t {i}" in dump["record"], (dump["pid"], gen)


def _timed_get(server, path, out):
    started = time.monotonic()
    r = server.get(path, timeout=40)
    out.append((time.monotonic() - started, r))


@pytest.mark.parametrize("worker_class", ["gthread", "sync"])
def test_long_poll_returns_on_publish_well_before_its_deadline(start, worker_class):
    server = start(conf(), worker_class=worker_class)
    newest = server.get(API).json()["newest_generation"]
    out = []
    waiter = threading.Thread(target=_timed_get, args=(server, f"{API}?since={newest}&wait=20", out))
    waiter.start()
    time.sleep(0.5)
    publish(server, payload="wake")
    waiter.join(25)
    elapsed, r = out[0]
    assert r.status_code == 200 and [e["payload"] for e in r.json()["events"]] == ["wake"]
    assert 0.4 < elapsed < 5


def test_long_poll_returns_empty_at_its_deadline_and_ignores_other_channels(start):
    server = start(conf(), worker_class="gthread")
    out = []
    waiter = threading.Thread(target=_timed_get, args=(server, f"{API}?since=0&wait=1.5&channel=elsewhere", out))
    waiter.start()
    time.sleep(0.3)
    publish(server, payload="not-for-this-channel")  # wakes the poller, which must go back to waiting
    waiter.join(10)
    elapsed, r = out[0]
    assert r.json()["events"] == [] and 1.4 < elapsed < 5


def _tail(server, target, since, count, publish_after):
    tail = subprocess.Popen(
        [sys.executable, "-m", "ngxsim.cli", "events", "tail", "-c", target, "--since", str(since), "--count", str(count)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=server.env)
    try:
        time.sleep(0.5)
        for payload in publish_after:
            publish(server, payload=payload)
        out, err = tail.communicate(timeout=30)
    finally:
        if tail.poll() is None:
            tail.kill()
            tail.wait(5)
    assert tail.returncode == 0, err
    return out.splitlines()


def test_events_tail_follows_the_ring_by_url_and_by_config(start):
    server = start(conf())
    publish(server, payload="before")
    assert _tail(server, server.url(API), 0, 3, ["after1", "after2"]) == [
        "1 cache.invalidate t before", "2 cache.invalidate t after1", "3 cache.invalidate t after2"]
    assert _tail(server, str(server.conf), 3, 2, ["after3", "after4"]) == [
        "4 cache.invalidate t after3", "5 cache.invalidate t after4"]


def test_a_once_subscription_handles_each_event_in_one_worker_only(start):
    server = start(conf(extra="recorder_once on;"))
    for i in range(1, 41):
        publish(server, payload=str(i))
    server.events(API).wait_delivered()  # every worker has been through generation 40
    server.each_worker("/dump")  # and a request drains anything still pending first
    handled = sorted(int(line.split()[1]) for lines in records(server).values() for line in lines)
    assert handled == list(range(1, 41))  # each generation once in the whole instance
    assert sum(1 for lines in records(server).values() if lines) >= 2  # shared among the workers
