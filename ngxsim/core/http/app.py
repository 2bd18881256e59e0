"""The Flask core: one catch-all dispatch that does what nginx's HTTP phases do.

Per request, in nginx's order: refuse what nginx refuses with 400 (a target or Host it cannot
parse, HTTP/1.1 without Host), pick the server (listen address, host), run a server-level
``return``, pick the location (nginx's order, nested locations, regex captures), enforce
``client_max_body_size``, run ``return``, the pre-content handlers or the content handler, apply
``add_header`` and the modules' header filters, write the access log. Answers the core makes
itself are nginx's: its HTML error pages, its redirect bodies and absolute ``Location``, its
reason phrases, ``444`` closing the connection. Everything that can be decided from the config
was decided at load time; the hot path only looks things up.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from flask import Flask, request
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Response

from ..instance import MasterGone
from .connection import client_closed, client_gone, cut_connection
from .context import HTTP09, RequestContext
from .core_module import AddHeader, Return
from .jsonapi import ApiError
from .logs import AccessLog, log
from .phases import ACCESS_PHASES, CONTENT, LOG, SERVER_REWRITE
from .regex import to_bytes
from .responses import NginxResponse, error_page, first_header, json_error, pad_error_page, set_status_line
from .uri import BadRequest
from .waits import STATE, Parked, Wait, take_resume

if TYPE_CHECKING:  # pragma: no cover
    from ..conf.loader import Block, Configuration
    from ..process import Runtime

# nginx adds headers without "always" only to these
_ADD_HEADER_CODES = frozenset((200, 201, 204, 206, 301, 302, 303, 304, 307, 308))
_REDIRECTS = frozenset((301, 302, 303, 307, 308))
CLOSE = 444  # nginx's code for "close the connection without an answer"
# nginx's types when a config has no types { } of its own
DEFAULT_TYPES = {"html": "text/html", "gif": "image/gif", "jpg": "image/jpeg"}


def _types(tables: list[dict[str, str]]) -> dict[str, str]:
    """The extension table of a level: its ``types`` blocks together, else nginx's built-in one."""
    if not tables:
        return DEFAULT_TYPES
    merged: dict[str, str] = {}
    for table in tables:
        merged.update(table)
    return merged


class _Plan:
    """What the core precomputed for one server or location block."""

    __slots__ = ("server_rewrite", "access_phases", "content", "log_phase", "body_filters", "filters", "headers",
                 "ret", "max_body", "access_log", "default_type", "types", "absolute_redirect", "port_in_redirect",
                 "server_name_in_redirect")

    def __init__(self, block: "Block", logs: dict[tuple[str, str], AccessLog], formats: dict):
        phases = block.stash.get("core.phases") or {}
        self.server_rewrite = tuple(phases.get(SERVER_REWRITE, ()))
        self.access_phases = tuple(h for phase in ACCESS_PHASES for h in phases.get(phase, ()))
        handler = block.stash.get("core.handler")  # a location's content handler owns its content phase
        self.content = (handler,) if handler is not None else tuple(phases.get(CONTENT, ()))
        self.log_phase = tuple(phases.get(LOG, ()))
        self.body_filters = block.stash.get("core.body_filters", ())
        self.filters = block.stash.get("core.filters", ())
        self.headers: list[AddHeader] = block.get("add_header") or []
        self.ret: Return | None = block.get("return")
        self.max_body: int = block.get("client_max_body_size") or 0
        target = block.get("access_log")
        self.access_log = logs.setdefault(target, AccessLog(target[0], formats[target[1]])) if target else None
        self.default_type: str = block.get("default_type") or "text/plain"
        self.types: dict[str, str] = _types(block.get("types") or [])
        self.absolute_redirect: bool = block.get("absolute_redirect", True)
        self.port_in_redirect: bool = block.get("port_in_redirect", True)
        self.server_name_in_redirect: bool = block.get("server_name_in_redirect", False)


