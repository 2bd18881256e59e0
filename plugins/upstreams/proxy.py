"""``proxy_pass``: forward a request to a peer of an upstream (or one address) and stream the
answer back, trying the next peer as ``proxy_next_upstream`` allows.

The request body is read whole first (nginx's ``proxy_request_buffering on``, bounded by
``client_max_body_size``) so that a retry can send it again; the response body goes on as it
arrives, the client watched meanwhile (see ``_Body``). The request goes out as nginx's
``ngx_http_proxy_create_request`` writes it (``_head``); connections to backends are kept in a
per-worker list only as nginx's ``keepalive`` keeps them (connections.py). Every fault gets nginx's answer and nginx's one error line (see
docs/upstreams.md, "When a backend or a client misbehaves").
"""

from __future__ import annotations

import errno
import logging
import os
import time
from urllib.parse import quote

from http.client import BadStatusLine, LineTooLong, RemoteDisconnected
from http.client import IncompleteRead as ClientIncompleteRead

from urllib3.exceptions import (
    ConnectTimeoutError, HTTPError, IncompleteRead, InvalidChunkLength, NewConnectionError, ProtocolError,
    ReadTimeoutError,
)
from werkzeug.wrappers import Response

from ngxsim import (
    ApiError, ClientGone, ResponseCut, as_http09, checked_headers, client_closed, client_gone, cut_connection,
    error_context,
    error_page, keep_status_line, request_body, wait_readable,
)

from . import dynamic
from .balancer import Peer
from .connections import HTTP_09, KeptConnections, Link, Whole, connect, exchange, readable

log = logging.getLogger("ngxsim")
# the backend's header lines nginx's upstream module never copies to the client (its
# ngx_http_upstream_headers_in: the connection's own framing); every other one goes on, also
# Upgrade, Proxy-Authenticate, Trailer and a header the backend's Connection names
NOT_COPIED = frozenset(("connection", "keep-alive", "transfer-encoding"))
# nginx's proxy_set_header defaults (ngx_http_proxy_headers), after the config's own: "" sends
# none; a client header of any of these names is never passed. None: computed per request
# (Host: $proxy_host; Content-Length: $proxy_internal_body_length; Transfer-Encoding: none, the
# body is buffered)
DEFAULT_SET = (("Host", None), ("Connection", "close"), ("Content-Length", None), ("Transfer-Encoding", ""),
               ("TE", ""), ("Keep-Alive", ""), ("Expect", ""), ("Upgrade", ""))
# nginx's proxy_hide_header defaults: the front server sends its own Date and Server
HIDDEN = frozenset(("date", "server", "x-pad", "x-accel-expires", "x-accel-redirect", "x-accel-limit-rate",
                    "x-accel-buffering", "x-accel-charset"))
NON_IDEMPOTENT = frozenset(("POST", "LOCK", "PATCH"))
# ngx_escape_uri's NGX_ESCAPE_URI: a URI part of proxy_pass gets escaped only controls, space,
# "#", "%", "?" and bytes above 0x7e
_URI_SAFE = "".join(chr(c) for c in range(0x21, 0x7f) if chr(c) not in "#%?")
_STATUS_CONDITIONS = {500: "http_500", 502: "http_502", 503: "http_503", 504: "http_504", 403: "http_403",
                      404: "http_404", 429: "http_429"}
# what nginx counts as a peer failure among the retry conditions (403 and 404 are not)
_FAILURE_CONDITIONS = frozenset(("error", "timeout", "invalid_header", "http_500", "http_502", "http_503", "http_504",
                                 "http_429"))
# nginx's log actions (the " while ..." of an error line) of a try's phases
CONNECTING, READING_HEADER, READING_BODY = "connecting to upstream", "reading response header from upstream", "reading upstream"
READ_SIZE = 65536


