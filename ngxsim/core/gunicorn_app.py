"""``ngxsim -c FILE``: gunicorn hosted with settings taken from the config.

``worker_processes`` -> workers, every ``listen`` -> a bind, ``error_log`` -> gunicorn's error
log, and the process hooks map onto nginx's phases (see ``process.py``). The master runs
:class:`NgxsimArbiter`, gunicorn's arbiter with nginx's signals:

- ``SIGHUP`` re-reads the file and imports the modules it loads anew. A valid new config
  replaces the old one (zones of unchanged name and size keep their contents; new workers
  replace the old). One that cannot be served (an ``[emerg]``, a zone or an address that cannot
  be had, a module that fails to import) is logged and changes nothing: the old workers go on
  serving, untouched.
- ``SIGTERM``/``SIGINT`` stop fast, ``SIGQUIT`` gracefully (gunicorn has it the other way round).
  Either way each worker is told (``Runtime.begin_stop``), so waiting long-polls answer at once.

Start, reload and stop are logged in the error log, one line each.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
import time

from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter
from gunicorn.config import KNOWN_SETTINGS

from .conf.errors import ConfigError
from .http.logs import EMERG, NOTICE
from .instance import MASTER, current_instance
from .modules import fresh_imports, plugin_module_names
from .process import Runtime, load
from .shm import JANITOR_MARKER, ZoneError, remove_zone_files, staged_zone_path, zone_path

_SETTINGS = {s.name for s in KNOWN_SETTINGS}
# ngxsim's subclasses of gunicorn's worker classes: they tell the runtime when they are stopped
GUNICORN_WORKER_CLASSES = {"sync": "ngxsim.worker.SyncWorker", "gthread": "ngxsim.worker.GThreadWorker",
                           "ngxsim": "ngxsim.worker.Worker"}
GUNICORN_LEVELS = {"debug": "debug", "info": "info", "notice": "info", "warn": "warning", "error": "error",
                   "crit": "critical", "alert": "critical", "emerg": "critical"}
# a fast stop waits this long for workers to exit (a woken long-poll answers in milliseconds),
# then kills what is left; a graceful one waits gunicorn's graceful_timeout
FAST_STOP_TIMEOUT = 3


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


def _size(spec) -> str:
    """A zone's size in one unit style (bytes), with the size the config gave when the module
    maps another: ``262144 bytes``, ``256 bytes mapped, 10485760 bytes configured``."""
    if spec.configured is None:
        return f"{spec.size} bytes"
    return f"{spec.size} bytes mapped, {spec.configured} bytes configured"


def _describe(runtime: Runtime, old: Runtime | None) -> list[str]:
    """The error log's lines about what a (re)loaded config serves."""
    config = runtime.config
    worker_class = config.main["worker_class"]
    threads = "1 thread" if worker_class == "sync" else f"{config.main['worker_threads']} threads"
    lines = [f"listening on {', '.join(config_binds(config))}",
             f"{config.worker_processes} worker(s) of class {worker_class} "
             f"({GUNICORN_WORKER_CLASSES[worker_class]}, {threads} each)"]
    modules = [f"{name} ({module})" for (name, _), module in zip(config.modules, plugin_module_names(config.modules))
               if name != "core"]
    lines.append(f"modules: {', '.join(modules) or 'none loaded'}")
    for spec in config.zones:
        zone = runtime.zones[spec.name]
        lines.append(f'zone "{spec.name}" ({_size(spec)}) {"created" if zone.fresh else "kept"}')
    for name in sorted(set(old.zones) - set(runtime.zones)) if old else ():
        lines.append(f'zone "{name}" removed')
    return lines


class NgxsimArbiter(Arbiter):
    """gunicorn's arbiter with nginx's signals and reloads that keep workers when rejected."""

    def handle_term(self):
        self._stop_by("SIGTERM", fast=True)

    def handle_int(self):
        self._stop_by("SIGINT", fast=True)

    def handle_quit(self):
        self._stop_by("SIGQUIT", fast=False)

    def _stop_by(self, name: str, fast: bool):
        how = "fast shutdown" if fast else "graceful shutdown: requests in progress finish"
        self.log.log(NOTICE, "signal %d (%s) received, %s", getattr(signal, name), name, how)
        if fast:
            self.stop(False)
        raise StopIteration  # the run loop halts, stopping gracefully what is left

    _graceful_stop = False

    def signal(self, sig, frame):
        # gunicorn's graceful stop turns quick on INT or QUIT; nginx's on TERM or INT, and a QUIT
        # while it stops gracefully changes nothing
        if self._graceful_stop:
            if sig == signal.SIGQUIT:
                return
            if sig == signal.SIGTERM:
                sig = signal.SIGINT
        super().signal(sig, frame)

    def stop(self, graceful=True):
        if graceful:
            self._graceful_stop = True
            return super().stop(True)
        # gunicorn waits graceful_timeout for workers that stop at once: bound it
        saved = self.cfg.graceful_timeout
        self.cfg.set("graceful_timeout", min(saved, FAST_STOP_TIMEOUT))
        try:
            return super().stop(False)
        finally:
            self.cfg.set("graceful_timeout", saved)

    def reload(self):
        """nginx's reload: the new config is loaded and checked first; only then do new
        workers replace the old. Rejected, nothing changes: same workers, same state."""
        if not self.app.prepare_reload(self.log):
            return
        self.app.announce(self.log, f"reload of {self.app.path_of_pending()} accepted: new workers replace the old")
        super().reload()


