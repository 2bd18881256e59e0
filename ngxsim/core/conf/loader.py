"""Load a configuration: parse, load the modules it names, check every directive, merge.

The order is nginx's: ``load_module`` lines are resolved first (they decide which directives
exist), then every statement is checked against the directive table, values are merged from
outer to inner contexts, and each module validates its part (``ngxsim_postconfiguration``).
Nothing here touches shared memory or sockets: ``ngxsim -t`` runs all of it.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any, Iterator

import pluggy

from ..events import Subscription, collect_subscriptions, declare_once_zone
from ..http import phases
from ..http.variables import VariableTable, module_variables
from ..modules import call_impl, check_module, create_plugin_manager, load_module
from .directive import LOCATION, MAIN, SERVER, Directive, DirectiveTable
from .errors import ConfigError
from .parser import SOURCES, Sources, Statement, parse_file, parse_text
from .zones import JobSpecs, ZoneSpecs


class Block:
    """One context of the configuration (main, an ``http``, a ``server``, a ``location``).

    ``block["name"]`` is the effective value of a directive here: set at this level, else
    inherited from the enclosing one (when the directive inherits), else its default.
    Hooks get blocks from ``config.blocks(context)`` and as the ``location`` argument.

    Attributes:
        context (str): ``"main"``, ``"http"``, ``"server"``, ``"location"``, or a context a
            module's block directive opens (``"upstream"``).
        value: what the opening directive's arguments parsed to (a location's match spec, an
            upstream's name); None for ``main`` and ``http``.
        parent (Block | None): the enclosing block (None for ``main``).
        children (list[Block]): the blocks directly inside this one, in file order.
        own (dict): the values of the directives set at this very level, by name.
        where_each (dict): for a directive that may repeat (``multiple``), the statement of each
            of its values in ``own``, in the same order (errors about one of them point there).
        effective (dict): every directive's effective value here (what ``block[name]`` reads).
        statement: the directive line that opened the block (``statement.file``,
            ``statement.line``; ``statement.error(message)`` makes a ``ConfigError`` there);
            None for ``main``.
        stash (dict): per-block data modules compute at load, by module name
            (``block.stash["hello"]``); read it in the handlers made for that block.
    """

    def __init__(self, context: str, statement: Statement | None, parent: "Block | None", value: Any = None):
        self.context = context
        self.statement = statement
        self.parent = parent
        self.value = value  # what the opening directive's arguments parsed to (e.g. a location spec)
        self.children: list[Block] = []
        self.own: dict[str, Any] = {}
        self.where: dict[str, Statement] = {}
        self.where_each: dict[str, list[Statement]] = {}  # a ``multiple`` directive's every line
        self.effective: dict[str, Any] = {}
        self.stash: dict[str, Any] = {}  # per-block data modules compute at load (by module name)

    def __getitem__(self, name: str) -> Any:
        return self.effective[name]

    def get(self, name: str, default: Any = None) -> Any:
        """The effective value of ``name`` here, or ``default`` when no loaded module declares it
        for this context."""
        return self.effective.get(name, default)

    def is_set(self, name: str) -> bool:
        """Set at this level or inherited from one that set it (not just the default)."""
        return self.where_of(name) is not None

    def statements_of(self, name: str) -> list[Statement]:
        """Every statement that set ``name`` at this very level, in file order (one per
        occurrence of a ``multiple`` directive, so a check of the 2nd names its own line)."""
        if name in self.where_each:
            return list(self.where_each[name])
        return [self.where[name]] if name in self.where else []

    def where_of(self, name: str) -> Statement | None:
        """The statement that gave ``name`` its effective value here, if any did."""
        block: Block | None = self
        while block is not None:
            if name in block.where:
                return block.where[name]
            block = block.parent
        return None

    def error(self, name: str | None, message: str) -> ConfigError:
        """A ConfigError at the line that set ``name`` (or the block's own line)."""
        stmt = self.where_of(name) if name else None
        stmt = stmt or self.statement
        if stmt is None:
            return ConfigError(message)
        return stmt.error(message)

    def walk(self) -> Iterator["Block"]:
        """This block and every block inside it, depth first, in file order."""
        yield self
        for child in self.children:
            yield from child.walk()

    def __repr__(self) -> str:
        where = f" {self.statement.file}:{self.statement.line}" if self.statement else ""
        return f"<Block {self.context}{where}>"


@dataclass
class Configuration:
    """A checked, merged configuration and the modules it loaded (one plugin manager each).

    The ``config`` argument of the configuration hooks; in a worker, ``runtime.config``. It is
    complete once ``ngxsim_postconfiguration`` has run for every module: treat it as read-only
    after that (every worker has its own copy).

    Attributes:
        path (str): the file the configuration was read from (``"<embedded default.conf>"``
            for the default).
        main (Block): the ``main`` context; ``main.walk()`` visits every block.
        zones (ZoneSpecs): the shared-memory zones declared so far; modules declare theirs in
            ``ngxsim_postconfiguration`` with ``config.zones.declare(...)``.
        jobs (JobSpecs): the instance-wide periodic jobs declared so far
            (``config.jobs.declare(...)``), run by one live worker at a time.
        stash (dict): per-configuration data modules compute at load, by module name
            (``config.stash["hello"]``): what every worker needs and the config decides.
        modules (list[tuple[str, object]]): ``(name, module object)`` of the loaded modules,
            in ``load_module`` order (the core first).
        warnings (list[str]): nginx's ``[warn]`` lines for what the config has but is ignored;
            ``ngxsim -t`` prints them, a starting server logs them.
    """

    path: str
    main: Block
    table: DirectiveTable
    pm: pluggy.PluginManager
    modules: list[tuple[str, object]]
    zones: ZoneSpecs = field(default_factory=ZoneSpecs)
    # query arguments whose values the access log writes as *** (e.g. worker_events' key)
    secret_args: set[str] = field(default_factory=set)
    stash: dict[str, Any] = field(default_factory=dict)
    variables: VariableTable = field(default_factory=VariableTable)
    # nginx's [warn] lines for what it accepts but ignores (a conflicting server name): `ngxsim -t`
    # prints them, a starting server logs them
    warnings: list[str] = field(default_factory=list)
    # instance-wide periodic jobs modules declared (run by one live worker at a time)
    jobs: "JobSpecs" = field(default_factory=lambda: JobSpecs())
    # module -> what its ngxsim_event_subscriptions asked for (None: every zone), for each module
    # implementing ngxsim_event or ngxsim_event_gap, in load order; checked at load
    subscriptions: dict[str, "list[Subscription] | None"] = field(default_factory=dict)
    # (zone, module, statement or None) of each config.publishes(...), checked with the subscriptions
    publications: list[tuple[str, str, Statement | None]] = field(default_factory=list)
    # what the load read (its arguments, every file's text, every include glob's matches):
    # ``load_again(config.source)`` loads the same configuration in another process
    source: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:  # short: it is an argument of many hooks, and shows in traces
        return f"<Configuration {self.path}>"

    @property
    def hook(self):
        """pluggy's hook caller of this configuration's modules (``config.hook.ngxsim_x(...)``)."""
        return self.pm.hook

    def blocks(self, context: str) -> list[Block]:
        """Every block of ``context`` (``"location"``, ``"server"``...), in file order."""
        return [b for b in self.main.walk() if b.context == context]

    @property
    def worker_processes(self) -> int:
        """The ``worker_processes`` value (``ngxsim -c`` starts that many workers)."""
        return self.main["worker_processes"]

    def publishes(self, zone: str, module: str, where: Statement | None = None) -> None:
        """Say, in ``ngxsim_postconfiguration``, that ``module`` publishes into the event zone
        ``zone``. The core checks it once every module's postconfiguration ran (so the order of
        the ``load_module`` lines does not matter): no module that publishes events, or a zone
        none of them declares, fails the load with the fix, at ``where`` (a statement, e.g.
        ``block.where_of("my_zone")``) or at the module's ``load_module`` line."""
        self.publications.append((zone, module, where))

    def module_names(self) -> list[str]:
        """The names of the loaded modules, in load order (``"core"`` first)."""
        return [name for name, _ in self.modules]


# where nginx says directives given with -g are: "... in command line"
PARAMS_FILE = "command line"


def parse_params(params: str) -> list[Statement]:
    """nginx's ``-g DIRECTIVES``: main-context statements, reported ``in command line``."""
    try:
        tree = parse_text(params, PARAMS_FILE)
    except ConfigError as exc:
        message = exc.message.replace('end of file, expecting ";" or "}"', 'end of parameter, expecting ";"')
        raise ConfigError(message.replace("end of file", "end of parameter"), PARAMS_FILE) from None
    stack = list(tree)
    while stack:  # no line numbers: nginx names the command line only
        st = stack.pop()
        st.line = None
        stack.extend(st.block or [])
    return tree


def load_configuration(path: str | None = None, text: str | None = None, params: str | None = None,
                       params_replace: bool = False) -> Configuration:
    """Load the config in file ``path`` (or ``text``, named ``path`` in errors).

    ``params``: directives given on the command line (``-g``), read before the file as nginx
    does, so one the file sets again is "duplicate" there. With ``params_replace`` they replace
    the file's main-context statements of the same name instead (the embedded default's
    ``worker_processes`` is a default, not a choice)."""
    if text is None:
        if path is None:
            raise ValueError("load_configuration needs a path or a text")
        path = os.path.abspath(path)
    else:
        path = path or "<string>"
    sources = SOURCES.get()
    if sources is not None:  # loaded again (load_again): read what the first load read
        return _load(path, text, params, params_replace, sources)
    sources = Sources()
    token = SOURCES.set(sources)
    try:
        return _load(path, text, params, params_replace, sources)
    finally:
        SOURCES.reset(token)


def load_again(source: dict) -> Configuration:
    """The configuration ``config.source`` describes, loaded anew from what its first load read
    (files, include globs, ``-g`` directives), not from the disk: what a service's own process
    serves (``ngxsim/core/helper.py``). Its modules are imported in this process."""
    sources = Sources(dict(source["files"]), {k: list(v) for k, v in source["globs"].items()}, replay=True)
    token = SOURCES.set(sources)
    try:
        return load_configuration(source["path"], source["text"], source["params"], source["params_replace"])
    finally:
        SOURCES.reset(token)


def _load(path: str, text: str | None, params: str | None, params_replace: bool, sources: Sources) -> Configuration:
    given = parse_params(params) if params else []
    try:
        tree = _with_params(parse_file(path) if text is None else parse_text(text, path), given, params_replace)
    except ConfigError as exc:
        if exc.partial is None:
            raise
        # nginx runs each directive as it reads it: a mistake in one read before the syntax
        # error is what it reports
        earlier = _first_directive_error(_with_params(exc.partial, given, params_replace))
        raise (earlier or exc) from None

    pm, modules, loaded_at, warnings, table, variables = _load_modules(tree)
    with module_variables(variables):  # values that name module variables compile now
        main = Block(MAIN, None, None)
        _build(tree, main, table)
        _merge(main, table)
        config = Configuration(path=path, main=main, table=table, pm=pm, modules=modules, variables=variables,
                               warnings=warnings)
        config.source = {"path": path, "text": text, "params": params, "params_replace": params_replace,
                         "files": sources.files, "globs": sources.globs}
        # nginx's order: the core first, then modules in the order of their load_module lines, so
        # a module can rely on what the modules loaded before it declared (e.g. their zones)
        rank = {name: i for i, (name, _) in enumerate(modules)}
        for impl in sorted(pm.hook.ngxsim_postconfiguration.get_hookimpls(), key=lambda i: rank[i.plugin_name]):
            call_impl(impl, config=config)
        unknown = variables.unknown()  # nginx's last check of the values: every variable they name exists
        if unknown:
            raise _unknown_variable(tree, unknown)
        config.subscriptions = collect_subscriptions(config, loaded_at)
        declare_once_zone(config)
        config.jobs.declare_zone(config.zones)
        for block in config.blocks(SERVER):
            block.stash["core.phases"] = _phase_handlers(block, config, loaded_at)
        for loc in config.blocks(LOCATION):
            loc.stash["core.handler"] = pm.hook.ngxsim_content_handler(location=loc, config=config)
            loc.stash["core.phases"] = _phase_handlers(loc, config, loaded_at)
            # pluggy calls the last registered first: per-location filters run in load order
            for phase, hook in (("core.body_filters", pm.hook.ngxsim_body_filter),
                                ("core.filters", pm.hook.ngxsim_header_filter)):
                loc.stash[phase] = [f for f in reversed(hook(location=loc, config=config)) if f is not None]
    return config


def _with_params(tree: list[Statement], given: list[Statement], replace: bool) -> list[Statement]:
    """The file's statements after the ``-g`` ones (or, with ``replace``, in place of the
    file's main-context statements of the same names)."""
    if replace:
        names = {st.name for st in given}
        tree = [st for st in tree if st.name not in names]
    return given + tree


def _first_directive_error(partial: list[Statement]) -> ConfigError | None:
    """The first error nginx would report among the statements read before a syntax error
    (modules loaded, each directive checked in file order), or None."""
    try:
        _, _, _, _, table, variables = _load_modules(partial)
        with module_variables(variables):
            _build(partial, Block(MAIN, None, None), table)
    except ConfigError as exc:
        return exc
    return None


def _load_modules(tree: list[Statement]):
    """The ``load_module`` lines of ``tree`` resolved, and what the loaded modules declare:
    ``(pm, modules, loaded_at, warnings, table, variables)``."""
    pm = create_plugin_manager()
    modules = [("core", pm.get_plugin("core"))]
    loaded_at: dict[str, Statement] = {}  # module -> its load_module line, where its mistakes are reported
    warnings: list[str] = []
    for stmt in tree:
        if stmt.name == "load_module" and stmt.block is None:
            if len(stmt.args) != 1:
                raise stmt.error('invalid number of arguments in "load_module" directive')
            name = stmt.args[0]
            if pm.get_plugin(name) is not None:
                raise stmt.error(f'module "{name}" is already loaded')
            try:
                plugin = load_module(name)
                warnings += [f"{w} in {stmt.file}:{stmt.line}" for w in check_module(pm, name, plugin)]
                pm.register(plugin, name=name)
            except (LookupError, ValueError) as exc:
                raise stmt.error(str(exc)) from None
            except pluggy.PluginValidationError as exc:  # what check_module does not foresee: one line
                raise stmt.error(f'module "{name}" failed validation: {" ".join(str(exc).split())}') from None
            modules.append((name, plugin))
            loaded_at[name] = stmt

    def module_error(impl, exc: Exception) -> ConfigError:
        message = f'module "{impl.plugin_name}" ({impl.function.__name__}): {exc}'
        where = loaded_at.get(impl.plugin_name)
        return where.error(message) if where else ConfigError(message)

    table = DirectiveTable()
    for impl in pm.hook.ngxsim_directives.get_hookimpls():
        try:  # a Directive that cannot be (unknown context, type, a default that does not fit)
            call_impl(impl, register=table.registrar(impl.plugin_name))
        except (ValueError, TypeError) as exc:
            raise module_error(impl, exc) from None
    table.freeze(loaded_at)
    variables = VariableTable()
    for impl in pm.hook.ngxsim_variables.get_hookimpls():
        try:
            call_impl(impl, register=variables.registrar(impl.plugin_name))
        except ValueError as exc:  # a duplicate: at the load_module line of the second module
            raise module_error(impl, exc) from None
    return pm, modules, loaded_at, warnings, table, variables


def _phase_handlers(block: Block, config: Configuration, loaded_at: dict[str, Statement]) -> dict:
    """Each phase's handlers for a server or location block; a module's wrong answer fails the
    load at its ``load_module`` line."""
    try:
        return phases.collect(block, config)
    except (ValueError, TypeError) as exc:
        module = str(exc).split('"')[1] if str(exc).startswith("module ") else ""
        where = loaded_at.get(module)
        raise where.error(str(exc)) if where else ConfigError(str(exc)) from None


def _unknown_variable(tree: list[Statement], names: set[str]) -> ConfigError:
    """nginx's ``unknown "x" variable`` for the first statement (in file order) whose arguments
    name one of ``names``. nginx itself says it without a place (it checks after parsing, in
    ngx_http_variables_init_vars); the line of the value that names it is where to look."""
    uses = re.compile(r"\$(?:\{(%s)\}|(%s)(?![A-Za-z0-9_]))" % (("|".join(map(re.escape, sorted(names))),) * 2))
    stack = list(reversed(tree))
    while stack:
        stmt = stack.pop()
        for arg in stmt.args:
            found = uses.search(arg)
            if found:
                return stmt.error(f'unknown "{found.group(1) or found.group(2)}" variable')
        stack.extend(reversed(stmt.block or []))
    return ConfigError(f'unknown "{min(names)}" variable')  # named by no value as written: a module's own


# nginx's own contexts nest four deep (main, http, server, location); a module's block directive
# could nest itself. The bound keeps every walk over the tree far from Python's recursion limit.
MAX_BLOCK_DEPTH = 32


def _build(stmts: list[Statement], block: Block, table: DirectiveTable, depth: int = 0) -> None:
    for st in stmts:
        d: Directive | None = table.get(st.name, block.context)
        if d is None:
            unsupported = table.not_supported(st.name, block.context)
            if unsupported is not None:
                raise st.error(unsupported.message())
            if table.get(st.name) is None:
                raise st.error(f'unknown directive "{st.name}"')
            raise st.error(f'"{st.name}" directive is not allowed here')
        has_block = d.block is not None or d.data is not None
        if has_block and st.block is None:
            raise st.error(f'directive "{st.name}" has no opening "{{"')
        if not has_block and st.block is not None:
            raise st.error(f'directive "{st.name}" is not terminated by ";"')
        if not d.accepts(len(st.args)):
            raise st.error(f'invalid number of arguments in "{st.name}" directive')
        st.parent = block.statement
        for inner in st.block or ():
            inner.parent = st
        try:
            value = d.block_value(st.block, st) if d.data is not None else d.value(st.args, st)
        except ValueError as exc:
            raise st.error(str(exc)) from None
        if d.block:
            if not d.multiple and st.name in block.where:
                raise st.error(f'"{st.name}" directive is duplicate')
            if depth >= MAX_BLOCK_DEPTH:
                raise st.error(f'"{st.name}" block is nested deeper than {MAX_BLOCK_DEPTH} levels')
            block.where.setdefault(st.name, st)
            child = Block(d.block, st, block, value)
            block.children.append(child)
            _build(st.block or [], child, table, depth + 1)
        elif d.multiple:
            block.own.setdefault(st.name, []).append(value)
            block.where.setdefault(st.name, st)
            block.where_each.setdefault(st.name, []).append(st)
        else:
            if st.name in block.own:
                raise st.error(f'"{st.name}" directive is duplicate')
            block.own[st.name] = value
            block.where[st.name] = st


def _merge(block: Block, table: DirectiveTable) -> None:
    parent = block.parent
    for d in table.in_context(block.context):
        if d.block:
            continue
        if d.name in block.own:
            block.effective[d.name] = block.own[d.name]
        elif d.inherit and parent is not None and d.name in parent.effective:
            block.effective[d.name] = parent.effective[d.name]
        else:
            block.effective[d.name] = d.default
    for child in block.children:
        _merge(child, table)
