"""Test modules for nginx's phases: ``ngxsim_test_order_a``, ``_b``, ``_z`` (tryfirst) and
``_aa`` (trylast) are each ``make(letter)``: a handler in every phase that appends
``LETTER.PHASE`` to the request's trace (``$test_order``, declared by ``_a``).

``_a`` also has ``test_order_reject;`` (http, server, location: its preaccess handler answers
503), ``test_order_delay TIME;`` (its preaccess handler waits that long, then records
``a.delayed``), and records ``(uri, status)`` of every request in ``LOGGED`` from its log handler.
"""

from __future__ import annotations

import pluggy

from ngxsim import (FLAG, HTTP, LOCATION, LOG, PHASES, PREACCESS, SERVER, SERVER_REWRITE, TIME, Delay, Directive,
                    PhaseHandler, Variable, hookimpl, json_error)

LOGGED: list[tuple[str, int]] = []


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


@hookimpl
def ngxsim_variables(register):
    register(Variable("test_order", lambda ctx: ",".join(_trace(ctx))))


def extra_handlers(block, config):
    """``_a``'s own handlers, beside its tracing ones."""
    handlers = []
    if block["test_order_reject"]:
        handlers.append(PhaseHandler(PREACCESS, lambda ctx: json_error(503, "rejected in preaccess")))
    if block["test_order_delay"]:
        def delayed(ctx):
            _trace(ctx).append("a.delayed")
            return None

        handlers.append(PhaseHandler(PREACCESS, lambda ctx: Delay(block["test_order_delay"], then=delayed)))
    handlers.append(PhaseHandler(LOG, lambda ctx: LOGGED.append((ctx.uri, ctx.response.status_code))))
    return handlers
