"""What the relay shows of itself, in a small zone every worker reads (``cluster.ZONE``).

The relay (one worker) writes a JSON document there under the zone lock after every change;
the worker_events API and ``ngxsim_status`` of any worker read it. Its counters are what a
relay that takes over starts from, so they count for the instance, not for one worker.
"""

from __future__ import annotations

import json
import struct

from ngxsim import Zone

_LEN = struct.Struct("<I")
VIEW_SIZE = 64 * 1024


class View:
    def __init__(self, zone: Zone):
        self.zone = zone

    def write(self, doc: dict) -> None:
        data = json.dumps(doc, separators=(",", ":")).encode()
        if len(data) + _LEN.size > self.zone.usable:
            doc = dict(doc, instances={}, note="too many instances to show")
            data = json.dumps(doc, separators=(",", ":")).encode()
        with self.zone.lock():
            _LEN.pack_into(self.zone.buf, 0, len(data))
            self.zone.buf[_LEN.size:_LEN.size + len(data)] = data

    def read(self) -> dict | None:
        with self.zone.lock():
            size = _LEN.unpack_from(self.zone.buf, 0)[0]
            data = bytes(self.zone.buf[_LEN.size:_LEN.size + size])
        return json.loads(data) if size else None
