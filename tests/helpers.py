"""Real servers for the integration tests: gunicorn or ``ngxsim -c`` on a loopback port.

Every wait is bounded; ``Server.stop()`` ends the master, waits for its workers and janitor
and checks that the instance's shared-memory files are gone.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

from ngxsim.core.instance import process_start_time
from ngxsim.core.shm import shm_dir

ROOT = Path(__file__).resolve().parent.parent
TEST_MODULES = ROOT / "tests" / "modules"


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.02, what: str = "condition"):
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
        count = self.workers if count is None else count

        def ready():
            pids = [p for p in self.worker_pids() if p not in exclude]
            return pids if len(pids) >= count else None

        return wait_for(ready, timeout, what=f"{count} workers of {self.master}")

    def get(self, path: str, **kw) -> requests.Response:
        kw.setdefault("timeout", 10)
        return requests.get(self.url(path), **kw)

    def post(self, path: str, **kw) -> requests.Response:
        kw.setdefault("timeout", 10)
        return requests.post(self.url(path), **kw)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc.poll() is None:
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


def start_server(tmp_path: Path, conf_text: str, workers: int = 4, mode: str = "gunicorn",
                 preload: bool = False, worker_class: str = "sync", extra_env: dict | None = None,
                 ready_path: str = "/", wait_ready: bool = True) -> Server:
    """Write the config (``{port}`` replaced) and start a real server with ``workers`` workers."""
    port = free_port()
    conf = tmp_path / f"ngxsim-{port}.conf"
    conf.write_text(conf_text.replace("{port}", str(port)))
    log = tmp_path / f"server-{port}.log"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TEST_MODULES), env.get("PYTHONPATH")]))
    env.update(extra_env or {})
    if mode == "gunicorn":
        env["NGXSIM_CONF"] = str(conf)
        cmd = [sys.executable, "-m", "gunicorn", "-w", str(workers), "-b", f"127.0.0.1:{port}",
               "--graceful-timeout", "5", "--worker-class", worker_class, "--log-level", "info", "ngxsim.wsgi"]
        if worker_class == "gthread":
            cmd[-1:-1] = ["--threads", "4"]
        if preload:
            cmd.insert(-1, "--preload")
        if _has_control_socket():
            cmd.insert(-1, "--no-control-socket")
    else:
        cmd = [sys.executable, "-m", "ngxsim.cli", "-c", str(conf)]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path, start_new_session=True)
    server = Server(proc, port, conf, workers, log, env)
    if wait_ready:
        try:
            server.wait_workers()
            wait_for(lambda: _answers(server, ready_path), 20, what="the server to answer")
        except BaseException:
            server.stop()
            raise
    return server


def _answers(server: Server, path: str) -> bool:
    if server.proc.poll() is not None:
        raise AssertionError(f"server exited with {server.proc.returncode}:\n{server.output()}")
    try:
        requests.get(server.url(path), timeout=2)
        return True
    except requests.ConnectionError:
        return False


def _has_control_socket() -> bool:
    from gunicorn.config import KNOWN_SETTINGS

    return any(s.name == "control_socket_disable" for s in KNOWN_SETTINGS)


def seen_pids(server: Server, path: str, want: int, attempts: int = 800) -> dict[int, requests.Response]:
    """GET ``path`` until ``want`` distinct workers (X-Worker-Pid) answered; returns one
    response per worker."""
    out: dict[int, requests.Response] = {}
    for _ in range(attempts):
        r = server.get(path)
        out.setdefault(int(r.headers["X-Worker-Pid"]), r)
        if len(out) >= want:
            return out
    raise AssertionError(f"only workers {sorted(out)} answered in {attempts} requests")
