"""A cluster of ngxsim instances on one machine sharing one engine, for tests of the cluster
bridge and of modules whose events cross hosts (the pytest fixture ``ngxsim_cluster`` wraps it).

Each instance is a real server (``ngxsim_server``) with its own port, instance id (``A``, ``B``,
``C``...), state folder (``{state}``) and folder for what test modules record (``{records}``,
exported as ``NGXSIM_TEST_RECORD_DIR``). The config template may use ``{engine}`` (the engine's
URL), ``{stream}``, ``{instance}``, ``{state}``, ``{records}`` and the server's placeholders.
Zone files are per instance already (named by the master's pid and start time), so instances
may use the same zone names.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from pathlib import Path

from .server import Server, wait_for


@dataclass
class ClusterMember:
    name: str
    server: Server
    state: Path
    record_dir: Path

    def cluster_view(self, path: str) -> dict:
        """The ``cluster`` part of the worker_events API answer at ``path``."""
        return self.server.get(path + "?limit=0").json().get("cluster") or {}

    def wait_connected(self, path: str, timeout: float = 20.0) -> dict:
        """Until this instance's relay is connected and has a read position."""
        return wait_for(lambda: (lambda v: v if v.get("connected") and v.get("cursor") else None)(
            self.cluster_view(path)), timeout, 0.05, what=f"instance {self.name}'s relay to connect")

    def records(self) -> dict[int, list[str]]:
        """What each live worker's recorder wrote, by pid (``ngxsim_test_recorder``)."""
        out = {}
        for pid in self.server.worker_pids():
            path = self.record_dir / f"{pid}.log"
            out[pid] = path.read_text().splitlines() if path.exists() else []
        return out


class Cluster:
    def __init__(self, start_server, folder: Path, engine_url: str):
        self._start = start_server
        self.folder = Path(folder)
        self.engine_url = engine_url
        self.members: list[ClusterMember] = []

    def start(self, conf: str, count: int = 3, workers=2, stream: str = "ngxsim.test",
              names: str = string.ascii_uppercase, **kw) -> list[ClusterMember]:
        """Start ``count`` instances (``workers``: one number, or one per instance)."""
        started = []
        for i in range(count):
            name = names[len(self.members)]
            each = workers[i] if isinstance(workers, (list, tuple)) else workers
            started.append(self.start_one(conf, name, each, stream, **kw))
        return started

    def start_one(self, conf: str, name: str, workers: int = 2, stream: str = "ngxsim.test",
                  engine_url: str | None = None, **kw) -> ClusterMember:
        state = self.folder / f"state-{name}"
        records = self.folder / f"records-{name}"
        state.mkdir(parents=True, exist_ok=True)
        records.mkdir(parents=True, exist_ok=True)
        placeholders = {"engine": engine_url or self.engine_url, "stream": stream, "instance": name,
                        "state": state, "records": records, **kw.pop("placeholders", {})}
        env = {"NGXSIM_TEST_RECORD_DIR": str(records), **kw.pop("extra_env", {})}
        server = self._start(conf, workers=workers, placeholders=placeholders, extra_env=env, **kw)
        member = ClusterMember(name, server, state, records)
        self.members.append(member)
        return member


__all__ = ["Cluster", "ClusterMember"]
