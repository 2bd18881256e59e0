"""nginx variables in directive values (``return`` text, ``add_header`` values).

A value is compiled once at config load into literal parts and variable getters; an unknown
variable fails the load (``unknown "x" variable``), as in nginx.
"""

from __future__ import annotations

import os
import re
import time
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:  # pragma: no cover
    from .context import RequestContext

_VAR = re.compile(r"\$(?:\{([A-Za-z0-9_]+)\}|([A-Za-z0-9_]+))")


def _host(ctx: "RequestContext") -> str:
    return ctx.host


VARIABLES: dict[str, Callable[["RequestContext"], str]] = {
    "pid": lambda ctx: str(os.getpid()),
    "msec": lambda ctx: f"{time.time():.3f}",
    "request_id": lambda ctx: ctx.request_id,
    "uri": lambda ctx: ctx.uri,
    "request_uri": lambda ctx: ctx.request_uri,
    "args": lambda ctx: ctx.environ.get("QUERY_STRING", ""),
    "query_string": lambda ctx: ctx.environ.get("QUERY_STRING", ""),
    "host": _host,
    "remote_addr": lambda ctx: ctx.environ.get("REMOTE_ADDR", ""),
    "request_method": lambda ctx: ctx.environ.get("REQUEST_METHOD", ""),
    "scheme": lambda ctx: ctx.environ.get("wsgi.url_scheme", "http"),
    "server_name": lambda ctx: ctx.server_name,
    "server_port": lambda ctx: str(ctx.local_addr[1]),
}
PREFIXED: dict[str, Callable[[str], Callable[["RequestContext"], str]]] = {
    "arg_": lambda name: lambda ctx: ctx.arg(name),
    "http_": lambda name: lambda ctx: ctx.environ.get("HTTP_" + name.upper(), ""),
}


class Template:
    """A string with variables; ``render(ctx)`` gives its value for one request."""

    __slots__ = ("source", "parts", "static")

    def __init__(self, source: str):
        self.source = source
        self.parts: list[str | Callable] = []
        pos = 0
        for m in _VAR.finditer(source):
            if m.start() > pos:
                self.parts.append(source[pos : m.start()])
            self.parts.append(_getter(m.group(1) or m.group(2)))
            pos = m.end()
        if pos < len(source):
            self.parts.append(source[pos:])
        self.static = all(isinstance(p, str) for p in self.parts)

    def render(self, ctx: "RequestContext") -> str:
        if self.static:
            return self.source
        return "".join(p if isinstance(p, str) else p(ctx) for p in self.parts)

    def __repr__(self) -> str:
        return f"Template({self.source!r})"


def _getter(name: str) -> Callable[["RequestContext"], str]:
    if name in VARIABLES:
        return VARIABLES[name]
    for prefix, make in PREFIXED.items():
        if name.startswith(prefix) and len(name) > len(prefix):
            return make(name[len(prefix) :])
    raise ValueError(f'unknown "{name}" variable')
