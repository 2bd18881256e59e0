"""Directives are data: what a module declares, and the table the core checks a config against.

A module never parses its own lines. It declares each directive (name, contexts, arguments,
value type, default, inheritance) and the core does the checking, the conversion of values and
the merge from outer to inner contexts, with nginx's error wording.
"""

from __future__ import annotations

import difflib
import inspect
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from .errors import ConfigError

MAIN, HTTP, SERVER, LOCATION = "main", "http", "server", "location"
CONTEXTS = (MAIN, HTTP, SERVER, LOCATION)  # the core's; a module's block directive may open more
_CONTEXT_NAME = re.compile(r"[a-z_][a-z0-9_]*")

# value types a directive can declare
STRING, SIZE, TIME, NUMBER, FLAG, ARGS = "string", "size", "time", "number", "flag", "args"
TYPES = (STRING, SIZE, TIME, NUMBER, FLAG, ARGS)

_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
# in milliseconds: a time is summed exactly in integers, so no value can overflow a float
_TIME_UNITS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000,
               "M": 2_592_000_000, "y": 31_536_000_000}
_TIME_PART = re.compile(r"([0-9]+)(ms|s|m|h|d|w|M|y)?")  # ASCII digits: \d takes any script's

# The range of each value type unless a directive declares its own (``Directive.range``): what
# a C nginx holds in its types (off_t for sizes, a 32-bit int for numbers and for seconds).
MAX_SIZE = 2**63 - 1
MAX_NUMBER = 2**31 - 1
MAX_TIME = 2**31 - 1  # seconds, about 68 years


class OutOfRange(ValueError):
    """A well-formed value outside what the directive accepts."""

    def __init__(self, low: float, high: float, unit: str = ""):
        self.low, self.high, self.unit = low, high, unit
        super().__init__(f"must be from {low:g} to {high:g}{unit}" if isinstance(high, float) else
                         f"must be from {low} to {high}{unit}")


def parse_size(text: str, low: int = 0, high: int = MAX_SIZE) -> int:
    """nginx sizes: ``512``, ``16k``, ``1m``, ``2g`` (case-insensitive unit) -> bytes; outside
    ``low`` to ``high`` raises OutOfRange."""
    m = re.fullmatch(r"([0-9]+)([kKmMgG]?)", text)
    if not m:
        raise ValueError("invalid value")
    value = _int(m.group(1)) * _SIZE_UNITS[m.group(2).lower()]
    if not low <= value <= high:
        raise OutOfRange(low, high, " bytes")
    return value


def parse_time(text: str, low: float = 0, high: float = MAX_TIME) -> float:
    """nginx times: ``500ms``, ``5s``, ``1h30m``; a bare number is seconds -> seconds (float);
    outside ``low`` to ``high`` seconds raises OutOfRange."""
    pos, total_ms = 0, 0
    if not text:
        raise ValueError("invalid value")
    while pos < len(text):
        m = _TIME_PART.match(text, pos)
        if not m:
            raise ValueError("invalid value")
        total_ms += _int(m.group(1)) * _TIME_UNITS[m.group(2) or "s"]
        pos = m.end()
    if not low * 1000 <= total_ms <= high * 1000:
        raise OutOfRange(low, high, " seconds")
    return total_ms / 1000


def parse_number(text: str, low: int = 0, high: int = MAX_NUMBER) -> int:
    """A decimal integer from ``low`` to ``high``."""
    if not re.fullmatch(r"[0-9]+", text):
        raise ValueError("invalid number")
    value = _int(text)
    if not low <= value <= high:
        raise OutOfRange(low, high)
    return value


def _int(digits: str) -> int:
    # Python refuses to convert more than 4300 digits (ValueError): then it is far out of range
    return int(digits) if len(digits) <= 30 else 10**30


_CONVERT: dict[str, Callable[..., Any]] = {SIZE: parse_size, TIME: parse_time, NUMBER: parse_number}
_RANGES: dict[str, tuple[float, float]] = {SIZE: (0, MAX_SIZE), TIME: (0, MAX_TIME), NUMBER: (0, MAX_NUMBER)}


