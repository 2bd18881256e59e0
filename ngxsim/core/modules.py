"""The plugin manager: one per loaded configuration, made here, never a module global.

``load_module NAME;`` resolves NAME as an entry point in the ``ngxsim`` group first (how
installed modules, first-party ones included, announce themselves), then as a dotted import
path (handy for a module that lives in a project or test tree).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import sys

import pluggy

from .. import hookspecs

ENTRY_POINT_GROUP = "ngxsim"
TRACE_ENV = "NGXSIM_TRACE_HOOKS"

# Modules every configuration has, whatever it loads: the core's own directives and HTTP core.
BUILTIN_MODULES = (("core", "ngxsim.core.http.core_module"),)


def create_plugin_manager() -> pluggy.PluginManager:
    """A fresh plugin manager with ngxsim's hookspecs and the built-in modules registered.

    With ``NGXSIM_TRACE_HOOKS=1`` in the environment every hook call is written to stderr.
    """
    pm = pluggy.PluginManager("ngxsim")
    pm.add_hookspecs(hookspecs)
    for name, dotted in BUILTIN_MODULES:
        pm.register(importlib.import_module(dotted), name=name)
    if os.environ.get(TRACE_ENV):
        pm.trace.root.setwriter(sys.stderr.write)
        pm.enable_tracing()
    return pm


def tracing() -> bool:
    """Whether hook calls are traced to stderr (``NGXSIM_TRACE_HOOKS`` set in the environment)."""
    return bool(os.environ.get(TRACE_ENV))


def call_impl(impl, **kwargs):
    """Call one hook implementation by itself, with the arguments it declares.

    The core does this where it needs what a plain hook call cannot give: each module's answer
    attributed to it (directives), nginx's module order (postconfiguration), or one module's
    failure kept from the others (event delivery). Traced like a hook call under
    ``NGXSIM_TRACE_HOOKS``.
    """
    args = [kwargs[name] for name in impl.argnames]
    if tracing():
        shown = ", ".join(f"{n}={kwargs[n]!r}" for n in impl.argnames)
        sys.stderr.write(f"{impl.function.__name__} [{impl.plugin_name}] {shown}\n")
    return impl.function(*args)


def load_module(name: str) -> object:
    """Resolve ``load_module NAME``: entry point first, dotted import path second.

    Raises LookupError with a message for the config error when neither finds it; an import
    error *inside* a module that exists is reported as such, not as "not found".
    """
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP, name=name):
        try:
            return ep.load()
        except Exception as exc:  # a broken installed module must say so, not vanish
            raise LookupError(f'module "{name}" (entry point {ep.value}) failed to load: {exc!r}') from None
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name and (name == exc.name or name.startswith(exc.name + ".")):
            raise LookupError(
                f'module "{name}" not found (no "{ENTRY_POINT_GROUP}" entry point and no importable module of that name)'
            ) from None
        raise LookupError(f'module "{name}" failed to import: {exc}') from None
    except Exception as exc:
        raise LookupError(f'module "{name}" failed to import: {exc!r}') from None


def installed_modules() -> list[tuple[str, str]]:
    """(name, target) of every module installed under the ``ngxsim`` entry-point group."""
    eps = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
    return sorted((ep.name, ep.value) for ep in eps)