class HttpCore:
    def __init__(self, config: "Configuration", runtime: "Runtime"):
        self.config = config
        self.runtime = runtime
        core = config.stash.get("core.http")
        self.servers = core.servers if core else None
        self.secrets: frozenset[str] = frozenset(config.secret_args)
        logs: dict[tuple[str, str], AccessLog] = {}
        formats = config.stash.get("core.log_formats") or {}
        for block in config.main.walk():
            if block.context in ("server", "location"):
                block.stash["core.plan"] = _Plan(block, logs, formats)

    def handle(self, environ: dict, req) -> Response:
        resume = take_resume()
        if resume is not None:  # the server's event loop resumes a request a handler set aside
            return resume()
        try:
            self.runtime.enter_request()
        except MasterGone as exc:  # an orphaned worker: nothing it accepted would last
            return _master_gone(exc)
        except Exception:  # a module's request-start work failed: say so, serve the request anyway
            log.exception("request start failed for %s %s", environ.get("REQUEST_METHOD"), environ.get("PATH_INFO"))
        ctx = RequestContext(environ, req, self.runtime)
        ctx.secret_args = self.secrets
        if self.servers is None:
            return self._finish(ctx, error_page(404), None)
        return self._drive(ctx, self._phases(ctx, req), None)

    def _drive(self, ctx: RequestContext, engine, sent) -> Response:
        """Run the phase engine to its response. A wait a handler returned either parks the
        request (the server resumes it later on a thread, ``Parked``) or blocks this thread."""
        while True:
            try:
                wait = engine.send(sent)
            except StopIteration as done:
                return done.value
            if STATE.can_park:
                raise Parked(wait, lambda: self._drive(ctx, engine, None))
            wait.block()
            sent = None

    def _phases(self, ctx: RequestContext, req):
        """nginx's phase engine for one request (a generator: it yields the waits handlers ask
        for and returns the finished response)."""
        server, refusal = self._server(ctx)
        ctx.server = server
        plan: _Plan = server.stash["core.plan"]
        if refusal is not None:
            return self._finish(ctx, refusal, plan)
        response = None
        if plan.ret is not None:  # the server's rewrite phase runs before any location is chosen
            response = self._guard(ctx, lambda: self._return(ctx, plan.ret, plan))
        else:
            response = yield from self._run(ctx, plan.server_rewrite)
        if response is not None:
            return self._finish(ctx, response, plan)
        matcher = server.stash["core.locations"]
        loc, captures = matcher.find(ctx.uri, ctx.uri_bytes) if matcher is not None else (None, [])
        ctx.record(captures)
        ctx.location = loc
        if loc is not None:
            plan = loc.stash["core.plan"]
        response = self._guard(ctx, lambda: self._find_config(req, plan))
        if response is None and plan.ret is not None and loc is not None:  # the rewrite phase's return
            response = self._guard(ctx, lambda: self._return(ctx, plan.ret, plan))
        if response is None:
            response = yield from self._run(ctx, plan.access_phases)
        if response is None:
            response = yield from self._run(ctx, plan.content)
        if response is None:
            response = error_page(404)  # nginx's static module would look for a file; there is none
        if loc is not None:
            for body_filter in plan.body_filters:
                response = self._guard(ctx, lambda r=response, f=body_filter: f(ctx, r))
        return self._finish(ctx, response, plan)

    def _run(self, ctx: RequestContext, handlers):
        """Handlers in order until one answers; a wait yields to the driver, then ``then``."""
        for handler in handlers:
            result = self._guard(ctx, lambda h=handler: h(ctx))
            while isinstance(result, Wait):
                yield result
                if client_gone(ctx):  # it hung up meanwhile: nginx's ngx_http_test_reading
                    return client_closed(ctx)
                then = result.then
                result = self._guard(ctx, lambda: then(ctx)) if then is not None else None
            if result is not None:
                return result
        return None

    def _server(self, ctx: RequestContext) -> tuple["Block", Response | None]:
        """The server for the request and, when nginx would refuse the request, its answer."""
        if ctx.invalid is not None:  # nginx answers from the address's default server
            return self.servers.find(*ctx.local_addr, "")[0], error_page(400)
        try:
            host = ctx.request_host
        except BadRequest:
            return self.servers.find(*ctx.local_addr, "")[0], error_page(400)
        server, captures = self.servers.find(*ctx.local_addr, host if host is not None else "")
        if captures is not None:
            ctx.record([captures])
        if "HTTP_HOST" not in ctx.environ and ctx.environ.get("SERVER_PROTOCOL") != "HTTP/1.0":
            return server, error_page(400)  # "client sent HTTP/1.1 request without "Host" header"
        if ctx.environ.get("REQUEST_METHOD") in ("TRACE", "CONNECT"):
            return server, error_page(405)
        return server, None

    def _guard(self, ctx: RequestContext, step) -> Response:
        try:
            return step()
        except ApiError as exc:  # a module's JSON API answers a bad request with its JSON error
            return exc.response()
        except MasterGone as exc:  # the master died while this request ran (Runtime.check_master)
            return _master_gone(exc)
        except HTTPException as exc:  # e.g. a client that hung up mid-body, a body over the limit
            if isinstance(exc.__context__, TimeoutError):  # werkzeug's wrapper around a body read
                return _body_timeout()
            return error_page(exc.code or 400)
        except TimeoutError:  # ngxsim.worker.Worker: the body paused longer than client_body_timeout
            return _body_timeout()
        except Exception:
            log.exception("unhandled error in %s %s", ctx.environ.get("REQUEST_METHOD"), ctx.uri)
            return error_page(500)

    @staticmethod
    def _find_config(req, plan: _Plan) -> Response | None:
        """What nginx checks once the location is chosen: ``client_max_body_size``."""
        if plan.max_body:
            # Werkzeug's content_length: None without a Content-Length (asked only then: it
            # looks up two headers that are mostly absent, each a raised KeyError)
            length = req.content_length if "CONTENT_LENGTH" in req.environ else None
            if length is not None and length > plan.max_body:
                log.error("client intended to send too large body: %d bytes", length)
                return error_page(413)
            req.max_content_length = plan.max_body
        return None

    @staticmethod
    def _return(ctx: RequestContext, ret: Return, plan: _Plan) -> Response:
        """``return``, as ``ngx_http_script_return_code`` does it."""
        if ret.code >= 400 and ret.text is None:
            response = error_page(ret.code)
            if ret.code == CLOSE:
                response.ngxsim_close = True  # _finish ends the connection instead of answering
            return response
        text = ret.text.render(ctx) if ret.text is not None else ""
        if ret.code in _REDIRECTS:
            response = error_page(ret.code)
            response.headers["Location"] = _header_value(text)
            return response
        return NginxResponse(to_bytes(text), status=ret.code, content_type=_content_type(ctx, plan))

    def _finish(self, ctx: RequestContext, response: Response, plan: _Plan | None) -> Response:
        """What nginx's header filters do to every response, then the access log."""
        code = response.status_code
        if getattr(response, "ngxsim_close", False):
            cut_connection(ctx)  # the server then fails to write the 444 and drops it
        if getattr(response, "ngxsim_http09", False):
            _answer_http09(ctx.environ, response)  # nginx's header filter sends no header then
        if code == 204 and not getattr(response, "ngxsim_status_line", False):
            # nginx sends its own 204 without a body or a type (an upstream's goes as it came)
            response.headers.pop("Content-Type", None)
            response.set_data(b"")
            response.headers.pop("Content-Length", None)
        pad_error_page(response, ctx.environ.get("HTTP_USER_AGENT", ""))
        if plan is not None:
            _absolute_location(ctx, response, plan)
            self._headers(ctx, response, plan)
        set_status_line(response)
        if plan is not None and (plan.access_log is not None or plan.log_phase):
            ctx.response = response
            if response.is_sequence:
                self._log_phase(ctx, response, plan, response.calculate_content_length() or 0)
            else:  # nginx logs once the response was sent, with the body bytes sent: so do we
                # (Werkzeug's calculate_content_length would read a streamed body whole first)
                body = response.response = _Counted(response.response)
                response.call_on_close(lambda: self._log_phase(ctx, response, plan, body.sent))
        return response

    @staticmethod
    def _log_phase(ctx: RequestContext, response: Response, plan: _Plan, length: int) -> None:
        """nginx's log phase: the access log, then the modules' log handlers (``ctx.response``)."""
        if plan.access_log is not None:
            plan.access_log.write(ctx, response.status_code, length)
        for handler in plan.log_phase:
            try:
                handler(ctx)
            except Exception:
                log.exception("log phase handler failed in %s %s", ctx.environ.get("REQUEST_METHOD"), ctx.uri)

    @staticmethod
    def _headers(ctx: RequestContext, response: Response, plan: _Plan) -> None:
        if plan.headers:
            ok = response.status_code in _ADD_HEADER_CODES
            for h in plan.headers:
                if ok or h.always:
                    value = h.value.render(ctx)
                    if value:  # nginx: an empty value adds no header
                        response.headers.add(h.name, _header_value(value))
        for header_filter in plan.filters:
            header_filter(ctx, response)