@dataclass(frozen=True)
class Directive:
    """One directive a module declares.

    - ``contexts``: where it may stand (``main``, ``http``, ``server``, ``location``, or a
      context a module's block directive opens, like ``upstream``).
    - ``nargs``: exact argument count, or ``(min, max)`` with ``max=None`` for no upper bound.
      A ``flag`` takes no argument (``worker_events_api;``), or ``on``/``off`` when ``nargs=1``.
    - ``type``: how the single argument is converted: ``string``, ``size`` (bytes),
      ``time`` (seconds), ``number``, ``flag`` (bool), or ``args`` (the raw list of strings).
    - ``parse``: a callable taking the argument list and returning the value, for arguments with
      a shape of their own (``listen``, ``return``); it raises ``ValueError(message)`` (reported
      at the line of the occurrence being parsed). One with a second parameter also gets the
      ``Statement`` (file, line, args, ``parent``: the enclosing block's statement and args).
      ``key_values`` parses nginx's ``key=value`` parameters.
    - ``range``: ``(low, high)`` a ``size`` (bytes), ``time`` (seconds) or ``number`` must lie in;
      by default 0 to ``MAX_SIZE``, ``MAX_TIME`` or ``MAX_NUMBER``.
    - ``default``: the value where no level sets it.
    - ``inherit``: an inner context without the directive takes the outer one's value
      (nginx's merge); with ``False`` every level starts from ``default``.
    - ``multiple``: may repeat in one context; the value is the list of each occurrence's value,
      and (as nginx does for arrays) a level that has its own list inherits nothing from above.
    - ``block``: the directive opens a block whose inside is the context named by ``block``
      (a core context, or a new one: ``Directive("upstream", (HTTP,), 1, block="upstream")``).
    - ``data``: the directive has a block of data lines, not of directives (nginx's ``types``):
      ``data(statements)`` turns the lines into the value (raising ``ConfigError``, best made with
      ``statement.error(message)``, for a bad line); no context opens. One with a second
      parameter also gets the directive's own ``Statement`` (``map $a $b {``: its args).

    Two modules may declare the same name for different contexts (nginx's ``server`` in
    ``http`` and in ``upstream``); the context of a line decides which one it is.
    """

    name: str
    contexts: frozenset[str] | tuple[str, ...]
    nargs: int | tuple[int, int | None] = 1
    type: str = STRING
    default: Any = None
    inherit: bool = True
    multiple: bool = False
    parse: Callable[[list[str]], Any] | None = None
    block: str | None = None
    data: Callable[[list], Any] | None = None
    doc: str = ""
    range: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[a-z_][a-z0-9_]*", self.name):
            raise ValueError(f"directive name {self.name!r} is not a lower-case identifier")
        contexts = frozenset((self.contexts,) if isinstance(self.contexts, str) else self.contexts)
        bad = [c for c in contexts if not isinstance(c, str) or not _CONTEXT_NAME.fullmatch(c)]
        if bad or not contexts:
            shown = ", ".join(f'"{c}"' if isinstance(c, str) else repr(c) for c in bad) or "none"
            raise ValueError(f'directive "{self.name}" has invalid context(s) {shown}: use MAIN, HTTP, SERVER, '
                             f'LOCATION (from ngxsim) or the lower-case name a block directive opens')
        object.__setattr__(self, "contexts", contexts)
        if self.type not in TYPES:
            raise ValueError(f'directive "{self.name}" has unknown type "{self.type}": use one of {", ".join(TYPES)}')
        if self.block is not None and not _CONTEXT_NAME.fullmatch(self.block):
            raise ValueError(f'directive "{self.name}" opens an invalid block context "{self.block}": '
                             f'use a lower-case name')
        if self.range is not None and self.type not in _RANGES:
            raise ValueError(f'directive "{self.name}": a range needs type size, time or number')
        self._check_nargs()
        self._check_default()

    def _check_nargs(self) -> None:
        n = self.nargs
        if isinstance(n, bool) or not (isinstance(n, int) and n >= 0 or isinstance(n, tuple) and len(n) == 2
                                       and isinstance(n[0], int) and n[0] >= 0
                                       and (n[1] is None or isinstance(n[1], int) and n[1] >= n[0])):
            raise ValueError(f'directive "{self.name}" has invalid nargs {n!r}: use a count (0, 1, ...) '
                             f'or (min, max) with max None for no upper bound')

    def _check_default(self) -> None:
        """A default is a value the directive's type converts to: what a module reads where no
        level sets it must look like what it reads where one does."""
        value = self.default
        if value is None or self.parse is not None or self.data is not None or self.block is not None:
            return  # None: unset; a parse callable's values have a shape of its own
        if self.multiple or self.type == ARGS:
            fits, wanted = isinstance(value, (list, tuple)), "a list"
        elif self.type == FLAG:
            fits, wanted = isinstance(value, bool), "True or False"
        elif self.type == STRING:
            fits, wanted = isinstance(value, str), "a string"
        else:
            low, high = self.bounds
            kinds = (int, float) if self.type == TIME else (int,)
            unit = {SIZE: " (bytes)", TIME: " (seconds)"}.get(self.type, "")
            fits = isinstance(value, kinds) and not isinstance(value, bool) and low <= value <= high
            wanted = f"a number from {low:g} to {high:g}{unit}" if self.type == TIME else \
                f"a number from {low} to {high}{unit}"
        if not fits:
            shown = f'"{value}"' if isinstance(value, str) else repr(value)
            raise ValueError(f'directive "{self.name}" has default {shown}, which is not of its type '
                             f'{self.type}: make it {wanted}, or None')

    @property
    def bounds(self) -> tuple[float, float] | None:
        """The range a value of this directive must lie in (None: not a size, time or number)."""
        return self.range or _RANGES.get(self.type)

    def accepts(self, count: int) -> bool:
        # exact, as nginx's NGX_CONF_NOARGS/TAKE1...: a flag declared with no argument takes none
        # (``worker_events_api on;`` is an error there, not a synonym)
        if isinstance(self.nargs, int):
            return count == self.nargs
        low, high = self.nargs
        return count >= low and (high is None or count <= high)

    def block_value(self, statements: list, statement: Any = None) -> Any:
        """The value of a data block (``data``); a ``data`` callable with a second parameter
        also gets the directive's own statement (its args: ``map $a $b {``)."""
        return self.data(statements, statement) if _takes_statement(self.data) else self.data(statements)

    def value(self, args: list[str], statement: Any = None) -> Any:
        """Convert the arguments of one occurrence (``statement``: where it stands, for a
        ``parse`` that takes it); raises ValueError with nginx's wording."""
        if self.parse is not None:
            return self.parse(args, statement) if _takes_statement(self.parse) else self.parse(args)
        if self.type == ARGS:
            return list(args)
        if self.type == FLAG:
            if not args:
                return True
            if args[0] in ("on", "off"):
                return args[0] == "on"
            raise ValueError(f'invalid value "{args[0]}" in "{self.name}" directive, it must be "on" or "off"')
        if not args:
            return True
        convert = _CONVERT.get(self.type)
        if convert is None:
            return args[0]
        try:
            return convert(args[0], *self.bounds)
        except OutOfRange as exc:
            raise ValueError(f'"{self.name}" directive invalid value "{args[0]}": {exc}') from None
        except ValueError:
            raise ValueError(f'"{self.name}" directive invalid value "{args[0]}"') from None


