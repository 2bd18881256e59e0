"""The access log (nginx's ``combined`` format) and the error log's level mapping."""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from urllib.parse import parse_qsl, unquote_plus, urlencode

LEVELS = {
    "debug": logging.DEBUG, "info": logging.INFO, "notice": logging.INFO, "warn": logging.WARNING,
    "error": logging.ERROR, "crit": logging.CRITICAL, "alert": logging.CRITICAL, "emerg": logging.CRITICAL,
}
log = logging.getLogger("ngxsim")


def setup_error_log(target: tuple[str, str]) -> None:
    """Send the ``ngxsim`` logger to ``error_log``'s path (or stderr) from its level on."""
    path, level = target
    for handler in list(log.handlers):
        if getattr(handler, "_ngxsim", False):
            log.removeHandler(handler)
            handler.close()
    handler = logging.StreamHandler(sys.stderr) if path == "stderr" else logging.FileHandler(path)
    handler._ngxsim = True  # type: ignore[attr-defined]
    handler.setFormatter(logging.Formatter("%(asctime)s [%(levelname)s] %(process)d: %(message)s"))
    log.addHandler(handler)
    log.setLevel(LEVELS[level])
    log.propagate = False


# Names of query arguments that carry secrets, in this process: "key" (worker_events' publish
# key) always, and whatever a loaded configuration registered (``register_secret_arg``). Logs that
# see raw request text (gunicorn's own) mask these.
SECRET_ARGS: set[str] = {"key"}

def mask_query(query: str, secrets: frozenset[str]) -> str:
    """The query string with the values of secret arguments replaced by ``***``. Arguments are
    matched by their decoded name, as the handler that reads them sees it (``%6bey`` is ``key``)."""
    if not secrets or not query:
        return query
    if "%" not in query and "+" not in query and not any(s + "=" in query for s in secrets):
        return query
    pairs = parse_qsl(query, keep_blank_values=True)
    return urlencode([(k, "***" if k in secrets else v) for k, v in pairs], safe="*/:")


# the value ends at a separator, a space or a quote (a request line quoted in a log message)
_QUERY_PAIR = re.compile(r"""(^|[?&;])([^=&;\s?]+)=([^&;\s'"]*)""")


def mask_target(text: str, secrets: frozenset[str]) -> str:
    """``text`` (a query, a request target or a request line) with the values of secret query
    arguments, matched by decoded name, replaced by ``***``."""
    if not secrets or "=" not in text:
        return text

    def mask(m: re.Match) -> str:
        return f"{m.group(1)}{m.group(2)}=***" if unquote_plus(m.group(2)) in secrets else m.group(0)

    return _QUERY_PAIR.sub(mask, text)


class AccessLog:
    """One log file and its line format (``combined`` or a ``log_format``), opened per process in
    append mode (each line is one atomic write)."""

    def __init__(self, path: str, template):
        self.path = path
        self.template = template
        self._fd = -1
        self._pid = -1

    def write(self, ctx, status: int, length: int) -> None:
        if self._pid != os.getpid():
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
            self._pid = os.getpid()
        ctx.vars["status"] = str(status)
        ctx.vars["body_bytes_sent"] = str(length)
        ctx.logging = True
        try:
            line = self.template.render_log(ctx)
        finally:
            ctx.logging = False
        os.write(self._fd, (line + "\n").encode("utf-8", "backslashreplace"))



def error_context(ctx, upstream: str | None = None) -> str:
    """The suffix nginx adds to an error log line about a request (``ngx_http_log_error``):
    ``, client: ADDR, server: NAME, request: "LINE"[, upstream: "URL"][, host: "HOST"]
    [, referrer: "URL"]``. Secret query arguments are written as ``***``."""
    parts = [f", client: {ctx.environ.get('REMOTE_ADDR', '')}", f", server: {ctx.server_name}"]
    line = ctx.request_line
    if ctx.secret_args:
        line = mask_target(line, ctx.secret_args)
    parts.append(f', request: "{line}"')
    if upstream:
        parts.append(f', upstream: "{upstream}"')
    host = ctx.environ.get("HTTP_HOST")
    if host:
        parts.append(f', host: "{host}"')
    referrer = ctx.environ.get("HTTP_REFERER")
    if referrer:
        parts.append(f', referrer: "{referrer}"')
    return "".join(parts)
