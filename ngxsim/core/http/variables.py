"""nginx variables in directive values (``return`` text, ``add_header`` values).

A value is compiled once at config load into literal parts and variable getters, with nginx's
syntax (``$name``, ``${name}``, ``$1``..``$9``; names are case-insensitive) and its errors
(``invalid variable name``, ``the closing bracket in "x" variable is missing``). As in nginx, a
name no one declares fails the load once the whole config is read (``unknown "x" variable``,
without a line): until then it may still turn out to be a named capture of a regex further on.
Modules add variables through the ``ngxsim_variables`` hook; the loader makes them visible
(``module_variables``) while that config's values are compiled.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import re
import socket
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterator

if TYPE_CHECKING:  # pragma: no cover
    from .context import RequestContext

_NAME_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_")
_HOSTNAME = socket.gethostname()


def _header(name: str) -> Callable[["RequestContext"], str]:
    return lambda ctx: ctx.header(name)


def _cookie(name: str) -> Callable[["RequestContext"], str]:
    return lambda ctx: ctx.cookie(name)


def _binary_remote_addr(ctx: "RequestContext") -> str:
    """nginx's ``$binary_remote_addr``: the client address in network order (4 bytes for IPv4,
    16 for IPv6), as a string of those bytes (latin-1: one character per byte)."""
    addr = ctx.environ.get("REMOTE_ADDR", "")
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            return socket.inet_pton(family, addr).decode("latin-1")
        except OSError:
            continue
    return addr  # a Unix socket peer: nginx uses the text


def _content_length(ctx: "RequestContext") -> str:
    return ctx.environ.get("CONTENT_LENGTH", "")


VARIABLES: dict[str, Callable[["RequestContext"], str]] = {
    "pid": lambda ctx: str(os.getpid()),
    "msec": lambda ctx: f"{time.time():.3f}",
    "time_local": lambda ctx: time.strftime("%d/%b/%Y:%H:%M:%S %z"),
    "time_iso8601": lambda ctx: time.strftime("%Y-%m-%dT%H:%M:%S") + _iso_offset(),
    "request_id": lambda ctx: ctx.request_id,
    "uri": lambda ctx: ctx.uri,
    "document_uri": lambda ctx: ctx.uri,
    "request_uri": lambda ctx: _logged(ctx, ctx.request_uri),
    "request": lambda ctx: _logged(ctx, ctx.request_line),
    "args": lambda ctx: _logged(ctx, ctx.args_text),
    "query_string": lambda ctx: _logged(ctx, ctx.args_text),
    "is_args": lambda ctx: "?" if ctx.args_bytes else "",
    "host": lambda ctx: ctx.host,
    "hostname": lambda ctx: _HOSTNAME,
    # the log phase (access_log, log_format)
    "status": lambda ctx: ctx.vars.get("status", ""),
    "body_bytes_sent": lambda ctx: ctx.vars.get("body_bytes_sent", "0"),
    "remote_user": lambda ctx: ctx.environ.get("REMOTE_USER") or "",
    "request_time": lambda ctx: f"{time.monotonic() - ctx.started:.3f}",
    "remote_addr": lambda ctx: ctx.environ.get("REMOTE_ADDR", ""),
    "binary_remote_addr": _binary_remote_addr,
    "remote_port": lambda ctx: str(ctx.environ.get("REMOTE_PORT", "")),
    "request_method": lambda ctx: ctx.environ.get("REQUEST_METHOD", ""),
    "scheme": lambda ctx: ctx.environ.get("wsgi.url_scheme", "http"),
    "https": lambda ctx: "on" if ctx.environ.get("wsgi.url_scheme") == "https" else "",
    "server_protocol": lambda ctx: ctx.environ.get("SERVER_PROTOCOL", "HTTP/1.0"),
    "server_name": lambda ctx: ctx.server_name,
    "server_addr": lambda ctx: ctx.local_addr[0],
    "server_port": lambda ctx: str(ctx.local_addr[1]),
    "content_length": _content_length,
    "content_type": lambda ctx: ctx.environ.get("CONTENT_TYPE", ""),
}
PREFIXED: dict[str, Callable[[str], Callable[["RequestContext"], str]]] = {
    "arg_": lambda name: lambda ctx: ctx.raw_arg(name),
    "http_": _header,
    "cookie_": _cookie,
}


def _iso_offset() -> str:
    offset = time.strftime("%z")
    return offset[:3] + ":" + offset[3:]


def _capture(n: int) -> Callable[["RequestContext"], str]:
    return lambda ctx: ctx.captures.number(n) if ctx.captures is not None else ""


def _named_capture(name: str) -> Callable[["RequestContext"], str]:
    return lambda ctx: ctx.named_captures.get(name, "")


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

    @classmethod
    def recorded(cls, name: str) -> "Variable":
        """``$name`` whose value is what a handler recorded in ``ctx.vars[name]`` for the
        request (empty until then): the usual shape of a module's status variable."""
        return cls(name, lambda ctx: ctx.vars.get(name, ""))