def _takes_statement(parse: Callable) -> bool:
    """Whether a ``parse`` callable has room for a second positional argument."""
    try:
        params = list(inspect.signature(parse).parameters.values())
    except (TypeError, ValueError):  # a builtin without a signature: arguments only
        return False
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 2 or any(p.kind == p.VAR_POSITIONAL for p in params)


@dataclass(frozen=True)
class Unsupported:
    """A directive of real nginx that a module knows and does not implement.

    A config that uses it fails with one uniform message saying what to do instead
    (``"proxy_buffering" directive is not supported by ngxsim: ADVICE in FILE:LINE``), never a
    bare ``unknown directive`` for a name nginx knows. A module that *does* declare the name
    (a ``Directive``) always wins, whichever module declares which and in which order: a module
    can list all of nginx's directives it does not have yet and implement them one by one.

    ``contexts``: where nginx allows it. Empty: anywhere, as long as no module declares a
    ``Directive`` of the name (then a line in another context is "not allowed here"). Given:
    only there, and only where no ``Directive`` of the name stands, so that one module's advice
    does not answer for another nginx directive of the same name in another context.
    """

    name: str
    advice: str
    contexts: frozenset[str] | tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[a-z_][a-z0-9_]*", self.name):
            raise ValueError(f"directive name {self.name!r} is not a lower-case identifier")
        object.__setattr__(self, "contexts", frozenset((self.contexts,) if isinstance(self.contexts, str)
                                                       else self.contexts))
        if not self.advice.strip():
            raise ValueError(f'unsupported directive "{self.name}" needs advice: what to do instead')

    def message(self) -> str:
        return f'"{self.name}" directive is not supported by ngxsim: {self.advice}'


