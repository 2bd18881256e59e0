"""nginx's request phases, and the handlers modules register in them.

nginx runs a request through a fixed sequence of phases (``ngx_http_phases``); a module adds a
handler to a phase in its postconfiguration (``ngx_array_push(&cmcf->phases[...].handlers)``)
and the phase engine calls the handlers of each phase in turn (``ngx_http_phase_handler_t``).
Here a module returns its handlers for a block from ``ngxsim_phase_handlers(block, config)``;
the core computes, at config load, the ordered list for every ``server`` and ``location``.

The phases, in the order a request goes through them:

==================  ===========================================================================
``server_rewrite``  the server's own handlers (``block`` is the ``server``), before any location
                    is chosen: they run even when no location matches. The core's
                    server-level ``return`` runs first.
(find config)       the core picks the location (no hook); ``client_max_body_size`` is checked
``rewrite``         the location's (``return`` first), or the server's when no location matched
``preaccess``       limits (``limit_req``, ``limit_conn``)
``access``          access checks (``allow``/``deny``, auth)
``precontent``      a cache answering a hit (``ngxsim_precontent_handler`` lands here too)
``content``         the location's content handler (``ngxsim_content_handler``) when it has one;
                    else the ``content`` handlers in order, the first that answers wins; else 404
``log``             after the response was made (and, for a streamed one, sent): ``ctx.response``
                    is set; the result is ignored
==================  ===========================================================================

When no location matches, the phases from ``rewrite`` on run with the server block's handlers
(nginx runs them with the server's location configuration) and the content phase answers 404.

A handler is ``h(ctx)`` and returns None to pass the request on to the next handler, a
response to answer it (no later handler of any phase up to ``content`` runs), or a
:class:`~ngxsim.core.http.waits.Wait` (``Delay``, ``Park``) to resume it later.

Order within a phase (does not depend on the order of the ``load_module`` lines): the handlers
of implementations marked ``tryfirst`` come first, those of ``trylast`` last (pluggy's meaning),
then by module name (alphabetical), then in the order one module returned them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from ..modules import call_impl

if TYPE_CHECKING:  # pragma: no cover
    from ..conf.loader import Block, Configuration

SERVER_REWRITE, REWRITE, PREACCESS, ACCESS, PRECONTENT, CONTENT, LOG = (
    "server_rewrite", "rewrite", "preaccess", "access", "precontent", "content", "log")
PHASES = (SERVER_REWRITE, REWRITE, PREACCESS, ACCESS, PRECONTENT, CONTENT, LOG)
# the phases run between find-config and the content handler, in order
ACCESS_PHASES = (REWRITE, PREACCESS, ACCESS, PRECONTENT)


@dataclass(frozen=True)
class PhaseHandler:
    """One handler a module adds to one phase for one block (nginx's ``ngx_http_handler_pt``
    pushed on ``cmcf->phases[phase].handlers``): ``handler(ctx)`` runs per request."""

    phase: str
    handler: Callable[[Any], Any]

    def __post_init__(self) -> None:
        if self.phase not in PHASES:
            raise ValueError(f'unknown phase "{self.phase}": use one of {", ".join(PHASES)}')
        if not callable(self.handler):
            raise TypeError(f"the handler of phase {self.phase!r} is {self.handler!r}, not a callable")


def _tier(impl) -> int:
    return 0 if impl.tryfirst else 2 if impl.trylast else 1


def collect(block: "Block", config: "Configuration") -> dict[str, list[Callable]]:
    """The handlers of every phase for ``block`` (a ``server`` or a ``location``), ordered by
    the rule in the module's docstring. Raises ValueError naming the module for a wrong answer."""
    found: list[tuple[int, str, int, str, Callable]] = []
    hook = config.pm.hook
    for impl in hook.ngxsim_phase_handlers.get_hookimpls():
        try:
            answer = call_impl(impl, block=block, config=config)
        except (ValueError, TypeError) as exc:  # e.g. a PhaseHandler of an unknown phase
            raise ValueError(f'module "{impl.plugin_name}" (ngxsim_phase_handlers): {exc}') from None
        items = [] if answer is None else [answer] if isinstance(answer, PhaseHandler) else list(answer)
        for seq, item in enumerate(items):
            if not isinstance(item, PhaseHandler):
                raise ValueError(f'module "{impl.plugin_name}" (ngxsim_phase_handlers) returned {item!r}, '
                                 f'not an ngxsim.PhaseHandler')
            if item.phase == SERVER_REWRITE and block.context != "server":
                raise ValueError(f'module "{impl.plugin_name}" (ngxsim_phase_handlers) returned a '
                                 f'"server_rewrite" handler for a {block.context} block: it runs for servers only')
            found.append((_tier(impl), impl.plugin_name, seq, item.phase, item.handler))
    if block.context == "location":  # the pre-content hook of before the phases: its handlers are precontent ones
        for impl in hook.ngxsim_precontent_handler.get_hookimpls():
            handler = call_impl(impl, location=block, config=config)
            if handler is not None:
                found.append((_tier(impl), impl.plugin_name, -1, PRECONTENT, handler))
    found.sort(key=lambda f: f[:3])
    phases: dict[str, list[Callable]] = {phase: [] for phase in PHASES}
    for *_, phase, handler in found:
        phases[phase].append(handler)
    return phases
