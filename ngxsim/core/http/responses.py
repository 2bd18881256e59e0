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
