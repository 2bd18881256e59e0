"""Real nginx as a reference: a private test instance, raw HTTP/1.x requests, comparable answers.

The differential tests run one config in real nginx and in ngxsim and send both the same bytes
(``raw_request(port, data).comparable(port)``); a module author compares a port with nginx's own
module the same way (the ``ngxsim_nginx`` fixture wraps :class:`Nginx`; docs/testing.md).
nginx runs unprivileged in the ways that matter: its own prefix, pid file, error log and temp
folders under the test's tmp dir, ``daemon off`` with a master process that the fixture starts
and stops with bounded waits, loopback only. Nothing is installed here: a machine without an
``nginx`` binary skips these tests and says why (``.ci/run`` installs Debian's ``nginx-light``).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from .server import free_port, wait_for

NGINX_CANDIDATES = ("nginx", "/usr/sbin/nginx")


def find_nginx() -> str | None:
    for candidate in NGINX_CANDIDATES:
        path = shutil.which(candidate)
        if path:
            return path
    return None


def nginx_version(binary: str) -> str:
    out = subprocess.run([binary, "-v"], capture_output=True, text=True, timeout=10)
    m = re.search(r"nginx/(\S+)", out.stderr + out.stdout)
    return m.group(1) if m else "unknown"


class Nginx:
    """One nginx instance in ``folder`` serving ``http_inside`` (the inside of an ``http`` block).

    ``{port}`` in the text is replaced by the instance's port. ``server_tokens off`` keeps the
    version out of nginx's own pages, as ngxsim's pages carry none.
    """

    def __init__(self, binary: str, folder: Path, http_inside: str, workers: int = 1, writes_files: bool = False):
        self.binary = binary
        self.workers = workers
        # as root the master hands its workers to "nobody", who cannot enter the test's tmp dir
        # (pytest makes it 0700): a config whose workers write there (a proxy_cache_path) keeps
        # them as the test's own user
        self.writes_files = writes_files
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.error_log = self.folder / "error.log"
        self.proc: subprocess.Popen | None = None
        (self.folder / "servers.conf").write_text(http_inside.replace("{port}", str(self.port)))
        self.conf = self.folder / "nginx.conf"
        self.conf.write_text(self._main_conf())

    def _main_conf(self) -> str:
        f = self.folder
        temp = "\n".join(f"    {kind}_temp_path {f}/{kind}_temp;" for kind in
                         ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        # as root the master would hand its workers to "nobody"; say so, so that is deliberate
        user = "user nobody nogroup;\n" if os.geteuid() == 0 and not self.writes_files else ""
        if os.geteuid() == 0 and self.writes_files:
            user = "user root root;\n"
        return (f"{user}daemon off;\nmaster_process on;\nworker_processes {self.workers};\npid {f}/nginx.pid;\n"
                f"error_log {self.error_log} info;\nevents {{ worker_connections 128; }}\n"
                f"http {{\n{temp}\n    access_log off;\n    server_tokens off;\n"
                f"    include {f}/servers.conf;\n}}\n")

    def start(self, timeout: float = 10.0) -> "Nginx":
        cmd = [self.binary, "-p", f"{self.folder}/", "-e", str(self.error_log), "-c", str(self.conf)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(self.folder / "stderr.log", "wb"),
                                     start_new_session=True)

        def up():
            if self.proc.poll() is not None:
                raise AssertionError(f"nginx exited with {self.proc.returncode}:\n{self.log()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return True
            except OSError:
                return False

        try:
            wait_for(up, timeout, what="nginx to listen")
        except BaseException:
            self.stop()
            raise
        return self

    def log(self) -> str:
        parts = [p.read_text(errors="replace") for p in (self.folder / "stderr.log", self.error_log) if p.exists()]
        return "\n".join(parts)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGQUIT (graceful) to the master, SIGKILL to its process group if it lingers."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGQUIT)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
        # the workers belong to the master's session: none may outlive it
        try:
            os.killpg(self.proc.pid, 0)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                os.killpg(self.proc.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.02)
        os.killpg(self.proc.pid, signal.SIGKILL)


def check_config(binary: str, folder: Path, conf: Path) -> str:
    """``nginx -t`` on ``conf``: its first ``[emerg]`` line's message, or "" when it is valid."""
    folder.mkdir(parents=True, exist_ok=True)
    out = subprocess.run([binary, "-t", "-p", f"{folder}/", "-e", str(folder / "t-error.log"), "-c", str(conf)],
                         capture_output=True, text=True, timeout=30)
    return first_emerg(out.stderr)


def first_emerg(text: str) -> str:
    m = re.search(r"\[emerg\] (?:\d+#\d+: )?(.*)", text)
    return m.group(1).strip() if m else ""


def config_errors(binary: str, folder: Path, http_inside: str, modules: tuple[str, ...] = ()) -> tuple[str, str]:
    """The same ``http`` block checked by ``nginx -t`` and by ngxsim's loader: ``(nginx's first
    [emerg] message, ngxsim's ConfigError message)``, both naming ``folder/t.conf`` and the same
    line numbers (``load_module`` lines for ``modules`` share the first line). "" for a side
    that accepts the config."""
    from ..core.conf.errors import ConfigError
    from ..core.conf.loader import load_configuration

    folder.mkdir(parents=True, exist_ok=True)
    conf = folder / "t.conf"
    conf.write_text(f"events {{}}\nhttp {{\n{http_inside}\n}}\n")
    expected = check_config(binary, folder / "prefix", conf)
    conf.write_text("".join(f"load_module {m}; " for m in modules) + f"\nhttp {{\n{http_inside}\n}}\n")
    try:
        load_configuration(str(conf))
    except ConfigError as exc:
        return expected, str(exc)
    return expected, ""
