"""An answer the proxy's first read holds whole goes on as bytes (connections.whole); one that
comes in two parts is streamed (connections.Answer, proxy._Body). Seen from outside, the two
paths are one: for each kind of answer, sent by the origin in one write (``/one/``) and in two
(``/two/``: the last bytes SPLIT_PAUSE later), the client gets the same bytes (but the Date
line), the origin receives the same request, and the kept connections are used the same way.
Real gunicorn, real loopback origin (the test kit's RecordingOrigin)."""

from __future__ import annotations

import socket

import pytest

from ngxsim.testing import RecordingOrigin, start_server

CONF = """
load_module worker_events;
load_module upstreams;
http {
    worker_events_zone wholebus;
    upstream up { zone up 64k; server {origin}; keepalive 4; }
    server {
        listen 127.0.0.1:{port};
        location = /ready { return 200 "ready\\n"; }
        location /api/upstreams { upstreams_api; upstreams_api_key k; }
        location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; }
        location /fixed/ { proxy_pass http://{origin}/; }
    }
}
"""
BODY = b"a body\r\n\r\nof a few lines\n"
LENGTH = b"Content-Length: %d\r\n" % len(BODY)
# name -> RecordingOrigin.answer's arguments; split at -3: the first part lacks the last 3 bytes
CASES = {
    "plain": dict(headers=[("X-Spaced", "  a  b  "), ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")], body=BODY),
    "no-type": dict(raw=b"HTTP/1.1 200 OK\r\n" + LENGTH + b"\r\n" + BODY),
    "status-404-no-reason": dict(raw=b"HTTP/1.1 404\r\n" + LENGTH + b"\r\n" + BODY),
    "own-reason": dict(status=503, reason="Busy  Now", headers=[("Retry-After", "3")], body=BODY),
    "empty": dict(body=b""),
    "closes": dict(body=BODY, close=True),
    "hidden-headers": dict(headers=[("X-Accel-Expires", "5"), ("Keep-Alive", "timeout=5"), ("X-Pad", "x")],
                           body=BODY),
    # streamed either way
    "chunked": dict(raw=b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(BODY), BODY)),
    "to-the-close": dict(raw=b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n" + BODY),
    "http-1.0": dict(raw=b"HTTP/1.0 200 OK\r\n" + LENGTH + b"\r\n" + BODY),
    "no-colon": dict(raw=b"HTTP/1.1 200 OK\r\nX-No-Colon\r\n" + LENGTH + b"\r\n" + BODY),
}


@pytest.fixture(scope="module")
def origin():
    with RecordingOrigin() as recording:
        for name, args in CASES.items():
            recording.answer(f"/one/{name}", **args)
            recording.answer(f"/two/{name}", **args, split=-3)
        yield recording


@pytest.fixture(scope="module")
def server(tmp_path_factory, origin):
    srv = start_server(tmp_path_factory.mktemp("whole"), CONF, workers=1, ready_path="/ready",
                       worker_class="ngxsim.worker.SyncWorker",
                       placeholders={"origin": origin.address})
    yield srv
    srv.stop()


def fetch(port: int, method: str, path: str) -> bytes:
    """The whole answer as sent, its Date line left out."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"{method} {path} HTTP/1.1\r\nHost: whole.test\r\nX-Client: 1\r\nConnection: close\r\n\r\n".encode())
        out = b""
        while chunk := sock.recv(65536):
            out += chunk
    head, _, body = out.partition(b"\r\n\r\n")
    lines = [line for line in head.split(b"\r\n") if not line.startswith(b"Date: ")]
    if b"Transfer-Encoding: chunked" in lines:  # chunked by the server as the body came: its sizes
        body = dechunk(body)
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def dechunk(data: bytes) -> bytes:
    out = b""
    while True:
        size, _, data = data.partition(b"\r\n")
        n = int(size, 16)
        if n == 0:
            return out
        out, data = out + data[:n], data[n + 2:]


def both(server, origin, method: str, name: str, prefix: str = ""):
    before = len(origin.received)
    one = [fetch(server.port, method, f"{prefix}/one/{name}") for _ in range(2)]
    two = [fetch(server.port, method, f"{prefix}/two/{name}") for _ in range(2)]
    got = origin.wait_received(before + 4)[before:]
    sent = [(r.request_line.replace("/one/", "/X/").replace("/two/", "/X/"), r.headers, r.body) for r in got]
    connections = [len({r.connection for r in got[:2]}), len({r.connection for r in got[2:]})]
    return one, two, sent, connections


@pytest.mark.parametrize("name", list(CASES))
def test_the_client_and_the_origin_see_the_same_whether_the_answer_came_whole_or_in_parts(server, origin, name):
    one, two, sent, connections = both(server, origin, "GET", name)
    assert one[0] == one[1] == two[0].replace(b"/two/", b"/one/") == two[1].replace(b"/two/", b"/one/")
    assert sent[0] == sent[1] == sent[2] == sent[3]
    assert connections[0] == connections[1]
    status, _, rest = one[0].partition(b"\r\n")
    head, _, body = rest.partition(b"\r\n\r\n")
    args = CASES[name]
    assert body == args.get("body", BODY)
    if "raw" not in args:  # the origin's own status line and header lines go on, in order
        assert status == f"HTTP/1.1 {args.get('status', 200)} {args.get('reason') or 'OK'}".encode()
        lines = head.split(b"\r\n")
        relayed = [line for line in lines if not line.startswith((b"Server: ", b"Connection: "))]
        kept = [(k, v.strip()) for k, v in args.get("headers", ()) if k.lower() not in ("x-accel-expires", "keep-alive",
                                                                                        "x-pad")]
        assert relayed == [f"{k}: {v}".encode() for k, v in kept] + [b"Content-Type: text/plain",
                                                                     f"Content-Length: {len(args['body'])}".encode()]


def test_answers_keep_their_connection_unless_they_close_it(server, origin):
    assert both(server, origin, "GET", "plain")[3] == [1, 1]  # kept: both requests on one connection
    # nothing to read after the header: kept too, as nginx keeps it (streamed: the split header)
    assert both(server, origin, "GET", "empty")[3] == [1, 1]
    assert both(server, origin, "GET", "closes")[3] == [2, 2]  # "Connection: close": a new one each time


def test_a_head_request_and_an_address_without_keepalive(server, origin):
    for method, prefix in (("HEAD", ""), ("GET", "/fixed")):
        one, two, sent, connections = both(server, origin, method, "plain", prefix)
        assert one[0] == one[1] == two[0].replace(b"/two/", b"/one/") == two[1].replace(b"/two/", b"/one/")
        assert sent[0] == sent[1] == sent[2] == sent[3]
        assert connections == ([1, 1] if prefix == "" else [2, 2])
        assert one[0].endswith(b"\r\n\r\n" if method == "HEAD" else BODY)


def test_the_upstream_counts_whole_and_streamed_answers_alike(server, origin):
    """The peer's counters (upstreams API: requests, responses, bytes sent and received, not
    active once answered) move the same for answers read whole as for streamed ones."""

    def peer() -> dict:
        answer = server.request("GET", "/api/upstreams/up/servers", params={"key": "k"})
        assert answer.status_code == 200
        return answer.json()[0]

    def moved(path: str) -> dict:
        before = peer()
        fetch(server.port, "GET", path)
        after = peer()
        return {"requests": after["requests"] - before["requests"], "active": after["active"],
                "2xx": after["responses"]["2xx"] - before["responses"]["2xx"],
                "sent": after["sent"] - before["sent"], "received": after["received"] - before["received"]}

    one, two = moved("/one/plain"), moved("/two/plain")  # "/one/" and "/two/": requests of one length
    assert one == two
    assert (one["requests"], one["active"], one["2xx"]) == (1, 0, 1)
    assert one["received"] > len(BODY) and one["sent"] > 0
