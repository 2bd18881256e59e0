"""The loopback test backend (ngxsim.testing.Backend) through the plugin's ngxsim_backend fixture."""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import threading

import pytest

from ngxsim.testing import Backend


def get(backend, path, method="GET", body=None, headers=None, timeout=5, **kw):
    conn = http.client.HTTPConnection("127.0.0.1", backend.port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {}, **kw)
        r = conn.getresponse()
        return r.status, r.read(), r
    finally:
        conn.close()


def test_records_every_request_over_one_keepalive_connection(ngxsim_backend):
    backend = ngxsim_backend(name="a")
    conn = http.client.HTTPConnection("127.0.0.1", backend.port, timeout=5)
    conn.request("POST", "/items?x=1&y=two", body=b'{"k":1}', headers={"X-Trace": "t1", "Content-Type": "application/json"})
    r = conn.getresponse()
    assert (r.status, r.read(), r.getheader("X-Backend")) == (200, b"a /items\n", "a")
    conn.request("GET", "/other")
    assert conn.getresponse().read() == b"a /other\n"
    conn.close()

    first, second = backend.requests
    assert (first.method, first.path, first.query, first.args) == ("POST", "/items", "x=1&y=two", {"x": "1", "y": "two"})
    assert first.headers["x-trace"] == "t1" and first.body == b'{"k":1}' and first.version == "HTTP/1.1"
    assert first.worker_pid == os.getpid() and second.worker_pid == os.getpid()
    assert first.connection == second.connection and backend.connections == 1
    assert backend.hits == 2 and [r.path for r in backend.requests_for(method="GET")] == ["/other"]


def test_finds_the_pid_of_another_process_that_sent_the_request(ngxsim_backend):
    backend = ngxsim_backend()
    code = ("import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())")
    child = subprocess.Popen([sys.executable, "-c", code, backend.url("/from-child")], stdout=subprocess.PIPE, text=True)
    out, _ = child.communicate(timeout=30)
    assert child.returncode == 0 and out.strip() == f"{backend.name} /from-child"
    (req,) = backend.requests
    assert req.worker_pid == child.pid and backend.worker_pids() == {child.pid}


def test_reads_a_chunked_body(ngxsim_backend):
    backend = ngxsim_backend()
    status, _, _ = get(backend, "/up", "POST", body=iter([b"abc", b"defg"]), encode_chunked=True,
                         headers={"Transfer-Encoding": "chunked"})
    assert status == 200 and backend.requests[0].body == b"abcdefg"


def test_content_and_status_change_at_runtime_per_path_and_by_default(ngxsim_backend):
    backend = ngxsim_backend(name="b")
    backend.respond(body="v2")
    backend.respond("/json", body={"n": 1}, headers={"Cache-Control": "max-age=5"})
    backend.respond("/bad", status=502, body="bad gateway")
    assert get(backend, "/x")[:2] == (200, b"v2")
    status, body, r = get(backend, "/json")
    assert (status, json.loads(body), r.getheader("Content-Type"), r.getheader("Cache-Control")) == \
        (200, {"n": 1}, "application/json", "max-age=5")
    assert get(backend, "/bad")[:2] == (502, b"bad gateway")
    backend.forget("/bad")
    assert get(backend, "/bad")[:2] == (200, b"v2")
    backend.respond()
    assert get(backend, "/bad")[:2] == (200, b"b /bad\n")
    with pytest.raises(ValueError, match="action must be one of"):
        backend.respond(action="explode")


def test_delay_outlasts_a_short_client_timeout_and_stop_cuts_it_short(ngxsim_backend):
    backend = ngxsim_backend()
    backend.respond("/slow", delay=60)
    with pytest.raises(TimeoutError):
        get(backend, "/slow", timeout=0.3)
    assert backend.wait_hits(1, path="/slow")
    # a request still waiting out its delay gets no answer when the backend stops, and stop()
    # does not wait out the 60 s (the fixture's own stop would fail on a leftover thread)
    errors = []

    def client():
        try:
            get(backend, "/slow", timeout=30)
        except (http.client.RemoteDisconnected, ConnectionResetError) as exc:
            errors.append(exc)

    t = threading.Thread(target=client)
    t.start()
    backend.wait_hits(2, path="/slow")
    backend.stop()
    t.join(30)
    assert not t.is_alive() and len(errors) == 1


def test_close_and_reset_answer_nothing(ngxsim_backend):
    backend = ngxsim_backend()
    backend.respond("/close", action="close")
    backend.respond("/reset", action="reset")
    with pytest.raises(http.client.RemoteDisconnected):
        get(backend, "/close")
    with pytest.raises(ConnectionResetError):
        get(backend, "/reset")
    assert [r.path for r in backend.requests] == ["/close", "/reset"]
    assert get(backend, "/fine")[0] == 200


def test_drop_connections_closes_idle_keepalive_connections(ngxsim_backend):
    backend = ngxsim_backend()
    sock = socket.create_connection(("127.0.0.1", backend.port), timeout=5)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    answer = b""
    while b"\n\n" not in answer.replace(b"\r", b"") or not answer.endswith(b"/\n"):
        answer += sock.recv(4096)
    assert backend.drop_connections() == 1
    assert sock.recv(4096) == b""  # the backend closed its end
    sock.close()


def test_stop_and_start_again_on_the_same_port(ngxsim_backend):
    backend = ngxsim_backend()
    port = backend.port
    assert get(backend, "/")[0] == 200
    backend.stop()
    assert not backend.running
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    backend.start()
    assert backend.port == port and get(backend, "/")[0] == 200 and backend.hits == 2


def test_health_endpoint_flips_and_a_reply_overrides_it(ngxsim_backend):
    backend = ngxsim_backend()
    assert get(backend, "/health")[:2] == (200, b'{"status": "up"}')
    backend.set_healthy(False)
    assert get(backend, "/health")[:2] == (503, b'{"status": "down"}') and not backend.healthy
    backend.set_healthy(True)
    assert get(backend, "/health")[0] == 200
    backend.respond("/health", action="close")
    with pytest.raises(http.client.RemoteDisconnected):
        get(backend, "/health")
    assert len(backend.requests_for("/health")) == 4


def test_reset_forgets_records_but_keeps_replies(ngxsim_backend):
    backend = ngxsim_backend()
    backend.respond(body="kept")
    get(backend, "/a")
    backend.reset()
    assert backend.hits == 0 and backend.requests == []
    assert get(backend, "/b")[1] == b"kept" and [r.path for r in backend.requests] == ["/b"]


def test_wait_hits_says_what_it_got_instead(ngxsim_backend):
    backend = ngxsim_backend(name="w")
    get(backend, "/seen")
    with pytest.raises(AssertionError, match=r"w: 0 of 1 requests for /missing within 0.2s; last received: \['GET /seen'\]"):
        backend.wait_hits(1, path="/missing", timeout=0.2)


def test_stop_leaves_no_thread_or_socket_behind():
    before = set(threading.enumerate())
    with Backend() as backend:
        conns = [http.client.HTTPConnection("127.0.0.1", backend.port, timeout=5) for _ in range(3)]
        for c in conns:
            c.request("GET", "/")
            c.getresponse().read()  # each connection now idles in keep-alive
        port = backend.port
    assert set(threading.enumerate()) <= before
    for c in conns:
        c.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
