"""A baseline of bench_cache.py: a bare Flask app answering every GET with the bytes of
$BARE_BYTES and the Content-Type of $BARE_TYPE, as a Flask view serving a file from memory
would. It is also the origin the ngxsim under test proxies to."""

from __future__ import annotations

import os

from flask import Flask, Response

app = Flask(__name__)
with open(os.environ["BARE_BYTES"], "rb") as fh:
    BODY = fh.read()
TYPE = os.environ.get("BARE_TYPE", "text/css")


@app.route("/", defaults={"path": ""})
@app.route("/<path:path>")
def asset(path):
    return Response(BODY, 200, content_type=TYPE)
