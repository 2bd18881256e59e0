"""API requests of one worker waiting for the outcome of their change (cluster-wide upstreams:
the sync service publishes ``change_applied`` and every worker's dispatcher hands it here)."""

from __future__ import annotations

import threading


class Waiters:
    """API requests of this worker waiting for their change (``change_applied``)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._waiting: dict[str, list] = {}

    def register(self, change: str) -> list:
        slot = [threading.Event(), None]
        with self._lock:
            self._waiting[change] = slot
        return slot

    def wait(self, change: str, slot: list, bound: float) -> dict | None:
        try:
            return slot[1] if slot[0].wait(bound) else None
        finally:
            with self._lock:
                self._waiting.pop(change, None)

    def done(self, change: str, result: dict) -> None:
        with self._lock:
            slot = self._waiting.get(change)
        if slot is not None:
            slot[1] = result
            slot[0].set()
