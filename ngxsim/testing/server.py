"""Real servers for tests and benchmarks: ``gunicorn ngxsim.wsgi`` or ``ngxsim -c`` on loopback.

For people who test event flows between modules with real processes (the pytest plugin's
``ngxsim_server`` fixture does the start and the stop for you)::

    from ngxsim.testing import start_server
    server = start_server(tmp_path, conf_text_with_a_{port}_placeholder, workers=4)
    try:
        r = server.get("/")                 # r.worker_pid: the worker that served it
        server.each_worker("/")             # one request answered by every live worker
        server.kill_worker()                # SIGKILL one, wait until its replacement serves
    finally:
        server.stop()   # ends master and workers, checks the zone files are gone

Every wait is bounded. Standard library only.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from ..core.gunicorn_app import GUNICORN_WORKER_CLASSES
from ..core.instance import process_start_time
from ..core.shm import shm_dir
from .client import PendingRequest, Response, request
from .events import ApiEvents, ZoneEvents
from .procs import children

MODES = ("gunicorn", "ngxsim")
DEFAULT_WORKERS = 2
_WORKER_PROCESSES = re.compile(r"^[ \t]*worker_processes[ \t]+(\S+?)[ \t]*;", re.M)
_WORKER_CLASS = re.compile(r"^[ \t]*worker_class[ \t]+(\S+?)[ \t]*;", re.M)
_SEVERE = ("[emerg]", "[alert]", "[crit]")


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


def instance_files(tag: str) -> list[str]:
    """The shared-memory files of the server instance ``tag`` (``<master pid>.<start time>``):
    each file in its folder as ``FOLDER/NAME``, and the folder itself when it is empty (a
    folder left behind is a leftover too)."""
    out = []
    for entry in sorted(e for e in os.listdir(shm_dir()) if e.startswith(f"ngxsim.{tag}.")):
        try:
            inside = [f"{entry}/{name}" for name in sorted(os.listdir(os.path.join(shm_dir(), entry)))]
        except OSError:  # a file (not a folder), gone meanwhile, or not ours to read
            inside = []
        out += inside or [entry]
    return out


class ServerStartError(AssertionError):
    """The server exited, or did not become ready, within its start timeout. The message leads
    with the log's ``[emerg]`` lines (nginx's wording, with file and line), then the log's tail."""

    def __init__(self, server: Server, why: str):
        self.server = server
        self.emerg = server.severe_lines()
        lines = [f"{server.describe()} {why}"]
        lines += [f"  {line}" for line in self.emerg]
        lines += [f"--- last lines of {server.log} ---", server.tail(40)]
        super().__init__("\n".join(lines))


