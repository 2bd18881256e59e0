"""The toolkit for a module's JSON API endpoint: errors, the key check, the body, the query.

A content handler raises ``ApiError`` wherever a request is bad; the core answers it with the
usual JSON error (``{"status", "error", "message"}``). Every helper here either returns a valid
value or raises an ``ApiError`` whose message names the problem, so a handler never sees a
half-read body, a malformed number or an unexpected method.
"""

from __future__ import annotations

import hmac
import json
import math
import re
from typing import TYPE_CHECKING, Callable

from gunicorn.http.errors import ParseException
from werkzeug.exceptions import ClientDisconnected
from werkzeug.wrappers import Response

from .logs import SECRET_ARGS
from .responses import json_error

if TYPE_CHECKING:  # pragma: no cover
    from ..conf.loader import Configuration
    from .context import RequestContext

# one read of the body at most this much at a time (a body is bounded by ``max_body`` anyway)
_READ_STEP = 65536


class ApiError(Exception):
    """Raised by a content handler: the core answers ``json_error(status, message, headers)``."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers
        self.code = code  # NGINX Plus's error code (``UpstreamNotFound``), shown by the ``api`` location

    def response(self) -> Response:
        return json_error(self.status, self.message, headers=self.headers)


# -- the key ----------------------------------------------------------------------------------


def register_secret_arg(config: "Configuration", name: str = "key") -> None:
    """Mask query argument ``name`` in every access log line (its value becomes ``***``).
    Call it at load time (``ngxsim_postconfiguration``) for each argument that carries a secret;
    the log matches the argument by its decoded name, so ``?%6bey=`` is masked too. gunicorn's own
    logs mask it as well with ``ngxsim.glogging.Logger``."""
    config.secret_args.add(name)
    SECRET_ARGS.add(name)


def check_key(ctx: "RequestContext", key: str | None, arg: str = "key", action: str = "this request") -> None:
    """Raise ``ApiError(403)`` unless ``key`` is None (no key configured) or the request's
    ``?key=`` (``arg``) equals it; ``action`` names what needs it in the message. Constant-time
    compare: the answer time says nothing about how much of a guess was right. Register ``arg``
    with ``register_secret_arg`` at load time."""
    if key is None:
        return
    given = ctx.args.get(arg)
    if not given or not given[0]:
        raise ApiError(403, f'{action} needs the "{arg}" query parameter')
    if not hmac.compare_digest(given[0].encode(), key.encode()):
        raise ApiError(403, f'wrong "{arg}"')


# -- the body ---------------------------------------------------------------------------------


MAX_BODY = 64 * 1024 * 1024  # request_body's bound under client_max_body_size 0


def request_body(ctx: "RequestContext") -> bytes:
    """The whole request body as nginx reads it before it proxies (or looks in a cache): bounded
    by the location's ``client_max_body_size`` (0: by MAX_BODY), else ``read_body``'s ApiError."""
    return read_body(ctx, ctx.location["client_max_body_size"] or MAX_BODY)


def read_body(ctx: "RequestContext", max_body: int) -> bytes:
    """The whole request body, at most ``max_body`` bytes, or an ``ApiError``: 413 when it is
    larger (declared or actually sent), 400 when it is shorter than its ``Content-Length`` (the
    client stopped sending) or its chunked encoding is broken, 408 when the client paused longer
    than ``client_body_timeout`` (under ``ngxsim.worker.Worker``).

    The body is read once (``ctx.body``): a later call, by another module of the same request or
    by its background subrequest, gets the same bytes, or the same error."""
    if ctx.body is not None:
        if len(ctx.body) > max_body:
            raise ApiError(413, f"body is larger than {max_body} bytes")
        return ctx.body
    if ctx.body_error is not None:
        raise ctx.body_error
    try:
        ctx.body = _read_body(ctx, max_body)
    except ApiError as exc:
        ctx.body_error = exc
        raise
    return ctx.body


def _read_body(ctx: "RequestContext", max_body: int) -> bytes:
    req = ctx.request
    length = req.content_length
    if length is not None and length > max_body:
        raise ApiError(413, f"body of {length} bytes is larger than {max_body}")
    stream = req.stream
    parts: list[bytes] = []
    got = 0
    try:
        while got <= max_body:
            part = stream.read(min(_READ_STEP, max_body + 1 - got))
            if not part:
                break
            parts.append(part)
            got += len(part)
    except ClientDisconnected as exc:  # werkzeug's wrapper (client_max_body_size) around a failed read
        if isinstance(exc.__context__, TimeoutError):
            raise ApiError(408, f"{_incomplete(got, length)} within client_body_timeout", {"Connection": "close"}) from None
        raise ApiError(400, _incomplete(got, length)) from None
    except ParseException as exc:  # gunicorn's chunked decoder: a bad size, extension or terminator
        raise ApiError(400, f"body is not valid chunked encoding: {exc}") from None
    except TimeoutError:  # ngxsim.worker.Worker: client_body_timeout passed between two reads
        raise ApiError(408, f"{_incomplete(got, length)} within client_body_timeout", {"Connection": "close"}) from None
    except OSError as exc:  # gunicorn: the connection ended inside a chunk; or a socket error
        raise ApiError(400, f"{_incomplete(got, length)} ({exc})") from None
    if got > max_body:
        raise ApiError(413, f"body is larger than {max_body} bytes")
    if length is not None and got < length:
        raise ApiError(400, _incomplete(got, length))
    return b"".join(parts)


def _incomplete(got: int, length: int | None) -> str:
    declared = f" of the {length} bytes its Content-Length declares" if length is not None else ""
    return f"body is incomplete: the client stopped sending after {got}{declared}"


_KINDS = {dict: "a JSON object", list: "a JSON array"}


def read_json(ctx: "RequestContext", max_body: int, *, want: type | None = dict) -> object:
    """The request's JSON body, parsed; or an ``ApiError``: 415 unless the Content-Type is
    ``application/json`` (parameters such as ``charset`` allowed), what ``read_body`` raises,
    400 for invalid UTF-8 or JSON, NaN/Infinity, nesting too deep to parse, a string (or key)
    holding a lone surrogate escape (``"\\ud800"``: no Unicode text, it cannot be encoded back
    to UTF-8), or (with ``want``) a value of another type."""
    req = ctx.request
    if (req.mimetype or "").lower() != "application/json":
        raise ApiError(415, f'Content-Type must be application/json, not "{req.content_type or ""}"')
    raw = read_body(ctx, max_body)
    # the byte walk only where the brackets alone could be that deep (a publish body has a few)
    if raw.count(b"[") + raw.count(b"{") > MAX_JSON_DEPTH and nesting_depth(raw) > MAX_JSON_DEPTH:
        raise ApiError(400, f"body is not valid JSON: nested too deeply (more than {MAX_JSON_DEPTH} levels)")
    try:
        body = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ApiError(400, f"body is not valid JSON: {exc}") from None
    except RecursionError:  # cannot happen below MAX_JSON_DEPTH; a parser's limit is not ours
        raise ApiError(400, "body is not valid JSON: nested too deeply") from None
    if _SURROGATE_ESCAPE.search(raw):  # a cheap gate: only a body with such an escape is walked
        _reject_surrogates(body)
    if want is not None and not isinstance(body, want):
        raise ApiError(400, f"body must be {_KINDS.get(want, want.__name__)}")
    return body


# Python's JSON decoder turns "\ud800" into a str holding the surrogate itself (JSON allows the
# escape, Unicode text does not), which fails later wherever it is encoded: in an event, a
# header, a key on disk. A body without a \uD800-\uDFFF escape cannot hold one (the decoded
# UTF-8 cannot), so only a body that matches is walked.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89abcdefABCDEF]")


def _reject_surrogates(body: object) -> None:
    stack: list[tuple[object, str]] = [(body, "")]
    while stack:  # not recursive: the decoder accepts nesting deeper than a Python walk would
        value, where = stack.pop()
        if isinstance(value, dict):
            for key, item in value.items():
                _check_text(key, f"{where} key {json.dumps(key)}")
                stack.append((item, f"{where}.{key}" if where else key))
        elif isinstance(value, list):
            stack.extend((item, f"{where}[{i}]") for i, item in enumerate(value))
        elif isinstance(value, str):
            _check_text(value, f'"{where}"' if where else "the body")


def _check_text(text: str, where: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        char = text[exc.start]
        raise ApiError(400, f"body is not valid JSON text: {where.strip()} holds a lone surrogate "
                            f"\\u{ord(char):04x}, which is no Unicode character") from None


# ngxsim's own limit, checked before parsing: each Python's json parser has another (3.11's C
# decoder fails near 1000 levels, 3.13's accepts thousands), and an answer must not depend on it
MAX_JSON_DEPTH = 100


def nesting_depth(raw: bytes) -> int:
    """The deepest nesting of arrays and objects in ``raw`` (brackets inside strings ignored)."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in raw:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x5D, 0x7D):  # ] }
            depth -= 1
    return deepest


