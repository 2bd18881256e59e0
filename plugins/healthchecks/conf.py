"""The ``health_check`` directive's parameters.

``health_check [interval=TIME] [fails=N] [passes=N] [uri=URI] [port=N] [timeout=TIME]
[match=NAME] [mandatory];`` in a location that proxies to an upstream group. Every bad
parameter fails the load at its line with nginx's wording (``invalid parameter "x"``).
"""

from __future__ import annotations

from dataclasses import dataclass

from ngxsim import parse_time

DEFAULT_INTERVAL = 5.0
DEFAULT_TIMEOUT = 1.0
MIN_INTERVAL, MAX_INTERVAL = 0.01, 86400.0   # the range an instance-wide periodic job accepts
MAX_TIMEOUT = 3600.0
MAX_COUNT = 1_000_000
INSTANCE, CLUSTER = "instance", "cluster"  # scope=: who probes (each instance, or one for the cluster)


@dataclass(frozen=True)
class HealthCheck:
    """One location's ``health_check``."""

    interval: float = DEFAULT_INTERVAL
    fails: int = 1
    passes: int = 1
    uri: str = "/"
    port: int | None = None       # None: each peer's own port
    timeout: float = DEFAULT_TIMEOUT
    match: str | None = None
    mandatory: bool = False
    scope: str = INSTANCE

    def as_json(self) -> dict:
        return {"interval": self.interval, "fails": self.fails, "passes": self.passes, "uri": self.uri,
                "port": self.port, "timeout": self.timeout, "match": self.match, "mandatory": self.mandatory,
                "scope": self.scope}


def _time(name: str, text: str, low: float, high: float, span: str) -> float:
    try:
        value = parse_time(text)
    except ValueError:
        value = None
    if value is None or not low <= value <= high:
        raise ValueError(f'invalid value "{name}={text}" in "health_check" directive: '
                         f'a time from {span} (500ms, 5s) is required')
    return value


def _count(name: str, text: str, low: int, high: int) -> int:
    if not text.isdigit() or not low <= int(text) <= high:
        raise ValueError(f'invalid value "{name}={text}" in "health_check" directive: '
                         f'a number from {low} to {high} is required')
    return int(text)


def _uri(text: str) -> str:
    if not text.startswith("/") or any(ord(c) <= 32 or ord(c) == 127 for c in text):
        raise ValueError(f'invalid value "uri={text}" in "health_check" directive: '
                         f'a URI starting with "/" without spaces or control characters is required')
    return text


def _match_name(text: str) -> str:
    if not text:
        raise ValueError('invalid value "match=" in "health_check" directive: the name of a "match" block is required')
    return text


def _scope(text: str) -> str:
    if text not in (INSTANCE, CLUSTER):
        raise ValueError(f'invalid value "scope={text}" in "health_check" directive: "instance" or "cluster" is required')
    return text


_VALUED = {
    "scope": _scope,
    "interval": lambda v: _time("interval", v, MIN_INTERVAL, MAX_INTERVAL, "10ms to 1d"),
    "timeout": lambda v: _time("timeout", v, 0.001, MAX_TIMEOUT, "1ms to 1h"),
    "fails": lambda v: _count("fails", v, 1, MAX_COUNT),
    "passes": lambda v: _count("passes", v, 1, MAX_COUNT),
    "port": lambda v: _count("port", v, 1, 65535),
    "uri": _uri,
    "match": _match_name,
}
_FLAGS = ("mandatory",)


def parse_health_check(args: list[str]) -> HealthCheck:
    """The ``Directive.parse`` of ``health_check``; raises ValueError with nginx's wording."""
    values: dict[str, object] = {}
    for arg in args:
        name, eq, text = arg.partition("=")
        if (eq and name not in _VALUED) or (not eq and name not in _FLAGS):
            raise ValueError(f'invalid parameter "{arg}" in "health_check" directive')
        if name in values:
            raise ValueError(f'duplicate parameter "{name}" in "health_check" directive')
        values[name] = _VALUED[name](text) if eq else True
    return HealthCheck(**values)
