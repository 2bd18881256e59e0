"""Status values as a person reads them: times as ages, flags as yes/no, lists of dicts as
tables. Shared by the ``ngxsim_status`` page, ``ngxsim status`` and the healthchecks page
(``ngxsim.format_age``); imports nothing of ngxsim, so the public API can re-export it."""

from __future__ import annotations


def age(ms: int) -> str:
    """``4s``, ``3m 02s``, ``2h 05m``, ``3d 04h``."""
    s = max(int(ms // 1000), 0)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 86400}d {s % 86400 // 3600:02d}h"


def show(key: str, value, now_msec: int) -> str:
    """One value as a person reads it: times as ages, booleans as yes/no, None as -."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if key.endswith("_msec") and isinstance(value, int):
        return f"{age(now_msec - value)} ago" if value else "never"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def is_rows(value) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def columns(rows: list[dict]) -> list[str]:
    cols: list[str] = []
    for row in rows:
        cols.extend(k for k in row if k not in cols)
    return cols
