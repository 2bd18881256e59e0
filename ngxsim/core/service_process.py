"""The helper process of a service declared with ``process=True``: what runs in it (``python -m
ngxsim.core.service_process SERVICE``, started by ``helper.run_in_process`` in the worker holding
the service's lease; see ``helper.py`` for the whole story).

It reads what its worker sends on stdin (the configuration's ``source``, the instance, the
service's slot), loads that configuration again, attaches the zones, takes the service's slot
lock and runs ``run(runtime, lease)``; stdin at EOF or SIGTERM stops it.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import signal
import struct
import sys
import threading

from .conf.loader import load_again
from .conf.zones import JOBS_ZONE
from .http.logs import ALERT, setup_error_log
from .instance import HELPER, Instance
from .jobs import ServiceLease
from .process import Runtime, freeze_long_lived

log = logging.getLogger("ngxsim")

_FLOCK = struct.Struct("hh4xqqi4x")  # struct flock (x86-64 and aarch64 Linux)


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
