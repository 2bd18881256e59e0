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


def declare_keyed_zones(config, directive: str, owner: str, tag: str = "") -> dict[str, Any]:
    """Declare the zones of every ``directive`` line (an http-level ``multiple`` directive whose
    values have ``name``, ``size`` and ``source``, the key as written: ``limit_req_zone``,
    ``limit_conn_zone``), with nginx's errors at the line of the occurrence:
    ``the size S of shared memory zone "N" conflicts with already declared size S0`` and
    ``DIRECTIVE "N" is already bound to key "KEY"``. Returns the values by zone name."""
    zones: dict[str, Any] = {}
    for http in config.blocks("http"):
        for spec, where in zip(http[directive], http.statements_of(directive)):
            seen = zones.get(spec.name)
            if seen is not None and seen.size != spec.size:
                raise where.error(f'the size {spec.size} of shared memory zone "{spec.name}" conflicts with '
                                  f'already declared size {seen.size}')
            if seen is not None:
                raise where.error(f'{directive} "{spec.name}" is already bound to key "{seen.source}"')
            zones[spec.name] = spec
            config.zones.declare(spec.name, spec.size, owner=owner, where=where, tag=tag)
    return zones


def check_zone_references(config, directive: str, zones: dict[str, Any]) -> None:
    """nginx's checks of a directive that names a zone (``limit_req zone=N``, ``limit_conn N 1``:
    values with a ``zone`` attribute): the same zone twice in one block is
    ``"DIRECTIVE" directive is duplicate`` at the second line; a zone no line declares is
    ``zero size shared memory zone "N"`` (nginx says it when the cycle starts, without a line;
    ngxsim adds the line that names the zone, as for every config error)."""
    blocks = list(config.main.walk())
    for block in blocks:
        seen: set[str] = set()
        for value, where in zip(block.own.get(directive, ()), block.statements_of(directive)):
            if value.zone in seen:
                raise where.error(f'"{directive}" directive is duplicate')
            seen.add(value.zone)
    for block in blocks:
        for value, where in zip(block.own.get(directive, ()), block.statements_of(directive)):
            if value.zone not in zones:  # nginx names no place; ngxsim names the line that uses it
                raise where.error(f'zero size shared memory zone "{value.zone}"')


def number_in(directive: str, low: int, high: int) -> Callable[[list[str]], int]:
    """A ``parse`` for one number from ``low`` to ``high`` with nginx's wording
    (``ngx_conf_set_num_slot`` and ``ngx_conf_check_num_bounds``): ``"DIRECTIVE" directive invalid
    number``, ``value must be between LOW and HIGH`` (``limit_req_status``)."""

    def parse(args: list[str]) -> int:
        if not re.fullmatch(r"[0-9]{1,18}", args[0]):
            raise ValueError(f'"{directive}" directive invalid number')
        value = int(args[0])
        if not low <= value <= high:
            raise ValueError(f"value must be between {low} and {high}")
        return value

    return parse


def one_of(*values: str) -> Callable[[list[str]], str]:
    """A ``parse`` for one word among ``values`` with nginx's ``ngx_conf_set_enum_slot`` wording:
    ``invalid value "x"`` (``limit_req_log_level info|notice|warn|error``)."""

    def parse(args: list[str]) -> str:
        if args[0] not in values:
            raise ValueError(f'invalid value "{args[0]}"')
        return args[0]

    return parse


# the levels nginx's limit modules log at (limit_req_log_level, limit_conn_log_level)
LIMIT_LOG_LEVELS = ("info", "notice", "warn", "error")


def limit_directives(prefix: str, contexts: tuple[str, ...] = ("http", "server", "location")) -> tuple:
    """The directives nginx's limit modules share, named after ``prefix`` (``limit_req``):
    ``PREFIX_status CODE`` (400 to 599, default 503), ``PREFIX_log_level
    info|notice|warn|error`` (default error), ``PREFIX_dry_run on|off`` (default off)."""
    from .directive import FLAG, Directive

    return (Directive(f"{prefix}_status", contexts, 1, parse=number_in(f"{prefix}_status", 400, 599), default=503),
            Directive(f"{prefix}_log_level", contexts, 1, parse=one_of(*LIMIT_LOG_LEVELS), default="error"),
            Directive(f"{prefix}_dry_run", contexts, 1, type=FLAG, default=False))
