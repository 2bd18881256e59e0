"""``upstream_refresh``: re-read an upstream's servers from a JSON file or URL every interval,
once for the whole instance (a core periodic job), and activate a new snapshot when they changed.
A source that cannot be read or is invalid changes nothing and publishes ``refresh_failed``."""

from __future__ import annotations

import json

import urllib3

from . import snapshots
from .state import state

MAX_SOURCE = 1 << 20
_REASON_MAX = 400  # the event payload is at most 512 bytes


def refresh_job(name: str, refresh, http_pool: dict):
    """The job's function for upstream ``name`` (``run(runtime)``)."""

    def run(runtime) -> None:
        st = state(runtime)
        try:
            specs = snapshots.specs_from_json(json.loads(_read(refresh, http_pool)))
        except (OSError, ValueError, urllib3.exceptions.HTTPError, RecursionError) as exc:
            reason = _reason(exc)
            st.publish("refresh_failed", {"upstream": name, "source": refresh.source[:100], "reason": reason})
            return
        zone = st.zone(name)
        up = st.conf.upstreams[name]

        made = []

        def change(cur):
            new = snapshots.from_specs(specs, cur, zone.layout.slots, checking_new=up.mandatory)
            if cur is not None and _same(cur["peers"], new["peers"]):
                return None  # nothing changed: no new version, no event
            if up.state:
                snapshots.write_state(up.state, new["peers"])
            made.append(new)
            return new

        try:
            zone.update(change)
        except (ValueError, OverflowError, snapshots.Conflict, OSError) as exc:
            st.publish("refresh_failed", {"upstream": name, "source": refresh.source[:100], "reason": _reason(exc)})
            return
        if made:
            st.publish("snapshot_activated", {"upstream": name, "version": made[0]["version"]})
            st.reload(name)

    return run


def _same(a: list[dict], b: list[dict]) -> bool:
    def key(peers):
        return sorted((p["id"], p["server"], p["weight"], p["max_fails"], p["fail_timeout"], p["backup"], p["down"])
                      for p in peers)

    return key(a) == key(b)


def _read(refresh, http_pool: dict) -> bytes:
    if refresh.file:
        with open(refresh.file, "rb") as fh:
            data = fh.read(MAX_SOURCE + 1)
    else:
        pool = http_pool.get("pm")
        if pool is None:
            pool = http_pool["pm"] = urllib3.PoolManager(num_pools=4, maxsize=1)
        resp = pool.request("GET", refresh.url, timeout=urllib3.Timeout(total=refresh.timeout), retries=False,
                            redirect=False, preload_content=False)
        try:
            if resp.status != 200:
                raise ValueError(f"{refresh.url} answered {resp.status}")
            data = resp.read(MAX_SOURCE + 1)
        finally:
            resp.release_conn()
    if len(data) > MAX_SOURCE:
        raise ValueError(f"the source is larger than {MAX_SOURCE} bytes")
    return data


def _reason(exc: Exception) -> str:
    text = getattr(exc, "strerror", None) and f"{exc.strerror}: {getattr(exc, 'filename', '')}" or str(exc) or type(exc).__name__
    return text.encode()[:_REASON_MAX].decode("utf-8", "ignore")