class _Urllib3Noise(logging.Filter):
    """urllib3 warns (with a traceback) about a response header it cannot parse and about
    Content-Length with chunked; the proxy refuses those answers with nginx's own line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(("Failed to parse headers", "Received response with both"))


for _name in ("urllib3.connectionpool", "urllib3.response"):
    logging.getLogger(_name).addFilter(_Urllib3Noise())


class Target:
    """One peer or one fixed address a try goes to."""

    __slots__ = ("peer", "host", "port", "server")

    def __init__(self, peer: Peer | None, host: str, port: int):
        self.peer, self.host, self.port = peer, host, port
        self.server = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class ProxyHandler:
    """The content handler of one ``proxy_pass`` location."""

    def __init__(self, location, upstreams_state, settings):
        self.state = upstreams_state  # callable(runtime) -> this process's upstreams State
        self.spec = settings.proxy_pass
        self.prefix = settings.prefix
        self.next_upstream = settings.next_upstream
        self.connect_timeout, self.read_timeout = settings.connect_timeout, settings.read_timeout
        self.version = b" HTTP/1.1\r\n" if settings.http_version == "1.1" else b" HTTP/1.0\r\n"
        self.hidden = (HIDDEN | set(settings.hide)) - set(settings.pass_) | NOT_COPIED
        self.redirects = _redirects(settings)
        set_headers = settings.set_headers
        names = {h.name.lower() for h in set_headers}
        defaults = [(name, value) for name, value in DEFAULT_SET if name.lower() not in names]
        self.not_passed = names | {name.lower() for name, _ in DEFAULT_SET}
        self.port = str(self.spec.port)
        # the header lines before the client's, in order: as sent (bytes) where they do not
        # depend on the request, (name, Template) where they do, None for the body's length
        self.lines: list[bytes | tuple[str, object] | None] = []
        for header in set_headers:
            if not header.value.static:
                self.lines.append((header.name, header.value))
            elif header.value.source:
                self.lines.append(_line(header.name, header.value.source))
        for name, value in defaults:
            if name == "Content-Length":
                self.lines.append(None)
            elif name == "Host":  # with variables in proxy_pass: each request's host (_head)
                self.lines.append(_line(name, self.spec.host) if self.spec.template is None else (name, None))
            elif value:
                self.lines.append(_line(name, value))

    # -- the request ---------------------------------------------------------------------------

    def __call__(self, ctx):
        state = self.state(ctx.runtime)
        spec = self.spec
        if spec.template is not None:  # proxy_pass with variables: this request's URL (dynamic.py)
            spec = dynamic.current(ctx, spec, state.conf.groups, state.conf.implicit)
            if spec is None:
                return dynamic.answer(ctx)
        env = ctx.environ
        method = env["REQUEST_METHOD"]
        ctx.vars["proxy_host"] = spec.host
        ctx.vars["proxy_port"] = self.port if spec is self.spec else str(spec.port)
        has_body = _has_body(env)
        try:
            body = request_body(ctx) if has_body else b""
        except ApiError as exc:
            return error_page(exc.status)
        url = self._uri(ctx, spec)
        head = self._head(ctx, spec, method, url, len(body) if has_body else None)
        # what a try sends (NGINX Plus's "sent"): the request line, the header and the body
        sent_bytes = len(head) + len(body)
        keepalive = state.conf.upstreams[spec.upstream] if spec.upstream else None
        if keepalive is not None and keepalive.keepalive is None:
            keepalive = None
        snapshot = state.snapshot(spec.upstream) if spec.upstream else None
        if snapshot is not None and snapshot.all_unhealthy():
            return self._no_live_upstreams(ctx, spec)
        tried: set[int] = set()
        addrs, statuses, times = [], [], []
        last_failure = None
        last_response = None
        retry_ok = "off" not in self.next_upstream
        while True:
            now = time.monotonic()
            if snapshot is not None:
                peer = snapshot.pick(state.zone(spec.upstream), tried, now)
                if peer is None:
                    break
                tried.add(peer.id)
                target = Target(peer, peer.host, peer.port)
            else:
                if tried:
                    break
                tried.add(0)
                target = Target(None, *spec.address)
            if last_response is not None:
                last_response[1].close()  # nginx does not keep a connection whose answer it did not read
                last_response = None
            addrs.append(target.server)
            began = time.monotonic()
            state.begin(spec.upstream, target)
            sent = False
            link = None
            try:
                link, resp = self._send(ctx, spec, state.links, keepalive, target, method, head, body)
                invalid = None if resp.__class__ is Whole else _invalid_header(resp)
                if invalid is not None:
                    raise InvalidHeader(invalid)
            except ClientGone:  # nginx drops the upstream request of a client that left: 499
                statuses.append("-")
                times.append(f"{time.monotonic() - began:.3f}")
                state.end(spec.upstream, target, failed=False, snapshot=snapshot, sent=sent_bytes)
                self._record(ctx, addrs, statuses, times)
                return client_closed(ctx, "epoll_wait() reported that client prematurely closed connection, so "
                                     f"upstream connection is closed too while {READING_HEADER}",
                                     f"http://{target.server}{url}")
            except (HTTPError, OSError, InvalidHeader) as exc:
                if link is not None:
                    link.close()  # what is left of the answer cannot be framed
                # urllib3's NewConnectionError (refused, unreachable) is a ConnectTimeoutError too
                sent = not isinstance(exc, (ConnectTimeoutError, NewConnectionError))
                message, condition = describe_failure(exc, READING_HEADER if sent else CONNECTING)
                log.error("%s%s", message, error_context(ctx, f"http://{target.server}{url}"))
            else:
                elapsed = time.monotonic() - began
                statuses.append(str(resp.status))
                times.append(f"{elapsed:.3f}")
                condition = _STATUS_CONDITIONS.get(resp.status)
                if condition is None or condition not in self.next_upstream:
                    return self._respond(ctx, spec, state, target, resp, url, addrs, statuses, times, method,
                                         sent=sent_bytes, link=link, keepalive=keepalive, began=began,
                                         header_time=elapsed)
                # a status proxy_next_upstream retries: remember it, count a failure, go on
                state.end(spec.upstream, target, failed=condition in _FAILURE_CONDITIONS, snapshot=snapshot,
                          status=resp.status, sent=sent_bytes, times=(elapsed, elapsed))
                last_response, last_failure = (resp, link), condition
                if not (retry_ok and (method not in NON_IDEMPOTENT or "non_idempotent" in self.next_upstream)):
                    break
                continue
            statuses.append("504" if condition == "timeout" else "502")
            times.append(f"{time.monotonic() - began:.3f}")
            refused = condition == "error" and not sent  # nothing reached the peer
            state.end(spec.upstream, target, failed=True, snapshot=snapshot, sent=0 if refused else sent_bytes)
            last_failure = condition
            may_resend = not sent or method not in NON_IDEMPOTENT or "non_idempotent" in self.next_upstream
            if not (retry_ok and condition in self.next_upstream and may_resend):
                break
        self._record(ctx, addrs, statuses, times)
        if last_response is not None:  # every peer answered a retried status: send the last one on
            resp, link = last_response
            return self._respond(ctx, spec, state, None, resp, url, addrs, statuses, times, method, counted=True,
                                 link=link, keepalive=keepalive)
        if not addrs:
            return self._no_live_upstreams(ctx, spec)
        return error_page(504 if last_failure == "timeout" else 502)

    def _no_live_upstreams(self, ctx, spec):
        """No peer of the group can be tried: nginx's 502, its error line, and ``$upstream_addr``
        naming the group."""
        ctx.vars["upstream_addr"] = spec.upstream or ""
        ctx.vars["upstream_status"] = ""
        log.error("no live upstreams while connecting to upstream%s",
                  error_context(ctx, f"http://{spec.upstream}{self._uri(ctx, spec)}"))
        return error_page(502)

    def _send(self, ctx, spec, links: KeptConnections, keepalive, target, method, head, body) -> tuple[Link, object]:
        """One try on one peer: a kept connection (``keepalive``) or a new one. A kept one the
        peer closed while it sat idle fails before any answer: that is the cache's race, not the
        peer's failure, so the request goes once more on a new connection (nginx gives a try
        back for an error on a cached connection). A client that leaves while the answer is
        awaited ends the try (``ClientGone``, the connection closed)."""
        gone = lambda: client_gone(ctx)  # noqa: E731 - asked only while a backend keeps the answer
        link = None
        if keepalive is not None:
            link = links.take(spec.upstream, target.host, target.port, keepalive.keepalive_timeout)
        if link is not None:
            try:
                return link, exchange(link, head, body, method, self.read_timeout, gone)
            except (RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                link.close()
            except BaseException:
                link.close()
                raise
        link = connect(target.host, target.port, self.connect_timeout)
        try:
            return link, exchange(link, head, body, method, self.read_timeout, gone)
        except BaseException:
            link.close()
            raise

    def _uri(self, ctx, spec) -> str:
        """nginx's rule: with a URI part in proxy_pass, the matched location prefix of the
        (normalised) URI is replaced by it; without one, the request URI goes as the client sent it.
        With variables in proxy_pass a URI part is the whole URI, sent as it was made."""
        query = ctx.environ.get("QUERY_STRING", "")
        if spec.uri is None:
            return ctx.request_uri
        if self.spec.template is not None:
            return spec.uri
        rest = ctx.uri[len(self.prefix):] if ctx.uri.startswith(self.prefix) else ctx.uri
        path = quote(spec.uri + rest, safe=_URI_SAFE)
        return path + ("?" + query if query else "")

    def _head(self, ctx, spec, method: str, url: str, length: int | None) -> bytes:
        """The request line and header nginx sends: the config's ``proxy_set_header`` lines, then
        nginx's defaults the config did not set (``Host``, ``Connection: close``, the body's
        length), then every client header line as the client wrote it (repeated ones apart),
        but those of the names set above (an empty value sends none)."""
        lines = [method.encode("ascii") + b" " + _bytes(url) + self.version]
        for line in self.lines:
            if line.__class__ is bytes:
                lines.append(line)
            elif line is None:
                if length is not None:
                    lines.append(b"Content-Length: %d\r\n" % length)
            elif line[1] is None:  # Host of a proxy_pass with variables: this request's
                lines.append(_line(line[0], spec.host))
            else:
                value = line[1].render(ctx)
                if value:
                    lines.append(_line(line[0], value))
        skip = self.not_passed
        for name, value in ctx.request_header_lines():
            if name.lower() not in skip:
                lines.append(_line(name, value))
        lines.append(b"\r\n")
        return b"".join(lines)

    @staticmethod
    def _record(ctx, addrs, statuses, times) -> None:
        ctx.vars["upstream_addr"] = ", ".join(addrs)
        ctx.vars["upstream_status"] = ", ".join(statuses)
        ctx.vars["upstream_response_time"] = ", ".join(times)

    # -- the response --------------------------------------------------------------------------

    def _respond(self, ctx, spec, state, target, resp, url, addrs, statuses, times, method, counted=False, sent=0,
                 link=None, keepalive=None, began=0.0, header_time=0.0):
        """The answer to the client. One read whole (``Whole``) goes on as bytes: its connection
        is kept (or closed) and its try counted at once, as nginx frees the peer when the
        upstream's answer is all in; any other streams on (``_Body``) and ends both when the
        server closes it."""
        self._record(ctx, addrs, statuses, times)
        whole = resp.__class__ is Whole
        # as sent: a cache decides from these
        ctx.upstream_headers = resp.headers if whole else list(resp.headers.iteritems())
        # a chunked answer with a Content-Length too: nginx 1.22 drops the length and passes the
        # body re-chunked (current nginx refuses it as an invalid header)
        skip = self.hidden | {"content-length"} if resp.chunked else self.hidden
        headers = [(name, value) for name, value in ctx.upstream_headers if name.lower() not in skip]
        rewritten = False
        if self.redirects:
            for i, (name, value) in enumerate(headers):
                if name.lower() == "location":
                    for frm, to in self.redirects:
                        if value.startswith(frm):
                            headers[i] = (name, (to if isinstance(to, str) else to.render(ctx)) + value[len(frm):])
                            rewritten = True
                            break
        upstream = spec.upstream
        snapshot = state.snapshot(upstream) if upstream else None
        if whole:
            _reuse(state.links, keepalive, link, not resp.will_close)
            if not counted:
                state.end(upstream, target, failed=False, success=True, snapshot=snapshot, status=resp.status,
                          sent=sent, received=len(resp.reason) + 15 + resp.size + len(resp.body),
                          times=(header_time, time.monotonic() - began))
            # whole() let no CR or LF into a line; a rewritten Location is checked as any header is
            return self._relayed(ctx, resp, [resp.body], headers if rewritten else checked_headers(headers), rewritten)

        http09 = resp.version == HTTP_09
        head = 0 if http09 else len(resp.reason or "") + 15 + resp._original_response.msg.size
        release = _releaser(state.links, keepalive, link, resp)

        def finished() -> None:
            if not counted:
                state.end(upstream, target, failed=False, success=True, snapshot=snapshot, status=resp.status, sent=sent,
                          received=head + stream.received, times=(header_time, time.monotonic() - began))

        stream = _Body(ctx, resp, method != "HEAD", finished, release, f"http://{addrs[-1]}{url}", self.read_timeout)
        if http09:  # no status line: nginx 1.22 says so and relays the bytes as an HTTP/0.9 answer
            log.error("upstream sent no valid HTTP/1.0 header while %s%s", READING_HEADER,
                      error_context(ctx, stream.upstream))
            return as_http09(Response(stream))
        # not direct_passthrough: werkzeug then closes the response (and its on-close callbacks:
        # the access log line) when the server closes the body
        return self._relayed(ctx, resp, stream, headers, rewritten)

    @staticmethod
    def _relayed(ctx, resp, body, headers, rewritten):
        """The client's response: the upstream's status line and header lines, and ``body``."""
        return keep_status_line(_Relayed(body, status=resp.status, headers=headers),
                                f"{resp.status} {resp.reason or ''}".rstrip(),  # nginx passes it on
                                absolute_location=rewritten)


class _Relayed(Response):
    """An upstream's answer: the backend sent no Content-Type, none is added."""

    default_mimetype = None


