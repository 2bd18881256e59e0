"""A service in a process of its own (``config.jobs.declare_service(..., process=True)``).

nginx gives its background work processes of their own (the cache manager and loader), so that
it never takes a worker's time from its requests. A service declared with ``process=True`` is
run the same way: the worker holding the service's lease starts a *helper process*
(``python -m ngxsim.core.service_process SERVICE``, whose code is in ``service_process.py``), which loads the very configuration the worker serves
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

import json
import os
import signal
import subprocess
import sys
import threading
import time

from .http.logs import ALERT, NOTICE, log

STOP_WAIT = 2.5        # a stopping helper's time to finish before its worker kills it
QUICK = 2.0            # a helper that ends this soon after its start failed to start
PAUSE_FIRST, PAUSE_MAX = 0.5, 30.0
_failures: dict[str, int] = {}  # service -> quick failures in a row (in the worker)


def run_in_process(runtime, spec, lease, slot: int) -> None:
    """In the worker holding ``spec``'s lease: start its helper process and wait for it to end;
    stop it when ``lease.stopping`` is set. Returns when the helper has exited."""
    payload = {"service": spec.name, "source": runtime.config.source,
               "instance": [runtime.instance.pid, runtime.instance.start_time], "slot": slot,
               "generation": runtime.generation, "loaded_at": runtime.loaded_at}
    began = time.monotonic()
    # the worker's import path, in its order: ngxsim and the modules may be found through sys.path
    # entries a fresh interpreter would not have (and ``-m`` needs ngxsim before any code runs)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    proc = subprocess.Popen([sys.executable, "-m", "ngxsim.core.service_process", spec.name], stdin=subprocess.PIPE,
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
