"""Clients that would starve a server: slow headers and bodies (ngxsim.worker.Worker answers 408
and keeps serving others), and long-polls beyond the worker's limit (503 at once)."""

from __future__ import annotations

import json
import socket
import threading

import pytest
import requests

from ngxsim.testing import start_server, wait_for

CONF = """
load_module worker_events;
http {
    client_header_timeout 1s;
    client_body_timeout 1s;
    server {
        listen 127.0.0.1:{port};
        location = / { return 200 ok; }
        location /api {
            worker_events_api;
            worker_events_zone bus;
            worker_events_channel c;
        }
    }
}
"""
THREADS = 2


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One worker with two threads: any two clients that held a thread each would starve it."""
    srv = start_server(tmp_path_factory.mktemp("slow"), CONF, workers=1, worker_class="ngxsim.worker.Worker",
                       extra_env={"GUNICORN_CMD_ARGS": f"--threads {THREADS}"})
    yield srv
    srv.stop()


def _answer(sock: socket.socket) -> tuple[int, dict]:
    sock.settimeout(10)
    data = b""
    while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
        part = sock.recv(4096)
        if not part:
            break
        data += part
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def test_slow_headers_get_408_and_ordinary_requests_are_answered_meanwhile(server):
    slow = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(THREADS * 5)]
    try:
        for sock in slow:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")  # and never the end of the header
        for _ in range(3):
            assert requests.get(server.url("/"), timeout=5).text == "ok"
        for sock in slow:
            status, body = _answer(sock)
            assert status == 408 and "client_header_timeout (1s)" in body["message"]
    finally:
        for sock in slow:
            sock.close()


@pytest.mark.parametrize("head, body, words", [
    # a declared length: read by the event loop, which times out between two reads
    (b"Content-Length: 40\r\n", b'{"type": ', "client_body_timeout (1s)"),
    # chunked: read by the thread, whose socket reads time out
    (b"Transfer-Encoding: chunked\r\n", b'20\r\n{"type": ', "within client_body_timeout"),
])
def test_a_slow_body_gets_408_and_publishes_nothing(server, head, body, words):
    before = server_newest(server)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"POST /api HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" + head + b"\r\n" + body)
        status, answer = _answer(sock)
    assert status == 408 and words in answer["message"], answer
    assert server_newest(server) == before


def server_newest(server) -> int:
    return requests.get(server.url("/api"), timeout=5).json()["newest_generation"]


def test_long_polls_past_the_limit_are_answered_503_at_once_and_a_thread_stays_free(server):
    newest = server_newest(server)
    out = {}
    def long_poll():  # as a client should: after a 503, again (the probes below may take the slot first)
        while (r := requests.get(server.url(f"/api?since={newest}&wait=20"), timeout=30)).status_code == 503:
            threading.Event().wait(0.05)
        out["r"] = r

    waiter = threading.Thread(target=long_poll)
    waiter.start()
    try:
        # auto limit with 2 threads: 1 long-poll; once it waits, the next one is refused at once
        def probe():
            r = requests.get(server.url(f"/api?since={newest}&wait=0.01"), timeout=5)
            return [r] if r.status_code == 503 else None  # (a 503 Response itself is falsy)

        (refused,) = wait_for(probe, 10, what="a long-poll to be refused")
        assert refused.headers["Retry-After"] == "1" and "worker_events_long_poll_limit" in refused.json()["message"]
        assert requests.get(server.url("/"), timeout=5).text == "ok"  # the thread kept free
    finally:
        requests.post(server.url("/api"), json={"type": "wake"}, timeout=5)
        waiter.join(30)
    assert [e["type"] for e in out["r"].json()["events"]] == ["wake"]


def test_ngxsim_c_uses_the_ngxsim_worker_with_the_config_timeouts(ngxsim_server):
    conf = CONF.replace("http {", "worker_processes 1;\nworker_threads 2;\nerror_log stderr info;\nhttp {", 1)
    server = ngxsim_server(conf, mode="ngxsim", workers=1)
    assert "Using worker: ngxsim.worker.Worker" in server.output()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
        status, body = _answer(sock)
    assert status == 408 and "client_header_timeout (1s)" in body["message"]
