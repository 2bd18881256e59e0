"""Choosing a location for a URI, exactly as nginx does (``ngx_http_core_find_location``).

At each level (a server's locations, or the locations nested in one location):

1. an exact (``=``) location equal to the URI wins at once;
2. otherwise the longest matching prefix is remembered, and the search goes on among the
   locations nested in it (same rules, one level down);
3. unless that prefix is ``^~``, this level's regex locations (``~`` case-sensitive, ``~*``
   not) are then tried in config order: the first that matches wins, and the search goes on
   among the locations nested in it;
4. otherwise the remembered prefix (or what was found inside it) wins, or nothing.

Named locations (``@name``) are never chosen by URI. Regexes are nginx's (PCRE2 on the URI's
bytes); what a matching regex captures becomes ``$1``..``$9`` and its named variables.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generic, TypeVar

from .regex import Captures, Regex, to_bytes

T = TypeVar("T")
MODIFIERS = ("=", "^~", "~", "~*")


@dataclass(frozen=True)
class LocationSpec:
    modifier: str  # "" (prefix or @named), "=", "^~", "~", "~*"
    path: str
    regex: Regex | None = field(default=None, compare=False)

    @property
    def named(self) -> bool:
        return self.modifier == "" and self.path.startswith("@")

    @property
    def exact(self) -> bool:
        return self.modifier == "="

    def __str__(self) -> str:
        return f"{self.modifier} {self.path}" if self.modifier else self.path


def parse_location(args: list[str]) -> LocationSpec:
    """The arguments of ``location [modifier] path``; also nginx's glued ``=/x``, ``~*\\.png$``."""
    if len(args) == 2:
        modifier, path = args
        if modifier not in MODIFIERS:
            raise ValueError(f'invalid location modifier "{modifier}"')
    else:
        (arg,) = args
        for modifier in ("^~", "~*", "=", "~"):
            if arg.startswith(modifier):
                path = arg[len(modifier) :]
                break
        else:
            modifier, path = "", arg
    if modifier in ("~", "~*"):
        return LocationSpec(modifier, path, Regex(path, caseless=modifier == "~*"))
    return LocationSpec(modifier, path)


def nesting_error(parent: LocationSpec, child: LocationSpec) -> str | None:
    """nginx's rules for a location inside another, in nginx's order; None when allowed."""
    if parent.exact:
        return f'location "{child.path}" cannot be inside the exact location "{parent.path}"'
    if parent.named:
        return f'location "{child.path}" cannot be inside the named location "{parent.path}"'
    if child.named:
        return f'named location "{child.path}" can be on the server level only'
    if child.regex is None and not child.path.startswith(parent.path):
        return f'location "{child.path}" is outside location "{parent.path}"'
    return None


@dataclass
class _Entry(Generic[T]):
    spec: LocationSpec
    item: T
    inner: "LocationMatcher[T] | None"


class LocationMatcher(Generic[T]):
    """The locations of one level; ``match(uri)`` returns the chosen location's item."""

    def __init__(self) -> None:
        self._exact: dict[str, _Entry[T]] = {}
        self._prefixes: list[_Entry[T]] = []  # longest first
        self._prefix_paths: set[str] = set()
        self._regexes: list[_Entry[T]] = []
        self.named: dict[str, T] = {}

    def add(self, spec: LocationSpec, item: T, inner: "LocationMatcher[T] | None" = None) -> None:
        """Add one location (with the matcher of its nested locations); raises ValueError for
        nginx's ``duplicate location``."""
        entry = _Entry(spec, item, inner)
        if spec.named:
            self.named.setdefault(spec.path, item)  # nginx keeps the first of a name
        elif spec.regex is not None:
            self._regexes.append(entry)  # nginx does not look for duplicate regexes
        elif spec.exact:
            if spec.path in self._exact:
                raise ValueError(f'duplicate location "{spec.path}"')
            self._exact[spec.path] = entry
        else:  # "/x" and "^~ /x" are the same prefix to nginx
            if spec.path in self._prefix_paths:
                raise ValueError(f'duplicate location "{spec.path}"')
            self._prefix_paths.add(spec.path)
            self._prefixes.append(entry)
            self._prefixes.sort(key=lambda e: len(e.spec.path), reverse=True)

    def match(self, uri: str) -> T | None:
        return self.find(uri)[0]

    def find(self, uri: str, raw: bytes | None = None) -> tuple[T | None, list[Captures]]:
        """The chosen item and the captures of the regexes that matched on the way (outer
        first); ``raw`` is the URI's bytes (derived from ``uri`` when not given)."""
        found: list = [None]
        captures: list[Captures] = []
        self._find(uri, to_bytes(uri) if raw is None else raw, found, captures)
        return found[0], captures

    def _find(self, uri: str, raw: bytes, found: list, captures: list[Captures]) -> str:
        # the results of ngx_http_core_find_location: "ok" (final), "again" (a prefix, keep
        # looking), "declined" (nothing at this level)
        exact = self._exact.get(uri)
        if exact is not None:
            found[0] = exact.item
            return "ok"
        rc, noregex = "declined", False
        for entry in self._prefixes:
            if uri.startswith(entry.spec.path):
                found[0] = entry.item
                noregex = entry.spec.modifier == "^~"
                rc = entry.inner._find(uri, raw, found, captures) if entry.inner else "declined"
                if rc == "declined":
                    rc = "again"
                break
        if rc == "ok":
            return rc
        if not noregex:
            for entry in self._regexes:
                hit = entry.spec.regex.search(raw)
                if hit is not None:
                    found[0] = entry.item
                    captures.append(hit)
                    if entry.inner:
                        entry.inner._find(uri, raw, found, captures)
                    return "ok"
        return rc
