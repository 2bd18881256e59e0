"""Real engines for the cluster bridge's tests: ``redis-server`` (and, beside it, room for
``nats-server``) on a free loopback port, with its data in a temporary folder.

    from ngxsim.testing.engines import RedisServer
    engine = RedisServer(tmp_path).start()   # engine.url: redis://127.0.0.1:PORT/0
    engine.pause(); engine.resume()          # SIGSTOP / SIGCONT
    engine.restart()                         # same port, same data (append-only file)
    engine.stop()

Every wait is bounded; ``stop`` leaves no process. Standard library only.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from .server import free_port, wait_for


def _answers(port: int, probe: bytes, expect: bytes) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(probe)
            return sock.recv(64).startswith(expect)
    except OSError:
        return False


class EngineServer:
    """One engine process on loopback: started, paused, resumed, restarted, stopped."""

    binary = ""
    scheme = ""

    def __init__(self, folder: Path | str, port: int | None = None):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None
        self.log = self.folder / f"{self.binary}.log"

    @classmethod
    def available(cls) -> bool:
        return shutil.which(cls.binary) is not None

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        raise NotImplementedError

    def ready(self) -> bool:
        raise NotImplementedError

    def start(self, timeout: float = 10.0):
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, cwd=self.folder, start_new_session=True)
        try:
            wait_for(lambda: self.proc.poll() is not None or self.ready(), timeout, 0.02,
                     what=f"{self.binary} on port {self.port}")
        except AssertionError:
            self.stop()
            raise
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.binary} exited ({self.proc.returncode}): {self.log.read_text()[-2000:]}")
        return self

    def pause(self) -> None:
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        try:
            os.kill(proc.pid, signal.SIGCONT)  # a paused one cannot exit
            os.kill(proc.pid, sig)
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        except ProcessLookupError:
            pass

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def _data(self) -> list[Path]:
        return [path for path in self.folder.iterdir() if path != self.log and not path.name.startswith("snapshot.")]

    def restart(self, down_for: float = 0.0, wipe: bool = False, snapshot: Path | None = None) -> None:
        """Stop and start again on the same port; ``wipe``: without its data (an engine
        replaced by an empty one); ``snapshot``: on the data ``snapshot()`` copied (an engine
        that lost what it acknowledged since, as one that had not stored it durably)."""
        self.stop()
        if wipe or snapshot is not None:
            for path in self._data():
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        if snapshot is not None:
            shutil.copytree(snapshot, self.folder, dirs_exist_ok=True)
        time.sleep(down_for)
        self.start()

    def snapshot(self) -> Path:
        """Stop, copy the data aside (in the server's folder), start again; the copy's path, for
        ``restart(snapshot=...)``."""
        self.stop()
        copy = self.folder / f"snapshot.{time.monotonic_ns()}"
        copy.mkdir()
        for path in self._data():
            (shutil.copytree if path.is_dir() else shutil.copy2)(path, copy / path.name)
        self.start()
        return copy


class RedisServer(EngineServer):
    """``redis-server`` with an append-only file (fsync always), so a restart keeps what was
    acknowledged; ``password``: require it (``requirepass``)."""

    binary = "redis-server"
    scheme = "redis"

    def __init__(self, folder, port=None, password: str | None = None, fsync: str = "always"):
        super().__init__(folder, port)
        self.password = password
        self.fsync = fsync  # appendfsync: "always" (tests: nothing acknowledged is lost), "everysec"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        cmd = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder),
               "--save", "", "--appendonly", "yes", "--appendfsync", self.fsync, "--daemonize", "no",
               "--protected-mode", "no"]
        if self.password:
            cmd += ["--requirepass", self.password]
        return cmd

    def ready(self) -> bool:
        return _answers(self.port, b"PING\r\n", b"+PONG") or _answers(self.port, b"PING\r\n", b"-NOAUTH")

    def client(self):
        import redis

        return redis.Redis(port=self.port, password=self.password, socket_timeout=5)


__all__ = ["EngineServer", "RedisServer"]
