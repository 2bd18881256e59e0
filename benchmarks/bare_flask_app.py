"""The baseline of bench_http.py: a bare Flask app that answers with the same JSON as the
worker_events API (read from $BARE_BODY at start), serialising it on every request as a Flask
view would, and answers POST with a 201 event without storing anything."""

from __future__ import annotations

import json
import os
import time

from flask import Flask, Response, request

app = Flask(__name__)
with open(os.environ["BARE_BODY"], encoding="utf-8") as fh:
    BODY = json.load(fh)
GENERATION = [0]


@app.route("/internal/worker-events", methods=["GET", "HEAD", "POST"])
def events():
    if request.method == "POST":
        body = json.loads(request.get_data())
        GENERATION[0] += 1
        event = {"generation": GENERATION[0], "channel": "bench", "type": body["type"],
                 "payload": body.get("payload", ""), "timestamp_msec": int(time.time() * 1000)}
        return Response(json.dumps(event, separators=(",", ":")), 201, content_type="application/json")
    return Response(json.dumps(BODY, separators=(",", ":"), ensure_ascii=False), 200, content_type="application/json")