def _answer_http09(environ: dict, response: Response) -> None:
    """A response ``as_http09`` marked: ngxsim's worker classes write its body alone (the
    callable they put in the environ); any other server gets a 200 with the body (logged so)."""
    write_http09 = environ.get(HTTP09)
    if write_http09 is not None:
        write_http09()
    else:
        set_status_line(response, 200)


class _Counted:
    """A streamed body that counts the bytes the server took from it (``$body_bytes_sent``)."""

    __slots__ = ("body", "sent")

    def __init__(self, body):
        self.body = body
        self.sent = 0

    def __iter__(self):
        for piece in self.body:
            self.sent += len(piece.encode() if isinstance(piece, str) else piece)
            yield piece

    def close(self) -> None:
        close = getattr(self.body, "close", None)
        if close is not None:
            close()


def _master_gone(exc: MasterGone) -> Response:
    return json_error(503, str(exc), headers={"Connection": "close", "Retry-After": "1"})


def _body_timeout() -> Response:
    """nginx's 408 when client_body_timeout passed between two reads; the connection closes."""
    response = error_page(408)
    response.headers["Connection"] = "close"
    return response


def _header_value(text: str) -> str:
    """A header value as WSGI carries bytes (UTF-8 from the config or the URI, sent as is)."""
    return to_bytes(text).decode("latin-1")


