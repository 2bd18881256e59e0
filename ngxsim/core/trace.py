"""``NGXSIM_TRACE_HOOKS=1``: one short line on stderr per hook call, for a person to read.

    ngxsim: [trace] pid=4242 ngxsim_publish (worker_events) 0.031ms runtime=<Runtime worker pid=4242> zone='bus' channel='hello' type='greeted' payload='Ada' -> 7

pid, hook, the module(s) whose implementations the call ran (in pluggy's order: the last loaded
first; a call no module implements writes nothing), how long it took, the arguments
(each repr cut to ``MAX_ARG`` characters, a function shown by its name) and the result (or the
exception) — the whole line at most ``MAX_LINE`` characters, written with one ``write`` so lines
of concurrent threads and workers do not interleave. pluggy's own tracing prints nested blocks
with every argument's full repr (a configuration is thousands of characters) and no pid.
"""

from __future__ import annotations

import os
import sys
import threading
import time

TRACE_ENV = "NGXSIM_TRACE_HOOKS"
MAX_LINE = 200
MAX_ARG = 80


def tracing() -> bool:
    """Whether hook calls are traced to stderr (``NGXSIM_TRACE_HOOKS`` set in the environment)."""
    return bool(os.environ.get(TRACE_ENV))


def _short(value: object, limit: int = MAX_ARG) -> str:
    if callable(value) and hasattr(value, "__name__") and not isinstance(value, type):
        text = f"<fn {value.__name__}>"
    else:
        try:
            text = repr(value)
        except Exception as exc:  # a repr that fails must not break the call it traces
            text = f"<repr failed: {type(exc).__name__}>"
    if len(text) <= limit:
        return text
    head = limit // 3  # keep both ends: a repr's tail (a file's line, a closing field) tells most
    return text[:head] + "…" + text[len(text) - (limit - head - 1):]


def trace_line(hook: str, modules: list[str], seconds: float, kwargs: dict, result: object = None,
               error: BaseException | None = None) -> str:
    head = f"ngxsim: [trace] pid={os.getpid()} {hook} ({','.join(modules) or '-'}) {seconds * 1000:.3f}ms"
    if error is not None:
        tail = f" raised {_short(error, 60)}"
    elif result is not None and result != []:
        tail = f" -> {_short(result, 60)}"
    else:
        tail = ""
    args = "".join(f" {name}={_short(value)}" for name, value in kwargs.items())
    room = MAX_LINE - len(head) - len(tail)  # the result stays whole: the arguments give way
    if len(args) > room:
        args = args[:max(room - 1, 0)] + "…"
    return (head + args + tail)[:MAX_LINE]


def write(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def trace_call(hook: str, module: str, function, kwargs: dict, args: list):
    """Call ``function(*args)`` (one module's implementation) and trace it."""
    start = time.perf_counter()
    try:
        result = function(*args)
    except BaseException as exc:
        write(trace_line(hook, [module], time.perf_counter() - start, kwargs, error=exc))
        raise
    write(trace_line(hook, [module], time.perf_counter() - start, kwargs, result))
    return result


def install(pm) -> None:
    """Trace every call made through ``pm.hook`` (pluggy's monitoring: before/after each call)."""
    starts = threading.local()

    def before(hook_name, hook_impls, kwargs):
        stack = getattr(starts, "stack", None)
        if stack is None:
            stack = starts.stack = []
        stack.append(time.perf_counter())

    def after(outcome, hook_name, hook_impls, kwargs):
        seconds = time.perf_counter() - starts.stack.pop()
        if not hook_impls:
            return  # no module implements it: nothing ran, nothing to say
        modules = [impl.plugin_name for impl in reversed(hook_impls)]  # in the order pluggy calls them
        write(trace_line(hook_name, modules, seconds, kwargs, *((None, outcome.exception) if outcome.exception
                                                               else (outcome.get_result(), None))))

    pm.add_hookcall_monitoring(before, after)
