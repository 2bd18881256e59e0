"""The plugin manager: one per loaded configuration, made here, never a module global.

``load_module NAME;`` resolves NAME as an entry point in the ``ngxsim`` group first (how
installed modules, first-party ones included, announce themselves), then as a dotted import
path (handy for a module that lives in a project or test tree).
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import sys
import types
from contextlib import contextmanager
from typing import Iterable, Iterator

import pluggy

from .. import hookspecs
from .trace import install as install_trace
from .trace import trace_call, tracing

ENTRY_POINT_GROUP = "ngxsim"

# Modules every configuration has, whatever it loads: the core's own directives and HTTP core.
BUILTIN_MODULES = (("core", "ngxsim.core.http.core_module"),)


def create_plugin_manager() -> pluggy.PluginManager:
    """A fresh plugin manager with ngxsim's hookspecs and the built-in modules registered.

    With ``NGXSIM_TRACE_HOOKS=1`` in the environment every hook call is written to stderr, one
    short line each (see ``trace.py``).
    """
    pm = pluggy.PluginManager("ngxsim")
    pm.add_hookspecs(hookspecs)
    for name, dotted in BUILTIN_MODULES:
        pm.register(importlib.import_module(dotted), name=name)
    if tracing():
        install_trace(pm)
    return pm


def call_impl(impl, **kwargs):
    """Call one hook implementation by itself, with the arguments it declares.

    The core does this where it needs what a plain hook call cannot give: each module's answer
    attributed to it (directives), nginx's module order (postconfiguration), or one module's
    failure kept from the others (event delivery). Traced like a hook call under
    ``NGXSIM_TRACE_HOOKS``.
    """
    args = [kwargs[name] for name in impl.argnames]
    if tracing():
        hook = impl.opts.get("specname") or impl.function.__name__
        return trace_call(hook, impl.plugin_name, impl.function, {n: kwargs[n] for n in impl.argnames}, args)
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


def check_module(pm: pluggy.PluginManager, name: str, plugin: object) -> list[str]:
    """Check a module's hook implementations before it is registered; returns warnings.

    pluggy reports a wrong argument name with a long traceback (``PluginValidationError``) and
    says nothing of a function named like a hook but not marked ``@hookimpl`` (never called).
    Raises ValueError with a one-line message naming the hook and the fix; the caller adds
    the module's ``load_module`` line.
    """
    specs = {hook: caller.spec for hook, caller in vars(pm.hook).items() if caller.spec is not None}
    warnings = []
    for attr in sorted(dir(plugin)):
        function = getattr(plugin, attr, None)
        opts = pm.parse_hookimpl_opts(plugin, attr)
        if opts is None:
            if attr in specs and callable(function):
                warnings.append(f'module "{name}": function "{attr}" is named like a hook but is not marked '
                                f'@ngxsim.hookimpl, so it is never called: add @hookimpl above it')
            continue
        hook = opts.get("specname") or attr  # @hookimpl(specname=...) implements a hook under another name
        spec = specs.get(hook)
        if spec is None:
            close = difflib.get_close_matches(hook, list(specs), n=1)
            hint = f'did you mean "{close[0]}"?' if close else "see docs/hooks.md for the hooks there are"
            raise ValueError(f'module "{name}": "{hook}" is marked @hookimpl but is no ngxsim hook; {hint}')
        asked = pluggy.HookImpl(plugin, name, function, opts).argnames
        unknown = [arg for arg in asked if arg not in spec.argnames]
        if unknown:
            wrong = ", ".join(f'"{arg}"' for arg in unknown)
            raise ValueError(f'module "{name}": hook "{hook}" asks for argument {wrong}, which the hook does not '
                             f'pass; name them from ({", ".join(spec.argnames)})')
    return warnings


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


_ABSENT = object()  # a parent package had no attribute of that name


@contextmanager
def fresh_imports(names: Iterable[str]) -> Iterator[None]:
    """Inside the block, the modules ``names`` and their submodules are imported anew from their
    files (``ngxsim -c`` reloads module code on SIGHUP this way); if the block raises, the
    modules imported before are put back, so the running config's code stays what it was.
    ngxsim's own modules are never re-imported (their state is the running server's)."""
    prefixes = tuple(n for n in names if n != "ngxsim" and not n.startswith("ngxsim."))

    def ours(key: str) -> bool:
        return any(key == p or key.startswith(p + ".") for p in prefixes)

    # The old modules themselves are left untouched by the new import (they are out of
    # sys.modules, so the import machinery binds new submodules on the new parents); what it does
    # change is the attribute a parent package that is *not* imported anew has for each of the
    # modules (``ngxsim_plugins.upstreams``). Those are put back as they were, never rebuilt from
    # the submodule names: a package may bind a name to something else than its submodule of
    # that name (``from .state import state``), and rebinding it broke the next worker respawn.
    parents = {}
    for name in prefixes:
        parent, _, child = name.rpartition(".")
        if parent and not ours(parent) and parent in sys.modules:
            parents[(parent, child)] = vars(sys.modules[parent]).get(child, _ABSENT)
    saved = {key: sys.modules.pop(key) for key in [k for k in sys.modules if ours(k)]}
    importlib.invalidate_caches()  # a module file added since the last import is found
    try:
        yield
    except BaseException:
        for key in [k for k in sys.modules if ours(k)]:
            del sys.modules[key]
        sys.modules.update(saved)
        for (parent, child), value in parents.items():
            if value is _ABSENT:
                vars(sys.modules[parent]).pop(child, None)
            else:
                setattr(sys.modules[parent], child, value)
        raise
