"""Real ``nats-server`` processes with JetStream for tests: one node, or a cluster of three on
loopback, each on free ports with its store in a folder the caller owns.

Used by the pytest plugin's ``ngxsim_nats`` / ``ngxsim_nats_servers`` fixtures and by
``benchmarks/bench_engines.py``; works without pytest. Every node can be stopped, killed
(``SIGKILL``), paused (``SIGSTOP``/``SIGCONT``) and started again on the same ports and store,
which is what the engine's failure tests need. Standard library only.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from . import procs
from .server import free_port, wait_for

_handed: set[int] = set()


def _port() -> int:
    """A free loopback port never handed out before by this process: a node takes three (client,
    monitoring, cluster), picked one after the other, and the kernel may give a port just
    released again (a node then fails to bind its second port to the same number)."""
    while True:
        port = free_port()
        if port not in _handed:
            _handed.add(port)
            return port


# Debian installs it in /usr/sbin, which a non-root user's PATH often lacks
_SBIN = "/usr/sbin/nats-server"


def nats_server_binary() -> str | None:
    found = shutil.which("nats-server")
    if found is None and os.access(_SBIN, os.X_OK):
        found = _SBIN
    return found


def nats_server_missing() -> str | None:
    """Why no ``nats-server`` can be started here (None: it can)."""
    if nats_server_binary() is None:
        return "nats-server is not installed (Debian: apt-get install nats-server; .ci/run installs it)"
    return None


@dataclass
class NatsServer:
    """One ``nats-server -js`` node; ``start()`` returns once it answers ``/healthz``."""

    name: str
    folder: Path
    user: str | None = None
    password: str | None = None
    token: str | None = None
    cluster_name: str | None = None
    port: int = field(default_factory=_port)
    monitor_port: int = field(default_factory=_port)
    cluster_port: int | None = None
    routes: list[int] = field(default_factory=list)
    tls: "object | None" = None  # ngxsim.testing.engines.TlsFiles: clients connect with TLS (tls://)
    proc: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{'tls' if self.tls else 'nats'}://{self.address}"

    @property
    def store(self) -> Path:
        return self.folder / "store"

    @property
    def log(self) -> Path:
        return self.folder / "nats-server.log"

    def describe(self) -> str:
        pid = self.proc.pid if self.proc else "-"
        return f"nats-server {self.name} {self.address} (pid {pid}, store {self.store})"

    def config_text(self) -> str:
        lines = [f"server_name: {json.dumps(self.name)}",
                 f"listen: 127.0.0.1:{self.port}",
                 f"http: 127.0.0.1:{self.monitor_port}",
                 f"jetstream {{ store_dir: {json.dumps(str(self.store))} }}"]
        if self.user is not None:
            lines.append(f"authorization {{ user: {json.dumps(self.user)}, password: {json.dumps(self.password)} }}")
        elif self.token is not None:
            lines.append(f"authorization {{ token: {json.dumps(self.token)} }}")
        if self.tls is not None:
            lines.append(f"tls {{ cert_file: {json.dumps(self.tls.cert)}, key_file: {json.dumps(self.tls.key)}, "
                         f"ca_file: {json.dumps(self.tls.ca)}, verify: {json.dumps(self.tls.verify_clients)} }}")
        if self.cluster_port is not None:
            routes = ", ".join(f"nats://127.0.0.1:{p}" for p in self.routes)
            lines.append(f"cluster {{ name: {json.dumps(self.cluster_name or 'ngxsim')}, "
                         f"listen: 127.0.0.1:{self.cluster_port}, routes: [{routes}] }}")
        return "\n".join(lines) + "\n"

    def start(self, wait: bool = True, timeout: float = 20.0) -> NatsServer:
        if self.running():
            raise AssertionError(f"{self.describe()} is already running")
        self.folder.mkdir(parents=True, exist_ok=True)
        conf = self.folder / "nats-server.conf"
        conf.write_text(self.config_text())
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([nats_server_binary() or "nats-server", "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)
        if wait:
            self.wait_ready(timeout)
        return self

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def healthy(self) -> bool:
        """Does ``/healthz`` say ok (JetStream up and, in a cluster, its meta leader known)?"""
        if not self.running():
            raise AssertionError(f"{self.describe()} exited with {self.proc.returncode}:\n{self.tail()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.monitor_port}/healthz", timeout=2) as answer:
                return answer.status == 200
        except (OSError, urllib.error.HTTPError):
            return False

    def wait_ready(self, timeout: float = 20.0) -> None:
        wait_for(self.healthy, timeout, interval=0.05, what=f"{self.describe()} to be healthy")

    def monitor(self, path: str) -> dict:
        """One answer of the monitoring port as JSON (``connz``, ``jsz?streams=true``, ...)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.monitor_port}/{path}", timeout=2) as answer:
            return json.loads(answer.read())

    def client_count(self) -> int:
        return self.monitor("connz")["num_connections"]

    def signal(self, sig: int) -> None:
        if self.running():
            os.kill(self.proc.pid, sig)

    def kill(self) -> None:
        """``SIGKILL``: no goodbye to clients or peers; the store stays for a restart."""
        if self.proc is not None:
            self.signal(signal.SIGKILL)
            self.proc.wait(10)

    def pause(self) -> None:
        """``SIGSTOP``, returning once every thread of the node is stopped (``kill()`` alone
        returns before: a node woken by a request may still answer it, see ``procs.stop``)."""
        if self.running():
            procs.stop(self.proc.pid)

    def resume(self) -> None:
        self.signal(signal.SIGCONT)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop it (``SIGCONT`` first, in case it is paused; ``SIGKILL`` if it does not end)."""
        if not self.running():
            return
        self.resume()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def restart(self, down_for: float = 0.0, wipe: bool = False, snapshot: Path | None = None) -> None:
        """Stop and start again on the same ports; ``wipe``: without its store (a node replaced
        by an empty one); ``snapshot``: on the store ``snapshot()`` copied (a node that lost what
        it acknowledged since, as one killed before its file store was written out)."""
        self.stop()
        if wipe or snapshot is not None:
            shutil.rmtree(self.store, ignore_errors=True)
        if snapshot is not None:
            shutil.copytree(snapshot, self.store)
        time.sleep(down_for)
        self.start()

    def snapshot(self) -> Path:
        """Stop, copy the store aside, start again; the copy's path, for ``restart(snapshot=...)``."""
        self.stop()
        copy = self.folder / f"snapshot.{time.monotonic_ns()}"
        shutil.copytree(self.store, copy)
        self.start()
        return copy

    def tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


