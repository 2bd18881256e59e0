"""The processes of a running server and the nginx phases they go through.

=====================  ===========================  =========================================
nginx                  gunicorn                     here
=====================  ===========================  =========================================
init_module            arbiter (``ngxsim -c``,      ``load_configuration`` + ``start_instance``:
                       ``--preload``) or the first  stale files removed, zones created/kept,
                       worker to load the app       janitor started, ``ngxsim_init_master``
init_process           ``post_fork`` / app load     ``start_worker``: ``ngxsim_init_worker``
                       in the worker                (worker_events starts its dispatcher),
                                                    then what it holds is frozen (``gc.freeze``)
(told to stop)         worker SIGTERM / SIGQUIT     ``begin_stop``: ``runtime.stopping`` set,
                       (ngxsim's worker classes)    ``ngxsim_worker_stopping`` (waiters wake)
exit_process           ``worker_exit`` / atexit     ``stop_worker``: ``ngxsim_exit_worker``
master reaps a worker  ``child_exit``               nothing to do: no shared state depends on
                                                    a worker's goodbye (slots are checked for
                                                    liveness by pid and start time)
=====================  ===========================  =========================================
"""

from __future__ import annotations

import atexit
import ctypes
import gc
import ipaddress
import os
import signal
import sys
import threading
import time
from importlib import resources
from typing import Callable

from .conf.errors import ConfigError
from .conf.loader import PARAMS_FILE, Configuration, load_configuration
from .http.app import HttpCore, NgxsimFlask
from .http.background import STOP_WAIT, BackgroundWork
from .http.logs import log, setup_error_log
from .jobs import JobRunner
from .instance import (
    MASTER, STANDALONE, WORKER, Instance, MasterGone, current_instance, gunicorn_graceful_timeout,
    gunicorn_threads,
)
from .modules import tracing
from .shm import Zone, attach_zone, ensure_janitor, remove_stale_zone_files, remove_zone_files

CONF_ENV = "NGXSIM_CONF"


def default_config_text() -> str:
    return resources.files("ngxsim").joinpath("default.conf").read_text(encoding="utf-8")


DEFAULT_NAME = "<embedded default.conf>"
_DEFAULT_LISTEN = "listen 127.0.0.1:8080 default_server;"
# what the ``ngxsim`` command line adds to every config this process loads: ``-g`` directives
# and ``--listen`` (the embedded default's address); set once by the CLI, kept across reloads
_command_line: dict[str, str | None] = {"params": None, "listen": None}


def set_command_line(params: str | None = None, listen: str | None = None) -> None:
    """``ngxsim -g DIRECTIVES`` and ``--listen ADDRESS``: applied by every ``load()`` of this
    process (the start, ``-t``, each SIGHUP reload)."""
    _command_line.update(params=params, listen=listen)


def config_name(path: str | None) -> str:
    """What ``load(path)`` reads, as the commands name it in their messages."""
    return path or os.environ.get(CONF_ENV) or DEFAULT_NAME


def load(path: str | None = None) -> Configuration:
    """The config at ``path``, else at ``$NGXSIM_CONF``, else the embedded default (on the
    command line's ``--listen`` address, if given); with the command line's ``-g`` directives."""
    path = path or os.environ.get(CONF_ENV) or None
    params, listen = _command_line["params"], _command_line["listen"]
    if path:
        if listen is not None:
            raise ConfigError(f'"--listen" sets the address of the embedded default configuration only: '
                              f'{path} has its own "listen" directives')
        return load_configuration(path, params=params)
    text = default_config_text()
    if listen is not None:
        if not listen or any(c in listen for c in '"\\\n;{} \t'):
            raise ConfigError(f'invalid "--listen" address "{listen}"', PARAMS_FILE)
        assert _DEFAULT_LISTEN in text, "default.conf and _DEFAULT_LISTEN disagree"
        text = text.replace(_DEFAULT_LISTEN, f'listen "{listen}" default_server;')
    config = load_configuration(DEFAULT_NAME, text=text, params=params, params_replace=True)
    if listen is not None:
        _check_loopback(config, listen)
    return config


