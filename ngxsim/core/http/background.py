"""Background work: what a module runs after or beside a request without holding its client, and
nginx's background subrequest (``NGX_HTTP_SUBREQUEST_BACKGROUND``) on top of it.

``run_in_background(runtime, what, fn)`` runs ``fn()`` on a thread of this worker's own, never on
a thread that serves requests, so it works the same under every worker class: ngxsim's
``Worker`` (its pool threads and its accepting stay the clients'), ``SyncWorker`` (whose one
thread serves the requests), ``GThreadWorker``, gunicorn's own classes and Flask's test client
(the worker's part starts with the first request). It is bounded: at most ``LIMIT`` pieces run
at once in a worker; past that ``run_in_background`` refuses (returns False) and the caller
does the work itself or not at all, it decides. A failure is written to the error log with its
traceback (``[error] background work "WHAT" failed``), never lost. When the worker exits
(``Runtime.stop_worker``) no new work starts, and what runs is waited for as long as the
worker's gunicorn ``graceful_timeout`` leaves (``Runtime.background_stop_wait``; ``STOP_WAIT``
seconds outside gunicorn); what is still running then is named in the error log (``[alert]``) and
abandoned with the process (the threads are daemons).

``subrequest(ctx)`` is the request a background subrequest makes: a copy of ``ctx`` (its
method, URI, header lines, server and location, and the body ``read_body`` read, none of its
per-request values) that
``run_subrequest`` takes through the location's content phase and body filters, reading the
answer to its end and dropping it (nginx's ``header_only`` subrequest): no access log line, no
client. What a module's body filter does with the answer (store it) happens as for a request.
"""

from __future__ import annotations

import io
import threading
import time
from typing import Callable

from .context import RAW_HEADERS, RequestContext
from .logs import ALERT, log
from .waits import Wait

LIMIT = 16  # pieces of background work running at once, per worker
STOP_WAIT = 10.0  # seconds a stopping process outside gunicorn waits for its background work


class BackgroundWork:
    """One worker's background work (``runtime.background``)."""

    def __init__(self, limit: int = LIMIT):
        self.limit = limit
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._running: dict[int, str] = {}  # id -> what
        self._next = 0
        self._stopped = False
        self.started = self.failed = self.refused = 0  # counts, for tests and the status page

    def submit(self, what: str, fn: Callable[[], object]) -> bool:
        """Run ``fn()`` on a thread of its own; False (nothing started) when ``limit`` pieces
        run already or the worker is stopping."""
        with self._lock:
            if self._stopped or len(self._running) >= self.limit:
                self.refused += 1
                return False
            self._next += 1
            key = self._next
            self._running[key] = what
            self.started += 1
        thread = threading.Thread(target=self._run, args=(key, what, fn), name=f"ngxsim-background-{key}",
                                  daemon=True)
        try:
            thread.start()
        except BaseException:  # no thread could be made: nothing runs
            self._done(key)
            raise
        return True

    def _run(self, key: int, what: str, fn: Callable[[], object]) -> None:
        try:
            fn()
        except BaseException:  # noqa: BLE001 - every failure is told, none ends the worker
            with self._lock:
                self.failed += 1
            log.exception('background work "%s" failed', what)
        finally:
            self._done(key)

    def _done(self, key: int) -> None:
        with self._lock:
            self._running.pop(key, None)
            self._idle.notify_all()

    @property
    def running(self) -> list[str]:
        with self._lock:
            return list(self._running.values())

    def wait_idle(self, timeout: float) -> bool:
        """Wait until nothing runs (True) or ``timeout`` seconds passed (False)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._running:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
            return True

    def stop(self, timeout: float = STOP_WAIT) -> None:
        """No new work; wait up to ``timeout`` seconds for what runs, then name what is left."""
        with self._lock:
            self._stopped = True
        if not self.wait_idle(timeout):
            left = self.running
            if left:
                log.log(ALERT, "the worker exits with %d background work(s) still running, abandoned: %s",
                             len(left), ", ".join(f'"{what}"' for what in left))


def run_in_background(runtime, what: str, fn: Callable[[], object]) -> bool:
    """Run ``fn()`` in this worker without holding any client (see the module docstring).
    ``what`` names it in the error log. Returns False when it was refused (the worker runs
    ``LIMIT`` pieces already, or is stopping): the caller then does without."""
    work = runtime.background
    if work is None:  # not a serving worker (the master, a config check)
        return False
    return work.submit(what, fn)


def subrequest(ctx: RequestContext) -> RequestContext:
    """A background subrequest of ``ctx``: the same method, URI, header lines, server and
    location, no client connection (nothing it does watches or cuts the client's), none of the
    request's variables' values or modules' stash. Its body is the one ``read_body`` read of
    ``ctx`` (nginx reads the body before its cache looks, and a subrequest shares its parent's:
    a module that answers before the content phase reads it first), as a ``Content-Length``
    body; none when it was not read. Made on the request's thread (it copies the request as it
    is now); run with ``run_subrequest`` (on a background thread)."""
    body = ctx.body or b""
    environ = {k: v for k, v in ctx.environ.items()
               if k not in ("gunicorn.socket", "wsgi.input", "CONTENT_LENGTH", "HTTP_TRANSFER_ENCODING")}
    environ["wsgi.input"] = io.BytesIO(body)
    lines = environ.get(RAW_HEADERS)
    if lines is not None:
        environ[RAW_HEADERS] = [(k, v) for k, v in lines if k.lower() not in ("content-length",
                                                                                    "transfer-encoding")]
    if ctx.body is not None:
        environ["CONTENT_LENGTH"] = str(len(body))
    sub = RequestContext(environ, None, ctx.runtime)
    sub.body = ctx.body
    sub.server, sub.location = ctx.server, ctx.location
    sub.captures, sub.named_captures = ctx.captures, dict(ctx.named_captures)
    sub.secret_args = ctx.secret_args
    sub.background = True
    return sub


def run_subrequest(sub: RequestContext) -> int:
    """Take ``sub`` through its location's content handler and body filters (a wait blocks this
    thread), read the answer to its end and drop it. Returns the answer's status."""
    plan = sub.location.stash["core.plan"]
    response = None
    for handler in plan.content:
        result = handler(sub)
        while isinstance(result, Wait):
            result.block()
            result = result.then(sub) if result.then is not None else None
        if result is not None:
            response = result
            break
    if response is None:
        return 404
    for body_filter in plan.body_filters:
        response = body_filter(sub, response)
    try:
        for _ in response.response:
            pass
    finally:
        response.close()
    return response.status_code
