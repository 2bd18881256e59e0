"""The Flask core: one catch-all dispatch that does what nginx's HTTP phases do.

Per request: pick the server (listen address, Host), pick the location (nginx's order),
enforce ``client_max_body_size``, run ``return`` or the location's content handler, apply
``add_header`` and the modules' header filters, write the access log. Everything that can be
decided from the config was decided at load time; the hot path only looks things up.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from flask import Flask, request
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Response

from .context import RequestContext
from .core_module import AddHeader, Return
from .jsonapi import ApiError
from .logs import AccessLog, log
from .responses import json_error

if TYPE_CHECKING:  # pragma: no cover
    from ..conf.loader import Block, Configuration
    from ..process import Runtime

# nginx adds headers without "always" only to these
_ADD_HEADER_CODES = frozenset((200, 201, 204, 206, 301, 302, 303, 304, 307, 308))


class _Plan:
    """What the core precomputed for one server or location block."""

    __slots__ = ("handler", "precontent", "body_filters", "filters", "headers", "ret", "max_body", "access_log", "default_type")

    def __init__(self, block: "Block", logs: dict[tuple[str, str], AccessLog], formats: dict):
        self.handler = block.stash.get("core.handler")
        self.precontent = block.stash.get("core.precontent", ())
        self.body_filters = block.stash.get("core.body_filters", ())
        self.filters = block.stash.get("core.filters", ())
        self.headers: list[AddHeader] = block.get("add_header") or []
        self.ret: Return | None = block.get("return")
        self.max_body: int = block.get("client_max_body_size") or 0
        target = block.get("access_log")
        self.access_log = logs.setdefault(target, AccessLog(target[0], formats[target[1]])) if target else None
        self.default_type: str = block.get("default_type") or "text/plain"


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
        try:
            self.runtime.enter_request()
        except Exception:  # a module's request-start work failed: say so, serve the request anyway
            log.exception("request start failed for %s %s", environ.get("REQUEST_METHOD"), environ.get("PATH_INFO"))
        ctx = RequestContext(environ, req, self.runtime)
        ctx.secret_args = self.secrets
        server = self.servers.select(*ctx.local_addr, ctx.host) if self.servers else None
        if server is None:
            return json_error(404, "no server is configured")
        ctx.server = server
        loc = server.stash["core.locations"].match(ctx.uri)
        ctx.location = loc
        plan: _Plan = (loc or server).stash["core.plan"]
        try:
            response = self._content(ctx, req, server.stash["core.plan"], plan, loc)
            for body_filter in plan.body_filters:
                response = body_filter(ctx, response)
        except ApiError as exc:  # a handler's answer to a bad request
            response = exc.response()
        except HTTPException as exc:  # e.g. a client that hung up mid-body, a body over the limit
            response = json_error(exc.code or 400, exc.description or exc.name)
        except Exception:
            log.exception("unhandled error in %s %s", environ.get("REQUEST_METHOD"), ctx.uri)
            response = json_error(500, "internal error (see the error log)")
        self._headers(ctx, response, plan)
        if plan.access_log is not None:
            length = response.calculate_content_length()
            if length is None and response.headers.get("Content-Length", "").isdigit():
                length = int(response.headers["Content-Length"])
            if response.is_streamed:  # nginx logs once the response was sent: so do we
                response.call_on_close(lambda: plan.access_log.write(ctx, response.status_code, length or 0))
            else:
                plan.access_log.write(ctx, response.status_code, length or 0)
        return response

    def _content(self, ctx: RequestContext, req, server_plan: _Plan, plan: _Plan, loc) -> Response:
        if plan.max_body:
            length = req.content_length
            if length is not None and length > plan.max_body:
                return json_error(413, f"request body of {length} bytes is larger than client_max_body_size {plan.max_body}")
            req.max_content_length = plan.max_body
        if server_plan.ret is not None:  # server-level return runs before any location
            return self._return(ctx, server_plan.ret, plan)
        if loc is None:
            return json_error(404, f"no location matches {ctx.uri}")
        if plan.ret is not None:
            return self._return(ctx, plan.ret, plan)
        for precontent in plan.precontent:  # nginx's precontent phase: a cache may answer here
            response = precontent(ctx)
            if response is not None:
                return response
        if plan.handler is not None:
            return plan.handler(ctx)
        return json_error(404, f"location {loc.value} has no content handler")

    @staticmethod
    def _return(ctx: RequestContext, ret: Return, plan: _Plan) -> Response:
        text = ret.text.render(ctx) if ret.text is not None else None
        if ret.is_redirect and text is not None:
            return Response("", status=ret.code, headers={"Location": text}, content_type="text/html")
        if text is None and ret.code >= 400:
            return json_error(ret.code, f"returned {ret.code} by configuration")
        return Response(text or "", status=ret.code, content_type=plan.default_type)

    @staticmethod
    def _headers(ctx: RequestContext, response: Response, plan: _Plan) -> None:
        if plan.headers:
            ok = response.status_code in _ADD_HEADER_CODES
            for h in plan.headers:
                if ok or h.always:
                    value = h.value.render(ctx)
                    if value:  # nginx: an empty value adds no header
                        response.headers.add(h.name, value)
        for header_filter in plan.filters:
            header_filter(ctx, response)


class NgxsimFlask(Flask):
    """Flask without routes: every request goes to the ngxsim core's dispatch."""

    def __init__(self, core: HttpCore):
        super().__init__("ngxsim", static_folder=None)
        self.ngxsim = core
        self.runtime = core.runtime

    def create_url_adapter(self, request):  # noqa: D401 - no routes: skip Werkzeug's matching
        return None

    def dispatch_request(self):  # noqa: D401 - Flask's override point
        return self.ngxsim.handle(request.environ, request._get_current_object())
