"""Requests that wait without holding a thread: ``Delay`` and ``Park``.

A phase handler (or a content handler) returns ``Delay(seconds)`` or ``Park(waker, timeout)``
instead of a response: the request is set aside and resumed later, as nginx does with a timer
(``limit_req``'s delay) or an event. Under ngxsim's gunicorn worker (``ngxsim.worker.Worker``,
what ``ngxsim -c`` runs) the thread goes back to the pool at once and the worker's event loop
resumes the request on a pool thread when the delay passes or the waker is woken. Under any
other server (gunicorn's ``sync``/``gthread``, Flask's test client) the thread that serves the
request waits instead: the same answers, but the thread is held.

When the request resumes, ``then(ctx)`` runs if the wait has one and its result counts as the
handler's result (None: go on with the next handler, a response, or another wait); without
``then`` the request goes on with the next handler. A client that closed its connection during
the wait ends the request instead (nginx's ``ngx_http_test_reading``): nothing more of it runs,
nothing is written, and it is logged with status 499. ngxsim's worker watches a waiting
request's connection and resumes it as soon as its client hangs up.
"""

from __future__ import annotations

import threading
from typing import Any, Callable


class Waker:
    """What wakes a parked request: ``wake()`` from any thread (an event subscriber, another
    request, a background job). A waker is used once; ``woken`` says whether it was woken."""

    __slots__ = ("_lock", "_event", "_callbacks", "woken")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._event = threading.Event()
        self._callbacks: list[Callable[[], None]] = []
        self.woken = False

    def wake(self) -> None:
        with self._lock:
            if self.woken:
                return
            self.woken = True
            callbacks, self._callbacks = self._callbacks, []
        self._event.set()
        for callback in callbacks:
            callback()

    def on_wake(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` once when woken (at once when it was woken already). For servers."""
        with self._lock:
            if not self.woken:
                self._callbacks.append(callback)
                return
        callback()

    def wait(self, timeout: float | None) -> bool:
        """Block the calling thread until woken or ``timeout`` seconds passed: whether woken."""
        return self._event.wait(timeout)


class Wait:
    """A request set aside: resume after ``seconds`` (None: no deadline) or when ``waker`` is
    woken, whichever comes first; then ``then(ctx)``."""

    __slots__ = ("seconds", "waker", "then")

    def __init__(self, seconds: float | None, waker: Waker | None = None,
                 then: Callable[[Any], Any] | None = None):
        if seconds is None and waker is None:
            raise ValueError("a wait needs a delay, a waker or both")
        if seconds is not None and not seconds >= 0:
            raise ValueError(f"a wait of {seconds!r} seconds: it must be 0 or more")
        self.seconds = seconds
        self.waker = waker
        self.then = then

    def block(self) -> None:
        """Wait on the calling thread (servers that cannot park)."""
        if self.waker is not None:
            self.waker.wait(self.seconds)
        elif self.seconds:
            threading.Event().wait(self.seconds)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.seconds}s{' waker' if self.waker else ''}>"


class Delay(Wait):
    """Resume the request after ``seconds`` (nginx's timer on a delayed request)."""

    __slots__ = ()

    def __init__(self, seconds: float, then: Callable[[Any], Any] | None = None):
        super().__init__(seconds, None, then)


class Park(Wait):
    """Resume the request when ``waker`` is woken, or after ``timeout`` seconds (None: only when
    woken); ``then(ctx)`` can read ``waker.woken`` to tell which."""

    __slots__ = ()

    def __init__(self, waker: Waker, timeout: float | None = None, then: Callable[[Any], Any] | None = None):
        if not isinstance(waker, Waker):
            raise TypeError(f"Park needs an ngxsim.Waker, not {waker!r}")
        super().__init__(timeout, waker, then)


class Parked(BaseException):
    """Raised through the WSGI call to hand a waiting request to the server's event loop
    (a BaseException so that no ``except Exception`` on the way turns it into a 500)."""

    def __init__(self, wait: Wait, resume: Callable[[], Any]):
        super().__init__(wait)
        self.wait = wait
        self.resume = resume
        self.req = None  # the server's request object, set by the server that parks it


class _ThreadState(threading.local):
    can_park = False  # the server serving this thread resumes parked requests (ngxsim.worker.Worker)
    resume: Callable[[], Any] | None = None  # the continuation of a resumed request
    serving = False  # the core is running a request's phases on this thread (serving_request)


STATE = _ThreadState()


def serving_request() -> bool:
    """Is this thread running a request's phases (a handler, a filter, a variable) right now?

    What a module asks before something a request must never do (wait on a remote engine, a
    long job): True from the moment the core takes the request until its response is made,
    including a parked request's resumption; False on the module's own threads and jobs, and
    while a streamed response body is being sent (as Flask's request context is gone then too)."""
    return STATE.serving


def take_resume() -> Callable[[], Any] | None:
    """The continuation this thread was given to resume (once), or None for a new request."""
    resume, STATE.resume = STATE.resume, None
    return resume
