"""nginx variables in directive values (``return`` text, ``add_header`` values).

A value is compiled once at config load into literal parts and variable getters; an unknown
variable fails the load (``unknown "x" variable``), as in nginx. Modules add variables through
the ``ngxsim_variables`` hook; the loader makes them visible (``module_variables``) while that
config's values are compiled.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterator

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
    "request_uri": lambda ctx: _logged(ctx, ctx.request_uri),
    "args": lambda ctx: _logged(ctx, ctx.environ.get("QUERY_STRING", "")),
    "query_string": lambda ctx: _logged(ctx, ctx.environ.get("QUERY_STRING", "")),
    # the log phase (access_log, log_format)
    "status": lambda ctx: ctx.vars.get("status", ""),
    "body_bytes_sent": lambda ctx: ctx.vars.get("body_bytes_sent", "0"),
    "request": lambda ctx: _logged(ctx, "{} {} {}".format(ctx.environ.get("REQUEST_METHOD", "-"), ctx.request_uri,
                                                          ctx.environ.get("SERVER_PROTOCOL", "HTTP/1.0"))),
    "time_local": lambda ctx: time.strftime("%d/%b/%Y:%H:%M:%S %z"),
    "remote_user": lambda ctx: ctx.environ.get("REMOTE_USER") or "",
    "request_time": lambda ctx: f"{time.monotonic() - ctx.started:.3f}",
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


@dataclass(frozen=True)
class Variable:
    """A variable a module declares: ``$name`` read by ``get(ctx) -> str`` for each request.

    With ``prefix=True``, ``name`` is a prefix (like ``arg_``) and ``get`` is a factory: called
    once per distinct full name at config load with the rest of the name, it returns the getter.
    Per-request values a module computes are usually kept in ``ctx.vars`` and read from there.
    """

    name: str
    get: Callable
    prefix: bool = False

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_]+", self.name):
            raise ValueError(f"variable name {self.name!r} must be letters, digits and _")


class VariableTable:
    """The variables one configuration's modules declared (the core's are always there)."""

    def __init__(self) -> None:
        self.names: dict[str, Callable] = {}
        self.prefixes: dict[str, Callable] = {}
        self.owners: dict[str, str] = {}

    def registrar(self, module: str) -> Callable[[Variable], None]:
        def register(var: Variable) -> None:
            if not isinstance(var, Variable):
                raise TypeError(f"module {module!r} registered {var!r}, not an ngxsim.Variable")
            key = var.name + ("*" if var.prefix else "")
            taken = self.owners.get(key) or ("core" if var.name in VARIABLES or var.name in PREFIXED else None)
            if taken:
                raise ValueError(f'duplicate variable "{var.name}" declared by modules "{taken}" and "{module}"')
            (self.prefixes if var.prefix else self.names)[var.name] = var.get
            self.owners[key] = module

        return register


_MODULE_VARIABLES: contextvars.ContextVar[VariableTable | None] = contextvars.ContextVar("ngxsim_variables", default=None)


@contextlib.contextmanager
def module_variables(table: VariableTable) -> Iterator[None]:
    """Compile values with ``table``'s variables visible (the loader, while one config loads)."""
    token = _MODULE_VARIABLES.set(table)
    try:
        yield
    finally:
        _MODULE_VARIABLES.reset(token)


_LOG_ESCAPE = {c: f"\\x{c:02X}" for c in [*range(0x20), 0x22, 0x5C, 0x7F]}


def _log_escape(value: str) -> str:
    return value.translate(_LOG_ESCAPE)


def _logged(ctx: "RequestContext", text: str) -> str:
    """In an access log line, secret query arguments (an API key) are written as ``***``."""
    if ctx.logging and ctx.secret_args:
        from .logs import mask_target

        return mask_target(text, ctx.secret_args)
    return text


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

    def render_log(self, ctx: "RequestContext") -> str:
        """The value as an access log line writes it: an empty variable is ``-``, and ``"``,
        ``\\`` and control characters in a value are escaped as ``\\xHH`` (nginx's escaping)."""
        return "".join(p if isinstance(p, str) else (_log_escape(p(ctx)) or "-") for p in self.parts)

    def __repr__(self) -> str:
        return f"Template({self.source!r})"


def _getter(name: str) -> Callable[["RequestContext"], str]:
    if name in VARIABLES:
        return VARIABLES[name]
    table = _MODULE_VARIABLES.get()
    if table is not None and name in table.names:
        return table.names[name]
    prefixed = dict(PREFIXED)
    if table is not None:
        prefixed.update(table.prefixes)
    for prefix, make in prefixed.items():
        if name.startswith(prefix) and len(name) > len(prefix):
            return make(name[len(prefix) :])
    raise ValueError(f'unknown "{name}" variable')
