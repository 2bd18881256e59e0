"""``gunicorn -w N ngxsim.wsgi``: the WSGI app for the config in ``$NGXSIM_CONF``.

With ``NGXSIM_CONF`` unset, the embedded default config is served (see README). A config
error stops the server with nginx's message instead of a traceback.
"""

from __future__ import annotations

import os
import socket
import sys
import time

from .core.conf.errors import ConfigError
from .core.instance import _gunicorn_object
from .core.process import build_application
from .core.shm import ZoneError

# gunicorn's "app failed to load" exit code: the arbiter stops instead of respawning
APP_LOAD_ERROR = 4
# how long the worker that reports holds its claim, so that its siblings (loading the same
# config at the same moment) see it and stay quiet
_REPORT_LINGER = 1.0
# a respawned worker that cannot load pauses this long before exiting: it must not make
# gunicorn respawn in a tight loop
_RESPAWN_PAUSE = 1.0
_claim = None


def _fail(exc: Exception) -> None:
    """Report a config or zone that cannot be served, once per server, and stop it.

    Every worker of plain gunicorn loads the config itself, so at start all of them fail at
    once. Were two to exit with gunicorn's app-load code, the arbiter would raise a second
    ``HaltServer`` while halting for the first and print its traceback. So:

    - a worker the arbiter is already stopping exits quietly with 1;
    - of the workers of the first batch, the first to claim (an abstract socket named after the
      master) prints the ``[emerg]`` line and exits with the app-load code, which stops the
      server; the others exit quietly with 1;
    - a respawned worker (the config on disk broke while the server ran, or it is one more
      start-up failure while the arbiter halts) never stops the server: it says why, pauses,
      and exits with 1 — the running workers keep serving, as nginx keeps serving the config
      it has."""
    global _claim
    worker = _gunicorn_object()
    if worker is None:  # not under gunicorn
        print(f"ngxsim: [emerg] {exc}", file=sys.stderr, flush=True)
        raise SystemExit(APP_LOAD_ERROR)
    if not getattr(worker, "alive", True):
        raise SystemExit(1)  # the arbiter is stopping us: a sibling has reported
    claim = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        claim.bind(f"\0ngxsim-emerg.{os.getppid()}")
    except OSError:
        claim.close()
        raise SystemExit(1) from None  # a sibling is reporting the same failure
    _claim = claim
    print(f"ngxsim: [emerg] {exc}", file=sys.stderr, flush=True)
    if getattr(worker, "age", 0) > worker.cfg.workers:
        time.sleep(_RESPAWN_PAUSE)
        raise SystemExit(1)
    time.sleep(_REPORT_LINGER)
    raise SystemExit(APP_LOAD_ERROR)


try:
    application = build_application()
except (ConfigError, ZoneError) as exc:  # a bad config, or shared memory that cannot be had
    _fail(exc)

app = application
