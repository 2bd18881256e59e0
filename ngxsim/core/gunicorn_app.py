"""``ngxsim -c FILE``: gunicorn hosted with settings taken from the config.

``worker_processes`` -> workers, every ``listen`` -> a bind, ``error_log`` -> gunicorn's error
log, and the process hooks map onto nginx's phases (see ``process.py``). SIGHUP re-reads the
file: a valid new config replaces the old one (zones of unchanged name and size keep their
contents), an invalid one is logged and the running config goes on serving.
"""

from __future__ import annotations

import socket
import sys

from gunicorn.app.base import BaseApplication
from gunicorn.config import KNOWN_SETTINGS

from .conf.errors import ConfigError
from .instance import MASTER, current_instance
from .process import Runtime, load
from .shm import JANITOR_MARKER, ZoneError, remove_zone_files

_SETTINGS = {s.name for s in KNOWN_SETTINGS}
GUNICORN_WORKER_CLASSES = {"sync": "sync", "gthread": "gthread", "ngxsim": "ngxsim.worker.Worker"}
GUNICORN_LEVELS = {"debug": "debug", "info": "info", "notice": "info", "warn": "warning", "error": "error",
                   "crit": "critical", "alert": "critical", "emerg": "critical"}


class BindError(RuntimeError):
    """An address of the config cannot be listened on."""


def config_binds(config) -> list[str]:
    """The gunicorn ``bind`` values of a config: one per distinct ``listen`` address."""
    core = config.stash.get("core.http")
    return [listen.bind for listen in core.listens] if core and core.listens else ["127.0.0.1:8080"]


def check_binds(binds: list[str], bound: set[str]) -> None:
    """Raise BindError, worded like nginx's, for the first address in ``binds`` (other than the
    ``bound`` ones this server listens on already) that cannot be bound now. gunicorn would
    retry five times over five seconds and then print "Can't connect to ...". The socket is
    closed again: gunicorn binds right after; a program that takes the port in between gets
    gunicorn's own message."""
    for bind in binds:
        if bind in bound:
            continue
        host, _, port = bind.rpartition(":")
        host = host.strip("[]")
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gunicorn: TIME_WAIT is no conflict
            try:
                sock.bind((host, int(port)))
            except OSError as exc:
                raise BindError(f"bind() to {bind} failed ({exc.errno}: {exc.strerror})") from None


class NgxsimApplication(BaseApplication):
    def __init__(self, path: str | None):
        self.path = path
        self.runtime: Runtime | None = None
        super().__init__()

    # gunicorn calls this at start and again in the master on every SIGHUP
    def load_config(self) -> None:
        try:
            config = load(self.path)
            check_binds(config_binds(config), set(config_binds(self.runtime.config)) if self.runtime else set())
            runtime = Runtime(config, self.runtime.instance if self.runtime else current_instance(MASTER))
            runtime.start_instance()
        except (ConfigError, ZoneError, BindError) as exc:
            self._reject(exc)
        else:
            if self.runtime is not None:
                remove_zone_files(runtime.instance, keep={spec.name for spec in config.zones} | {JANITOR_MARKER})
                for zone in self.runtime.zones.values():
                    zone.close()
            self.runtime = runtime
        self._apply(self.runtime)

    def _reject(self, exc: Exception) -> None:
        """A config (or its zones) that cannot be served: stop at start, keep the old on reload.
        The message is printed here: gunicorn would print a bare "Error:" line."""
        if self.runtime is None:
            print(f"ngxsim: [emerg] {exc}", file=sys.stderr, flush=True)
            raise SystemExit(1)
        print(f"ngxsim: [emerg] {exc}; reload rejected, the running configuration stays", file=sys.stderr, flush=True)

    def _apply(self, runtime: Runtime) -> None:
        config = runtime.config
        error_log, level = config.main["error_log"]
        worker_class = config.main["worker_class"]
        settings = {
            "bind": config_binds(config),
            "workers": config.worker_processes,
            "worker_class": GUNICORN_WORKER_CLASSES[worker_class],
            # gunicorn turns sync into gthread when threads > 1
            "threads": 1 if worker_class == "sync" else config.main["worker_threads"],
            # a connection closes after its response, as under sync workers: each request is a
            # new accept, taken by a worker with a free thread (a kept-alive client would stay
            # with one worker however busy it is)
            "keepalive": 0,
            "loglevel": GUNICORN_LEVELS[level],
            "errorlog": "-" if error_log == "stderr" else error_log,
            "post_fork": self._post_fork,
            "worker_exit": self._worker_exit,
            "on_exit": self._on_exit,
            "proc_name": "ngxsim",
            "logger_class": "ngxsim.glogging.Logger",  # masks secret query arguments in gunicorn's logs
            # a sync worker answering a long-poll (wait <= 30 s) sends no heartbeat meanwhile:
            # gunicorn's default 30 s timeout would kill it mid-answer
            "timeout": 60,
        }
        if "control_socket_disable" in _SETTINGS:
            settings["control_socket_disable"] = True  # one per user by default: servers would collide
        for key, value in settings.items():
            self.cfg.set(key, value)

    def _post_fork(self, arbiter, worker) -> None:
        self.runtime.start_worker()

    def _worker_exit(self, arbiter, worker) -> None:
        self.runtime.stop_worker()

    def _on_exit(self, arbiter) -> None:
        if self.runtime is not None:
            remove_zone_files(self.runtime.instance)

    def load(self):
        return self.runtime.app


def serve(path: str | None) -> int:
    NgxsimApplication(path).run()  # a bad config or zone exits 1 with nginx's message
    return 0
