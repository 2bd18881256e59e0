"""gunicorn's logger in nginx's error log format, with secrets masked: ``gunicorn --logger-class
ngxsim.glogging.Logger``.

gunicorn's own error-log lines (``Booting worker with pid ...``) are written like ngxsim's and
nginx's: ``YYYY/MM/DD HH:MM:SS [level] PID#TID: message`` — one format for the master and the
workers.

gunicorn writes raw request text in two places ngxsim's own access log never sees: its access
log (``--access-logfile``: the request line, ``%(q)s``, ...) and its error log (``Invalid request
from ip=...: Invalid HTTP request line: 'GET /ev?key=...'``, ``Error handling request ...``).
This logger masks the value of every secret query argument (``key``, and what a loaded config
registered with ``ngxsim.register_secret_arg``) in both, matched by decoded name. ``ngxsim -c``
uses it; under plain gunicorn pass ``--logger-class ngxsim.glogging.Logger``.
"""

from __future__ import annotations

import logging

from gunicorn import glogging

from .core.http.logs import SECRET_ARGS, NginxFormatter, mask_target


class _MaskSecrets(logging.Filter):
    """Format the record once, masked; the handlers then print the masked text."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = mask_target(message, SECRET_ARGS)
        if masked is not message:
            record.msg, record.args = masked, ()
        if record.exc_info and not record.exc_text:  # a traceback may quote the request too
            record.exc_text = mask_target(logging.Formatter().formatException(record.exc_info), SECRET_ARGS)
        return True


class Logger(glogging.Logger):
    def setup(self, cfg) -> None:
        super().setup(cfg)
        for handler in self.error_log.handlers:
            handler.setFormatter(NginxFormatter())
        for log in (self.error_log, self.access_log):
            if not any(isinstance(f, _MaskSecrets) for f in log.filters):
                log.addFilter(_MaskSecrets())