def _check_loopback(config: Configuration, listen: str) -> None:
    """The embedded default publishes events without a key: it listens on loopback only."""
    for spec in config.stash["core.http"].listens:
        try:
            loopback = ipaddress.ip_address(spec.host).is_loopback
        except ValueError:
            loopback = spec.host == "localhost"
        if not loopback:
            raise ConfigError(f'"--listen {listen}" is not a loopback address: the embedded default configuration '
                              'lets anyone publish events (no worker_events_publish_key); use 127.0.0.1:PORT or '
                              '[::1]:PORT, or write a configuration with a key to listen elsewhere', PARAMS_FILE)


_PR_SET_PDEATHSIG = 1


def freeze_long_lived() -> None:
    """Move what a worker holds once it is set up (the app, the configuration, every module
    and the libraries it imported: most of the heap) out of the garbage collector's sight
    (``gc.freeze``, after one collection so nothing dead is kept). A full collection then walks
    only what was made since: a worker whose threads allocate steadily (the cluster relay with
    nats-py's per-message objects) otherwise paused every few seconds for a collection of the
    whole heap, 36-88 ms on 2 cores (benchmarks/README.md, bench_cluster), with every request
    and thread of the worker stopped meanwhile."""
    gc.collect()
    gc.freeze()


def _die_with_master(master: int) -> None:
    """Have the kernel send SIGTERM (gunicorn's graceful stop) to this worker when its master
    exits, however it exits; and send it now if the master is gone already."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):  # pragma: no cover - not Linux: enter_request still refuses
        pass
    if os.getppid() != master:
        os.kill(os.getpid(), signal.SIGTERM)


# a stopping worker stops waiting for its background work this long before its master's kill
STOP_MARGIN = 0.5


class Runtime:
    """One process's view of a running server: its config, its zones, its role.

    The ``runtime`` argument of the lifecycle and event hooks, and ``ctx.runtime`` in a handler.
    Each process has its own; nothing set on it is seen by another process (shared state goes in
    a zone).

    Attributes:
        config (Configuration): the configuration this process serves.
        zones (dict[str, Zone]): the zones attached in this process, by name (use ``zone()``).
        stash (dict): per-process state of the modules, by module name
            (``runtime.stash["hello"]``), set up in ``ngxsim_init_worker``.
        on_request_start (list): callables without arguments run at the start of every request
            of this worker, before its handler (worker_events drains pending events here, so a
            request never sees state older than what was published before it arrived). Append
            to it in ``ngxsim_init_worker``; keep them cheap. Reset when a worker starts.
        worker_pid (int | None): this worker's pid once it serves; None in the master.
        threads (int): how many requests this worker serves at once (gunicorn's ``--threads``;
            1 for sync workers): a handler that blocks (a long-poll) must leave some free.
        jobs: this worker's runner of the declared periodic jobs (``runtime.jobs.status()``
            lists holder pid, run count, last run and duration of each); None when the config
            declares none or in the master.
        stopping (str | None): None while the worker serves; ``"graceful"`` or ``"fast"`` once
            it is told to stop (``ngxsim_worker_stopping``): a handler that waits answers with
            what it has when it sees it set.
        generation (int): which configuration of the instance this is: 1 for the one it started
            with, one more for each accepted reload (a rejected one changes nothing). Decided by
            the master of ``ngxsim -c`` and inherited by every worker it forks, a respawned one
            too (NGINX Plus's ``generation``).
        loaded_at (float): when this configuration was loaded (epoch seconds; for a reload, when
            it was accepted): NGINX Plus's ``load_timestamp``. A worker of plain gunicorn
            (no ``--preload``) loads the configuration itself: it has its own time here.
    """

    def __init__(self, config: Configuration, instance: Instance):
        self.config = config
        self.instance = instance
        self.hook = config.pm.hook
        self.zones: dict[str, Zone] = {}
        # a reload's zones that change size or layout: made beside the running ones, under these
        # paths, and renamed over them only when the reload is accepted (gunicorn_app.py)
        self.staged: dict[str, str] = {}
        self.stash: dict[str, object] = {}
        # cheap callables run at the start of every request, before the handler (worker_events
        # drains pending events here: read-your-publish whatever the GIL delays)
        self.on_request_start: list[Callable[[], None]] = []
        self.worker_pid: int | None = None
        self._master: int | None = None  # a worker's master pid: requests stop when it is gone
        # requests one worker process serves at once (gunicorn's --threads; 1 for sync workers):
        # a module that blocks a request (a long-poll) must leave threads for the others
        self.threads = 1
        self._http: HttpCore | None = None
        self._app: NgxsimFlask | None = None
        self._publish_impl = self._single_publish_impl()
        # instance-wide periodic jobs (``config.jobs``); started in workers only
        self.jobs: JobRunner | None = None
        # this worker's background work (``ngxsim.run_in_background``); made in workers only
        self.background: BackgroundWork | None = None
        # None while serving; "graceful" or "fast" once this worker is told to stop: a handler
        # that waits (a long-poll) answers with what it has when it sees it set
        self.stopping: str | None = None
        self._stop_began: float | None = None  # time.monotonic() when it was told
        # gunicorn's graceful_timeout for this worker (None outside gunicorn): its master kills
        # the worker that far after telling it to stop, so its background work waits no longer
        self.graceful_timeout: float | None = None
        # the master's facts about this configuration (set again by an accepted reload)
        self.generation = 1
        self.loaded_at = time.time()

    def __repr__(self) -> str:  # short: it is an argument of many hooks, and shows in traces
        return f"<Runtime {self.instance.role} pid={os.getpid()}>"

    # -- zones --------------------------------------------------------------------------------

    def attach_zones(self) -> None:
        for spec in self.config.zones:
            if spec.name not in self.zones:
                self.zones[spec.name] = attach_zone(self.instance, spec.name, spec.size, spec.tag,
                                                    self.staged.get(spec.name))

    def claim_event(self, zone: str, module: str, generation: int) -> bool:
        """For an event bus delivering a ``Subscription(once=True)``: whether this worker handles
        ``generation`` of ``zone`` for ``module`` (the first to claim it; every other worker
        skips it)."""
        from .events import claim_once

        return claim_once(self, zone, module, generation)

    def zone(self, name: str) -> Zone:
        """The zone ``name`` attached in this process; ``LookupError`` when the configuration
        does not declare it."""
        try:
            return self.zones[name]
        except KeyError:
            raise LookupError(f'zone "{name}" is not declared by the configuration') from None

    # -- phases ---------------------------------------------------------------------------------

    def start_instance(self) -> None:
        """Make the instance's zones exist (before any worker serves) and run the master hook
        once per instance: in the master, or in the first worker when the master is a plain
        gunicorn arbiter that never loads ngxsim."""
        remove_stale_zone_files()
        setup_error_log(self.config.main["error_log"])  # the master's lines: nginx's format, its level
        first = True
        if self.instance.role != STANDALONE:
            # before any zone: a start refused on a zone (or anything after) leaves files the
            # janitor removes when the master exits, also when that start runs in a worker
            first = ensure_janitor(self.instance) or self.instance.role == MASTER
        self.attach_zones()
        if first:
            for warning in self.config.warnings:
                # the line `ngxsim -t` prints, where a failed start prints its [emerg] (stderr):
                # the error log is not set up before a worker starts
                print(f"ngxsim: [warn] {warning}", file=sys.stderr, flush=True)
            self.hook.ngxsim_init_master(runtime=self)

    def start_worker(self) -> None:
        """This process becomes a serving worker (idempotent per process)."""
        pid = os.getpid()
        if self.worker_pid == pid:
            return
        self.worker_pid = pid
        self.on_request_start = []
        if self.instance.role != STANDALONE and self.instance.pid != pid:
            self._master = self.instance.pid
            _die_with_master(self._master)
        self.threads = gunicorn_threads() or self.threads
        self.graceful_timeout = gunicorn_graceful_timeout()
        self.attach_zones()
        setup_error_log(self.config.main["error_log"])
        self.background = BackgroundWork()
        self.hook.ngxsim_init_worker(runtime=self)
        if len(self.config.jobs):
            self.jobs = JobRunner(self, self.config.jobs)
            self.jobs.start()
        freeze_long_lived()
        atexit.register(self.stop_worker)

    def stop_worker(self) -> None:
        if self.worker_pid != os.getpid():
            return
        self.worker_pid = None
        if self.jobs is not None:
            self.jobs.stop()
            self.jobs = None
        if self.background is not None:  # what runs in the background finishes before the modules exit
            self.background.stop(self.background_stop_wait())
        try:
            self.hook.ngxsim_exit_worker(runtime=self)
        except Exception:  # exiting anyway: say why, do not mask the exit
            log.exception("ngxsim_exit_worker failed")

    def background_stop_wait(self) -> float:
        """How long the exiting worker waits for its background work: what is left of its
        ``graceful_timeout`` since it was told to stop (ngxsim's worker classes say when; under
        gunicorn's own classes it counts from now), less STOP_MARGIN so that what it abandons is
        named before the master kills it; ``STOP_WAIT`` outside gunicorn."""
        if self.graceful_timeout is None:
            return STOP_WAIT
        began = self._stop_began if self._stop_began is not None else time.monotonic()
        return max(0.0, self.graceful_timeout - (time.monotonic() - began) - STOP_MARGIN)

    def begin_stop(self, fast: bool) -> threading.Thread | None:
        """This worker is told to stop (``fast``: at once, else gracefully); called from the
        worker's signal handler by ngxsim's worker classes. Sets ``stopping`` at once, then runs
        ``ngxsim_worker_stopping`` in a thread of its own: the signal may have interrupted a
        thread that holds a lock an implementation needs (a zone's). The thread is not a daemon,
        so a worker exiting meanwhile still lets it finish. Returns that thread (None when this
        process is no serving worker, or was told already)."""
        if self.stopping == "fast" or (self.stopping and not fast):
            return None
        self.stopping = "fast" if fast else "graceful"
        if self._stop_began is None:
            self._stop_began = time.monotonic()
        if self.worker_pid != os.getpid():
            return None
        thread = threading.Thread(target=self._worker_stopping, args=(fast,), name="ngxsim-stopping")
        thread.start()
        return thread

    def _worker_stopping(self, fast: bool) -> None:
        try:
            self.hook.ngxsim_worker_stopping(runtime=self, fast=fast)
        except Exception:  # stopping anyway: say why, do not mask the stop
            log.exception("ngxsim_worker_stopping failed")

    def enter_request(self) -> None:
        """Per request, before its handler. Raises MasterGone in an orphaned worker (its master
        was SIGKILLed): between the master's death and this worker's exit, requests are refused
        instead of publishing into zones that the janitor will remove."""
        if self.worker_pid != os.getpid():
            self.start_worker()
        self.check_master()
        for fn in self.on_request_start:
            fn()

    def check_master(self) -> None:
        """Raise MasterGone in a worker whose master exited (SIGKILLed: its workers are orphans
        on their way out and the janitor removes the zones once they are). A module calls it
        after writing shared state and before acknowledging it to a client: what a dead
        instance accepted would never be delivered. Out of a handler, MasterGone is answered
        503 (JSON). One ``getppid()`` (~0.1 µs); a no-op in the master or a standalone process."""
        if self._master is not None and os.getppid() != self._master:
            raise MasterGone(f"the master process {self._master} is gone: this worker is shutting down")

    def close(self) -> None:
        """Stop this process's part; a standalone instance also removes its zone files."""
        self.stop_worker()
        if self.instance.role == STANDALONE and self.instance.pid == os.getpid():
            remove_zone_files(self.instance)
        for zone in self.zones.values():
            zone.close()
        self.zones.clear()

    # -- services for modules -------------------------------------------------------------------

    def publish(self, zone: str, channel: str, type: str, payload: str = "") -> int:
        """Publish an event through the ``ngxsim_publish`` hook; returns its generation.

        ``zone`` is a worker_events zone (a module publishing into the shared bus finds it with
        ``ngxsim.http_event_zone(config, module)``), ``payload`` a string of at most 512 bytes of
        UTF-8 (compact JSON for structured data). Raises ``ValueError`` naming a bad field (nothing
        is published then), and ``RuntimeError`` when no loaded module implements
        ``ngxsim_publish`` (``load_module worker_events;`` is missing).

        When the publishing worker sees its own event: ``publish`` writes the event into the ring
        and rings the zone's doorbell; then, before it returns, this worker's subscribers
        (``ngxsim_event``) run for every generation up to the published one, in order and once
        (worker_events' dispatcher never delivers them again). So the handler that published
        sees the event delivered in the same response. In a worker whose master is gone, it raises
        ``MasterGone`` once the event is written (answered 503: see ``check_master``). Called from an ``ngxsim_event``
        subscriber, the new event is delivered right after that subscriber call returns (the
        delivery that is running it takes it next). Do not publish while holding a lock your own
        subscriber takes. Every other worker delivers the event on its dispatcher thread soon
        after, and at the latest at the start of its next request (``on_request_start``).
        """
        direct = self._publish_impl
        if direct is not None:
            generation = direct(self, zone, channel, type, payload)
        else:
            generation = self.hook.ngxsim_publish(runtime=self, zone=zone, channel=channel, type=type, payload=payload)
        if generation is None:
            raise RuntimeError(f'no loaded module publishes events (zone "{zone}"): add "load_module worker_events;"')
        self.check_master()  # written while the instance lived, or refused: never acknowledged for nobody
        return generation

    def _single_publish_impl(self):
        """With exactly one plain ``ngxsim_publish`` implementation taking the full argument
        list (the usual case: worker_events), calling it directly gives the same result as the
        firstresult hook call, without pluggy's per-call machinery (a third of a publish).
        Tracing, wrappers or several implementations take the regular hook path."""
        impls = self.hook.ngxsim_publish.get_hookimpls()
        if len(impls) != 1 or tracing():
            return None
        impl = impls[0]
        if impl.hookwrapper or impl.wrapper or tuple(impl.argnames) != ("runtime", "zone", "channel", "type", "payload"):
            return None
        return impl.function

    @property
    def app(self) -> NgxsimFlask:
        if self._app is None:
            self._http = HttpCore(self.config, self)
            self._app = NgxsimFlask(self._http)
        return self._app


def build_application(path: str | None = None, config: Configuration | None = None,
                      role: str | None = None, master_pid: int | None = None) -> NgxsimFlask:
    """Load the config and return the WSGI app, doing what this process's role requires.

    The role is found from gunicorn's objects on the stack when not given: the arbiter with
    ``--preload`` (zones created here, each worker started right after fork), a worker without
    ``--preload`` (zones attached or created, then this worker starts), or standalone.
    """
    config = config or load(path)
    instance = current_instance(role, master_pid)
    runtime = Runtime(config, instance)
    runtime.start_instance()
    if instance.role == MASTER:
        master = os.getpid()

        def after_fork() -> None:
            if os.getppid() == master:
                runtime.start_worker()

        os.register_at_fork(after_in_child=after_fork)
    else:
        runtime.start_worker()
        if instance.role == STANDALONE:
            atexit.register(runtime.close)
    app = runtime.app
    return app


__all__ = ["Runtime", "build_application", "load", "WORKER", "MASTER", "STANDALONE"]
