"""``api [write=on|off];``: the instance's statistics and controls, shaped after NGINX Plus's
``/api/N/...`` (``ngx_http_api_module``), so the clients people already have (the Prometheus
exporter's ``-nginx.plus`` mode, nginx-plus-go-client) read ngxsim as they read NGINX Plus.

Paths are relative to the location: ``/`` lists the versions, ``/N/`` the top-level sections,
``/N/http/`` the http ones, ``/N/SECTION/...`` a section. The core answers ``nginx``,
``processes``, ``connections``, ``slabs``, ``ssl``, ``resolvers``, ``http/requests``,
``http/server_zones``, ``http/location_zones``; a module adds its own sections through the
``ngxsim_api_sections`` hook (upstreams: ``http/upstreams``, cache_purge: ``http/caches``,
limit_req: ``http/limit_reqs``, limit_conn: ``http/limit_conns``; ``{}`` when not loaded).
Every count is the instance's (shared memory), whichever worker answers. Errors are NGINX
Plus's body: ``{"error": {"status", "text", "code"}, "request_id", "href"}``.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from werkzeug.wrappers import Response

from ..._version import __version__
from ..instance import WORKER
from ..modules import call_impl
from ..workers import WORKERS_ZONE, WorkerTable
from .jsonapi import ApiError, read_json
from .responses import json_response

VERSIONS = (1, 2, 3, 4, 5, 6, 7, 8, 9)
HREF = "https://nginx.org/en/docs/http/ngx_http_api_module.html"
MAX_BODY = 64 * 1024
WRITES = ("POST", "PATCH", "DELETE", "PUT")


@dataclass(frozen=True)
class ApiSection:
    """A part of the ``api`` tree a module answers (``ngxsim_api_sections``).

    Attributes:
        path (str): where it is, e.g. ``"http/upstreams"`` or a module's own ``"mymodule"``.
        handler: ``handler(request: ApiRequest)`` returns the JSON-able answer (200), or an
            ``ApiAnswer`` for another status; it raises ``ApiError(status, text, code=...)``
            for a bad request.
        writes (tuple[str, ...]): the methods besides GET and HEAD it takes (``"POST"``,
            ``"PATCH"``, ``"DELETE"``); they need ``api write=on``.
    """

    path: str
    handler: Callable[["ApiRequest"], Any]
    writes: tuple[str, ...] = ()


@dataclass(frozen=True)
class ApiAnswer:
    """A section's answer with a status other than 200 (``ApiAnswer(201, peer)``)."""

    status: int
    body: Any


@dataclass
class ApiRequest:
    """One request to a section: ``parts`` is the path below the section's own
    (``/api/8/http/upstreams/backend/servers/3`` -> ``["backend", "servers", "3"]``)."""

    ctx: Any
    method: str
    parts: list[str]
    max_body: int = MAX_BODY
    extra: dict = field(default_factory=dict)

    @property
    def runtime(self):
        return self.ctx.runtime

    def json(self) -> dict:
        """The request's JSON object (``ApiError`` 400/413/415 naming what is wrong)."""
        return read_json(self.ctx, self.max_body)


def answer(section: ApiSection, request: ApiRequest):
    """Call ``section`` for ``request``: the answer as (status, JSON-able body)."""
    result = section.handler(request)
    if isinstance(result, ApiAnswer):
        return result.status, result.body
    return 200, result


def plus_error(ctx, status: int, text: str, code: str, headers: dict | None = None):
    return json_response({"error": {"status": status, "text": text, "code": code}, "request_id": ctx.request_id,
                          "href": HREF}, status, headers)


def core_sections() -> list[ApiSection]:
    """The sections the core answers itself."""
    return [
        ApiSection("nginx", _nginx), ApiSection("processes", _processes), ApiSection("connections", _connections),
        ApiSection("slabs", lambda req: {}), ApiSection("resolvers", lambda req: {}),
        ApiSection("ssl", lambda req: {"handshakes": 0, "handshakes_failed": 0, "session_reuses": 0}),
        ApiSection("http/requests", _requests), ApiSection("http/server_zones", lambda req: {}),
        ApiSection("http/location_zones", lambda req: {}), ApiSection("http/limit_reqs", lambda req: {}),
        ApiSection("http/limit_conns", lambda req: {}),
        # empty until a module answers them (upstreams, cache_purge): NGINX Plus's clients read them
        ApiSection("http/upstreams", lambda req: {}), ApiSection("http/caches", lambda req: {}),
    ]


# the core answers {} until a module answers them (NGINX Plus's clients read them all)
_REPLACEABLE = ("http/upstreams", "http/caches", "http/limit_reqs", "http/limit_conns")


def collect_sections(config) -> dict[str, ApiSection]:
    """The core's sections and every module's, by path; two modules claiming one path fail the
    load naming both."""
    sections = {s.path: s for s in core_sections()}
    owners = {path: "core" for path in sections}
    impls = {impl.plugin_name: impl for impl in config.pm.hook.ngxsim_api_sections.get_hookimpls()}
    for name in config.module_names():
        impl = impls.get(name)
        if impl is None:
            continue
        found = call_impl(impl, config=config)
        for section in [found] if isinstance(found, ApiSection) else list(found or ()):
            path = section.path.strip("/")
            if path in sections and not (owners[path] == "core" and path in _REPLACEABLE):
                raise ValueError(f'api section "{path}" of module "{name}" is already answered by "{owners[path]}"')
            sections[path], owners[path] = section, name
    return sections


