"""Choosing a location for a URI, exactly as nginx does.

1. an exact (``=``) location equal to the URI wins at once;
2. otherwise the longest matching prefix is remembered; if it is ``^~``, it wins;
3. otherwise regex locations (``~`` case-sensitive, ``~*`` case-insensitive) are tried in the
   order of the configuration, and the first that matches wins;
4. otherwise the remembered longest prefix wins (or nothing).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")
MODIFIERS = ("=", "^~", "~", "~*")


@dataclass(frozen=True)
class LocationSpec:
    modifier: str  # "" (prefix), "=", "^~", "~", "~*"
    path: str
    regex: re.Pattern | None = field(default=None, compare=False)

    def __str__(self) -> str:
        return f"{self.modifier} {self.path}" if self.modifier else self.path


_PCRE_NAMED = re.compile(r"\(\?<(?![=!])")


def compile_pcre(pattern: str, flags: int = 0) -> re.Pattern:
    """Compile an nginx (PCRE) regex with Python's ``re``: ``(?<name>...)`` becomes
    ``(?P<name>...)``; lookbehinds are left alone. Every failure is a ``re.error``: ``re`` also
    raises OverflowError (``a{4294967296}``) and RecursionError (a thousand nested groups)."""
    try:
        return re.compile(_PCRE_NAMED.sub("(?P<", pattern), flags)
    except OverflowError as exc:
        raise re.error(str(exc)) from None
    except RecursionError:
        raise re.error("groups nested too deeply") from None


def parse_location(args: list[str]) -> LocationSpec:
    """The arguments of ``location [modifier] path``; also accepts ``~*\\.png$`` glued forms."""
    if len(args) == 2:
        modifier, path = args
        if modifier not in MODIFIERS:
            raise ValueError(f'invalid location modifier "{modifier}"')
    else:
        (arg,) = args
        for modifier in ("^~", "~*", "=", "~"):
            if arg.startswith(modifier) and len(arg) > len(modifier):
                path = arg[len(modifier) :]
                break
        else:
            modifier, path = "", arg
    if modifier in ("~", "~*"):
        try:
            regex = compile_pcre(path, re.IGNORECASE if modifier == "~*" else 0)
        except re.error as exc:
            raise ValueError(f'invalid regular expression "{path}" in location: {exc}') from None
        return LocationSpec(modifier, path, regex)
    if path.startswith("@"):
        raise ValueError(f'named locations ("{path}") are not supported')
    return LocationSpec(modifier, path)


class LocationMatcher(Generic[T]):
    """The locations of one server; ``match(uri)`` returns the chosen location's item."""

    def __init__(self) -> None:
        self._exact: dict[str, T] = {}
        self._prefixes: list[tuple[str, bool, T]] = []  # (path, stops_regex_search, item)
        self._regexes: list[tuple[re.Pattern, T]] = []
        self._seen: set[tuple[str, str]] = set()

    def add(self, spec: LocationSpec, item: T) -> None:
        key = ("=" if spec.modifier == "=" else "~*" if spec.modifier == "~*" else "~" if spec.modifier == "~" else "", spec.path)
        if key in self._seen:
            raise ValueError(f'duplicate location "{spec.path}"')
        self._seen.add(key)
        if spec.modifier == "=":
            self._exact[spec.path] = item
        elif spec.modifier in ("~", "~*"):
            self._regexes.append((spec.regex, item))
        else:
            self._prefixes.append((spec.path, spec.modifier == "^~", item))
            self._prefixes.sort(key=lambda p: len(p[0]), reverse=True)

    def match(self, uri: str) -> T | None:
        exact = self._exact.get(uri)
        if exact is not None:
            return exact
        best: tuple[str, bool, T] | None = None
        for prefix in self._prefixes:
            if uri.startswith(prefix[0]):
                best = prefix
                break
        if best is not None and best[1]:
            return best[2]
        for regex, item in self._regexes:
            if regex.search(uri):
                return item
        return best[2] if best is not None else None
