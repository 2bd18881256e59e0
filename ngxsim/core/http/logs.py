"""The access log (nginx's ``combined`` format) and the error log's level mapping."""

from __future__ import annotations

import logging
import os
import sys
import time
from urllib.parse import parse_qsl, urlencode

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


def mask_query(query: str, secrets: frozenset[str]) -> str:
    """The query string with the values of secret arguments replaced by ``***``. Arguments are
    matched by their decoded name, as the handler that reads them sees it (``%6bey`` is ``key``)."""
    if not secrets or not query:
        return query
    if "%" not in query and "+" not in query and not any(s + "=" in query for s in secrets):
        return query
    pairs = parse_qsl(query, keep_blank_values=True)
    return urlencode([(k, "***" if k in secrets else v) for k, v in pairs], safe="*/:")


class AccessLog:
    """One log file, opened per process in append mode (each line is one atomic write)."""

    def __init__(self, path: str):
        self.path = path
        self._fd = -1
        self._pid = -1

    def write(self, environ: dict, status: int, length: int, secrets: frozenset[str]) -> None:
        if self._pid != os.getpid():
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
            self._pid = os.getpid()
        query = mask_query(environ.get("QUERY_STRING", ""), secrets)
        target = environ.get("PATH_INFO", "/") + ("?" + query if query else "")
        request = f'{environ.get("REQUEST_METHOD", "-")} {target} {environ.get("SERVER_PROTOCOL", "HTTP/1.0")}'
        line = '{} - {} [{}] "{}" {} {} "{}" "{}"\n'.format(
            environ.get("REMOTE_ADDR", "-"),
            environ.get("REMOTE_USER") or "-",
            time.strftime("%d/%b/%Y:%H:%M:%S %z"),
            request.replace('"', '\\"'),
            status,
            length,
            environ.get("HTTP_REFERER", "-").replace('"', '\\"'),
            environ.get("HTTP_USER_AGENT", "-").replace('"', '\\"'),
        )
        os.write(self._fd, line.encode("utf-8", "backslashreplace"))
