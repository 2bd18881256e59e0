"""One module per engine; each imports its engine's client only when it is used.

``ENGINES`` maps a URL scheme to the module (and class) that serves it: the relay asks
``engine_class(url)`` and only then is that module imported, so a host that bridges through
Redis never imports nats-py (and needs none of it installed). A new engine is one module here
and one line in ``ENGINES``.
"""

from __future__ import annotations

import importlib

from ..engine import Engine

ENGINES: dict[str, tuple[str, str]] = {
    "redis": ("redis", "RedisEngine"),
    "rediss": ("redis", "RedisEngine"),
    "nats": ("nats", "NatsEngine"),
    "tls": ("nats", "NatsEngine"),
}


def scheme_of(url: str) -> str:
    scheme, sep, _ = url.partition("://")
    return scheme.lower() if sep else ""


def engine_class(url: str) -> type[Engine]:
    """The Engine subclass for ``url``'s scheme, its module imported now. ValueError: no engine
    serves that scheme; ImportError: its module or its client library is not installed."""
    scheme = scheme_of(url)
    if scheme not in ENGINES:
        known = ", ".join(f"{s}://" for s in ENGINES)
        raise ValueError(f'unknown engine scheme "{scheme}://" (known: {known})' if scheme else
                         f'no scheme in the engine URL (use one of: {known})')
    module, name = ENGINES[scheme]
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