class ApiHandler:
    """The content handler of an ``api`` location."""

    def __init__(self, location, sections: dict[str, ApiSection], write: bool):
        self.prefix = location.value.path.rstrip("/")
        self.sections = sections
        self.write = write

    def __call__(self, ctx):
        method = ctx.environ["REQUEST_METHOD"]
        rest = ctx.uri[len(self.prefix):] if ctx.uri.startswith(self.prefix) else ""
        parts = [p for p in rest.split("/") if p]
        try:
            status, body = self._route(ctx, method, parts)
        except ApiError as exc:
            return plus_error(ctx, exc.status, exc.message, exc.code or _CODES.get(exc.status, "Error"), exc.headers)
        if status == 204:  # NGINX Plus's reset of statistics: no body
            return Response(status=204)
        return json_response(body, status)

    def _route(self, ctx, method: str, parts: list[str]):
        if not parts:
            return self._read_only(method, VERSIONS)
        if not parts[0].isdigit() or int(parts[0]) not in VERSIONS:
            raise ApiError(404, "unknown version", code="UnknownVersion")
        path = parts[1:]
        for length in range(len(path), 0, -1):
            section = self.sections.get("/".join(path[:length]))
            if section is not None:
                if method not in ("GET", "HEAD"):
                    if method not in section.writes:
                        raise ApiError(405, "method not supported", code="MethodNotSupported")
                    if not self.write:
                        raise ApiError(405, "method disabled", code="MethodDisabled")
                return answer(section, ApiRequest(ctx, method, path[length:]))
        children = self._children(path)
        if not children:
            raise ApiError(404, "path not found", code="PathNotFound")
        return self._read_only(method, children)

    def _children(self, path: list[str]) -> list[str]:
        """The names one level below ``path`` (``http`` -> ``requests``, ``upstreams``, ...)."""
        depth = len(path)
        out = []
        for key in self.sections:
            names = key.split("/")
            if len(names) > depth and names[:depth] == path and names[depth] not in out:
                out.append(names[depth])
        return out

    @staticmethod
    def _read_only(method: str, body):
        if method not in ("GET", "HEAD"):
            raise ApiError(405, "method not supported", code="MethodNotSupported")
        return 200, list(body)


def counters_section(path: str, names, counters: Callable[[Any], Any], noun: str, code: str) -> ApiSection:
    """NGINX Plus's section of per-zone statistics (``http/limit_reqs``, ``http/limit_conns``):
    ``GET`` answers every zone of ``names`` (``{zone: {field: count}}``) or one
    (``.../ZONE``), ``DELETE .../ZONE`` sets its counts to 0 (204, ``api write=on``); a zone
    not in ``names`` is 404 with NGINX Plus's ``code`` (``LimitReqNotFound``).
    ``counters(runtime)`` is this process's ``ngxsim.CounterRows`` of the zones."""
    names = tuple(names)

    def handler(req: ApiRequest):
        rows = counters(req.runtime)
        if not req.parts:
            if req.method == "DELETE":
                raise ApiError(405, "method not supported", code="MethodNotSupported")
            return {name: rows.read(name) for name in names}
        name = req.parts[0]
        if name not in names:
            raise ApiError(404, f'{noun} "{name}" not found', code=code)
        if len(req.parts) > 1:
            raise ApiError(404, "path not found", code="PathNotFound")
        if req.method == "DELETE":
            rows.reset(name)
            return ApiAnswer(204, None)
        return rows.read(name)

    return ApiSection(path, handler, writes=("DELETE",))


_CODES = {400: "BadRequest", 403: "Forbidden", 404: "PathNotFound", 405: "MethodNotSupported",
          409: "EntryExists", 413: "RequestEntityTooLarge", 415: "UnsupportedMediaType",
          500: "InternalError"}


def iso_time(epoch: float) -> str:
    """An epoch time as NGINX Plus's API writes it: ``2026-12-07T10:00:00.123Z``."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch)) + f".{int(epoch * 1000) % 1000:03d}Z"


def worker_table(runtime) -> WorkerTable:
    table = runtime.stash.get("core.workers")
    if table is None:  # a process that serves without having started as a worker (tests)
        table = runtime.stash["core.workers"] = WorkerTable(runtime.zone(WORKERS_ZONE))
    return table


def _nginx(req: ApiRequest) -> dict:
    runtime = req.runtime
    loaded = runtime.loaded_at
    if runtime.instance.role == WORKER:
        # plain gunicorn: each worker loaded the configuration itself; the instance's oldest
        # live worker says when the running one was (gunicorn's master knows no generation)
        started = [w.started_msec for w in worker_table(runtime).workers() if w.alive]
        loaded = min(started) / 1000 if started else loaded
    return {"version": __version__, "build": f"ngxsim {__version__}", "address": req.ctx.local_addr[0],
            "generation": runtime.generation, "load_timestamp": iso_time(loaded), "timestamp": iso_time(time.time()),
            "pid": os.getpid(), "ppid": runtime.instance.pid}


def _processes(req: ApiRequest) -> dict:
    return {"respawned": worker_table(req.runtime).died()}


def _connections(req: ApiRequest) -> dict:
    c = worker_table(req.runtime).connections()
    return {"accepted": c["accepted"], "dropped": c["accepted"] - c["handled"], "active": c["reading"] + c["writing"],
            "idle": c["waiting"]}


def _requests(req: ApiRequest) -> dict:
    c = worker_table(req.runtime).connections()
    return {"total": c["requests"], "current": c["writing"]}

