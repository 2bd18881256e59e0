"""nginx's ``key=value`` directive parameters (``zone=one:10m rate=5r/s burst=3 nodelay``).

Every nginx module that takes such parameters loops over its arguments with ``ngx_strncmp``
and reports ``invalid parameter "x"`` for a word it does not know; the converters here give the
wording of nginx's own modules for the common kinds (``invalid zone size``, ``invalid rate``,
``invalid burst value``). A converter takes ``(value, word)`` — the text after ``=`` and the
whole word — and raises ``ValueError`` with the complete message.
"""

from __future__ import annotations

import re
from typing import Any, Callable

from .directive import parse_size

Converter = Callable[[str, str], Any]
# nginx's ngx_pagesize here; limit_req_zone and limit_conn_zone refuse a zone under 8 pages
PAGE_SIZE = 4096


def key_values(args: list[str], keys: dict[str, Converter | None]) -> dict[str, Any]:
    """The parameters in ``args`` by key. ``keys`` maps each key to its converter, or to None
    for a bare flag word (``nodelay``: True when present). A word that is neither a known
    ``key=...`` nor a known flag raises ``ValueError('invalid parameter "word"')``; a key given
    twice keeps the last value, as nginx's loops do. Absent keys are absent from the result."""
    found: dict[str, Any] = {}
    for word in args:
        key, eq, value = word.partition("=")
        if eq and key in keys and keys[key] is not None:
            found[key] = keys[key](value, word)
        elif not eq and word in keys and keys[word] is None:
            found[word] = True
        else:
            raise ValueError(f'invalid parameter "{word}"')
    return found


def require_param(found: dict[str, Any], key: str, directive: str) -> Any:
    """``found[key]``, or nginx's ``"directive" must have "key" parameter``."""
    if key not in found:
        raise ValueError(f'"{directive}" must have "{key}" parameter')
    return found[key]


def zone_param(min_size: int = 8 * PAGE_SIZE) -> Converter:
    """``zone=NAME:SIZE`` -> ``(name, bytes)``: nginx's ``invalid zone size "zone=..."`` and
    ``zone "zone=..." is too small`` (under ``min_size``)."""

    def convert(value: str, word: str) -> tuple[str, int]:
        name, colon, size_text = value.partition(":")
        try:
            if not colon:
                raise ValueError
            size = parse_size(size_text)
        except ValueError:
            raise ValueError(f'invalid zone size "{word}"') from None
        if size < min_size:
            raise ValueError(f'zone "{word}" is too small')
        return name, size

    return convert


def zone_name_param(value: str, word: str) -> str:
    """``zone=NAME`` (a reference to a zone declared elsewhere) -> the name."""
    return value


def rate_param(value: str, word: str) -> int:
    """``rate=Nr/s`` or ``rate=Nr/m`` -> requests per 1000 seconds (nginx's ``ctx->rate``, an
    integer: ``5r/s`` is 5000, ``30r/m`` is 500); ``invalid rate "rate=..."`` otherwise."""
    scale, text = 1, value
    if value.endswith("r/s"):
        text = value[:-3]
    elif value.endswith("r/m"):
        scale, text = 60, value[:-3]
    rate = int(text) if re.fullmatch(r"[0-9]{1,18}", text) else 0
    if rate <= 0:
        raise ValueError(f'invalid rate "{word}"')
    return rate * 1000 // scale


def positive_param(what: str) -> Converter:
    """A positive integer: ``invalid WHAT "word"`` otherwise (``positive_param("burst value")``
    gives nginx's ``invalid burst value "burst=0"``)."""

    def convert(value: str, word: str) -> int:
        number = int(value) if re.fullmatch(r"[0-9]{1,18}", value) else 0
        if number <= 0:
            raise ValueError(f'invalid {what} "{word}"')
        return number

    return convert
