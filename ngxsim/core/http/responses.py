"""Small response helpers shared by the core and modules."""

from __future__ import annotations

import json
from http import HTTPStatus

from flask.wrappers import Response as FlaskResponse
from werkzeug.datastructures import Headers
from werkzeug.wrappers import Response


def compact_json(value: object) -> str:
    """The JSON text every ngxsim answer uses: no spaces, UTF-8 left as is."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def json_response(body: object, status: int = 200, headers: dict | None = None) -> Response:
    """``body`` as compact JSON (``application/json``) with that status and extra headers."""
    data = compact_json(body)
    return Response(data, status=status, headers=headers, content_type="application/json")


def json_error(status: int, message: str, headers: dict | None = None, **extra: object) -> Response:
    """``{"status": 400, "error": "Bad Request", "message": "..."}`` with that status."""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    return json_response({"status": status, "error": phrase, "message": message, **extra}, status, headers)


# nginx's reason phrases (ngx_http_header_filter_module.c); a code without one is sent as "NNN "
REASONS: dict[int, str] = {
    200: "OK", 201: "Created", 202: "Accepted", 204: "No Content", 206: "Partial Content",
    301: "Moved Permanently", 302: "Moved Temporarily", 303: "See Other", 304: "Not Modified",
    307: "Temporary Redirect", 308: "Permanent Redirect",
    400: "Bad Request", 401: "Unauthorized", 402: "Payment Required", 403: "Forbidden", 404: "Not Found",
    405: "Not Allowed", 406: "Not Acceptable", 408: "Request Time-out", 409: "Conflict", 410: "Gone",
    411: "Length Required", 412: "Precondition Failed", 413: "Request Entity Too Large",
    414: "Request-URI Too Large", 415: "Unsupported Media Type", 416: "Requested Range Not Satisfiable",
    421: "Misdirected Request", 429: "Too Many Requests",
    500: "Internal Server Error", 501: "Not Implemented", 502: "Bad Gateway",
    503: "Service Temporarily Unavailable", 504: "Gateway Time-out", 505: "HTTP Version Not Supported",
    507: "Insufficient Storage",
}
# the codes nginx has an HTML page for (ngx_http_special_response.c), by the page's title where
# it differs from the reason phrase
_PAGE_TITLES: dict[int, str] = {
    **{code: REASONS[code] for code in (301, 303, 307, 308, 400, 402, 403, 404, 405, 406, 408, 409, 410, 411,
                                        412, 413, 414, 415, 416, 421, 429, 500, 501, 502, 503, 504, 505, 507)},
    302: "Found", 401: "Authorization Required",
}
_PAGE_TAIL = "<hr><center>ngxsim</center>\r\n</body>\r\n</html>\r\n"
# nginx pads its error pages for browsers that would show their own page instead of a short one
_MSIE_PADDING = "<!-- a padding to disable MSIE and Chrome friendly error page -->\r\n" * 6


def status_line(code: int) -> str:
    """The WSGI status for ``code`` with nginx's reason phrase (``302 Moved Temporarily``)."""
    reason = REASONS.get(code)
    return f"{code} {reason}" if reason else f"{code} "


def keep_status_line(response: Response, line: str, absolute_location: bool = False) -> Response:
    """Send ``response`` with the status line ``line`` (``"200 Fine"``) as it is, as nginx's
    proxy does with an upstream's; every other response gets nginx's phrase for its code.

    Such a response is an upstream's, relayed: its ``Location`` is sent as the upstream sent it
    too. nginx's header filter makes a ``Location`` starting with ``/`` absolute only for the
    answers nginx makes itself (``absolute_redirect``); ngx_http_upstream leaves a relative one
    of an upstream relative; but one the module rewrote from an absolute one (``proxy_redirect``:
    ``absolute_location=True``) is made absolute, as nginx's header filter does then."""
    code = int(line.split(" ", 1)[0])
    response._status = line if " " in line else f"{line} "  # noqa: SLF001 - see set_status_line
    response._status_code = code  # noqa: SLF001
    response.ngxsim_status_line = True
    response.ngxsim_absolute_location = absolute_location
    return response


def checked_headers(pairs: list[tuple[str, str]]) -> Headers:
    """Werkzeug ``Headers`` that hold ``pairs`` (the list itself, not a copy): ``(name, value)``
    strings the caller has checked as nginx checks an upstream's header lines — no CR or LF in
    either, a name without spaces or controls — e.g. an upstream's answer relayed. Werkzeug's own
    constructor checks and copies each pair again (a few microseconds per response)."""
    headers = Headers()
    headers._list = pairs  # noqa: SLF001 - Werkzeug's storage: a list of (name, value) pairs
    return headers


def as_http09(response: Response) -> Response:
    """Send only ``response``'s body, as an HTTP/0.9 answer: no status line, no header, the
    connection closed after the body. nginx's proxy relays an upstream's answer without a
    status line so. Its code is the one nginx logs for it, 9 (``$status`` is ``009``): no
    header filter takes it for a 200 (``add_header`` without ``always``, a cache).

    ngxsim's worker classes write it (``environ["ngxsim.http09"]``); a server that cannot
    (gunicorn's own worker classes, a test client) gets it as a ``200`` with the body."""
    response._status, response._status_code = "009 ", 9  # noqa: SLF001 - see set_status_line
    response.ngxsim_status_line = True  # set_status_line leaves it
    response.ngxsim_http09 = True
    return response


