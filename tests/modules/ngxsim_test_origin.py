"""Test module: an in-process origin for cache tests that need no network (``test_origin;``).

The answer to a path is ``ORIGIN[path]`` (else ``ORIGIN[None]``): ``(status, headers, body)``;
each request is counted in ``HITS[path]`` and its method and conditional headers kept in
``SEEN``. A ``(status, reason)`` status keeps that status line. ``?stream=1`` streams the body in two chunks (as a
proxied response does), ``?short=1`` streams less than its Content-Length announces, and
``?nolength=1`` streams it without a Content-Length. Only
for one-process tests (``build_application(role="standalone")``): the state is this process's.
"""

from __future__ import annotations

from collections import Counter

from werkzeug.wrappers import Response

from ngxsim import FLAG, LOCATION, Directive, hookimpl, keep_status_line

ORIGIN: dict = {None: (200, {}, b"origin")}
HITS: Counter = Counter()
SEEN: list = []  # (method, If-None-Match, If-Modified-Since) of each request


@hookimpl
def ngxsim_directives(register):
    register(Directive("test_origin", (LOCATION,), 0, type=FLAG, default=False, inherit=False))


@hookimpl
def ngxsim_content_handler(location, config):
    if location["test_origin"]:
        return _answer
    return None


def _answer(ctx):
    HITS[ctx.uri] += 1
    env = ctx.environ
    SEEN.append((env["REQUEST_METHOD"], env.get("HTTP_IF_NONE_MATCH"), env.get("HTTP_IF_MODIFIED_SINCE")))
    status, headers, body = ORIGIN.get(ctx.uri, ORIGIN[None])
    if callable(body):
        body = body()
    if isinstance(status, tuple):
        return keep_status_line(Response(body, status=status[0], headers=headers), f"{status[0]} {status[1]}")
    if ctx.arg("nolength"):
        return Response(iter([body]), status=status, headers=headers, direct_passthrough=True)
    if ctx.arg("stream") or ctx.arg("short"):
        half = len(body) // 2
        chunks = [body[:half]] if ctx.arg("short") else [body[:half], body[half:]]
        headers = {**headers, "Content-Length": str(len(body))}
        return Response(iter(chunks), status=status, headers=headers, direct_passthrough=True)
    return Response(body, status=status, headers=headers)
