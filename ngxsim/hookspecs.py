"""Every hook ngxsim's core calls, grouped by the phase in which it runs.

A module is any importable object (usually a Python module) with functions marked
``@ngxsim.hookimpl``; ``load_module NAME;`` in the config registers it. Hooks are called with
keyword arguments; an implementation may accept any subset of them (pluggy's rule).

Processes: the *master* is the process that parses the config and creates the shared-memory
zones (gunicorn's arbiter under ``ngxsim -c`` or ``--preload``, otherwise the first worker to
start). *Workers* are gunicorn's worker processes; every worker runs the ``worker`` hooks.

Each hook's example is the body of a module: ``from ngxsim import ...`` and ``@hookimpl`` on a
plain function named like the hook.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import pluggy

if TYPE_CHECKING:  # pragma: no cover - types only
    from .core.conf.directive import Directive
    from .core.conf.loader import Block, Configuration
    from .core.events import Event, Gap, Subscription
    from .core.http.api import ApiSection
    from .core.http.context import RequestContext
    from .core.http.phases import PhaseHandler
    from .core.process import Runtime
    from .core.http.variables import Variable

hookspec = pluggy.HookspecMarker("ngxsim")
hookimpl = pluggy.HookimplMarker("ngxsim")

# --------------------------------------------------------------------------------------------
# registration: what a module brings. Called once per module while the config is loaded.
# --------------------------------------------------------------------------------------------


@hookspec
def ngxsim_directives(register: Callable[["Directive | Unsupported"], None]) -> None:
    """Declare the module's directives by calling ``register(Directive(...))`` once for each.

    Runs in the process that loads the config (master, ``ngxsim -t``, or a worker that loads the
    app itself), right after the ``load_module`` lines are resolved and before the rest of the
    config is checked. The core calls each module's implementation separately so that every
    declaration is attributed to its module: two modules declaring the same name fail the load
    with both names. The table is frozen afterwards; registering later raises.

    For example::

        @hookimpl
        def ngxsim_directives(register):
            register(Directive("hello", (LOCATION,), 0, type=FLAG, default=False, inherit=False))
            register(Directive("hello_greeting", (HTTP, SERVER, LOCATION), 1, default="hello"))

    A directive of real nginx that the module does not implement is declared with
    ``register(Unsupported(name, advice))``: a config that uses it fails with
    ``"NAME" directive is not supported by ngxsim: ADVICE in FILE:LINE`` instead of
    ``unknown directive``; a ``Directive`` of the same name (from any module) always wins.
    """


@hookspec
def ngxsim_variables(register: Callable[["Variable"], None]) -> None:
    """Declare the module's variables (``$upstream_addr``) by calling ``register(Variable(...))``.

    Runs once per module in the process that loads the config (like ``ngxsim_directives``: the
    master, ``ngxsim -t``, or a worker that loads the app itself), right after
    ``ngxsim_directives`` and before any directive value is compiled, so every directive
    (``add_header``, ``log_format``, ``proxy_set_header``...) can use them. A ``Variable`` is a name (or a prefix, like nginx's
    ``$arg_``) and a getter ``f(ctx) -> str`` run per request. A name declared twice, or one that
    shadows a core variable, fails the load naming both modules.

    For example (``$hello_name``, and ``$hello_header_NAME`` as a family)::

        @hookimpl
        def ngxsim_variables(register):
            register(Variable("hello_name", lambda ctx: ctx.vars.get("hello_name", "")))
            register(Variable("hello_header_", lambda rest: lambda ctx: ctx.request.headers.get(rest, ""),
                              prefix=True))
    """


# --------------------------------------------------------------------------------------------
# configuration: check and finish what was parsed. ``ngxsim -t`` runs these too.
# --------------------------------------------------------------------------------------------


@hookspec
def ngxsim_postconfiguration(config: "Configuration") -> None:
    """Validate and finish this module's configuration, and declare the shared zones it needs.

    Runs once per config load, in the process that loads it (``ngxsim -t`` too), after every
    directive was checked and merged (``config.blocks`` gives each context with its effective
    values), for the core first and then for each module in the order of the ``load_module``
    lines (what earlier modules declared is visible). Raise ``ConfigError`` (best made with
    ``block.error(name, message)`` so it names the file and line) to fail the load; declare zones
    with ``config.zones.declare(name, size, owner=..., where=...)``. Must not touch shared
    memory: zones are created later, and only if the whole config is valid.

    For example::

        @hookimpl
        def ngxsim_postconfiguration(config):
            for location in config.blocks(LOCATION):
                if location["hello"] and not location["hello_greeting"].strip():
                    raise location.error("hello_greeting", "hello_greeting must not be blank")
            config.zones.declare("hello", 64 * 1024, owner="hello")
            config.stash["hello"] = {"zone": "hello"}
    """


@hookspec(firstresult=True)
def ngxsim_content_handler(location: "Block", config: "Configuration") -> Callable[["RequestContext"], Any] | None:
    """Return the content handler of ``location``, or None when this module does not handle it.

    Called once per ``location`` block at config load (never per request). The first module that
    returns a callable owns the location (``firstresult``). The handler is later called in a
    worker with a ``RequestContext`` and returns a Flask/Werkzeug response.

    The hook runs in the process that loads the config; the handler runs in a worker, on the
    thread serving the request, possibly on several threads at once. For example::

        @hookimpl
        def ngxsim_content_handler(location, config):
            if not location["hello"]:
                return None
            greeting = location["hello_greeting"]
            return lambda ctx: json_response({"greeting": greeting, "name": ctx.arg("name")})
    """


@hookspec
def ngxsim_header_filter(location: "Block", config: "Configuration") -> Callable[["RequestContext", Any], None] | None:
    """Return a header filter for ``location``, or None.

    Called once per ``location`` at config load. Every returned filter runs, in module load order,
    on each response of that location after the core's ``add_header``; it may change
    ``response.headers``.

    The hook runs in the process that loads the config; the filter in a worker, per response.
    For example::

        @hookimpl
        def ngxsim_header_filter(location, config):
            if location["hello"]:
                def stamp(ctx, response):
                    response.headers["X-Hello-Worker"] = str(ctx.runtime.worker_pid)
                return stamp
    """


@hookspec
def ngxsim_precontent_handler(location: "Block", config: "Configuration") -> Callable[["RequestContext"], Any] | None:
    """Return a pre-content handler for ``location``, or None.

    Called once per ``location`` at config load. Every returned handler is one of the location's
    ``precontent`` phase handlers (see ``ngxsim_phase_handlers`` for their order): it runs on
    each request of that location after the rewrite, preaccess and access phases and before its
    content handler (nginx's precontent phase: where a cache answers a hit or a ``PURGE``). A handler
    returns a response to answer the request itself (later handlers and the content handler do
    not run), or None to pass it on.

    The hook runs in the process that loads the config; the handler in a worker, per request.
    For example::

        @hookimpl
        def ngxsim_precontent_handler(location, config):
            if location["hello"]:
                def refuse_bots(ctx):
                    if "bot" in ctx.request.headers.get("User-Agent", ""):
                        return json_error(403, "no bots here")
                    return None
                return refuse_bots
    """


@hookspec
def ngxsim_body_filter(location: "Block", config: "Configuration") -> Callable[["RequestContext", Any], Any] | None:
    """Return a body filter for ``location``, or None.

    Called once per ``location`` at config load. Every returned filter runs, in module load order,
    on each response of that location right after it was made (by the content handler, a
    pre-content handler or ``return``), before ``add_header`` and the header filters. It returns
    the response to send on: the same one, or a new one (e.g. one whose body iterator keeps a copy
    of what it streams, to store it in a cache once complete). ``ctx.vars`` holds what earlier
    phases recorded (``upstream_status``...); ``ctx.stash[module_name]`` what this module's own
    earlier phases kept for it (a fresh dict per request).

    The hook runs in the process that loads the config; the filter in a worker, per response.
    For example::

        @hookimpl
        def ngxsim_body_filter(location, config):
            if location["hello"]:
                def count(ctx, response):
                    ctx.vars["hello_bytes"] = str(len(response.get_data()))
                    return response
                return count
    """


# --------------------------------------------------------------------------------------------
# phases: nginx's request phases (server_rewrite, rewrite, preaccess, access, precontent,
# content, log) and the handlers modules add to them (docs/hooks.md, "Phases").
# --------------------------------------------------------------------------------------------


@hookspec
def ngxsim_phase_handlers(block: "Block", config: "Configuration") -> "list[PhaseHandler] | PhaseHandler | None":
    """Return this module's phase handlers for ``block`` (a ``server`` or a ``location``): a
    ``PhaseHandler(phase, handler)``, a list of them, or None.

    nginx's ``ngx_http_phase_handler``: called once per ``server`` and once per ``location``
    block at config load (never per request), after every ``ngxsim_postconfiguration``. A
    server block's handlers serve its ``server_rewrite`` phase, and every later phase when no
    location matches the request (nginx then uses the server's configuration); a location's
    serve the phases from ``rewrite`` on. A handler ``h(ctx)`` returns None (go on), a response
    (answer now) or a wait (``Delay``, ``Park``: resume later without holding a thread).

    Within a phase: ``tryfirst`` implementations' handlers first, ``trylast`` ones last, then by
    module name, then in the order returned (never by ``load_module`` order). For example::

        @hookimpl
        def ngxsim_phase_handlers(block, config):
            if block["hello_limit"]:
                def limit(ctx):
                    return json_error(503, "busy") if ctx.arg("busy") else None
                return PhaseHandler(PREACCESS, limit)
    """


# --------------------------------------------------------------------------------------------
# lifecycle: the processes of a running server.
# --------------------------------------------------------------------------------------------


@hookspec
def ngxsim_init_master(runtime: "Runtime") -> None:
    """The server instance starts: zones exist and were created or kept (``zone.fresh`` says
    which). Runs once per instance and config load, in the process that created the zones,
    before any worker serves. Initialise zone contents here.

    For example::

        @hookimpl
        def ngxsim_init_master(runtime):
            zone = runtime.zone("hello")
            if zone.fresh:  # zero-filled; a kept zone holds what the last run left
                with zone.lock():
                    zone.buf[:8] = (0).to_bytes(8, "little")
    """


@hookspec
def ngxsim_reload_accepted(runtime: "Runtime") -> None:
    """A reload (``ngxsim -c`` on SIGHUP) was accepted: ``runtime`` is the new configuration's,
    its zones attached (``zone.fresh`` as in ``ngxsim_init_master``), and the old workers are
    about to be replaced; runs in the master before the new workers start. ``ngxsim_init_master``
    ran earlier, while the reload could still be rejected (another module's
    ``ngxsim_init_master`` failing rejects it): what it writes into a kept zone, the running
    workers see even if the reload is then rejected. Rewrite what the running workers share
    (rebuild a kept zone from the new configuration) here instead. A failure is logged; the
    reload goes on.

    For example::

        @hookimpl
        def ngxsim_reload_accepted(runtime):
            zone = runtime.zone("hello")
            if not zone.fresh:  # kept: it holds the running configuration's state until now
                with zone.lock():
                    zone.buf[:8] = (0).to_bytes(8, "little")
    """


@hookspec
def ngxsim_init_worker(runtime: "Runtime") -> None:
    """A worker process starts (first start, respawn after a crash, or reload). Zones are
    attached in this process. Runs before the worker serves its first request.

    For example::

        @hookimpl
        def ngxsim_init_worker(runtime):
            runtime.stash["hello"] = {"greeted": 0}
            runtime.on_request_start.append(lambda: None)  # cheap, runs before every handler
    """


@hookspec
def ngxsim_worker_stopping(runtime: "Runtime", fast: bool) -> None:
    """A worker is told to stop: gracefully (``fast`` false: requests in progress may finish)
    or at once. ``runtime.stopping`` is set already (``"graceful"`` or ``"fast"``). Runs in the
    worker, in a thread of its own, while requests may still be in progress: wake what waits
    (a long-poll) so it answers with what it has now. Called by ngxsim's gunicorn worker classes
    (``ngxsim -c`` always uses them); ``ngxsim_exit_worker`` follows when the worker exits.

    For example, a module whose handlers wait on a ``threading.Event`` kept in the stash::

        @hookimpl
        def ngxsim_worker_stopping(runtime, fast):
            waiting = runtime.stash.get("hello.waiting")
            if waiting is not None:
                waiting.set()  # its handlers answer with what they have
    """


@hookspec
def ngxsim_exit_worker(runtime: "Runtime") -> None:
    """A worker process stops cleanly. Not called for a worker that is killed: nothing in shared
    memory may depend on this hook having run.

    Runs in that worker. For example::

        @hookimpl
        def ngxsim_exit_worker(runtime):
            runtime.stash.pop("hello", None)
    """


# --------------------------------------------------------------------------------------------
# events: the worker_events bus. ``ngxsim_publish`` is implemented by the worker_events module;
# the other three are implemented by any module that wants to hear events.
# --------------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def ngxsim_publish(runtime: "Runtime", zone: str, channel: str, type: str, payload: str) -> int | None:
    """Publish one event into the event ring of ``zone``; return its generation.

    Called by any module in any worker (use ``runtime.publish(...)``, which calls this hook and
    raises when no module handles it). Implemented by ``worker_events``. Raises ``ValueError``
    naming the problem (unknown zone, empty type, a field over its byte limit) and publishes
    nothing then. ``firstresult``: the first implementation that returns a generation wins.

    Publishing writes the event into the ring and wakes the workers. worker_events then delivers
    it (``ngxsim_event``) to the publishing worker's own subscribers before the publish returns,
    so a handler that publishes sees its own event delivered in the same response; every other
    worker delivers it on its dispatcher thread soon after, or at the start of its next request
    at the latest (``Runtime.publish`` says what the installed version does).

    Call it from a handler, for example::

        def greet(ctx):
            generation = ctx.runtime.publish(ctx.runtime.config.stash["hello"]["zone"], "hello",
                                             "greeted", compact_json({"name": ctx.arg("name")}))
            return json_response({"generation": generation})
    """


@hookspec
def ngxsim_event_subscriptions(config: "Configuration") -> "list[Subscription] | Subscription | None":
    """Say which events this module wants: zone, channels (None: all), and whether a worker
    that starts should first replay what is still in the ring. A module that implements
    ``ngxsim_event`` without this hook (or returning None) hears every channel of every zone;
    ``[]`` subscribes to nothing. Called once per config load for each module separately, after
    every ``ngxsim_postconfiguration``; a subscription to a zone no event module declares, or
    any while no module publishes events, fails the load with the fix. Runs in the process that
    loads the config.

    For example::

        @hookimpl
        def ngxsim_event_subscriptions(config):
            zone = http_event_zone(config, "hello", subscribes=True)  # the http-level worker_events_zone
            return Subscription(zone, channels=("hello",), replay=True) if zone else None
    """


@hookspec
def ngxsim_event(runtime: "Runtime", event: "Event") -> None:
    """One event, delivered in **every** worker (the publishing one included), in generation
    order, exactly once per worker while the event is still in the ring.

    Runs on the worker's event dispatcher thread, or on a request thread that drains pending
    events before its handler runs; calls for one zone never overlap. Keep it short; an
    exception is logged with the event's generation and delivery goes on.

    For example::

        @hookimpl
        def ngxsim_event(runtime, event):
            if event.channel == "hello" and event.type == "greeted":
                runtime.stash["hello"]["greeted"] += 1
    """


@hookspec
def ngxsim_event_gap(runtime: "Runtime", gap: "Gap") -> None:
    """Events this worker never delivered because the ring overwrote them first (it fell
    behind by more than the ring holds). ``gap.first`` to ``gap.last`` are the lost generations.
    With ``gap.origin`` set, events of another instance of a cluster were lost on their way here
    (``first``..``last`` are that instance's origin generations; ``"*"``: the engine dropped
    entries of unknown origin), see docs/cluster.md.
    Resync instead of staying stale (drop a local cache, re-read a snapshot). Same threads and
    ordering as ``ngxsim_event``: called before the first event after the gap.

    For example::

        @hookimpl
        def ngxsim_event_gap(runtime, gap):
            if gap.zone == runtime.config.stash["hello"]["zone"]:
                runtime.stash["hello"]["greeted"] = None  # unknown now: recount from the source
    """


# --------------------------------------------------------------------------------------------
# status: what ``ngxsim_status`` locations (and ``ngxsim status``) show of each module, and the
# sections of the NGINX Plus-shaped ``api`` location.
# --------------------------------------------------------------------------------------------


@hookspec
def ngxsim_status(runtime: "Runtime") -> dict[str, Any] | None:
    """This module's part of the instance status, or None to show nothing.

    Called in the worker that answers a request to an ``ngxsim_status`` location, once per
    module that implements it, each time (keep it cheap: read shared memory, take no long
    lock). Return a JSON-able dict of what a person looking at the server wants first (the
    instance's state from shared memory, not only this worker's); it appears as
    ``modules.<module name>``. Keys ending in ``_msec`` are times (ms since the epoch) that the
    page and ``ngxsim status`` show as ages. Anyone who can reach the location sees it: never
    put a secret (a key, a password, a token) in it. An exception is logged and shown as that
    module's ``error``; the rest of the status is still answered.

    For example::

        @hookimpl
        def ngxsim_status(runtime):
            state = runtime.stash.get("hello")
            return {"greeted": state["greeted"]} if state else None
    """


@hookspec
def ngxsim_api_sections(config: "Configuration") -> "list[ApiSection] | ApiSection | None":
    """The parts of the ``api`` location's tree (NGINX Plus's ``/api/N/...``) this module answers.

    Called once per configuration load, in each process that builds the ``api`` handler, after
    ``ngxsim_postconfiguration``. Return ``ngxsim.ApiSection(path, handler, writes=())`` objects
    (or None): ``path`` is where the section sits (``"http/upstreams"``, ``"http/caches"``, or the
    module's own ``"mymodule"``); ``handler(request)`` gets an ``ngxsim.ApiRequest`` (``ctx``,
    ``method``, ``parts`` below the path, ``json()``) and returns the JSON-able answer, or
    ``ngxsim.ApiAnswer(status, body)``, or raises ``ngxsim.ApiError(status, text, code=...)``
    (answered with NGINX Plus's error body). ``writes`` names the methods besides GET and HEAD
    the section takes; they reach it only under ``api write=on``. Answer from shared memory, so
    every worker answers the instance's counts. Two modules claiming one path fail the load.

    For example::

        @hookimpl
        def ngxsim_api_sections(config):
            return ApiSection("hello", lambda request: {"greeted": request.runtime.stash["hello"]["greeted"]})
    """
