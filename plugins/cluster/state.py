"""The relay's durable state: one JSON file per bridged zone in the ``state=`` folder.

- ``ring_birth`` and ``relayed``: the last local generation appended to the engine, valid for
  the ring born at ``ring_birth`` (a restarted instance has a new ring: it starts at 1 again);
- ``cursor``: the engine position of the last entry read;
- ``seen``: per origin, the highest origin generation delivered here (the de-duplication
  watermark: relaying is at least once, delivery once);
- ``acked``: the engine's position and the origin generation of the last entry of ours it
  acknowledged: a relay that restarts (or takes over) checks that the engine still holds it.

Written with write-then-rename, so a relay killed mid-write leaves the previous state whole.
Written after a batch: at most every 50 ms while events keep coming, at once when the relay
goes idle, and when it stops; the relay of a takeover (same instance) or of a restart reads it back.
Anything lost between a batch and its write is re-done: appended again (the others' watermarks
drop it) or read again (this instance's watermark, rebuilt also from the ring, drops it).
"""

from __future__ import annotations

import json
import os
import threading


class RelayState:
    def __init__(self, path: str):
        self.path = path
        self.ring_birth = 0
        self.relayed = 0
        self.cursor: str | None = None
        self.seen: dict[str, int] = {}
        self.acked: tuple[str, int] | None = None
        self._lock = threading.Lock()

    @classmethod
    def load(cls, path: str) -> "RelayState":
        state = cls(path)
        try:
            with open(path, encoding="utf-8") as fh:
                doc = json.load(fh)
        except FileNotFoundError:
            return state
        except (OSError, ValueError):
            os.replace(path, path + ".bad")  # keep it for a person; start afresh
            return state
        state.ring_birth = int(doc.get("ring_birth", 0))
        state.relayed = int(doc.get("relayed", 0))
        state.cursor = doc.get("cursor")
        state.seen = {str(k): int(v) for k, v in (doc.get("seen") or {}).items()}
        acked = doc.get("acked")
        if isinstance(acked, list) and len(acked) == 2:
            state.acked = (str(acked[0]), int(acked[1]))
        return state

    def save(self) -> None:
        with self._lock:
            doc = {"ring_birth": self.ring_birth, "relayed": self.relayed, "cursor": self.cursor,
                   "seen": dict(self.seen), "acked": list(self.acked) if self.acked else None}
            tmp = f"{self.path}.{os.getpid()}.{threading.get_ident()}.tmp"
            with open(tmp, "w", encoding="utf-8") as fh:
                json.dump(doc, fh)
            os.replace(tmp, self.path)


def state_path(folder: str, zone: str, stream: str) -> str:
    return os.path.join(folder, f"cluster.{zone}.{stream}.json")