class NgxsimApplication(BaseApplication):
    def __init__(self, path: str | None):
        self.path = path
        self.runtime: Runtime | None = None
        self._pending: Runtime | None = None  # a reload's checked runtime, applied by load_config
        self._news: list[str] = []  # what the last (re)load did, for the error log
        super().__init__()

    def run(self):
        try:
            NgxsimArbiter(self).run()
        except RuntimeError as exc:  # as BaseApplication.run
            print(f"\nError: {exc}\n", file=sys.stderr, flush=True)
            sys.exit(1)

    def _prepare(self, old: Runtime | None) -> Runtime:
        """Load, check and start (zones) the config on disk; raises what makes it unservable.
        Zones the attempt made and the old config does not have are removed on failure (at the
        first start: every file of the instance, its folder too)."""
        config = load(self.path)
        check_binds(config_binds(config), set(config_binds(old.config)) if old else set())
        runtime = Runtime(config, old.instance if old else current_instance(MASTER))
        for spec in config.zones if old else ():
            running = old.zones.get(spec.name)
            if running is not None and (running.size, running.tag) != (spec.size, spec.tag):
                # resized: made beside the running zone, which keeps its file until the reload
                # is accepted (a rejection must leave it as it was)
                path = runtime.staged[spec.name] = staged_zone_path(runtime.instance, spec.name)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)  # an earlier attempt's, if its master died mid-reload: start afresh
        try:
            runtime.start_instance()
        except BaseException:
            for zone in runtime.zones.values():
                zone.close()
            if old is not None:
                remove_zone_files(runtime.instance, keep=set(old.zones) | {JANITOR_MARKER})
            else:  # a refused start leaves nothing behind (no worker was forked: all of it is ours)
                remove_zone_files(runtime.instance)
            raise
        self._news = _describe(runtime, old)
        return runtime

    def prepare_reload(self, log) -> bool:
        """In the master on SIGHUP: the config on disk, its modules imported anew. False (and
        an ``[emerg]`` line) when it cannot be served: the running config and workers stay."""
        try:
            with fresh_imports(plugin_module_names(self.runtime.config.modules)):
                self._pending = self._prepare(self.runtime)
        except (ConfigError, ZoneError, BindError) as exc:
            log.log(EMERG, "%s; reload rejected, the running configuration and its workers stay", exc)
            return False
        except Exception as exc:  # a module's own failure (ngxsim_init_master): the master must not die of it
            log.log(EMERG, "loading %s failed: %r; reload rejected, the running configuration and its "
                         "workers stay", self.path or "the configuration", exc, exc_info=True)
            return False
        return True

    # gunicorn calls this at start, and on a reload that prepare_reload accepted
    def load_config(self) -> None:
        if self._pending is not None:
            runtime, self._pending = self._pending, None
            for name, staged in runtime.staged.items():
                # accepted: the resized zone takes the zone's name (the old workers keep the old
                # file they map until they exit; processes that fork from now on get the new one)
                final = zone_path(runtime.instance, name)
                os.rename(staged, final)
                runtime.zones[name].path = final
            runtime.staged.clear()
            remove_zone_files(runtime.instance, keep={spec.name for spec in runtime.config.zones} | {JANITOR_MARKER})
            for zone in self.runtime.zones.values():
                zone.close()
            # NGINX Plus's generation and load_timestamp: counted here, in the master, so every
            # worker forked from now on (a respawned one too) inherits the same
            runtime.generation, runtime.loaded_at = self.runtime.generation + 1, time.time()
            self.runtime = runtime
            try:  # accepted: modules may now change what the running workers share
                runtime.hook.ngxsim_reload_accepted(runtime=runtime)
            except Exception:
                logging.getLogger("ngxsim").exception("ngxsim_reload_accepted failed; the reload goes on")
        elif self.runtime is None:
            try:
                self.runtime = self._prepare(None)
            except (ConfigError, ZoneError, BindError) as exc:
                # gunicorn would print a bare "Error:" line
                print(f"ngxsim: [emerg] {exc}", file=sys.stderr, flush=True)
                raise SystemExit(1) from None
            except Exception as exc:  # a module's own failure (ngxsim_init_master), worded as on a reload
                print(f"ngxsim: [emerg] loading {self.path or 'the configuration'} failed: {exc!r}", file=sys.stderr,
                      flush=True)
                raise SystemExit(1) from None
        self._apply(self.runtime)

    def path_of_pending(self) -> str:
        return self._pending.config.path

    def announce(self, log, first: str) -> None:
        log.log(NOTICE, "%s", first)
        for line in self._news:
            log.log(NOTICE, "%s", line)

    def _when_ready(self, arbiter) -> None:
        self.announce(arbiter.log, f"ngxsim serves {self.runtime.config.path} (master {arbiter.pid})")

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
            "when_ready": self._when_ready,
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