def set_status_line(response: Response, code: int | None = None) -> None:
    """Give ``response`` nginx's status line (all of ngxsim's answers carry nginx's phrases,
    except one a module kept with ``keep_status_line``)."""
    if code is None and getattr(response, "ngxsim_status_line", False):
        return
    code = response.status_code if code is None else code
    # Werkzeug fills in (upper-case) phrases of its own and strips a trailing space: set the
    # line nginx sends as it is
    response._status = status_line(code)  # noqa: SLF001 - no public setter keeps it verbatim
    response._status_code = code  # noqa: SLF001


class NginxResponse(FlaskResponse):
    """A response sent the way nginx sends it. The core's Flask app uses this class for every
    response (``NgxsimFlask.wsgi_app`` makes a module's plain Werkzeug response one, with
    ``force_type``). Werkzeug's own changes to the headers are undone:

    - ``Location`` and ``Content-Location`` go as they were set (Werkzeug percent-encodes
      them, ``not a url`` -> ``not%20a%20url``, and drops a trailing ``?``; nginx sends the
      bytes it has);
    - a 304 keeps what the response has (Werkzeug drops its entity headers, ``Content-Type``
      and ``Content-Length`` among them; nginx's ``return 304`` sends ``Content-Length: 0``);
    - a 204 relayed from an upstream (``keep_status_line``) keeps its ``Content-Length``, as
      nginx's header filter leaves a response with the upstream's status line alone.
    """

    def get_wsgi_headers(self, environ):
        """Werkzeug's, less what nginx does not do (one pass over the headers, as it is done
        for every response): no ``Location``/``Content-Location`` re-encoding, a 304 as it is;
        ``Content-Length`` dropped from a 1xx or ngxsim's own 204 and computed for a buffered
        body without one. The response's own headers when nothing changes (the server only
        reads them: ``get_wsgi_response`` makes its list), else a copy changed."""
        headers = self.headers
        status = self.status_code
        if status == 304:
            return headers
        if 100 <= status < 200 or (status == 204 and not getattr(self, "ngxsim_status_line", False)):
            headers = Headers(headers)
            headers.remove("Content-Length")
        elif self.automatically_set_content_length and self.is_sequence:
            if first_header(headers, "Content-Length") is None:
                headers = Headers(headers)
                headers["Content-Length"] = str(sum(len(x) for x in self.iter_encoded()))
        return headers

    def get_app_iter(self, environ):
        """A buffered body of bytes with nothing to run when closed goes to the server as it is
        (Werkzeug wraps every body in a closing, encoding iterator)."""
        body = self.response
        if (type(body) is list and not self._on_close and environ["REQUEST_METHOD"] != "HEAD"
                and 200 <= self.status_code and self.status_code not in (204, 304)
                and all(type(piece) is bytes for piece in body)):
            return body
        return super().get_app_iter(environ)


def first_header(headers: Headers, name: str) -> str | None:
    """The first value of ``name`` in ``headers``, None without one: Werkzeug's ``get`` makes
    (and drops) an exception for every name that is not there, a cost on every response."""
    name = name.lower()
    for key, value in headers:
        if key.lower() == name:
            return value
    return None


def error_page(status: int, headers: dict | None = None) -> Response:
    """What nginx answers when it makes the response itself (``return 404;``, a 400 for a bad
    request, a 502 from a proxy with no live peer): its HTML page for ``status``, or an empty
    body for a code it has no page for. The core pads 4xx/5xx pages for MSIE and Chrome as
    nginx does (``pad_error_page``)."""
    title = _PAGE_TITLES.get(status)
    if title is None:
        response = NginxResponse(b"", headers=headers)
        response.headers.pop("Content-Type", None)
    else:
        heading = f"{status} {title}"
        body = (f"<html>\r\n<head><title>{heading}</title></head>\r\n<body>\r\n"
                f"<center><h1>{heading}</h1></center>\r\n{_PAGE_TAIL}")
        response = NginxResponse(body, headers=headers, content_type="text/html")
    response.ngxsim_page = True
    set_status_line(response, status)
    return response


def pad_error_page(response: Response, user_agent: str) -> None:
    """nginx's ``msie_padding``: a 4xx/5xx page of its own gets comments that make MSIE and
    Chrome show it instead of their own short-page replacement."""
    if (getattr(response, "ngxsim_page", False) and response.status_code >= 400
            and first_header(response.headers, "Content-Type") == "text/html" and _padded_browser(user_agent)):
        response.set_data(response.get_data() + _MSIE_PADDING.encode())


def _padded_browser(user_agent: str) -> bool:
    """nginx's ``msie_padding`` test: MSIE (not Opera), or Chrome when not Gecko."""
    if "Opera" in user_agent:
        return False
    at = user_agent.find("MSIE ")
    if at >= 0 and at + 7 < len(user_agent):
        return True
    return "Gecko/" not in user_agent and "Chrome/" in user_agent
