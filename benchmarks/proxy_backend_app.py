"""bench_proxy.py's fallback backend when nginx is not installed: a tiny WSGI app answering a
fixed body (gunicorn's sync workers close every connection, so the proxies cannot keep any alive:
the numbers are then not comparable with the nginx-backed ones, and the script says so)."""

from __future__ import annotations

import os

# a long body (bench_proxy.py --kib) comes in a file: one environment string holds at most 128 KiB
BODY = (open(os.environ["BACKEND_BODY_FILE"], "rb").read() if "BACKEND_BODY_FILE" in os.environ
        else os.environ["BACKEND_BODY"].encode())


def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(BODY)))])
    return [BODY]