@dataclass
class Server:
    proc: subprocess.Popen
    port: int
    conf: Path
    workers: int
    log: Path
    env: dict = field(default_factory=dict)
    mode: str = "gunicorn"

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return self.base + path

    @property
    def master(self) -> int:
        return self.proc.pid

    @property
    def tag(self) -> str:
        return f"{self.master}.{process_start_time(self.master)}"

    def describe(self) -> str:
        how = f"ngxsim -c {self.conf}" if self.mode == "ngxsim" else f"gunicorn -w {self.workers} ngxsim.wsgi"
        return f"server {self.address} ({how}, master {self.master})"

    # -- output -------------------------------------------------------------------------------

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def tail(self, lines: int = 200) -> str:
        return "\n".join(self.output().splitlines()[-lines:])

    def logged(self, level: str, message: str) -> bool:
        """The output has nginx's error-log line ``YYYY/MM/DD HH:MM:SS [level] PID#TID: message...``
        (``message`` is the start of the text after the ids and any ``*CID``)."""
        return _LOG_LINE(level, message).search(self.output()) is not None

    def severe_lines(self) -> list[str]:
        """The log's ``[emerg]``/``[alert]``/``[crit]`` lines, each once, in order."""
        out: list[str] = []
        for line in self.output().splitlines():
            if any(s in line for s in _SEVERE) and line not in out:
                out.append(line)
        return out

    # -- HTTP -----------------------------------------------------------------------------------

    def request(self, method: str, path: str, **kw) -> Response:
        """One request (``params``, ``data``, ``json``, ``headers``, ``timeout`` as in requests);
        the answer's ``worker_pid`` is the worker that served it."""
        return request(self.port, method, path, workers=self._serving_workers, **kw)

    def get(self, path: str, **kw) -> Response:
        return self.request("GET", path, **kw)

    def post(self, path: str, **kw) -> Response:
        return self.request("POST", path, **kw)

    def put(self, path: str, **kw) -> Response:
        return self.request("PUT", path, **kw)

    def delete(self, path: str, **kw) -> Response:
        return self.request("DELETE", path, **kw)

    def head(self, path: str, **kw) -> Response:
        return self.request("HEAD", path, **kw)

    def answers(self, path: str = "/") -> bool:
        """Does the server answer ``path`` now (any status)? Raises if it exited."""
        if self.proc.poll() is not None:
            raise ServerStartError(self, f"exited with {self.proc.returncode}")
        try:
            urllib.request.urlopen(self.url(path), timeout=2).close()
        except urllib.error.HTTPError:
            return True  # it answered, with an error status
        except OSError:
            return False
        return True

    # -- workers --------------------------------------------------------------------------------

    def worker_pids(self) -> list[int]:
        """The live workers (the master's children), sorted."""
        return children(self.master)

    def _serving_workers(self) -> list[int]:
        """The live workers, or a clear error (instead of a wait running out) when the master is gone."""
        if self.proc.poll() is not None:
            raise AssertionError(f"{self.describe()} exited with {self.proc.returncode}")
        return self.worker_pids()

    def wait_workers(self, count: int | None = None, exclude: set[int] = frozenset(), timeout: float = 20.0) -> list[int]:
        """Wait until ``count`` workers (not in ``exclude``) exist; returns their pids."""
        count = self.workers if count is None else count

        def ready():
            if self.proc.poll() is not None:
                raise ServerStartError(self, f"exited with {self.proc.returncode} while waiting for {count} workers")
            pids = [p for p in self.worker_pids() if p not in exclude]
            return pids if len(pids) >= count else None

        return wait_for(ready, timeout, what=f"{count} workers of {self.master} (have {self.worker_pids()})")

    def each_worker(self, path: str = "/", method: str = "GET", timeout: float = 20.0, count: int | None = None,
                    **kw) -> dict[int, Response]:
        """One request answered by each of ``count`` distinct workers (default: the server's
        worker count, or every live worker if fewer): ``{pid: response}``.

        A connection is held (its request not yet complete) on each worker in turn — a busy
        sync worker accepts nothing more, so the next connection goes to another one — and
        only when enough workers hold one are they all completed. A second connection a
        threaded worker takes is closed unanswered, so the handler runs once per worker.
        Workers on their way out (a reload's old generation) stop accepting: they are not
        waited for once ``count`` others hold a connection."""
        count = self.workers if count is None else count
        deadline = time.monotonic() + timeout
        held: dict[int, PendingRequest] = {}
        try:
            while True:
                live = set(self._serving_workers())
                for gone in set(held) - live:
                    held.pop(gone).close()
                if len(held) >= count or (live and live <= set(held)):
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{self.describe()}: {len(held)} of {count} workers took a connection to "
                                         f"{path} within {timeout}s (holding {sorted(held)}, live {sorted(live)})")
                pending = PendingRequest(self.port, method, path, **kw)
                try:
                    pid = pending.accepted(self._serving_workers, timeout=left)
                except ConnectionError:
                    continue  # taken by a worker that exited: try again
                if pid in held:
                    pending.close()
                else:
                    held[pid] = pending
            return {pid: held.pop(pid).finish() for pid in sorted(held)}
        finally:
            for pending in held.values():
                pending.close()

    def spray(self, path: str = "/", count: int | None = None, method: str = "GET", **kw) -> list[Response]:
        """``count`` requests (default: one per worker): whole rounds of ``each_worker`` — so
        every worker serves at least one when ``count`` >= the number of workers — then the
        remainder as plain requests."""
        workers = len(self.worker_pids())
        count = workers if count is None else count
        out: list[Response] = []
        for _ in range(count // workers if workers else 0):
            out.extend(self.each_worker(path, method, **kw).values())
        while len(out) < count:
            out.append(self.request(method, path, **kw))
        return out

    def kill_worker(self, pid: int | None = None, sig: int = signal.SIGKILL, timeout: float = 20.0,
                    path: str = "/") -> int:
        """Kill worker ``pid`` (default: the oldest), wait until gunicorn has replaced it and
        the replacement served ``path`` (``each_worker``: every worker gets that request once);
        returns the replacement's pid."""
        before = set(self.worker_pids())
        victim = min(before) if pid is None else pid
        if victim not in before:
            raise ValueError(f"{victim} is not a live worker of {self.describe()}: {sorted(before)}")
        os.kill(victim, sig)
        wait_for(lambda: victim not in self.worker_pids(), timeout, what=f"worker {victim} to die")
        now = self.wait_workers(len(before), timeout=timeout)
        new = set(now) - before
        if len(new) != 1:
            raise AssertionError(f"expected one replacement for {victim}, workers went {sorted(before)} -> {now}")
        (replacement,) = new
        served = self.each_worker(path, timeout=timeout)
        assert replacement in served, f"replacement {replacement} did not serve: {sorted(served)}"
        return replacement

    # -- events ---------------------------------------------------------------------------------

    def events(self, path: str | None = None, key: str | None = None) -> ApiEvents:
        """The ring behind a ``worker_events_api`` location, over HTTP (``path`` found in the
        config when there is exactly one such location)."""
        return ApiEvents(self, path or _api_location(self.conf.read_text()), key)

    def zone_events(self, zone: str) -> ZoneEvents:
        """The ring in zone ``zone``, read (and written) directly in shared memory."""
        return ZoneEvents(self, zone)

    @contextlib.contextmanager
    def attached_zone(self, name: str):
        """``with server.attached_zone("one") as zone:`` — a module's zone of this server, mapped
        in the test process as a worker maps it (``zone.buf``, ``zone.lock()``; build the
        module's view on it, e.g. ``SharedTable(zone, ...)``). Unmapped at the end; the zone
        stays the server's."""
        from ..core.conf.loader import load_configuration
        from ..core.instance import Instance
        from ..core.shm import attach_zone

        config = load_configuration(str(self.conf))
        if name not in config.zones:
            raise ValueError(f'the config of {self.address} declares no zone "{name}": '
                             f'{sorted(spec.name for spec in config.zones)}')
        spec = config.zones[name]
        zone = attach_zone(Instance(self.master, process_start_time(self.master), "worker"), name, spec.size, spec.tag)
        try:
            yield zone
        finally:
            zone.close()

    def reload(self, conf_text: str | None = None, timeout: float = 30.0) -> list[int]:
        """nginx's reload: write ``conf_text`` (``{port}`` and ``{tmp}`` replaced) over the
        config when given, send the master ``SIGHUP`` and wait until a full set of new workers
        serves and the old ones are gone; returns the new pids. A config the master refuses
        raises ``ReloadRejected`` with its ``[emerg]`` line (the old workers keep serving).
        For ``mode="ngxsim"`` (the master checks the config before it replaces any worker)."""
        if conf_text is not None:
            self.conf.write_text(conf_text.replace("{port}", str(self.port)).replace("{tmp}", str(self.conf.parent)))
        before, rejected = set(self.worker_pids()), self.output().count("reload rejected")
        self.proc.send_signal(signal.SIGHUP)

        def done():
            out = self.output()
            if out.count("reload rejected") > rejected:
                line = [ln for ln in out.splitlines() if "reload rejected" in ln][-1]
                line = line[line.find("[emerg]"):] if "[emerg]" in line else line
                raise ReloadRejected(re.sub(r"^\[emerg\] \d+#\d+: ", "[emerg] ", line))  # without PID#TID
            pids = set(self.worker_pids())
            return sorted(pids) if len(pids - before) >= self.workers and not pids & before else None

        return wait_for(done, timeout, what=f"new workers of {self.master} to replace {sorted(before)}")

    # -- lifecycle --------------------------------------------------------------------------------

    def wait_ready(self, path: str = "/", timeout: float = 30.0) -> None:
        """Wait until the port accepts, ``workers`` workers exist and every one of them answered
        ``path`` (so each has loaded the config); a server that exits meanwhile raises
        :class:`ServerStartError` with its ``[emerg]`` lines."""
        deadline = time.monotonic() + timeout

        def left() -> float:
            return max(0.1, deadline - time.monotonic())

        try:
            wait_for(self._listening, left(), what=f"{self.address} to accept connections")
            self.wait_workers(timeout=left())
            served = self.each_worker(path, timeout=left())
        except ServerStartError:
            raise
        except (AssertionError, OSError) as exc:
            try:  # a refused or dropped connection is often a master on its way out: let it finish
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                raise ServerStartError(self, f"was not ready: {exc}") from None
            raise ServerStartError(self, f"exited with {self.proc.returncode}") from None
        if len(served) < self.workers:
            raise ServerStartError(self, f"has {len(served)} workers serving, not {self.workers}")

    def _listening(self) -> bool:
        if self.proc.poll() is not None:
            raise ServerStartError(self, f"exited with {self.proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
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
            raise AssertionError(f"{self.describe()} did not stop within {timeout}s:\n{self.tail()}")
        wait_for(lambda: not any(process_start_time(p) for p in workers), 10, what="workers to exit")
        wait_for(lambda: not instance_files(tag), 10, what=f"zone files of {tag} to be removed")


class ReloadRejected(AssertionError):
    """The master refused the config of a reload (``Server.reload``): the message is its
    ``[emerg]`` line from ``[emerg]`` on, without nginx's ``PID#TID:``."""


def _LOG_LINE(level: str, message: str) -> re.Pattern:
    return re.compile(rf"^\d{{4}}/\d\d/\d\d \d\d:\d\d:\d\d \[{re.escape(level)}\] \d+#\d+: (?:\*\d+ )?"
                      rf"{re.escape(message)}", re.M)


def _api_location(conf_text: str) -> str:
    found = re.findall(r"location\s+(?:=\s*|\^~\s*)?(\S+)\s*\{[^{}]*?\bworker_events_api\s*;", conf_text)
    if len(found) != 1:
        raise ValueError(f"say which worker_events_api location to read: the config has {found or 'none'}")
    return found[0]


def _resolve_workers(value: str) -> int:
    return (os.cpu_count() or 1) if value == "auto" else int(value)


def prepare_config(text: str, mode: str, workers: int | None, worker_class: str | None,
                   placeholders: dict) -> tuple[str, int]:
    """Fill the placeholders; make the worker count (and class) the same in both modes: plain
    gunicorn gets them on its command line, ``ngxsim -c`` reads them from the config, so there
    they are appended (a main-context directive may come last; line numbers stay the same) or
    must agree with what the config says."""
    for name, value in placeholders.items():
        text = text.replace("{" + name + "}", str(value))
    said = _WORKER_PROCESSES.search(text)
    in_config = _resolve_workers(said.group(1)) if said else None
    count = workers or in_config or DEFAULT_WORKERS
    if mode == "ngxsim":
        if in_config is None:
            text += f"\nworker_processes {count};\n"
        elif workers and workers != in_config:
            raise ValueError(f"workers={workers} but the config says worker_processes {said.group(1)}")
        klass = _WORKER_CLASS.search(text)
        if worker_class and not klass:
            text += f"worker_class {worker_class};\n"
        elif worker_class and klass.group(1) != worker_class:
            raise ValueError(f"worker_class={worker_class} but the config says worker_class {klass.group(1)}")
    return text, count


def _importable_dirs() -> list[str]:
    """This process's sys.path folders outside the interpreter's prefixes (the project's own,
    added by pytest or a conftest): so a server imports the modules the tests import."""
    prefixes = {os.path.realpath(p) + os.sep for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    out = []
    for entry in sys.path:
        real = os.path.realpath(entry) if entry else ""
        if real and os.path.isdir(real) and not any((real + os.sep).startswith(p) for p in prefixes) and real not in out:
            out.append(real)
    return out


def start_server(folder: Path, conf_text: str, workers: int | None = None, mode: str = "gunicorn",
                 preload: bool = False, worker_class: str | None = None, extra_env: dict | None = None,
                 pythonpath: list[str] = (), ready_path: str = "/", wait_ready: bool = True,
                 app: str = "ngxsim.wsgi", server_class: type[Server] = Server, placeholders: dict | None = None,
                 timeout: float = 30.0, graceful_timeout: float = 5) -> Server:
    """Write the config into ``folder`` and start a server; with ``wait_ready``, return once every
    worker answered ``ready_path`` (see ``Server.wait_ready``).

    Placeholders: ``{port}`` (a free port), ``{tmp}`` (``folder``) and any in ``placeholders``.
    ``mode="gunicorn"`` runs ``gunicorn -w WORKERS ... ngxsim.wsgi`` with ``NGXSIM_CONF`` set
    (``--preload``, ``--worker-class`` as asked); ``mode="ngxsim"`` runs ``ngxsim -c``, which
    always loads the config in its master. ``workers`` defaults to the config's
    ``worker_processes``, else 2. The server runs in its own session and can import what this
    process can (``pythonpath`` adds folders); its output goes to ``server-PORT.log``.
    ``graceful_timeout``: gunicorn's (``mode="gunicorn"``), how long its master lets a stopping
    worker run before it kills it.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    port = free_port()
    folder = Path(folder)
    text, workers = prepare_config(conf_text, mode, workers, worker_class,
                                   {"port": port, "tmp": folder, **(placeholders or {})})
    conf = folder / f"ngxsim-{port}.conf"
    conf.write_text(text)
    log = folder / f"server-{port}.log"
    env = dict(os.environ)
    paths = [*map(str, pythonpath), *_importable_dirs(), *filter(None, [env.get("PYTHONPATH")])]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env.update(extra_env or {})
    if mode == "gunicorn":
        env["NGXSIM_CONF"] = str(conf)
        worker_class = worker_class or "sync"
        # the config's names mean ngxsim's classes, as under ngxsim -c (they count connections
        # for stub_status and the api, and wake waiting handlers when stopped)
        klass = GUNICORN_WORKER_CLASSES.get(worker_class, worker_class)
        cmd = [sys.executable, "-m", "gunicorn", "-w", str(workers), "-b", f"127.0.0.1:{port}",
               "--graceful-timeout", str(graceful_timeout), "--worker-class", klass, "--log-level", "info",
               "--logger-class", "ngxsim.glogging.Logger"]  # nginx's error log format, as under ngxsim -c
        if worker_class in ("gthread", "ngxsim"):
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
    server = server_class(proc, port, conf, workers, log, env, mode)
    if wait_ready:
        try:
            server.wait_ready(ready_path, timeout)
        except BaseException:
            try:
                server.stop()
            except AssertionError:
                pass  # the start error says more than a failed stop of what never started
            raise
    return server


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


def _has_control_socket() -> bool:
    from gunicorn.config import KNOWN_SETTINGS

    return any(s.name == "control_socket_disable" for s in KNOWN_SETTINGS)
