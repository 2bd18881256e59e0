"""The access log (nginx's ``combined`` format) and the error log (nginx's levels and line format)."""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
import time
from urllib.parse import parse_qsl, unquote_plus, urlencode

# nginx's levels, least to most severe. Python has no "notice", "alert" or "emerg": NOTICE sits
# between INFO and WARNING, ALERT and EMERG above CRITICAL ("crit")
NOTICE = 25
ALERT = 55
EMERG = 60
for _level, _name in ((NOTICE, "NOTICE"), (ALERT, "ALERT"), (EMERG, "EMERG")):
    logging.addLevelName(_level, _name)
LEVELS = {
    "debug": logging.DEBUG, "info": logging.INFO, "notice": NOTICE, "warn": logging.WARNING,
    "error": logging.ERROR, "crit": logging.CRITICAL, "alert": ALERT, "emerg": EMERG,
}
_BY_NUMBER = sorted((number, name) for name, number in LEVELS.items())
log = logging.getLogger("ngxsim")

# the connection number of the request this thread serves (nginx's "*CID" in error log lines)
_current = threading.local()


def nginx_level(levelno: int) -> str:
    """nginx's name for a Python level: the most severe nginx level at or below it."""
    name = "debug"
    for number, level in _BY_NUMBER:
        if levelno >= number:
            name = level
    return name


def set_connection(number: int | None) -> None:
    """The connection number this thread serves now (None: none); error lines carry it."""
    _current.number = number


class NginxFormatter(logging.Formatter):
    """nginx's error log line: ``YYYY/MM/DD HH:MM:SS [level] PID#TID: *CID message``, for the
    master, the workers and gunicorn's own lines alike. A traceback (a module's bug) follows on
    its own lines."""

    def format(self, record: logging.LogRecord) -> str:
        when = time.strftime("%Y/%m/%d %H:%M:%S", time.localtime(record.created))
        number = getattr(record, "connection", None) or getattr(_current, "number", None)
        conn = f"*{number} " if number else ""
        ids = f"{record.process}#{threading.get_native_id()}"
        line = f"{when} [{nginx_level(record.levelno)}] {ids}: {conn}{record.getMessage()}"
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        return f"{line}\n{record.exc_text}" if record.exc_text else line


def setup_error_log(target: tuple[str, str]) -> None:
    """Send the ``ngxsim`` logger to ``error_log``'s path (or stderr) from its level on, in
    nginx's line format."""
    path, level = target
    for handler in list(log.handlers):
        if getattr(handler, "_ngxsim", False):
            log.removeHandler(handler)
            handler.close()
    handler = logging.StreamHandler(sys.stderr) if path == "stderr" else logging.FileHandler(path)
    handler._ngxsim = True  # type: ignore[attr-defined]
    handler.setFormatter(NginxFormatter())
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
        ctx.vars["status"] = f"{status:03d}"  # nginx's: an HTTP/0.9 answer (code 9) is "009"
        ctx.vars["body_bytes_sent"] = str(length)
        ctx.logging = True
        try:
            line = self.template.render_log(ctx)
        finally:
            ctx.logging = False
        os.write(self._fd, (line + "\n").encode("utf-8", "backslashreplace"))


def error_context(ctx, upstream: str | None = None) -> str:
    """nginx's context after an error-log message about a request (``ngx_http_log_error``):
    ``, client: ADDR, server: NAME, request: "LINE"``, then ``, upstream: "URL"`` when a backend
    is involved (``http://127.0.0.1:9001/x``: the peer and the URI sent to it), ``, host: "HOST"``
    and ``, referrer: "REF"`` when the request has them. Secret query arguments are masked::

        log.error("upstream timed out (110: Connection timed out) while reading upstream%s",
                  error_context(ctx, upstream="http://127.0.0.1:9001/x"))
    """
    env = ctx.environ
    secrets = frozenset(ctx.secret_args) | frozenset(SECRET_ARGS)
    parts = [f", client: {env.get('REMOTE_ADDR', '-')}, server: {ctx.server_name}"]
    parts.append(f', request: "{mask_target(ctx.request_line, secrets)}"')
    if upstream is not None:
        parts.append(f', upstream: "{mask_target(upstream, secrets)}"')
    if env.get("HTTP_HOST") is not None:
        parts.append(f', host: "{env["HTTP_HOST"]}"')
    if env.get("HTTP_REFERER") is not None:
        parts.append(f', referrer: "{env["HTTP_REFERER"]}"')
    return "".join(parts)
