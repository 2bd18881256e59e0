"""A service in a process of its own (``config.jobs.declare_service(..., process=True)``).

nginx gives its background work processes of their own (the cache manager and loader), so that
it never takes a worker's time from its requests. A service declared with ``process=True`` is
run the same way: the worker holding the service's lease starts a *helper process*
(``python -m ngxsim.core.helper SERVICE``), which loads the very configuration the worker serves
(``load_again(config.source)``: what the worker's load read, not what is on disk now), attaches
the instance's zones and runs ``run(runtime, lease)`` there, with its own interpreter and GIL,
at the ``nice`` the service asked for (the kernel then gives it only what the workers leave
while they are busy, and all it wants while they are idle).

- **Lifetime**: the helper's stdin is a pipe from its worker. The worker closes it to stop the
  helper (the lease is lost, the worker stops); the kernel closes it when the worker dies, however
  it dies. Either way ``lease.stopping`` is set in the helper; one that has not exited
  ``STOP_WAIT`` seconds later is killed by its worker (or, when the worker is gone, waited for by
  the next helper, below).
- **One at a time**: before it runs the service the helper takes an exclusive open-file-description
  lock on the service's slot of the ``@jobs`` zone, which the kernel drops when the helper exits: a
  helper outliving its dead worker (still finishing a call) holds off its successor until it is
  done, so two never run the service together.
- **Respawn**: a helper that exits while its worker still holds the lease is started again (an
  ``[alert]`` says how it ended, as nginx's master says "worker process P exited on signal 9");
  after a quick failure (it could not start), with a growing pause.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import signal
import struct
import subprocess
import sys
import threading
import time

log = logging.getLogger("ngxsim")

NOTICE, ALERT = 25, 55  # the error log's levels (http/logs.py)
STOP_WAIT = 2.5        # a stopping helper's time to finish before its worker kills it
QUICK = 2.0            # a helper that ends this soon after its start failed to start
PAUSE_FIRST, PAUSE_MAX = 0.5, 30.0
_FLOCK = struct.Struct("hh4xqqi4x")  # struct flock (x86-64 and aarch64 Linux)
_failures: dict[str, int] = {}  # service -> quick failures in a row (in the worker)


def run_in_process(runtime, spec, lease, slot: int) -> None:
    """In the worker holding ``spec``'s lease: start its helper process and wait for it to end;
    stop it when ``lease.stopping`` is set. Returns when the helper has exited."""
    payload = {"service": spec.name, "sys_path": sys.path, "source": runtime.config.source,
               "instance": [runtime.instance.pid, runtime.instance.start_time], "slot": slot,
               "generation": runtime.generation, "loaded_at": runtime.loaded_at}
    began = time.monotonic()
    # (the worker's import path: ngxsim and the modules may be found through sys.path entries a
    # fresh interpreter would not have)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    proc = subprocess.Popen([sys.executable, "-m", "ngxsim.core.helper", spec.name], stdin=subprocess.PIPE,
                            close_fds=True, env=env)
    try:
        proc.stdin.write(json.dumps(payload).encode() + b"\n")
        proc.stdin.flush()
    except OSError:  # it died at once: its exit is reported below
        pass
    log.log(NOTICE, "start service %s process %d (module %s)", spec.name, proc.pid, spec.owner)
    told: list[bool] = []

    def stop() -> None:  # the lease is lost or the worker stops: the helper's stdin at EOF
        told.append(True)
        try:
            proc.stdin.close()
        except OSError:
            pass
        killer.start()

    def kill() -> None:
        if proc.poll() is None:
            log.log(ALERT, "service %s process %d did not stop within %gs: killed", spec.name, proc.pid, STOP_WAIT)
            proc.kill()

    killer = threading.Timer(STOP_WAIT, kill)
    killer.daemon = True
    lease.on_stop(stop)
    code = proc.wait()
    killer.cancel()
    if code == 0 or (told and code in (-signal.SIGTERM, -signal.SIGKILL)):
        _failures.pop(spec.name, None)
        return
    how = f"exited on signal {-code}" if code < 0 else f"exited with code {code}"
    log.log(ALERT, "service %s process %d %s", spec.name, proc.pid, how)
    if time.monotonic() - began >= QUICK:
        _failures.pop(spec.name, None)
        return
    # it could not start: the caller starts it again at its next renewal, after a pause that grows
    # with each quick failure in a row, so a broken one is not restarted in a tight loop
    failures = _failures[spec.name] = _failures.get(spec.name, 0) + 1
    lease.stopping.wait(min(PAUSE_FIRST * 2 ** (failures - 1), PAUSE_MAX))


# -- in the helper process --------------------------------------------------------------------------


def _hold_slot(zone, slot: int, stopping: threading.Event, name: str) -> int | None:
    """Take the exclusive lock on byte ``slot`` of the ``@jobs`` zone's file (an open file
    description's lock: the kernel drops it when this process exits); wait while an earlier
    helper of the service holds it. Returns the fd holding it, or None when told to stop first."""
    fd = os.open(zone.path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
    lock = _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, slot, 1, 0)
    said = False
    while True:
        try:
            fcntl.fcntl(fd, fcntl.F_OFD_SETLK, lock)
            return fd
        except OSError:
            pass
        if not said:
            said = True
            log.warning("service %s: an earlier process of it is still finishing; waiting for it", name)
        if stopping.wait(0.05):
            os.close(fd)
            return None


def _watch_parent(lease) -> None:
    """stdin at EOF (the worker closed it, or died): stop."""
    try:
        while os.read(0, 4096):
            pass
    except OSError:
        pass
    lease.stop()


def main(argv: list[str]) -> int:
    payload = json.loads(sys.stdin.buffer.readline() or b"null")
    if not payload:
        return 2
    sys.path[:] = payload["sys_path"]

    from .conf.loader import load_again
    from .conf.zones import JOBS_ZONE
    from .http.logs import setup_error_log
    from .instance import HELPER, Instance
    from .jobs import ServiceLease
    from .process import Runtime, freeze_long_lived

    name = payload["service"]
    lease = ServiceLease(name)
    threading.Thread(target=_watch_parent, args=(lease,), name="ngxsim-helper-parent", daemon=True).start()
    signal.signal(signal.SIGTERM, lambda *_: lease.stop())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's ^C goes to the master, which stops the workers
    config = load_again(payload["source"])
    setup_error_log(config.main["error_log"])
    spec = next((s for s in config.jobs if s.name == name and s.service), None)
    if spec is None:
        log.log(ALERT, "service %s: not declared by the configuration", name)
        return 1
    pid, start = payload["instance"]
    runtime = Runtime(config, Instance(pid, start, HELPER))
    runtime.generation, runtime.loaded_at = payload["generation"], payload["loaded_at"]
    runtime.attach_zones()
    if spec.nice:
        os.nice(spec.nice)  # before any thread of the service: they inherit it
    held = _hold_slot(runtime.zone(JOBS_ZONE), payload["slot"], lease.stopping, name)
    if held is None:
        return 0
    freeze_long_lived()
    spec.run(runtime, lease)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except Exception as exc:
        name = sys.argv[1] if len(sys.argv) > 1 else "?"
        if log.handlers:  # the error log is set up: the service itself failed (its traceback there)
            log.exception("service %s (its process) failed", name)
        else:  # it could not start (the configuration did not load again): one line, as nginx's
            print(f"ngxsim: [alert] service {name}: its process could not start: {exc}", file=sys.stderr, flush=True)
        sys.exit(1)
