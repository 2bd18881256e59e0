"""``gunicorn -w N ngxsim.wsgi``: the WSGI app for the config in ``$NGXSIM_CONF``.

With ``NGXSIM_CONF`` unset, the embedded default config is served (see README). A config
error stops the server with nginx's message instead of a traceback.
"""

from __future__ import annotations

import sys

from .core.conf.errors import ConfigError
from .core.process import build_application
from .core.shm import ZoneError

try:
    application = build_application()
except (ConfigError, ZoneError) as exc:  # a bad config, or shared memory that cannot be had
    print(f"ngxsim: [emerg] {exc}", file=sys.stderr, flush=True)
    # gunicorn's "app failed to load" exit code: the arbiter stops instead of respawning
    raise SystemExit(4) from None

app = application