def _releaser(links: KeptConnections, keepalive, link: Link, resp):
    """What ends a streamed response's connection: ``release(complete)`` keeps it for the next
    request when the answer was read to its end and did not close it (``_reuse``)."""
    def release(complete: bool) -> None:
        raw = resp._original_response
        # nothing to read (HEAD, 204, 304, Content-Length: 0) leaves it reusable too, as in nginx
        # (ngx_http_proxy_process_header); http.client marks only a body it read as closed
        _reuse(links, keepalive, link, complete and not raw.will_close and (raw.isclosed() or raw.length == 0))
    return release


def _reuse(links: KeptConnections, keepalive, link: Link, reusable: bool) -> None:
    """Keep ``link`` for the next request when the upstream has ``keepalive`` and the answer
    left it ``reusable``; close it otherwise."""
    if keepalive is not None and reusable:
        links.keep(keepalive.name, link, keepalive.keepalive, keepalive.keepalive_requests, keepalive.keepalive_time)
    else:
        link.close()


def _redirects(settings) -> list[tuple[str, object]]:
    """``proxy_redirect``'s (FROM, TO) pairs; ``default`` is nginx's: the proxy_pass URL (with
    ``/`` when it has no URI part) to the location's prefix (``/``); ``off``: none."""
    out: list[tuple[str, object]] = []
    for line in settings.redirects:
        if line.kind == "off":
            return []
        if line.kind == "default":
            spec = settings.proxy_pass
            if spec.template is not None:  # nginx has no default for a proxy_pass with variables
                continue
            if spec.uri is None:
                out.append((f"http://{spec.host}/", "/"))
            elif settings.prefix:
                out.append((f"http://{spec.host}{spec.uri}", settings.prefix))
        else:
            out.append((line.frm, line.to))
    return out


