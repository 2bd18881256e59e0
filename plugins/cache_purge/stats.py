"""NGINX Plus's cache statistics (``/api/N/http/caches``): responses and bytes by cache status,
counted by every worker into the keys zone (after the purge epoch and the databases' generation), so the API answers the
instance's counts whichever worker serves it.

Layout at ``zone.buf[16:]``: 20 u64 — hit, stale, updating, revalidated (responses, bytes each),
then miss, expired, bypass (responses, bytes, responses written, bytes written each). They move
by ``Zone.add_u64`` (atomic, without the lock where the core's accelerator is built; each one
an 8-byte store on the pure-Python path) and only there; the API reads them without the lock.
A locked ``struct.pack_into`` of the 20 zeroed them all before writing them back: the API could
show every count at 0 for an instant, and a worker killed there reset them for good.
"""

from __future__ import annotations

from ngxsim import words

_AT = 16  # after the purge epoch and the databases' generation (levels.py)
_COUNTS = 20
_SIMPLE = ("hit", "stale", "updating", "revalidated")
_WRITTEN = ("miss", "expired", "bypass")
# $upstream_cache_status -> the API's key
_KEYS = {"HIT": "hit", "STALE": "stale", "UPDATING": "updating", "REVALIDATED": "revalidated", "MISS": "miss",
         "EXPIRED": "expired", "BYPASS": "bypass"}


def _index(key: str) -> int:
    if key in _SIMPLE:
        return 2 * _SIMPLE.index(key)
    return 8 + 4 * _WRITTEN.index(key)


def count(zone, status: str, nbytes: int) -> None:
    """One response of ``$upstream_cache_status`` ``status`` with a body of ``nbytes``."""
    key = _KEYS.get(status)
    if key is None:
        return
    at = _AT + 8 * _index(key)
    zone.add_u64(((at, 1), (at + 8, nbytes)))


def written(zone, status: str, nbytes: int) -> None:
    """A response of ``status`` (miss, expired, bypass) was stored in the cache."""
    key = _KEYS.get(status)
    if key not in _WRITTEN:
        return
    at = _AT + 8 * _index(key)
    zone.add_u64(((at + 16, 1), (at + 24, nbytes)))


def read(zone) -> dict:
    """The counts as NGINX Plus's cache object has them."""
    values = list(words(zone.buf[_AT:_AT + 8 * _COUNTS]))
    out: dict = {}
    for key in _SIMPLE + _WRITTEN:
        i = _index(key)
        out[key] = {"responses": values[i], "bytes": values[i + 1]}
        if key in _WRITTEN:
            out[key].update(responses_written=values[i + 2], bytes_written=values[i + 3])
    return out
