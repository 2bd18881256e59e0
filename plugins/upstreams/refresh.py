"""``upstream_refresh``: re-read an upstream's servers from a JSON file or URL every interval,
once for the whole instance (a core periodic job), and activate a new snapshot when they changed.
A source that cannot be read or is invalid changes nothing and publishes ``refresh_failed``."""

from __future__ import annotations

import json
import logging
import os

import urllib3

from ngxsim import NOTICE

from . import snapshots
from .state import state

MAX_SOURCE = 1 << 20
_REASON_MAX = 400  # the event payload is at most 512 bytes
log = logging.getLogger("ngxsim")


def refresh_job(name: str, refresh, http_pool: dict):
    """The job's function for upstream ``name`` (``run(runtime)``). Every failure is logged;
    ``refresh_failed`` is published when the reason changes (a source that stays broken does not
    fill the ring with the same event every interval)."""
    last = {"reason": None}  # per process: a worker that takes the job over says it once more

    def failed(st, reason: str) -> None:
        log.error('upstream "%s": refresh from "%s" failed: %s', name, refresh.source, reason)
        if reason != last["reason"]:
            last["reason"] = reason
            st.publish("refresh_failed", {"upstream": name, "source": refresh.source[:100], "reason": reason})

    def run(runtime) -> None:
        st = state(runtime)
        try:
            specs = snapshots.specs_from_json(json.loads(_read(refresh, http_pool)))
        except (OSError, ValueError, urllib3.exceptions.HTTPError, RecursionError) as exc:
            failed(st, _reason(exc, refresh))
            return
        zone = st.zone(name)
        up = st.conf.upstreams[name]

        made = []

        def change(cur):
            new = snapshots.from_specs(specs, cur, zone.layout.slots, checking_new=up.mandatory)
            if cur is not None and _same(cur["peers"], new["peers"]):
                return None  # nothing changed: no new version, no event
            if up.state:
                snapshots.write_state(up.state, new)
            made.append(new)
            return new

        try:
            zone.update(change)
        except (ValueError, OverflowError, snapshots.Conflict, OSError) as exc:
            failed(st, _reason(exc, refresh))
            return
        if last["reason"] is not None:
            log.log(NOTICE, 'upstream "%s": refresh from "%s" succeeded again', name, refresh.source)
            last["reason"] = None
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


def _reason(exc: BaseException, refresh) -> str:
    """Why the refresh failed, in nginx's words (``open() "F" failed (2: No such file or
    directory)``, ``connect() failed (111: Connection refused)``): never a library's exception
    text, which names its own classes and pools."""
    text = _describe(exc, refresh)
    return text.encode()[:_REASON_MAX].decode("utf-8", "ignore")


def _describe(exc: BaseException, refresh) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"invalid JSON at line {exc.lineno} column {exc.colno}"
    if isinstance(exc, RecursionError):
        return "the JSON is nested too deeply"
    if isinstance(exc, urllib3.exceptions.TimeoutError):
        return "upstream timed out (110: Connection timed out)"
    cause = exc
    while cause is not None and not (isinstance(cause, OSError) and cause.errno):
        cause = cause.__cause__ or cause.__context__
    if cause is not None:
        call = f'open() "{refresh.file}"' if refresh.file else "connect()"
        return f"{call} failed ({cause.errno}: {os.strerror(cause.errno)})"
    if isinstance(exc, (ValueError, OverflowError, snapshots.Conflict)):
        return str(exc)
    return f"{refresh.url} could not be read"