def _line(name: str, value: str) -> bytes:
    try:  # the usual line: all of it latin-1, encoded at once
        return f"{name}: {value}\r\n".encode("latin-1")
    except UnicodeEncodeError:
        return _bytes(name) + b": " + _bytes(value) + b"\r\n"


def _bytes(text: str) -> bytes:
    """Header text as sent: a client's header (latin-1, as WSGI carries bytes) or a variable's
    value (UTF-8, with the client's undecodable bytes kept)."""
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape")


class InvalidHeader(Exception):
    """An answer nginx refuses as an invalid header (``proxy_next_upstream invalid_header``);
    the message is nginx's line."""


def _invalid_header(resp) -> str | None:
    """nginx's reason to refuse the response header (``ngx_http_upstream_process_content_length``,
    ``..._transfer_encoding``), or None. A Content-Length must be ASCII digits only (no sign, no
    space inside; Python's ``int`` would take ``-1``, `` 1_0`` or non-ASCII digits)."""
    unparsed = getattr(resp._original_response.msg, "invalid", None)  # connections.Header's
    if unparsed:  # nginx refuses a header name with a space or a control character in it
        bad = next((i for i, ch in enumerate(unparsed) if ch <= " " or ch == "\x7f"), None)
        if bad is not None:
            return f'upstream sent invalid header: "{_text(unparsed[:bad])}\\x{ord(unparsed[bad]):02x}..."'
    lengths = resp.headers.getlist("Content-Length")
    encodings = resp.headers.getlist("Transfer-Encoding")
    if len(lengths) > 1:
        return (f'upstream sent duplicate header line: "Content-Length: {_text(lengths[1])}", '
                f'previous value: "Content-Length: {_text(lengths[0])}"')
    if lengths and not encodings:  # with both, nginx 1.22 drops the length (_respond)
        value = lengths[0].strip(" \t")
        if not value or not value.isascii() or not value.isdigit() or len(value) > 18:
            return f'upstream sent invalid "Content-Length" header: "Content-Length: {_text(lengths[0])}"'
    if len(encodings) > 1:
        return (f'upstream sent duplicate header line: "Transfer-Encoding: {_text(encodings[1])}", '
                f'previous value: "Transfer-Encoding: {_text(encodings[0])}"')
    if encodings and encodings[0].strip(" \t").lower() != "chunked":
        return f'upstream sent unknown "Transfer-Encoding": "{_text(encodings[0])}"'
    return None


