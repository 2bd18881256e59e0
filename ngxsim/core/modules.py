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
import types
from contextlib import contextmanager
from typing import Iterable, Iterator

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


def plugin_module_name(plugin: object) -> str:
    """The dotted name of the Python module a loaded plugin is (or is defined in)."""
    if isinstance(plugin, types.ModuleType):
        return plugin.__name__
    return getattr(plugin, "__module__", None) or type(plugin).__module__


def plugin_module_names(modules: list[tuple[str, object]]) -> list[str]:
    """``plugin_module_name`` of each ``(name, plugin)`` of ``Configuration.modules``."""
    return [plugin_module_name(plugin) for _, plugin in modules]


@contextmanager
def fresh_imports(names: Iterable[str]) -> Iterator[None]:
    """Inside the block, the modules ``names`` and their submodules are imported anew from their
    files (``ngxsim -c`` reloads module code on SIGHUP this way); if the block raises, the
    modules imported before are put back, so the running config's code stays what it was.
    ngxsim's own modules are never re-imported (their state is the running server's)."""
    prefixes = tuple(n for n in names if n != "ngxsim" and not n.startswith("ngxsim."))

    def ours(key: str) -> bool:
        return any(key == p or key.startswith(p + ".") for p in prefixes)

    saved = {key: sys.modules.pop(key) for key in [k for k in sys.modules if ours(k)]}
    importlib.invalidate_caches()  # a module file added since the last import is found
    try:
        yield
    except BaseException:
        for key in [k for k in sys.modules if ours(k)]:
            del sys.modules[key]
        sys.modules.update(saved)
        for key, module in saved.items():  # a parent package's attribute names its submodule
            parent, _, child = key.rpartition(".")
            if parent in sys.modules:
                setattr(sys.modules[parent], child, module)
        raise