def _reject_constant(name: str):
    raise ValueError(f"{name} is not JSON")


# -- the method -------------------------------------------------------------------------------


class Methods:
    """Dispatch a request by method: ``Methods(GET=inspect, HEAD=inspect, POST=publish)(ctx)``.
    Any other method is ``405`` with an ``Allow`` header listing the accepted ones."""

    def __init__(self, **handlers: Callable[["RequestContext"], Response]):
        self.handlers = handlers
        self.allow = ", ".join(handlers)

    def __call__(self, ctx: "RequestContext") -> Response:
        method = ctx.environ["REQUEST_METHOD"]
        handler = self.handlers.get(method)
        if handler is None:
            raise ApiError(405, f"method {method} is not allowed here; use {self.allow}", headers={"Allow": self.allow})
        return handler(ctx)


# -- the query --------------------------------------------------------------------------------


def query_int(ctx: "RequestContext", name: str) -> int | None:
    """Query argument ``name`` as a non-negative integer (ASCII digits only), None when absent."""
    values = ctx.args.get(name)
    if values is None:
        return None
    text = values[0]
    if not text.isascii() or not text.isdigit():
        raise ApiError(400, f'parameter "{name}" must be a non-negative integer, not "{text}"')
    return int(text)


def query_seconds(ctx: "RequestContext", name: str, maximum: float) -> float | None:
    """Query argument ``name`` as a number of seconds from 0 to ``maximum``, None when absent."""
    values = ctx.args.get(name)
    if values is None:
        return None
    text = values[0]
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not text.isascii() or not (0 <= value <= maximum):  # NaN fails both comparisons
        raise ApiError(400, f'parameter "{name}" must be a number of seconds from 0 to {maximum:g}, not "{text}"')
    return value


def query_str(ctx: "RequestContext", name: str, max_bytes: int) -> str | None:
    """Query argument ``name`` (at most ``max_bytes`` of UTF-8), None when absent."""
    values = ctx.args.get(name)
    if values is None:
        return None
    if len(values[0].encode()) > max_bytes:
        raise ApiError(400, f'parameter "{name}" is longer than {max_bytes} bytes')
    return values[0]


def wants_html(ctx: "RequestContext") -> bool:
    """Should a status endpoint answer with its page rather than JSON? ``?format=html|json``
    decides; without it, a client that prefers ``text/html`` (a browser) gets the page. Any
    other ``format`` is a 400 naming the two."""
    fmt = query_str(ctx, "format", 16)
    if fmt is not None:
        if fmt not in ("json", "html"):
            raise ApiError(400, f'parameter "format" must be "json" or "html", not "{fmt}"')
        return fmt == "html"
    return ctx.request.accept_mimetypes.best_match(["application/json", "text/html"]) == "text/html"
