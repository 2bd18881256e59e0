"""Real servers for tests and benchmarks: ``gunicorn ngxsim.wsgi`` or ``ngxsim -c`` on loopback.

For people who test event flows between modules with real processes::

    from ngxsim.testing import start_server
    server = start_server(tmp_path, conf_text_with_a_{port}_placeholder, workers=4)
    try:
        ...  # talk HTTP to server.url("/...")
    finally:
        server.stop()   # ends master and workers, checks the zone files are gone

Every wait is bounded. Standard library only.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from ..core.instance import process_start_time
from ..core.shm import shm_dir


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.02, what: str = "condition"):
    """Call ``predicate`` until it returns something true (returned) or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def children(pid: int) -> list[int]:
    """Live (non-zombie) child processes of ``pid``."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as fh:
                    stat = fh.read()
            except OSError:
                continue
            fields = stat[stat.rfind(b")") + 2 :].split()
            if int(fields[1]) == pid and fields[0] not in (b"Z", b"X"):
                out.append(int(entry))
    return sorted(out)


def instance_files(tag: str) -> list[str]:
    """The shared-memory files of the server instance ``tag`` (``<master pid>.<start time>``)."""
    return sorted(e for e in os.listdir(shm_dir()) if e.startswith(f"ngxsim.{tag}."))


@dataclass
class Server:
    proc: subprocess.Popen
    port: int
    conf: Path
    workers: int
    log: Path
    env: dict = field(default_factory=dict)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return self.base + path

    @property
    def master(self) -> int:
        return self.proc.pid

    @property
    def tag(self) -> str:
        return f"{self.master}.{process_start_time(self.master)}"

    def worker_pids(self) -> list[int]:
        return children(self.master)

    def wait_workers(self, count: int | None = None, exclude: set[int] = frozenset(), timeout: float = 20.0) -> list[int]:
        """Wait until ``count`` workers (not in ``exclude``) exist; returns their pids."""
        count = self.workers if count is None else count

        def ready():
            pids = [p for p in self.worker_pids() if p not in exclude]
            return pids if len(pids) >= count else None

        return wait_for(ready, timeout, what=f"{count} workers of {self.master}")

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def answers(self, path: str = "/") -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.output()}")
        try:
            urllib.request.urlopen(self.url(path), timeout=2).close()
        except urllib.error.HTTPError:
            return True  # it answered, with an error status
        except OSError:
            return False
        return True

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM the master, wait for it and its workers, then for the zone files to go."""
        if self.proc.poll() is not None:
            return
        tag = self.tag
        workers = self.worker_pids()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            for pid in [self.master, *workers]:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self.proc.wait(5)
            raise AssertionError(f"server {self.master} did not stop within {timeout}s:\n{self.output()}")
        wait_for(lambda: not any(process_start_time(p) for p in workers), 10, what="workers to exit")
        wait_for(lambda: not instance_files(tag), 10, what=f"zone files of {tag} to be removed")


def start_server(folder: Path, conf_text: str, workers: int = 4, mode: str = "gunicorn", preload: bool = False,
                 worker_class: str = "sync", extra_env: dict | None = None, pythonpath: list[str] = (),
                 ready_path: str = "/", wait_ready: bool = True, app: str = "ngxsim.wsgi",
                 server_class: type[Server] = Server) -> Server:
    """Write the config (``{port}`` replaced by a free port) into ``folder`` and start a server.

    ``mode="gunicorn"`` runs ``gunicorn -w WORKERS ... ngxsim.wsgi`` with ``NGXSIM_CONF`` set;
    ``mode="ngxsim"`` runs ``ngxsim -c`` (workers and listen come from the config). The server
    runs in its own session; its output goes to ``server.log``.
    """
    port = free_port()
    folder = Path(folder)
    conf = folder / f"ngxsim-{port}.conf"
    conf.write_text(conf_text.replace("{port}", str(port)))
    log = folder / f"server-{port}.log"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([*map(str, pythonpath), *filter(None, [env.get("PYTHONPATH")])])
    env.update(extra_env or {})
    if mode == "gunicorn":
        env["NGXSIM_CONF"] = str(conf)
        cmd = [sys.executable, "-m", "gunicorn", "-w", str(workers), "-b", f"127.0.0.1:{port}",
               "--graceful-timeout", "5", "--worker-class", worker_class, "--log-level", "info"]
        if worker_class == "gthread":
            cmd += ["--threads", "4"]
        if preload:
            cmd.append("--preload")
        if _has_control_socket():
            cmd.append("--no-control-socket")
        cmd.append(app)
    else:
        cmd = [sys.executable, "-m", "ngxsim.cli", "-c", str(conf)]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=folder, start_new_session=True)
    server = server_class(proc, port, conf, workers, log, env)
    if wait_ready:
        try:
            server.wait_workers()
            wait_for(lambda: server.answers(ready_path), 20, what="the server to answer")
        except BaseException:
            server.stop()
            raise
    return server


def _has_control_socket() -> bool:
    from gunicorn.config import KNOWN_SETTINGS

    return any(s.name == "control_socket_disable" for s in KNOWN_SETTINGS)


def stop_all(things) -> None:
    """Stop every server or backend in ``things``, even when some fail; then fail with all their errors."""
    errors = []
    for thing in things:
        try:
            thing.stop()
        except AssertionError as exc:
            errors.append(str(exc))
    if errors:
        raise AssertionError("\n".join(errors))
