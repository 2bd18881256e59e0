"""``match NAME { ... }``: what a health probe's response must look like (NGINX Plus's ``match``).

Inside the block (every test must hold; several of each kind may be given)::

    status 200;              status ! 500;           status 200-399 204;     status ! 400-599;
    header Content-Type;     header ! X-Maintenance;
    header Content-Type = application/json;          header Content-Type != text/html;
    header Content-Type ~ json;                      header Server !~ "^old";
    body ~ "\\"status\\": *\\"up\\"";                 body !~ maintenance;

Header names compare case-insensitively; ``=``/``~`` need some header of that name whose value
is equal to / matches the text; ``!=``/``!~`` need that none is (an absent header passes). Regexes
are nginx's (PCRE2 on bytes, ``ngxsim.Regex``), searched (not anchored), case-sensitive; ``body`` is the first
``MAX_BODY`` bytes of the body read as UTF-8. Each line is checked when the config loads and a
bad one fails it with nginx's ``... in FILE:LINE``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable

from ngxsim import Regex

MAX_BODY = 256 * 1024  # how much of a probe's body the tests look at (and the prober reads)
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an HTTP header name (RFC 9110 token)


def _compile(pattern: str) -> Regex:
    """nginx's regexes (PCRE2 on bytes, nginx's wording for a pattern that does not compile)."""
    return Regex(pattern)


# -- status -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class StatusTest:
    """``status [!] CODE|LOW-HIGH ...``: the status is (not) one of the codes or ranges."""

    ranges: tuple[tuple[int, int], ...]
    negate: bool = False

    def check(self, status: int) -> str | None:
        hit = any(low <= status <= high for low, high in self.ranges)
        if hit != self.negate:
            return None
        return f"status {status}"


def _code(text: str, whole: str) -> int:
    if not text.isdigit() or not 100 <= int(text) <= 599:
        raise ValueError(f'invalid status "{whole}" in "status" directive: a code from 100 to 599, '
                         f'or a range like 200-399, is required')
    return int(text)


def parse_status(args: list[str]) -> StatusTest:
    negate = args[0] == "!"
    items = args[1:] if negate else args
    if not items:
        raise ValueError('"status !" needs at least one code or range')
    ranges = []
    for item in items:
        low, dash, high = item.partition("-")
        first = _code(low, item)
        last = _code(high, item) if dash else first
        if last < first:
            raise ValueError(f'invalid status range "{item}" in "status" directive: {first} is above {last}')
        ranges.append((first, last))
    return StatusTest(tuple(ranges), negate)


# -- header -----------------------------------------------------------------------------------

_HEADER_OPS = ("=", "!=", "~", "!~")


@dataclass(frozen=True)
class HeaderTest:
    """``header [!] NAME`` (present / absent) or ``header NAME OP VALUE`` (OP: = != ~ !~)."""

    name: str
    op: str | None = None       # None: presence test
    value: str = ""
    negate: bool = False        # for a presence test: must be absent
    regex: Regex | None = None

    def check(self, headers: Iterable[tuple[str, str]]) -> str | None:
        values = [v for k, v in headers if k.lower() == self.name.lower()]
        if self.op is None:
            if bool(values) != self.negate:
                return None
            return f"header {self.name} {'present' if self.negate else 'missing'}"
        if self.op in ("=", "!="):
            hit = any(v == self.value for v in values)
        else:
            hit = any(self.regex.matches(v) for v in values)
        if hit == (self.op in ("=", "~")):
            return None
        if not values:
            return f"header {self.name} missing"
        return f'header {self.name} "{values[0]}" fails {self.op} "{self.value}"'


def _header_name(name: str) -> str:
    if not _TOKEN.fullmatch(name):
        raise ValueError(f'invalid header name "{name}" in "header" directive')
    return name


def parse_header(args: list[str]) -> HeaderTest:
    if len(args) == 1:
        return HeaderTest(_header_name(args[0]))
    if len(args) == 2:
        if args[0] != "!":
            raise ValueError(f'invalid "header" test "{" ".join(args)}": use "header NAME", "header ! NAME" '
                             f'or "header NAME =|!=|~|!~ VALUE"')
        return HeaderTest(_header_name(args[1]), negate=True)
    name, op, value = args
    if op not in _HEADER_OPS:
        raise ValueError(f'invalid operator "{op}" in "header" directive: use =, !=, ~ or !~')
    regex = _compile(value) if op in ("~", "!~") else None
    return HeaderTest(_header_name(name), op, value, regex=regex)


# -- body -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BodyTest:
    """``body ~ REGEX`` / ``body !~ REGEX`` on the first ``MAX_BODY`` bytes (UTF-8)."""

    regex: Regex
    negate: bool = False

    def check(self, body: str) -> str | None:
        if self.regex.matches(body) != self.negate:
            return None
        return f'body {"matches" if self.negate else "does not match"} "{self.regex.source}"'


def parse_body(args: list[str]) -> BodyTest:
    op, pattern = args
    if op not in ("~", "!~"):
        raise ValueError(f'invalid operator "{op}" in "body" directive: use ~ or !~')
    return BodyTest(_compile(pattern), op == "!~")


# -- the block --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Match:
    """A ``match`` block's tests, all of which a response must pass."""

    name: str
    status: tuple[StatusTest, ...] = ()
    headers: tuple[HeaderTest, ...] = ()
    body: tuple[BodyTest, ...] = ()

    @property
    def reads_body(self) -> bool:
        return bool(self.body)

    def check(self, status: int, headers: Iterable[tuple[str, str]], body: str = "") -> str | None:
        """None when the response passes; otherwise why it fails (the first test that does)."""
        headers = list(headers)
        for test in self.status:
            why = test.check(status)
            if why:
                return why
        for test in self.headers:
            why = test.check(headers)
            if why:
                return why
        for test in self.body:
            why = test.check(body)
            if why:
                return why
        return None


def default_check(status: int) -> str | None:
    """Without ``match=``: a 2xx or 3xx status passes (NGINX Plus's default)."""
    return None if 200 <= status <= 399 else f"status {status}"