def _text(value: str) -> str:
    """A header value (bytes carried as latin-1) as nginx writes it: its bytes."""
    return value.encode("latin-1", "replace").decode("utf-8", "backslashreplace")


def _causes(exc: BaseException):
    """``exc`` and what it wraps (urllib3 keeps the original error in ``args[1]``, or chains it)."""
    seen: list[BaseException] = []
    while exc is not None and not any(exc is s for s in seen):
        seen.append(exc)
        yield exc
        inner = exc.__cause__ or exc.__context__
        if inner is None and len(exc.args) > 1 and isinstance(exc.args[1], BaseException):
            inner = exc.args[1]
        exc = inner


def describe_failure(exc: BaseException, action: str) -> tuple[str, str]:
    """nginx's error-log message for a failed read from (or connect to) a backend, with its
    ``while ACTION``, and the ``proxy_next_upstream`` condition it is: (message, condition).
    No library's own text: an errno is written as nginx writes it, ``(104: Connection reset by peer)``."""
    syscall = {CONNECTING: "connect", READING_HEADER: "recv", READING_BODY: "readv"}[action]
    timed_out = f"upstream timed out ({errno.ETIMEDOUT}: {os.strerror(errno.ETIMEDOUT)}) while {action}"
    for cause in _causes(exc):
        if isinstance(cause, InvalidHeader):
            return f"{cause} while {action}", "invalid_header"
        if isinstance(cause, (ConnectTimeoutError, ReadTimeoutError, TimeoutError)) and \
                not isinstance(cause, NewConnectionError):
            return timed_out, "timeout"
        if isinstance(cause, InvalidChunkLength):
            return f"upstream sent invalid chunked response while {action}", "error"
        # urllib3 says "Response ended prematurely" for a close where a chunk's size line should be
        if isinstance(cause, (RemoteDisconnected, IncompleteRead, ClientIncompleteRead)) or \
                (isinstance(cause, ProtocolError) and "ended prematurely" in str(cause.args[0])):
            return f"upstream prematurely closed connection while {action}", "error"
        if isinstance(cause, BadStatusLine):
            return f"upstream sent no valid HTTP/1.0 header while {action}", "invalid_header"
        if isinstance(cause, LineTooLong):
            return f"upstream sent too big header while {action}", "invalid_header"
        if isinstance(cause, OSError) and cause.errno:
            return f"{syscall}() failed ({cause.errno}: {os.strerror(cause.errno)}) while {action}", "error"
    return f"upstream sent invalid response while {action}", "error"


