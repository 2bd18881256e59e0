"""Requests that wait (Delay, Park) hold no thread under ngxsim's worker: with 2 threads, 8
waiting requests and an unrelated one are all served, then the waiting ones resume."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

CONF = """
load_module ngxsim_test_order_a;
load_module ngxsim_test_phases;
worker_processes 1;
worker_class ngxsim;
worker_threads 2;
http {
    server {
        listen 127.0.0.1:{port};
        location / { test_jobs_status; }
        location /slow/ { test_order_delay 2s; test_jobs_status; add_header X-Order $test_order; }
        location /park/ { test_order_park; }
        location = /wake { test_order_wake; }
        location = /waiting { test_order_waiting; }
    }
}
"""


def _until_waiting(server, count, timeout=20):
    deadline = time.monotonic() + timeout
    seen = None
    while time.monotonic() < deadline:
        seen = server.get("/waiting", timeout=5).json()["waiting"]
        if seen == count:
            return
        time.sleep(0.05)
    raise AssertionError(f"{seen} requests waiting after {timeout}s, expected {count}")


def test_delayed_requests_hold_no_thread(ngxsim_server):
    server = ngxsim_server(CONF, mode="ngxsim")
    with ThreadPoolExecutor(8) as pool:
        slow = [pool.submit(server.get, f"/slow/{i}", timeout=30) for i in range(8)]
        _until_waiting(server, 8)  # 8 delayed requests and /waiting itself on 2 threads
        assert server.get("/other", timeout=5).status_code == 200
        assert not any(f.done() for f in slow)
        answers = [f.result() for f in slow]
    assert [r.status_code for r in answers] == [200] * 8
    assert {r.headers["X-Order"] for r in answers} == {"a.server_rewrite,a.rewrite,a.preaccess,a.delayed,a.access,a.precontent"}


def test_parked_requests_resume_when_woken(ngxsim_server):
    server = ngxsim_server(CONF, mode="ngxsim")
    with ThreadPoolExecutor(8) as pool:
        parked = [pool.submit(server.get, f"/park/{i}", timeout=30) for i in range(8)]
        _until_waiting(server, 8)
        assert server.get("/other", timeout=5).status_code == 200
        assert server.get("/wake", timeout=5).json() == {"woken": 8}
        answers = [f.result() for f in parked]
    assert [r.json() for r in answers] == [{"answer": "woken"}] * 8
    assert server.get("/waiting", timeout=5).json() == {"waiting": 0}
