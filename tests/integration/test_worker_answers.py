"""ngxsim's worker classes write an answer's headers as nginx does (ngxsim.writer): the
hop-by-hop-looking headers of an upstream's answer go on (gunicorn drops them), a relayed 204
keeps its ``Content-Length``, an upstream's answer without a status line goes on as HTTP/0.9;
the connection's framing and websocket's ``Connection: upgrade`` stay gunicorn's. gunicorn's own
worker class keeps gunicorn's behaviour (docs/configuration.md). Read from outside, over a raw
socket, behind a real recording origin; test_proxy_differential.py compares
``ngxsim.worker.Worker`` with nginx itself."""

from __future__ import annotations

import pytest

from ngxsim.testing import RecordingOrigin, raw_request, start_server

CONF = r"""
load_module worker_events;
load_module upstreams;
http {
    worker_events_zone bus;
    log_format statuses '$request_uri $status $upstream_status';
    access_log {tmp}/access-{port}.log statuses;
    server {
        listen 127.0.0.1:{port};
        location /up/ { proxy_pass http://127.0.0.1:{origin}; }
        location = /own204 { return 204; }
        location = /ws {
            add_header Upgrade websocket always;
            add_header Connection Upgrade always;
            return 101;
        }
    }
}
"""
HOP_BY_HOP = [("Upgrade", "h2c"), ("Proxy-Authenticate", "Basic realm=x"), ("Trailer", "X-T"), ("TE", "trailers"),
              ("Keep-Alive", "timeout=5"), ("Connection", "X-Named"), ("X-Named", "1")]
NGXSIM_CLASSES = ["ngxsim.worker.Worker", "ngxsim.worker.SyncWorker", "ngxsim.worker.GThreadWorker"]
GUNICORN_SYNC = "gunicorn.workers.sync.SyncWorker"


def get(port: int, path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n".encode()


@pytest.fixture(scope="module")
def origin():
    origin = RecordingOrigin().start()
    try:
        yield origin
    finally:
        origin.stop()


@pytest.fixture(scope="module", params=[*NGXSIM_CLASSES, GUNICORN_SYNC])
def served(request, origin, tmp_path_factory):
    folder = tmp_path_factory.mktemp("answers")
    server = start_server(folder, CONF, workers=1, worker_class=request.param, placeholders={"origin": origin.port})
    server.folder = folder
    try:
        yield request.param, server
    finally:
        server.stop()


def names(answer) -> list[str]:
    return [name.lower() for name, _ in answer.headers]


def test_hop_by_hop_headers_of_an_upstream_go_on(served, origin):
    worker_class, server = served
    origin.answer("/up/hop", headers=HOP_BY_HOP, body="ok")
    answer = raw_request(server.port, get(server.port, "/up/hop"))
    assert (answer.status, answer.body) == (200, b"ok")
    # the connection's own framing is the server's: one Connection, no origin's Keep-Alive
    assert names(answer).count("connection") == 1 and answer.header("Connection") == "close"
    assert "keep-alive" not in names(answer)
    assert answer.header("X-Named") == "1" and answer.header("Trailer") == "X-T"
    passed = [(name, answer.header(name)) for name in ("Upgrade", "Proxy-Authenticate", "TE")]
    if worker_class == GUNICORN_SYNC:  # gunicorn drops every header of its hop-by-hop list
        assert passed == [("Upgrade", None), ("Proxy-Authenticate", None), ("TE", None)]
    else:
        assert passed == [("Upgrade", "h2c"), ("Proxy-Authenticate", "Basic realm=x"), ("TE", "trailers")]


def test_an_upstream_204_keeps_its_length_nginx_own_has_none(served, origin):
    worker_class, server = served
    origin.answer("/up/nc", status=204, headers=[("Content-Length", "0")])
    relayed = raw_request(server.port, get(server.port, "/up/nc"))
    assert relayed.status == 204
    # gunicorn drops every 204's Content-Length (RFC 9110); nginx passes an upstream's
    assert relayed.header("Content-Length") == (None if worker_class == GUNICORN_SYNC else "0")
    assert names(relayed).count("content-length") <= 1
    own = raw_request(server.port, get(server.port, "/own204"))
    assert own.status == 204 and "content-length" not in names(own) and "content-type" not in names(own)


def test_an_answer_without_a_status_line_goes_on_as_http09(served, origin):
    worker_class, server = served
    origin.answer("/up/http09", raw=b"just bytes\nand more\n")
    answer = raw_request(server.port, get(server.port, "/up/http09"), wait_close=True)  # logged by then
    if worker_class == GUNICORN_SYNC:  # no way to write one there: a 200 with the bytes
        assert (answer.status, answer.body) == (200, b"just bytes\nand more\n")
    else:  # nginx relays the bytes alone (RawAnswer's status 0: no status line), then closes
        assert (answer.status, answer.headers, answer.body) == (0, [], b"just bytes\nand more\n")
    assert "upstream sent no valid HTTP/1.0 header while reading response header from upstream" in server.output()
    # nginx logs an HTTP/0.9 answer's $status as 009 (the upstream's status is 200)
    logged = (server.folder / f"access-{server.port}.log").read_text().splitlines()
    assert f"/up/http09 {'200' if worker_class == GUNICORN_SYNC else '009'} 200" in logged


def test_websocket_upgrade_stays_gunicorn_s(served):
    _, server = served
    answer = raw_request(server.port, get(server.port, "/ws"))
    assert answer.status == 101
    assert [(k.lower(), v.lower()) for k, v in answer.headers if k.lower() in ("connection", "upgrade")] == \
        [("connection", "upgrade"), ("upgrade", "websocket")]