class _Late:
    """The getter of a name no one had declared when a value named it: bound once the whole
    config was read (a module's ``config.variables.add``, or a regex's named capture)."""

    __slots__ = ("name", "get")

    def __init__(self, name: str):
        self.name = name
        self.get: Callable = _named_capture(name)

    def __call__(self, ctx: "RequestContext") -> str:
        return self.get(ctx)


class VariableTable:
    """The variables of one configuration: the core's, those modules declared with the
    ``ngxsim_variables`` hook, and those they add once they have read their directives
    (``config.variables.add``: nginx's ``ngx_http_add_variable``, e.g. ``map``'s result)."""

    def __init__(self) -> None:
        self.names: dict[str, Callable] = {}
        self.prefixes: dict[str, Callable] = {}
        self.owners: dict[str, str] = {}
        self.captures: set[str] = set()  # the named captures of the config's regexes
        self.pending: dict[str, _Late] = {}  # names no one declared yet, and their getters
        self.changeable: set[str] = set()  # names added with changeable=True

    def unknown(self) -> set[str]:
        """Bind each name values used before it was declared (a module's ``add``, a prefix
        family, a regex's named capture); the names nothing declared by the end of the config
        (nginx fails the load with ``unknown "x" variable``)."""
        missing: set[str] = set()
        for name in sorted(self.pending):
            late = self.pending[name]
            prefix = next((p for p in self.prefixes if name.startswith(p) and len(name) > len(p)), None)
            if name in self.names:
                late.get = self.names[name]
            elif prefix is not None:
                late.get = self.prefixes[prefix](name[len(prefix):])
            elif name not in self.captures:
                missing.add(name)
        return missing

    def exists(self, name: str) -> bool:
        """Whether ``$name`` is a variable now (the core's, a module's, a prefix family's, or a
        named capture of a regex read so far)."""
        name = name.lower()
        if name in VARIABLES or name in self.names or self.is_capture(name):
            return True
        return any(name.startswith(p) and len(name) > len(p) for p in (*PREFIXED, *self.prefixes))

    def is_capture(self, name: str) -> bool:
        """Whether ``$name`` is a regex capture: ``1`` to ``9``, or a named capture of a regex
        the config has so far (nginx's ``(?<name>...)``)."""
        return name in tuple("123456789") or name.lower() in self.captures

    def add(self, variable: Variable, module: str, where=None, changeable: bool = False) -> None:
        """Declare ``variable`` for this configuration from a module's postconfiguration, once
        it has read the directives that name it (nginx's ``ngx_http_add_variable``). Values that
        named it earlier in the file find it too. A name already taken raises ``ConfigError``
        with nginx's ``the duplicate "NAME" variable``, at ``where`` (a statement) if given —
        unless both adds are ``changeable`` and by the same module (nginx's
        ``NGX_HTTP_VAR_CHANGEABLE``: of two maps of one variable, the later wins)."""
        from ..conf.errors import ConfigError

        if not isinstance(variable, Variable):
            raise TypeError(f"module {module!r} added {variable!r}, not an ngxsim.Variable")
        name = variable.name.lower()
        key = name + ("*" if variable.prefix else "")
        if changeable and self.owners.get(key) == module and key in self.changeable:
            self.names[name] = variable.get  # nginx's NGX_HTTP_VAR_CHANGEABLE: the later one wins
            return
        if key in self.owners or name in VARIABLES or name in PREFIXED or self.is_capture(name):
            message = f'the duplicate "{variable.name}" variable'
            raise where.error(message) if where is not None else ConfigError(message)
        (self.prefixes if variable.prefix else self.names)[name] = variable.get
        self.owners[key] = module
        if changeable:
            self.changeable.add(key)

    def registrar(self, module: str) -> Callable[[Variable], None]:
        def register(var: Variable) -> None:
            if not isinstance(var, Variable):
                raise TypeError(f"module {module!r} registered {var!r}, not an ngxsim.Variable")
            key = var.name + ("*" if var.prefix else "")
            taken = self.owners.get(key) or ("core" if var.name in VARIABLES or var.name in PREFIXED else None)
            if taken:
                raise ValueError(f'duplicate variable "{var.name}" declared by modules "{taken}" and "{module}"')
            (self.prefixes if var.prefix else self.names)[var.name.lower()] = var.get
            self.owners[key] = module

        return register


