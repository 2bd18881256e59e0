"""ngxsim's worker classes hand the core the request as sent and write nginx's pages for what
gunicorn's parser refuses; gunicorn's own classes keep gunicorn's behaviour (documented in
docs/configuration.md). The differential test (test_nginx_differential.py) compares
ngxsim.worker.Worker with real nginx; this covers the other classes."""

from __future__ import annotations

import json

import pytest

from ngxsim.testing import raw_request, start_server

CONF = r"""
load_module ngxsim_test_headers;
http {
    server {
        listen 127.0.0.1:{port};
        location /echo { echo_headers; }
        location / { return 200 "cookie=[$http_cookie] multi=[$http_x_multi] b=[$cookie_b] ru=[$request_uri]\n"; }
    }
}
"""
HEADERS = b"GET /x HTTP/1.1\r\nHost: a\r\nCookie: a=1\r\nX-Multi: 1\r\nCookie: b=2\r\nX-Multi: 2\r\nConnection: close\r\n\r\n"
BAD_LINE = b"get /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
UTF8 = "GET /café?q=é HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n".encode()
NGINX_400 = b"<html>\r\n<head><title>400 Bad Request</title></head>"

NAMES = b"GET /echo HTTP/1.1\r\nHost: a\r\nx-lower: 1\r\nX-Mixed: 2\r\nX_Under: 3\r\nx-lower:  4 \r\n\r\n"
AS_WRITTEN = [["Host", "a"], ["x-lower", "1"], ["X-Mixed", "2"], ["x-lower", "4"]]
UPPER = [[k.upper(), v] for k, v in AS_WRITTEN]

# class -> (what the header variables read, whether a bad request line gets nginx's page,
#           whether a raw UTF-8 target is served, the header lines the core gets)
CLASSES = {
    "ngxsim.worker.Worker": (b"cookie=[a=1; b=2] multi=[1] b=[2]", True, True, AS_WRITTEN),
    "ngxsim.worker.SyncWorker": (b"cookie=[a=1; b=2] multi=[1] b=[2]", True, False, UPPER),
    "ngxsim.worker.GThreadWorker": (b"cookie=[a=1; b=2] multi=[1] b=[2]", True, False, UPPER),
    # gunicorn's own: WSGI's joined headers only
    "gunicorn.workers.sync.SyncWorker": (b"cookie=[a=1,b=2] multi=[1,2] b=[2]", False, False, None),
}


@pytest.mark.parametrize("worker_class", sorted(CLASSES))
def test_raw_request_by_worker_class(tmp_path, worker_class):
    headers, nginx_page, utf8, lines = CLASSES[worker_class]
    server = start_server(tmp_path, CONF, workers=1, worker_class=worker_class)
    try:
        assert raw_request(server.port, HEADERS).body.startswith(headers)
        # names with "_" are dropped, as gunicorn and nginx (ignore_invalid_headers) do
        assert json.loads(raw_request(server.port, NAMES).body)["headers"] == lines
        bad = raw_request(server.port, BAD_LINE)
        assert bad.status == 400 and bad.body.startswith(NGINX_400) == nginx_page
        raw = raw_request(server.port, UTF8)
        if utf8:
            assert (raw.status, raw.body.split(b" ru=")[1]) == (200, "[/café?q=é]\n".encode())
        else:
            assert raw.status == 400  # gunicorn refuses bytes above 0x7f in the request line
    finally:
        server.stop()
