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

from . import procs
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
        """``SIGSTOP``, returning once every thread of the server is stopped (see ``procs.stop``)."""
        procs.stop(self.proc.pid)

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

    def __init__(self, folder, port=None, password: str | None = None, fsync: str = "always",
                 tls: "TlsFiles | None" = None):
        super().__init__(folder, port)
        self.password = password
        self.fsync = fsync  # appendfsync: "always" (tests: nothing acknowledged is lost), "everysec"
        self.tls = tls  # TLS only on the port (rediss://), with these files

    @property
    def url(self) -> str:
        return f"{'rediss' if self.tls else 'redis'}://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        cmd = [self.binary, "--bind", "127.0.0.1", "--dir", str(self.folder),
               "--save", "", "--appendonly", "yes", "--appendfsync", self.fsync, "--daemonize", "no",
               "--protected-mode", "no"]
        if self.tls:
            cmd += ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", self.tls.cert,
                    "--tls-key-file", self.tls.key, "--tls-ca-cert-file", self.tls.ca,
                    "--tls-auth-clients", "yes" if self.tls.verify_clients else "no"]
        else:
            cmd += ["--port", str(self.port)]
        if self.password:
            cmd += ["--requirepass", self.password]
        return cmd

    def ready(self) -> bool:
        if self.tls:  # the port answers a TLS handshake
            return _handshakes(self.port)
        return _answers(self.port, b"PING\r\n", b"+PONG") or _answers(self.port, b"PING\r\n", b"-NOAUTH")

    def client(self):
        import redis

        tls = {}
        if self.tls:
            tls = {"ssl": True, "ssl_ca_certs": self.tls.ca, "ssl_certfile": self.tls.client_cert,
                   "ssl_keyfile": self.tls.client_key}
        return redis.Redis(port=self.port, password=self.password, socket_timeout=5, **tls)


class TlsFiles:
    """A private CA (``trustme``) and, in ``folder``, the files of a TLS engine on 127.0.0.1:
    ``ca`` (what a client trusts), the server's ``cert`` and ``key``, a client's ``client_cert``
    and ``client_key`` signed by the same CA (for an engine that verifies clients,
    ``verify_clients``), and ``other_ca``: a CA that signed none of them. The server's
    certificate names ``names`` (the address 127.0.0.1 alone by default: ``localhost`` is then
    the wrong name for it)."""

    def __init__(self, folder: Path | str, verify_clients: bool = False, names: tuple[str, ...] = ("127.0.0.1",)):
        import trustme

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.verify_clients = verify_clients
        ca = trustme.CA()
        server = ca.issue_cert(*names)
        client = ca.issue_cert("ngxsim-relay")
        self.ca, self.other_ca = str(folder / "ca.pem"), str(folder / "other-ca.pem")
        self.cert, self.key = str(folder / "server.pem"), str(folder / "server.key")
        self.client_cert, self.client_key = str(folder / "client.pem"), str(folder / "client.key")
        ca.cert_pem.write_to_path(self.ca)
        trustme.CA().cert_pem.write_to_path(self.other_ca)
        server.cert_chain_pems[0].write_to_path(self.cert)
        server.private_key_pem.write_to_path(self.key)
        client.cert_chain_pems[0].write_to_path(self.client_cert)
        client.private_key_pem.write_to_path(self.client_key)


def _handshakes(port: int) -> bool:
    import ssl

    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            with context.wrap_socket(sock):
                return True
    except ssl.SSLError:  # a server asking for a client certificate may refuse the handshake: it is up
        return True
    except OSError:
        return False


__all__ = ["EngineServer", "RedisServer", "TlsFiles"]