def _has_body(env) -> bool:
    return bool(env.get("CONTENT_LENGTH")) or env.get("HTTP_TRANSFER_ENCODING", "").lower() == "chunked"


def _socket_of(resp):
    """The socket a response body comes from: http.client's reader holds it (its connection
    forgets it when the backend said ``Connection: close``). None if that ever changes: the body
    is then read without watching the client while waiting."""
    try:
        return resp._fp.fp.raw._sock
    except AttributeError:
        return None


def _in_hand(resp, sock) -> bool:
    """Has the response's reader bytes buffered (or the socket bytes ready)? Never waits: the
    socket is non-blocking for the peek."""
    timeout = sock.gettimeout()
    sock.setblocking(False)
    try:
        return bool(resp._fp.fp.peek(1))
    except (AttributeError, OSError):
        return True  # not what we know how to look at: read (and wait) as usual
    finally:
        sock.settimeout(timeout)


class _Body:
    """The response body as the WSGI server iterates it: what the backend sends goes on as it
    arrives (a read returns what is there, up to READ_SIZE), and while the proxy waits for more it
    watches the client (``wait_readable``; between chunks of a chunked answer, ``client_gone``).
    A client that leaves ends the backend's request at once, as in nginx, instead of holding a
    thread for as long as the backend trickles or stalls within ``proxy_read_timeout``; a failed
    write to the client ends it too (the server stops iterating and closes the body).

    A body that fails (reset, timeout, premature close, broken chunked framing) ends like nginx
    ends it: one error line, the connection cut after what was sent (a short Content-Length or no
    last chunk: the client sees a truncated answer), and ``ResponseCut`` so nothing wrapping the
    body (a cache) takes it as complete.

    ``close()`` (which every WSGI server calls, also when the client left early or the body was
    never read) hands the connection back to the pool if the body was read to its end, drops it
    otherwise, and ends the request's accounting exactly once."""

    def __init__(self, ctx, resp, send: bool, finished, release, upstream: str, read_timeout: float):
        self.ctx, self.resp, self.send, self.finished, self.upstream = ctx, resp, send, finished, upstream
        self.release = release
        self.read_timeout = read_timeout
        self.complete = not send
        self.closed = False
        self.received = 0  # body bytes read from the backend

    def _reads(self):
        """What the backend sends, as it arrives; while waiting for more, the client is watched."""
        resp, ctx, sock = self.resp, self.ctx, _socket_of(self.resp)
        if resp.chunked:
            chunks = resp.read_chunked(READ_SIZE, decode_content=False)
            while True:
                # urllib3 reads a chunk through http.client's buffer: wait only when nothing is in hand
                if sock is not None and not _in_hand(resp, sock):
                    self._wait(sock)
                data = next(chunks, None)
                if data is None:
                    return
                yield data
        while resp.length_remaining != 0:
            data = resp.read1(READ_SIZE, decode_content=False)
            if not data:
                return
            # what has arrived meanwhile goes out with it, without waiting: fewer, fuller writes
            # (a read1 returns what one recv gives, and the first one only what came with the header)
            failure = None
            while sock is not None and len(data) < READ_SIZE and resp.length_remaining != 0 and readable(sock):
                try:
                    more = resp.read1(READ_SIZE - len(data), decode_content=False)
                except (HTTPError, OSError) as exc:  # what came before the failure goes out first
                    failure = exc
                    break
                if not more:
                    break
                data += more
            yield data
            if failure is not None:
                raise failure
            # a read1 of READ_SIZE empties http.client's buffer (it holds less): the next bytes
            # come through the socket
            if sock is not None and resp.length_remaining != 0:
                self._wait(sock)

    def _wait(self, sock) -> None:
        if not wait_readable(self.ctx, sock, self.read_timeout):
            raise TimeoutError(errno.ETIMEDOUT, "upstream timed out")

    def __iter__(self):
        if not self.send:
            return
        ctx, sent = self.ctx, False
        try:
            for data in self._reads():
                sent = True
                self.received += len(data)
                yield data
            self.complete = True
            return
        except ClientGone:
            log.info("epoll_wait() reported that client prematurely closed connection, so upstream connection is "
                     "closed too while %s%s", READING_BODY, error_context(ctx, self.upstream))
        except (HTTPError, OSError, ValueError) as exc:
            message, _ = describe_failure(exc, READING_BODY)
            log.error("%s%s", message, error_context(ctx, self.upstream))
            if not sent:
                yield b""  # the status and headers go out first, as nginx sent them
        cut_connection(ctx)
        raise ResponseCut("the upstream response did not end")

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            if not self.complete:  # the client went away or the backend stalled: this connection is spoilt
                self.resp.close()
            if self.release is not None:
                self.release(self.complete)
        finally:
            self.finished()