def _content_type(ctx: RequestContext, plan: _Plan) -> str:
    """nginx's type by the URI's extension (``types``), else ``default_type``."""
    segment = ctx.uri.rpartition("/")[2]
    dot = segment.rfind(".")
    if dot > 0:
        found = plan.types.get(segment[dot + 1 :].lower())
        if found:
            return found
    return plan.default_type


def _absolute_location(ctx: RequestContext, response: Response, plan: _Plan) -> None:
    """nginx's header filter makes a ``Location`` that starts with ``/`` absolute
    (``absolute_redirect``), with the request's host (or the server's name with
    ``server_name_in_redirect``) and the local port unless it is 80 (``port_in_redirect``);
    not an upstream's answer relayed (``keep_status_line``), as nginx's upstream module leaves
    those alone."""
    location = first_header(response.headers, "Location")
    if not location or not location.startswith("/") or not plan.absolute_redirect:
        return
    if getattr(response, "ngxsim_status_line", False) and not getattr(response, "ngxsim_absolute_location", False):
        return
    if plan.server_name_in_redirect:
        host = ctx.server_name
    else:
        try:
            host = ctx.request_host
        except BadRequest:
            host = None
        if not host:
            host = ctx.local_addr[0]
    port = ctx.local_addr[1] if plan.port_in_redirect else 0
    scheme = ctx.environ.get("wsgi.url_scheme", "http")
    default_port = 443 if scheme == "https" else 80
    suffix = f":{port}" if port and port != default_port else ""
    response.headers["Location"] = f"{scheme}://{_header_value(host)}{suffix}{location}"


class NgxsimFlask(Flask):
    """Flask without routes: every request goes to the ngxsim core's dispatch.

    ``wsgi_app`` is Flask's documented override point for what runs per request. Flask's own
    does, around the one view, what a routeless core never uses — an app and a request context
    pushed and popped, a session opened, URL matching, ``before``/``after``/``teardown``
    functions and six signals sent — and that cost more than the core's whole dispatch of a
    cache hit (29 of 72 us per request, benchmarks/bench_cache.py). This one makes Flask's
    ``Request`` (``ctx.request``), runs the core, and answers with the core's response; any
    error the core's guards did not turn into nginx's answer becomes nginx's 500 page, never
    Flask's. Modules get the request through ``ctx`` (``ctx.request``), not Flask's
    ``flask.request`` proxy, and ask :func:`ngxsim.serving_request` where they used
    ``flask.has_request_context``."""

    response_class = NginxResponse

    def __init__(self, core: HttpCore):
        super().__init__("ngxsim", static_folder=None)
        self.ngxsim = core
        self.runtime = core.runtime

    def create_url_adapter(self, request):  # noqa: D401 - no routes: skip Werkzeug's matching
        return None

    def dispatch_request(self):  # noqa: D401 - Flask's override point (its test helpers)
        return self.ngxsim.handle(request.environ, request._get_current_object())

    def wsgi_app(self, environ, start_response):
        req = self.request_class(environ)
        state = STATE
        state.serving = True
        try:
            response = self.ngxsim.handle(environ, req)
        except HTTPException as exc:  # raised outside a handler's guard (e.g. reading the target)
            response = error_page(exc.code or 400)
        except Exception:
            log.exception("unhandled error in %s %s", environ.get("REQUEST_METHOD"), environ.get("PATH_INFO"))
            response = error_page(500)
        finally:
            state.serving = False
            if "files" in req.__dict__:  # what Flask's request context does when popped
                req.close()  # close the uploaded files (only a parsed form has them)
        if not isinstance(response, NginxResponse):
            # a module's Werkzeug response: sent as nginx sends it too (Flask's make_response did
            # this before the core ran without it), e.g. an upstream's 204 keeps its Content-Length
            response = NginxResponse.force_type(response)
        try:
            return response(environ, start_response)
        except Exception:  # a header the response cannot carry: nginx's 500, not the server's
            log.exception("unhandled error answering %s %s", environ.get("REQUEST_METHOD"), environ.get("PATH_INFO"))
            exc_info = sys.exc_info()  # start_response may have been called: replace its headers
            return error_page(500)(environ, lambda status, headers: start_response(status, headers, exc_info))