@dataclass
class NatsCluster:
    """Nodes that route to each other; ``url`` lists them all, as a client configures it."""

    nodes: list[NatsServer]

    @property
    def url(self) -> str:
        return ",".join(node.url for node in self.nodes)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def stream_leader(self, stream: str) -> NatsServer | None:
        """The node leading JetStream stream ``stream`` (by its JetStream name), as the running
        nodes' monitoring says; None while it has none."""
        by_name = {node.name: node for node in self.nodes}
        for node in self.nodes:
            if not node.running():
                continue
            try:
                accounts = node.monitor("jsz?streams=true").get("account_details") or []
            except OSError:
                continue
            for account in accounts:
                for detail in account.get("stream_detail") or []:
                    leader = (detail.get("cluster") or {}).get("leader")
                    if detail.get("name") == stream and leader in by_name:
                        return by_name[leader]
        return None


def nats_node(folder: Path, name: str = "n1", **kw) -> NatsServer:
    """A started single ``nats-server -js`` with its store under ``folder / name``."""
    return NatsServer(name, Path(folder) / name, **kw).start()


def nats_cluster(folder: Path, size: int = 3, prefix: str = "n", **kw) -> NatsCluster:
    """``size`` started nodes in one cluster; returns once every node is healthy (its JetStream
    meta leader elected)."""
    ports = [_port() for _ in range(size)]
    nodes = [NatsServer(f"{prefix}{i + 1}", Path(folder) / f"{prefix}{i + 1}", cluster_port=ports[i],
                        routes=[p for p in ports if p != ports[i]], **kw) for i in range(size)]
    cluster = NatsCluster(nodes)
    try:
        for node in nodes:
            node.start(wait=False)
        for node in nodes:
            node.wait_ready(30.0)
    except BaseException:
        cluster.stop()
        raise
    return cluster
