"""Test module: an in-process origin for cache tests that need no network (``test_origin;``).

The answer to a path is ``ORIGIN[path]`` (else ``ORIGIN[None]``): ``(status, headers, body)``;
each request is counted in ``HITS[path]``. ``?stream=1`` streams the body in two chunks (as a
proxied response does), and ``?short=1`` streams less than its Content-Length announces. Only
for one-process tests (``build_application(role="standalone")``): the state is this process's.
"""

from __future__ import annotations

from collections import Counter

from werkzeug.wrappers import Response

from ngxsim import FLAG, LOCATION, Directive, hookimpl

ORIGIN: dict = {None: (200, {}, b"origin")}
HITS: Counter = Counter()


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
    status, headers, body = ORIGIN.get(ctx.uri, ORIGIN[None])
    if callable(body):
        body = body()
    if ctx.arg("stream") or ctx.arg("short"):
        half = len(body) // 2
        chunks = [body[:half]] if ctx.arg("short") else [body[:half], body[half:]]
        headers = {**headers, "Content-Length": str(len(body))}
        return Response(iter(chunks), status=status, headers=headers, direct_passthrough=True)
    return Response(body, status=status, headers=headers)
