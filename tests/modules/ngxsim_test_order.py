"""Test modules for nginx's phases: ``ngxsim_test_order_a``, ``_b``, ``_z`` (tryfirst) and
``_aa`` (trylast) are each ``make(letter)``: a handler in every phase that appends
``LETTER.PHASE`` to the request's trace (``$test_order``, declared by ``_a``).

``_a`` also has ``test_order_reject;`` (http, server, location: its preaccess handler answers
503), ``test_order_delay TIME;`` (its preaccess handler waits that long, then records
``a.delayed``), and records ``(uri, status)`` of every request in ``LOGGED`` from its log handler.
``test_order_park;`` (location) parks each request on a ``Waker`` (30 s at most) and answers
``woken`` or ``timed out``; content handlers ``test_order_wake;`` (wake every parked request,
answer how many) and ``test_order_waiting;`` (how many requests of this worker wait now: parked
or delayed).
"""

from __future__ import annotations

import threading

import pluggy

from ngxsim import (CONTENT, FLAG, HTTP, LOCATION, LOG, PHASES, PREACCESS, SERVER, SERVER_REWRITE, TIME, Delay, Directive,
                    Park, PhaseHandler, Variable, Waker, hookimpl, json_error, json_response)

LOGGED: list[tuple[str, int]] = []
WAKERS: list[Waker] = []
_waiting = {"delayed": 0}
_lock = threading.Lock()


def _trace(ctx) -> list:
    return ctx.stash.setdefault("test_order", [])


def make(letter: str, **marks):
    """``ngxsim_phase_handlers`` of module ``letter`` (marked with ``marks`` when given)."""
    def ngxsim_phase_handlers(block, config):
        handlers = []
        for phase in PHASES:
            if phase == SERVER_REWRITE and block.context != "server":
                continue

            def record(ctx, tag=f"{letter}.{phase}"):
                _trace(ctx).append(tag)
                return None

            handlers.append(PhaseHandler(phase, record))
        return handlers

    return pluggy.HookimplMarker("ngxsim")(**marks)(ngxsim_phase_handlers) if marks else ngxsim_phase_handlers


@hookimpl
def ngxsim_directives(register):
    register(Directive("test_order_reject", (HTTP, SERVER, LOCATION), 0, type=FLAG, default=False))
    register(Directive("test_order_delay", (HTTP, SERVER, LOCATION), 1, type=TIME, default=0))
    for name in ("test_order_park", "test_order_wake", "test_order_waiting"):
        register(Directive(name, (LOCATION,), 0, type=FLAG, default=False, inherit=False))


@hookimpl
def ngxsim_variables(register):
    register(Variable("test_order", lambda ctx: ",".join(_trace(ctx))))


def extra_handlers(block, config):
    """``_a``'s own handlers, beside its tracing ones."""
    handlers = []
    if block["test_order_reject"]:
        handlers.append(PhaseHandler(PREACCESS, lambda ctx: json_error(503, "rejected in preaccess")))
    if block["test_order_delay"]:
        handlers.append(PhaseHandler(PREACCESS, lambda ctx: _delay(block["test_order_delay"])))
    if block.get("test_order_park"):
        handlers.append(PhaseHandler(PREACCESS, _park))
    if block.get("test_order_wake"):
        handlers.append(PhaseHandler(CONTENT, _wake_all))
    if block.get("test_order_waiting"):
        handlers.append(PhaseHandler(CONTENT, lambda ctx: json_response(
            {"waiting": _waiting["delayed"] + sum(not w.woken for w in WAKERS)})))
    handlers.append(PhaseHandler(LOG, lambda ctx: LOGGED.append((ctx.uri, ctx.response.status_code))))
    return handlers


def _delay(seconds):
    with _lock:
        _waiting["delayed"] += 1

    def delayed(ctx):
        with _lock:
            _waiting["delayed"] -= 1
        _trace(ctx).append("a.delayed")
        return None

    return Delay(seconds, then=delayed)


def _park(ctx):
    waker = Waker()
    with _lock:
        WAKERS.append(waker)
    return Park(waker, timeout=30, then=lambda ctx: json_response({"answer": "woken" if waker.woken else "timed out"}))


def _wake_all(ctx):
    with _lock:
        wakers = [w for w in WAKERS if not w.woken]
        WAKERS.clear()
    for waker in wakers:
        waker.wake()
    return json_response({"woken": len(wakers)})
