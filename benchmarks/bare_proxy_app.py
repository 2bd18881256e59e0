"""The baseline of bench_proxy.py: a minimal reverse proxy in Flask + urllib3, as one would write
it by hand. gunicorn (without --preload) imports this module in each worker after the fork, so
each worker has its own PoolManager (pools are not fork-safe) keeping connections to the backend
alive. Method, path, query, headers and body go to $BARE_BACKEND ("HOST:PORT"); the answer is
streamed back. Hop-by-hop headers are dropped both ways: without that the framing breaks, so
even a minimal proxy must do it."""

from __future__ import annotations

import os

import urllib3
from flask import Flask, Response, request

BACKEND = os.environ["BARE_BACKEND"]
HOP_BY_HOP = frozenset(("connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization",
                        "te", "trailer", "trailers", "transfer-encoding", "upgrade", "host"))
METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]

pool = urllib3.PoolManager(maxsize=4)
app = Flask(__name__)


@app.route("/", defaults={"path": ""}, methods=METHODS)
@app.route("/<path:path>", methods=METHODS)
def proxy(path):
    env = request.environ
    target = env.get("RAW_URI") or request.full_path
    headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
    resp = pool.urlopen(request.method, f"http://{BACKEND}{target}", body=request.get_data() or None, headers=headers,
                        retries=False, redirect=False, preload_content=False, decode_content=False)
    out = Response(resp.stream(65536, decode_content=False), resp.status,
                   [(k, v) for k, v in resp.headers.items() if k.lower() not in HOP_BY_HOP])
    out.call_on_close(resp.release_conn)
    return out
