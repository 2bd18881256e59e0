"""What the core knows about one request, handed to content handlers and header filters."""

from __future__ import annotations

import posixpath
import time
import secrets
from functools import cached_property
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

if TYPE_CHECKING:  # pragma: no cover
    from ..conf.loader import Block
    from ..process import Runtime


def normalize_uri(path: str) -> str:
    """nginx's URI normalisation: merge slashes, resolve ``.`` and ``..`` (never above ``/``)."""
    if not path:
        return "/"
    if "//" not in path and "/." not in path:
        return path
    norm = posixpath.normpath(path)
    if norm.startswith("//"):
        norm = "/" + norm.lstrip("/")
    if path.endswith("/") and norm != "/":
        norm += "/"
    return norm


class RequestContext:
    """One request: its WSGI environ, the Flask request, the chosen server and location."""

    def __init__(self, environ: dict, request: Any, runtime: "Runtime"):
        self.environ = environ
        self.request = request
        self.runtime = runtime
        self.uri = normalize_uri(environ.get("PATH_INFO", "") or "/")
        self.server: Block | None = None
        self.location: Block | None = None
        self.secret_args: frozenset[str] = frozenset()
        # per-request values modules record for their variables and later phases
        # (``upstream_addr``, ``upstream_cache_status``...)
        self.vars: dict[str, str] = {}
        # per-request data a module keeps for its own later phases (a pre-content handler's
        # lookup for its body filter), by module name; never read another module's entry
        self.stash: dict[str, object] = {}
        self.started = time.monotonic()
        self.logging = False  # rendering the access log line: secrets are masked

    @cached_property
    def request_id(self) -> str:
        return secrets.token_hex(16)

    @cached_property
    def request_uri(self) -> str:
        raw = self.environ.get("RAW_URI")
        if raw:
            return raw
        qs = self.environ.get("QUERY_STRING", "")
        return self.environ.get("PATH_INFO", "/") + ("?" + qs if qs else "")

    @cached_property
    def host(self) -> str:
        host = self.environ.get("HTTP_HOST", "")
        if host.startswith("["):
            host = host[: host.find("]") + 1]
        else:
            host = host.partition(":")[0]
        return host.lower().rstrip(".")

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
        names = self.server.get("server_name") if self.server is not None else None
        return names[0] if names and names[0] not in ("", "_") else self.host

    @cached_property
    def args(self) -> dict[str, list[str]]:
        return parse_qs(self.environ.get("QUERY_STRING", ""), keep_blank_values=True)

    def arg(self, name: str) -> str:
        values = self.args.get(name)
        return values[0] if values else ""
