"""What the core knows about one request, handed to content handlers and header filters."""

from __future__ import annotations

import secrets
import time
from functools import cached_property
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from .regex import Captures, to_text
from .uri import BadRequest, parse_path, split_target, validate_host

if TYPE_CHECKING:  # pragma: no cover
    from ..conf.loader import Block
    from ..process import Runtime


# the WSGI environ key under which ngxsim's worker classes hand over the request's header
# lines as sent (ngxsim.worker)
RAW_HEADERS = "ngxsim.headers"
# the WSGI environ key of the callable (set by ngxsim's worker classes, ngxsim.writer) that has
# the server write the request's answer as HTTP/0.9 (responses.as_http09)
HTTP09 = "ngxsim.http09"
# the headers whose repeated lines nginx 1.22 joins for $http_NAME (ngx_http_variables.c:
# ngx_http_variable_cookies, ngx_http_variable_headers); every other one gives its first value
_JOINED = {"cookie": "; ", "x_forwarded_for": ", "}


def raw_target(environ: dict) -> bytes:
    """The request target as the client sent it (gunicorn's ``RAW_URI``; test clients leave
    the query out of theirs)."""
    raw = environ.get("RAW_URI") or environ.get("REQUEST_URI")
    if raw is None:
        raw = environ.get("PATH_INFO", "") or "/"
    qs = environ.get("QUERY_STRING", "")
    if qs and "?" not in raw:
        raw += "?" + qs
    return raw.encode("latin-1", "replace")  # WSGI strings carry the bytes as latin-1


