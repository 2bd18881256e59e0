"""Zone declarations made at config time (sizes and owners), before any memory exists."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import ConfigError
from .parser import Statement

ZONE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
# The largest zone a configuration may declare (1 TiB). Whether the machine can hold it is
# found out when the zone is created (its memory is reserved then).
MAX_ZONE_SIZE = 1 << 40


@dataclass(frozen=True)
class ZoneSpec:
    name: str
    size: int
    owner: str
    tag: str = ""  # the owner's layout; a kept zone must have the same (else it is recreated)


class ZoneSpecs:
    """The zones a configuration declares: each name once, by one module, with one size."""

    def __init__(self) -> None:
        self._specs: dict[str, ZoneSpec] = {}

    def declare(self, name: str, size: int, owner: str, where: Statement | None = None, tag: str = "") -> ZoneSpec:
        def fail(message: str) -> ConfigError:
            return where.error(message) if where else ConfigError(message)

        if not ZONE_NAME.fullmatch(name):
            raise fail(f'invalid zone name "{name}": use letters, digits, "_", "-" and "." (at most 64)')
        if size <= 0:
            raise fail(f'zone "{name}" is too small')
        if size > MAX_ZONE_SIZE:
            raise fail(f'zone "{name}" of {size} bytes is larger than the largest zone, {MAX_ZONE_SIZE} bytes (1024g)')
        old = self._specs.get(name)
        if old is not None:
            if old.owner != owner:
                raise fail(f'zone "{name}" is already declared by module "{old.owner}"')
            if old.size != size or old.tag != tag:
                raise fail(f'zone "{name}" is already declared with size {old.size}, not {size}')
            return old
        spec = ZoneSpec(name, size, owner, tag or owner)
        self._specs[name] = spec
        return spec

    def __iter__(self):
        return iter(self._specs.values())

    def __contains__(self, name: str) -> bool:
        return name in self._specs

    def __getitem__(self, name: str) -> ZoneSpec:
        return self._specs[name]

    def __len__(self) -> int:
        return len(self._specs)