_MODULE_VARIABLES: contextvars.ContextVar[VariableTable | None] = contextvars.ContextVar("ngxsim_variables", default=None)


def declare_captures(names) -> None:
    """A regex of the config being loaded has these named captures (they become variables)."""
    table = _MODULE_VARIABLES.get()
    if table is not None:
        table.captures.update(name.lower() for name in names)


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
        self.parts: list[str | Callable] = _compile(source)
        self.static = all(isinstance(p, str) for p in self.parts)

    def render(self, ctx: "RequestContext") -> str:
        """The string's value for the request ``ctx``."""
        if self.static:
            return self.source
        return "".join(p if isinstance(p, str) else p(ctx) for p in self.parts)

    def render_log(self, ctx: "RequestContext") -> str:
        """The value as an access log line writes it: an empty variable is ``-``, and ``"``,
        ``\\`` and control characters in a value are escaped as ``\\xHH`` (nginx's escaping)."""
        return "".join(p if isinstance(p, str) else (_log_escape(p(ctx)) or "-") for p in self.parts)

    def __repr__(self) -> str:
        return f"Template({self.source!r})"


def _compile(source: str) -> list[str | Callable]:
    """Literal parts and getters, read as ``ngx_http_script_compile`` reads a value."""
    parts: list[str | Callable] = []
    i, n = 0, len(source)
    while i < n:
        if source[i] != "$":
            j = source.find("$", i)
            j = n if j < 0 else j
            parts.append(source[i:j])
            i = j
            continue
        i += 1
        if i == n:
            raise ValueError("invalid variable name")
        if "1" <= source[i] <= "9":  # one digit: "$12" is $1 and a "2"
            parts.append(_capture(int(source[i])))
            i += 1
            continue
        bracket = source[i] == "{"
        if bracket:
            i += 1
            if i == n:
                raise ValueError("invalid variable name")
        start = i
        while i < n and source[i] in _NAME_CHARS:
            i += 1
        name = source[start:i]
        if bracket:
            if i < n and source[i] == "}":
                i += 1
            else:
                raise ValueError(f'the closing bracket in "{name}" variable is missing')
        if not name:
            raise ValueError("invalid variable name")
        parts.append(_getter(name.lower()))
    return parts


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
    if table is None:
        raise ValueError(f'unknown "{name}" variable')
    # maybe a module adds it once it has read its directives, or a regex further on captures it:
    # the loader binds or refuses it at the end
    late = table.pending.get(name)
    if late is None:
        late = table.pending[name] = _Late(name)
    return late