class RequestContext:
    """One request: its WSGI environ, the Flask request, the chosen server and location.

    The ``ctx`` argument of content handlers, pre-content handlers and filters, and of variable
    getters. It lives for one request, on the thread serving it.

    Attributes:
        environ (dict): the request's WSGI environ (``ctx.environ["REQUEST_METHOD"]``).
        request: Flask's request object (``ctx.request.headers``, ``ctx.request.get_data()``).
        runtime (Runtime): this worker's runtime (``ctx.runtime.publish(...)``).
        server (Block | None): the ``server`` block chosen for the request.
        location (Block | None): the ``location`` block chosen for the request.
        uri (str): nginx's ``$uri``: the decoded, normalised path (UTF-8; other bytes kept as
            surrogates).
        unparsed_uri (bytes): ``$request_uri``: the path and query as sent.
        captures: what the chosen location's or server name's regex captured (``$1`` to ``$9``).
        named_captures (dict[str, str]): the regexes' named captures, by name.
        vars (dict[str, str]): per-request values modules record for their variables and later
            phases (``upstream_addr``, ``upstream_status``...), as strings.
        stash (dict): per-request data a module keeps for its own later phases (a pre-content
            handler's lookup for its body filter), by module name: a fresh dict per request;
            never read another module's entry.
        upstream_headers (list[tuple[str, str]] | None): the response header lines exactly as
            the upstream (the origin) sent them, in order, repeated names kept — before the
            proxy hid any (``X-Accel-Expires``, ``Date``...) from the client. Set by the content
            handler that proxied; None when no upstream answered. What a cache decides from
            (nginx reads ``u->headers_in``, not what the client gets).
        started (float): ``time.monotonic()`` when the request began.
        response: the response once it was made (None before): what ``log`` phase handlers read.
        background (bool): a background subrequest (``ngxsim.subrequest``): nginx's
            ``r->background``; no client waits for its answer.
        body (bytes | None): the request body once ``read_body`` read it (None before): read
            once, every later ``read_body`` gets it (nginx's ``r->request_body``); a background
            subrequest has its parent's.
    """

    def __init__(self, environ: dict, request: Any, runtime: "Runtime"):
        self.environ = environ
        self.request = request
        self.runtime = runtime
        # why nginx would refuse this request with 400 (None: it would not)
        self.invalid: str | None = None
        self._line_host: bytes | None = None
        # $request_uri: the path and query as sent (an absolute-form target without its host)
        self.unparsed_uri = b"/"
        try:
            self.unparsed_uri, self._line_host = split_target(raw_target(environ))
            self.uri_bytes, self.args_bytes = parse_path(self.unparsed_uri)
        except BadRequest as exc:
            self.invalid = str(exc)
            self.uri_bytes, self.args_bytes = b"/", b""
        # $uri: the decoded, normalised path (UTF-8; other bytes kept as surrogates)
        self.uri = to_text(self.uri_bytes)
        # what the chosen server_name / location regexes captured: $1..$9, named ones
        self.captures: Captures | None = None
        self.named_captures: dict[str, str] = {}
        self.server: Block | None = None
        self.location: Block | None = None
        self.secret_args: frozenset[str] = frozenset()
        # per-request values modules record for their variables and later phases
        # (``upstream_addr``, ``upstream_cache_status``...)
        self.vars: dict[str, str] = {}
        # per-request data a module keeps for its own later phases (a pre-content handler's
        # lookup for its body filter), by module name; never read another module's entry
        self.stash: dict[str, object] = {}
        self.response: Any = None  # the response, once made (what log phase handlers read)
        # the origin's response header lines, before any was hidden (set by a proxying handler)
        self.upstream_headers: list[tuple[str, str]] | None = None
        self.started = time.monotonic()
        self.logging = False  # rendering the access log line: secrets are masked
        self.background = False  # a background subrequest (background.py)
        # the request body once read whole (read_body), or why it could not be: read once, as
        # nginx's r->request_body; a background subrequest carries its parent's
        self.body: bytes | None = None
        self.body_error: Exception | None = None

    @cached_property
    def request_id(self) -> str:
        """``$request_id``: 32 random hex digits, the same for the whole request."""
        return secrets.token_hex(16)

    @cached_property
    def request_uri(self) -> str:
        """``$request_uri`` as text."""
        return to_text(self.unparsed_uri)

    @property
    def args_text(self) -> str:
        """``$args``: the query as sent."""
        return to_text(self.args_bytes)

    @cached_property
    def request_line(self) -> str:
        """``$request``: the request line as nginx logs it."""
        target = to_text(raw_target(self.environ))
        return f'{self.environ.get("REQUEST_METHOD", "")} {target} {self.environ.get("SERVER_PROTOCOL", "HTTP/1.0")}'

    def header_lines(self, name: str) -> list[str]:
        """The values of the request header ``name`` (``_`` for ``-``, any case), one per line
        as the client sent them.

        That needs the header lines as sent: ngxsim's worker classes hand them over as
        ``environ["ngxsim.headers"]`` (``[(NAME, value), ...]``, repeated ones apart). Under
        another server (gunicorn's own worker classes, a test client) only WSGI's ``HTTP_NAME``
        exists, where a repeated header is already joined with ``","``: one line.

        A module that passes the request on (a proxy) reads every line from
        ``environ["ngxsim.headers"]`` when it is there, to send repeated headers apart."""
        lines = self.environ.get(RAW_HEADERS)
        if lines is None:
            joined = self.environ.get("HTTP_" + name.upper().replace("-", "_"))
            return [] if joined is None else [joined]
        want = name.lower().replace("-", "_")
        return [v for k, v in lines if k.lower().replace("-", "_") == want]

    def set_request_header(self, name: str, value: str | None) -> None:
        """Replace every line of request header ``name`` with one line of ``value`` (None: remove
        them), as the later phases see the request: its variables, and what a proxy sends
        (WSGI's ``HTTP_NAME`` and the header lines as sent, ``request_header_lines``). For a
        module that changes the request before the content handler, as nginx's proxy cache
        withholds the client's conditional headers from the origin."""
        key = "HTTP_" + name.upper().replace("-", "_")
        if value is None:
            self.environ.pop(key, None)
        else:
            self.environ[key] = value
        lines = self.environ.get(RAW_HEADERS)
        if lines is not None:
            want = name.lower().replace("-", "_")
            kept = [(k, v) for k, v in lines if k.lower().replace("-", "_") != want]
            self.environ[RAW_HEADERS] = kept if value is None else [*kept, (name, value)]

    def request_header_lines(self) -> list[tuple[str, str]]:
        """Every request header line as ``(name, value)``, in the client's order: from
        ``environ["ngxsim.headers"]`` (names as written, repeated ones apart) under ngxsim's
        worker classes; elsewhere rebuilt from WSGI's ``HTTP_NAME`` (names upper-cased with
        ``-``, repeated ones joined) and ``CONTENT_TYPE``. What a proxy passes on."""
        lines = self.environ.get(RAW_HEADERS)
        if lines is not None:
            return lines
        out = [(k[5:].replace("_", "-"), v) for k, v in self.environ.items() if k.startswith("HTTP_")]
        if self.environ.get("CONTENT_TYPE"):
            out.append(("Content-Type", self.environ["CONTENT_TYPE"]))
        return out

    def header(self, name: str) -> str:
        """``$http_NAME`` as nginx 1.22 gives it: a repeated ``Cookie`` joined with ``"; "``, a
        repeated ``X-Forwarded-For`` with ``", "``, any other header its first value."""
        values = self.header_lines(name)
        if not values:
            return ""
        sep = _JOINED.get(name.lower())
        return sep.join(values) if sep else values[0]

    def cookie(self, name: str) -> str:
        """``$cookie_NAME``: the value of the first cookie of that name (any case), as sent;
        nginx's ``ngx_http_parse_multi_header_lines``: cookies are separated by ``;`` or ``,``,
        a value runs to the next ``;``."""
        want = name.lower()
        for line in self.header_lines("cookie"):
            pos, end = 0, len(line)
            while pos < end:
                if line[pos:pos + len(want)].lower() == want:
                    value = line[pos + len(want):].lstrip(" ")
                    if value.startswith("="):
                        return value[1:].lstrip(" ").split(";", 1)[0]
                while pos < end and line[pos] not in ";,":  # to the next cookie
                    pos += 1
                pos += 1
                while pos < end and line[pos] == " ":
                    pos += 1
        return ""

    @cached_property
    def request_host(self) -> str | None:
        """The host the request names (absolute-form target first, then ``Host``), checked and
        lower-cased as nginx does; None without either. Raises BadRequest for an invalid one."""
        raw = self._line_host
        if raw is None:
            header = self.environ.get("HTTP_HOST")
            if header is None:
                return None
            raw = header.encode("latin-1", "replace")
        return to_text(validate_host(raw))

    @property
    def host(self) -> str:
        """``$host``: the request's host, else the chosen server's name."""
        try:
            host = self.request_host
        except BadRequest:
            host = None
        return host if host is not None else self.server_name

    def record(self, captures: list[Captures]) -> None:
        """Keep what matching regexes captured, in match order (nginx: a regex with groups
        replaces ``$1``..``$9``; named captures are variables set by each match)."""
        for hit in captures:
            if len(hit.groups) > 1:
                self.captures = hit
            for name in hit.names:
                self.named_captures[name] = hit.named(name)

    @cached_property
    def local_addr(self) -> tuple[str, int]:
        sock = self.environ.get("gunicorn.socket")
        if sock is not None:
            try:
                addr = sock.getsockname()
                if isinstance(addr, tuple):
                    return (addr[0], addr[1])
            except OSError:
                pass
        try:
            port = int(self.environ.get("SERVER_PORT") or 0)
        except ValueError:
            port = 0
        return (self.environ.get("SERVER_NAME", ""), port)

    @property
    def server_name(self) -> str:
        """``$server_name``: the server's first name as nginx keeps it (lower case, ``~`` kept
        on a regex, a leading ``.`` dropped)."""
        return self.server.stash.get("core.server_name", "") if self.server is not None else ""

    @cached_property
    def args(self) -> dict[str, list[str]]:
        """The query's arguments, decoded (for modules; ``$arg_NAME`` is nginx's raw value)."""
        return parse_qs(self.environ.get("QUERY_STRING", ""), keep_blank_values=True)

    def arg(self, name: str) -> str:
        """The first value of query argument ``name``, decoded; ``""`` when absent."""
        values = self.args.get(name)
        return values[0] if values else ""

    def raw_arg(self, name: str) -> str:
        """``$arg_NAME`` as nginx reads it: the first ``NAME=`` (any case) and its value as sent."""
        want = name.lower().encode() + b"="
        for part in self.args_bytes.split(b"&"):
            if part[: len(want)].lower() == want:
                return to_text(part[len(want) :])
        return ""