@dataclass
class DirectiveTable:
    """Every directive of the loaded modules; frozen once the modules are loaded.

    A name may be declared more than once for disjoint contexts; ``get(name, context)`` finds
    the one for a line's context.
    """

    entries: dict[str, list[tuple[Directive, str]]] = field(default_factory=dict)
    unsupported: dict[str, list[tuple[Unsupported, str]]] = field(default_factory=dict)
    frozen: bool = False

    def registrar(self, module: str) -> Callable[[Directive], None]:
        """The ``register`` callable handed to one module."""

        def register(directive: Directive | Unsupported) -> None:
            if self.frozen:
                raise RuntimeError("the directive table is frozen: declare directives in ngxsim_directives")
            if isinstance(directive, Unsupported):
                self.unsupported.setdefault(directive.name, []).append((directive, module))
                return
            if not isinstance(directive, Directive):
                raise TypeError(f"module {module!r} registered {directive!r}, not an ngxsim.Directive "
                                f"or ngxsim.Unsupported")
            same = self.entries.setdefault(directive.name, [])
            for other, owner in same:
                if other.contexts & directive.contexts:
                    raise ConfigError(
                        f'duplicate directive "{directive.name}" declared by modules "{owner}" and "{module}"'
                    )
            same.append((directive, module))

        return register

    def freeze(self, where: dict | None = None) -> None:
        """No more declarations; every context a directive names must exist. ``where`` maps a
        module to the statement that loaded it (its ``load_module`` line), where errors point."""
        self.frozen = True
        known = set(CONTEXTS) | {d.block for d, _ in self._all() if d.block}
        for d, owner in self._all():
            missing = sorted(d.contexts - known)
            if missing:
                close = difflib.get_close_matches(missing[0], sorted(known), n=1)
                hint = f'; did you mean "{close[0]}"?' if close else ""
                message = (f'module "{owner}" (ngxsim_directives): directive "{d.name}" names unknown context(s) '
                           f'{", ".join(missing)}, which no directive opens{hint}')
                stmt = (where or {}).get(owner)
                raise stmt.error(message) if stmt else ConfigError(message)

    def _all(self) -> Iterable[tuple[Directive, str]]:
        for same in self.entries.values():
            yield from same

    def get(self, name: str, context: str | None = None) -> Directive | None:
        """The directive ``name`` allowed in ``context`` (any context: the first declared)."""
        same = self.entries.get(name)
        if not same:
            return None
        if context is None:
            return same[0][0]
        for d, _ in same:
            if context in d.contexts:
                return d
        return None

    def not_supported(self, name: str, context: str) -> Unsupported | None:
        """The ``Unsupported`` declaration of ``name`` for a line in ``context``: one without
        contexts when no module implements the name at all; one for ``context`` when no module
        implements it there (another context may have a real directive of that name: nginx's
        http-level ``keepalive_timeout`` beside the upstream module's)."""
        for declared, _ in self.unsupported.get(name, ()):
            if declared.contexts:
                if context in declared.contexts and self.get(name, context) is None:
                    return declared
            elif name not in self.entries:
                return declared
        return None

    def owners(self) -> list[tuple[str, str]]:
        """(directive name, module) of every declaration."""
        return [(d.name, owner) for d, owner in self._all()]

    def in_context(self, context: str) -> Iterable[Directive]:
        return (d for d, _ in self._all() if context in d.contexts)
