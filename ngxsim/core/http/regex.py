"""nginx's regular expressions: real PCRE2, on bytes, with nginx's compile options and wording.

nginx hands its patterns to PCRE2 as written and matches them against the request's bytes
(no UTF mode), so POSIX classes (``[[:digit:]]``), ``\\Z``, a mid-pattern ``(?i)``, ``\\p{L}``
and an ASCII-only ``\\w`` all mean what they mean in nginx. Python's ``re`` differs on each of
those, hence the ``pcre2`` binding (a wheel with PCRE2 built in). A pattern that does not
compile gives nginx's ``pcre2_compile() failed: ...`` message.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pcre2

from .variables import declare_captures

_POSITION = re.compile(r"compilation failed at position (\d+); (.*)", re.S)


def to_bytes(text: str) -> bytes:
    """A config or request string as the bytes nginx sees (undecodable bytes round-trip)."""
    return text.encode("utf-8", "surrogateescape")


def to_text(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


@dataclass(frozen=True)
class Captures:
    """What one successful match captured: ``$0`` to ``$9`` by number, named ones by name
    (``Regex.search`` returns it; ``ctx.captures`` is the request's)."""

    groups: tuple[bytes | None, ...]  # index 0 is the whole match
    names: dict[str, int]

    def number(self, n: int) -> str:
        """``$n`` as text (``""`` when the group did not take part or does not exist)."""
        value = self.groups[n] if n < len(self.groups) else None
        return to_text(value) if value else ""

    def named(self, name: str) -> str | None:
        """The value of the named capture, or None when this match has no such name."""
        index = self.names.get(name)
        return None if index is None else self.number(index)


_META = frozenset(b"\\.[](){}*+?|^$")


def literal_prefix(pattern: bytes, caseless: bool) -> bytes:
    """Bytes every match must start the subject with (``^/api/`` of ``^/api/(\\d+)``), or b""
    when that cannot be told simply. Only a cheap way to skip a search that cannot match."""
    if caseless or not pattern.startswith(b"^") or b"|" in pattern or b"(?" in pattern:
        return b""
    end = 1
    while end < len(pattern) and pattern[end] not in _META:
        end += 1
    if end < len(pattern) and pattern[end] in b"*?{":  # the last literal may be optional
        end -= 1
    return pattern[1:end]


class Regex:
    """One compiled nginx regex (``location ~``, ``server_name ~``; public as ``ngxsim.Regex``
    for a module's own regexes, as healthchecks' ``match`` uses it).

    ``Regex(source, caseless=False)`` raises ``ValueError`` with nginx's ``pcre2_compile()
    failed: ...`` message; subjects are bytes, or text (encoded as UTF-8, undecodable bytes
    kept). Named captures become variables of the configuration being loaded, as in nginx."""

    __slots__ = ("source", "caseless", "_code", "captures", "names", "_prefix")

    def __init__(self, source: str, caseless: bool = False):
        self.source = source
        self.caseless = caseless
        try:
            self._code = pcre2.compile(to_bytes(source), pcre2.IGNORECASE if caseless else 0)
        except pcre2.PatternError as exc:
            raise ValueError(_compile_error(source, str(exc))) from None
        self.captures: int = self._code.groups
        self.names: dict[str, int] = dict(self._code.groupindex)
        declare_captures(self.names)  # nginx: each named capture is a variable of the config
        # PCRE2's binding costs ~2 us a call; most location regexes start with a fixed "^/x/"
        self._prefix = literal_prefix(to_bytes(source), caseless)

    def search(self, subject: bytes | str) -> Captures | None:
        """What the first match in ``subject`` captured, or None when it does not match."""
        if isinstance(subject, str):
            subject = to_bytes(subject)
        if not subject.startswith(self._prefix):
            return None
        m = self._code.search(subject)
        if m is None:
            return None
        return Captures((m.group(0), *m.groups()), self.names)

    def matches(self, subject: bytes | str) -> bool:
        """Whether ``subject`` matches (cheaper than ``search`` when the captures do not matter)."""
        if isinstance(subject, str):
            subject = to_bytes(subject)
        return subject.startswith(self._prefix) and self._code.search(subject) is not None

    def __repr__(self) -> str:
        return f"Regex({self.source!r}{', caseless' if self.caseless else ''})"


def _compile_error(source: str, detail: str) -> str:
    m = _POSITION.match(detail)
    if not m:
        return f'pcre2_compile() failed: {detail} in "{source}"'
    offset, message = int(m.group(1)), m.group(2)
    raw = to_bytes(source)
    if offset >= len(raw):
        return f'pcre2_compile() failed: {message} in "{source}"'
    return f'pcre2_compile() failed: {message} in "{source}" at "{to_text(raw[offset:])}"'
