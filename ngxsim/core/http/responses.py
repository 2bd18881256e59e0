"""Small response helpers shared by the core and modules."""

from __future__ import annotations

import json
from http import HTTPStatus

from werkzeug.wrappers import Response


def compact_json(value: object) -> str:
    """The JSON text every ngxsim answer uses: no spaces, UTF-8 left as is."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def json_response(body: object, status: int = 200, headers: dict | None = None) -> Response:
    data = compact_json(body)
    return Response(data, status=status, headers=headers, content_type="application/json")


def json_error(status: int, message: str, headers: dict | None = None, **extra: object) -> Response:
    """``{"status": 400, "error": "Bad Request", "message": "..."}`` with that status."""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    return json_response({"status": status, "error": phrase, "message": message, **extra}, status, headers)


def error_page(status: int, headers: dict | None = None) -> Response:
    """nginx's own HTML error page for ``status`` (what nginx answers when it generates the
    response itself: a 502 from a proxy with no live peer, a 504 on a read timeout)."""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = ""
    title = f"{status} {phrase}".rstrip()
    body = (f"<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n"
            f"<center><h1>{title}</h1></center>\r\n<hr><center>ngxsim</center>\r\n</body>\r\n</html>\r\n")
    return Response(body, status=status, headers=headers, content_type="text/html")
