"""The cluster's key-value store and leases, for other modules' instance-wide jobs and services.

``ClusterStore`` is one engine connection (made on the first call, made again after a failure)
to the key-value store of one bridged zone's stream: ``get``/``put`` with revisions
(compare-and-set) and ``lease``, a cluster-wide lease held by one instance at a time. Every
call is bounded by the bridge's ``timeout=``. It is for jobs and services only: a request
never waits on an engine (``store`` refuses to be called while a request is being served).

Modules reach it through the cluster module's public functions (``ngxsim_plugins.cluster``:
``store``, ``bridge_of``, ``is_bridged``), never through an engine. See docs/cluster.md, "For
modules".
"""

from __future__ import annotations

import json
import os
import threading
import time
from typing import NamedTuple

from ngxsim import serving_request

from .engine import Conflict, EngineError, check_kv

# seconds: a lease is taken over only this long after it expired (the hosts' clocks differ), or a
# quarter of its time when that is shorter: a short lease (a 1 s health check's) is still taken
# over within 1.25 of its time plus the taker's next look, not after a whole second more
LEASE_SKEW = 1.0


def lease_margin(ttl: float) -> float:
    """How long after its expiry a lease of ``ttl`` seconds may be taken over."""
    return min(LEASE_SKEW, ttl / 4)


class BridgeInfo(NamedTuple):
    """What a module may know of a bridged zone."""

    instance: str                      # this instance's id in the cluster
    channels: tuple[str, ...] | None   # the channels bridged (None: every channel)
    stream: str                        # the engine's stream (one per cluster)
    engine: str                        # the engine's URL, credentials redacted


def _refuse_requests(what: str) -> None:
    if serving_request():  # a request is being served on this thread (the core says: cheap to ask)
        raise RuntimeError(f"{what} is for instance-wide jobs and services, never a request: a request must not "
                           f"wait on the cluster's engine")


class ClusterStore:
    """The key-value store of one bridged zone's cluster, as instance ``instance`` of it.

    ``get(key) -> (value | None, revision)``, ``put(key, value, revision) -> new revision``
    (raises ``Conflict`` when another write came first, ``EngineError`` when the engine failed,
    ``ValueError`` for a bad key or value: see ``Engine.kv_put``), ``lease(name, ttl)``,
    ``connected()``. Thread-safe (one call at a time on its one connection)."""

    def __init__(self, bridge, instance: str):
        self.bridge = bridge
        self.instance = instance
        self._engine = None
        self._lock = threading.Lock()
        self._ok = False
        self._held: dict[str, int] = {}  # lease name -> the expiry (wall ms) we last wrote

    def _call(self, what):
        _refuse_requests("the cluster store")
        with self._lock:
            try:
                if self._engine is None:
                    engine = self.bridge.make_engine()
                    engine.connect()
                    self._engine = engine
                result = what(self._engine)
            except Conflict:
                self._ok = True  # the engine answered: it said no
                raise
            except (EngineError, OSError) as exc:
                self._ok = False
                self._drop()
                if isinstance(exc, EngineError):
                    raise
                raise EngineError(f"{self.bridge.engine}: cannot read the password file: {exc.strerror}") from None
            self._ok = True
            return result

    def _drop(self) -> None:
        engine, self._engine = self._engine, None
        if engine is not None:
            engine.close()

    def get(self, key: str) -> tuple[str | None, int]:
        check_kv(key)
        return self._call(lambda engine: engine.kv_get(key))

    def put(self, key: str, value: str, revision: int) -> int:
        check_kv(key, value, revision)
        return self._call(lambda engine: engine.kv_put(key, value, revision=revision))

    def connected(self) -> bool:
        """Did the last call reach the engine?"""
        return self._ok

    def lease(self, name: str, ttl: float) -> bool:
        """Take or renew the cluster-wide lease ``name`` for this instance for ``ttl`` seconds;
        return whether this instance holds it. Taken when no one holds it, when it is ours
        (renewed), or when its holder let it expire more than ``lease_margin(ttl)`` ago (the
        holder's ttl, written with the lease: ``LEASE_SKEW``, or a quarter of a shorter ttl); one
        compare-and-set, so of instances trying at once exactly one wins. Call it again well
        within ``ttl`` (a third of it) to keep it. When the engine cannot be reached, a lease
        we hold is still ours until the expiry we wrote (no one takes it before then)."""
        if not 0 < ttl <= 86400:
            raise ValueError(f"a lease's ttl is from 0 to 86400 seconds, not {ttl!r}")
        key = f"lease.{name}"
        check_kv(key)
        now = int(time.time() * 1000)
        try:
            value, revision = self.get(key)
            holder, takeover = _lease_of(value)
            if holder not in (None, self.instance) and now <= takeover:
                self._held.pop(name, None)
                return False
            mine = now + int(ttl * 1000)
            self.put(key, json.dumps({"holder": self.instance, "expires_msec": mine,
                                      "takeover_msec": mine + int(lease_margin(ttl) * 1000)}), revision)
        except Conflict:  # another instance wrote first: it holds it now
            self._held.pop(name, None)
            return False
        except EngineError:
            return now < self._held.get(name, 0)
        self._held[name] = mine
        return True

    def close(self) -> None:
        with self._lock:
            self._drop()
            self._ok = False


def _lease_of(value: str | None) -> tuple[str | None, int]:
    """(holder, from when another may take it, in wall ms) of a lease's value; (None, 0) when
    there is none or it is not a lease (then it is taken over). A lease written without
    ``takeover_msec`` (an older ngxsim) gets ``LEASE_SKEW`` after its expiry."""
    try:
        doc = json.loads(value) if value is not None else None
        expires = int(doc["expires_msec"])
        return str(doc["holder"]), int(doc.get("takeover_msec", expires + LEASE_SKEW * 1000))
    except (ValueError, TypeError, KeyError):
        return None, 0


_stores: dict[tuple, ClusterStore] = {}
_stores_lock = threading.Lock()


def store_for(bridge, instance: str) -> ClusterStore:
    """This process's one ClusterStore of ``bridge`` (made on first use; a forked child makes
    its own)."""
    _refuse_requests("cluster.store()")
    key = (os.getpid(), bridge.zone, bridge.url, bridge.stream, instance, bridge.password_file, bridge.timeout)
    with _stores_lock:
        if key not in _stores:
            _stores[key] = ClusterStore(bridge, instance)
        return _stores[key]
