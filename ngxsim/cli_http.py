"""What the ``ngxsim`` commands that talk to a running server share.

Where to talk: ``-c FILE|URL`` — a URL as given, else a config (``-c``, then ``$NGXSIM_CONF``,
then the embedded default, like ``ngxsim -t`` and ``ngxsim modules``) whose first location
with a given directive names the URL.

How a GET can fail, sorted by what the command should do about it:

- ``Transient`` — the server is not there or not answering right now (connection refused or
  reset, a timeout, a 5xx): a follower says so and tries again;
- ``NotThere`` — a definite answer that will not change by asking again (404, 401/403, another
  4xx, an answer that is not JSON or not the API asked for): the command exits with the reason.
"""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.parse
import urllib.request
from typing import Callable

from .core.process import config_name, load

MAX_REPLY = 16 << 20  # a status or event page is far smaller: more is not what we asked for


class Transient(Exception):
    """Worth retrying: the server may be starting, restarting or briefly overloaded."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class NotThere(Exception):
    """A final answer: what we asked for is not at that URL (or we may not see it)."""


def location_url(target: str | None, directive: str) -> str:
    """``target`` if it is a URL, else the URL of the first location of the config (``target``,
    ``$NGXSIM_CONF``, the embedded default) that says ``directive``. Raises ``NotThere`` when
    it has none that a URL can name (a regex location), ``ConfigError`` for a bad config."""
    if target and target.startswith(("http://", "https://")):
        return target
    config = load(target)
    for loc in config.blocks("location"):
        if loc.get(directive) and loc.value.modifier in ("", "=", "^~"):
            listen = loc.parent["listen"][0]
            host = "127.0.0.1" if listen.host in ("*", "0.0.0.0") else listen.host
            host = f"[{host}]" if ":" in host else host
            return f"http://{host}:{listen.port}{loc.value.path}"
    raise NotThere(f"{config_name(target)} has no location with \"{directive}\" and a plain path: "
                   f"add one, or give its URL with -c")


def get_json(url: str, params: dict, timeout: float, check: Callable[[object], str | None]) -> dict:
    """GET ``url?params`` and return its JSON object. ``check(doc)`` returns None when the
    document is the API the caller asked for, else what is wrong with it (-> ``NotThere``)."""
    query = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
    full = f"{url}?{query}" if query else url
    try:
        with urllib.request.urlopen(full, timeout=timeout) as resp:
            ctype = resp.headers.get_content_type()
            data = resp.read(MAX_REPLY + 1)
    except urllib.error.HTTPError as exc:
        detail = _error_detail(exc)
        if exc.code >= 500:
            retry = exc.headers.get("Retry-After", "")
            raise Transient(f"{exc.code} {exc.reason}{detail}",
                            float(retry) if retry.isdigit() else None) from None
        hint = {404: ": nothing there (is it the right path?)",
                401: ": it needs credentials", 403: ": access denied"}.get(exc.code, "")
        raise NotThere(f"{exc.code} {exc.reason}{detail or hint}") from None
    except (urllib.error.URLError, OSError, socket.timeout) as exc:
        reason = getattr(exc, "reason", exc)
        raise Transient(str(reason) or type(reason).__name__) from None
    if ctype != "application/json":
        raise NotThere(f"the answer is {ctype}, not JSON: not the API (is it the right URL?)")
    if len(data) > MAX_REPLY:
        raise NotThere(f"the answer is larger than {MAX_REPLY} bytes: not the API")
    try:
        doc = json.loads(data)
    except ValueError:
        raise NotThere("the answer says it is JSON but is not") from None
    problem = check(doc)
    if problem:
        raise NotThere(problem)
    return doc


def _error_detail(exc: urllib.error.HTTPError) -> str:
    """The ``message`` of an ngxsim JSON error body, if it has one."""
    try:
        if exc.headers.get_content_type() == "application/json":
            body = json.loads(exc.read(65536))
            if isinstance(body, dict) and isinstance(body.get("message"), str):
                return f": {body['message']}"
    except (OSError, ValueError):
        pass
    return ""
