"""map: nginx's ``ngx_http_map_module`` on ngxsim's public API.

``map SOURCE $VARIABLE { ... }`` (http) declares ``$VARIABLE``, whose value depends on SOURCE (a
string with variables). Inside the block, as in nginx: ``KEY VALUE;`` lines (an exact key,
matched without regard to case; ``~regex`` case-sensitive, ``~*regex`` caseless, tried in order
and setting ``$1``..``$9`` and named captures for the value and for what follows; ``\\`` escapes
a key starting with ``~``), ``default VALUE;`` (else the empty string), ``hostnames;`` (keys may
be ``*.example.com``, ``.example.com``, ``mail.*``; a trailing dot of SOURCE is ignored),
``volatile;`` (evaluated at each use instead of once per request), and ``include FILE;``. Values
may contain variables. The order of precedence is nginx's: an exact key, the longest leading
wildcard, the longest trailing wildcard, the first matching regex, the default.

How it maps onto ngxsim: the block is a data block (``Directive(data=...)``) whose callable
also gets the ``map`` line's own statement (its SOURCE and VARIABLE); ``ngxsim_postconfiguration``
adds each variable with ``config.variables.add(..., changeable=True)`` (nginx's
``ngx_http_add_variable`` with ``NGX_HTTP_VAR_CHANGEABLE``: a second map of one variable
replaces the first). Not loaded by default: ``load_module map;``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ngxsim import HTTP, Directive, Regex, Template, Variable, hookimpl

NAME = "map"


@dataclass
class MapSpec:
    source: Template
    variable: str
    hostnames: bool = False
    volatile: bool = False
    exact: dict[str, Template] = field(default_factory=dict)
    # leading wildcards: (".example.com", value, whether "example.com" itself matches: the ".x" form)
    heads: list[tuple[str, Template, bool]] = field(default_factory=list)
    tails: list[tuple[str, Template]] = field(default_factory=list)  # "mail." (trailing wildcards)
    regexes: list[tuple[Regex, Template]] = field(default_factory=list)
    default: Template | None = None

    def find(self, ctx, subject: str) -> Template | None:
        """``ngx_http_map_find``: what SOURCE's value maps to (None: the default)."""
        low = subject.lower()
        found = self.exact.get(low)
        if found is not None:
            return found
        if self.hostnames and low:
            for suffix, value, bare in self.heads:  # longest first
                if low.endswith(suffix) or bare and "." + low == suffix:
                    return value
            for prefix, value in self.tails:
                if low.startswith(prefix):
                    return value
        for regex, value in self.regexes:
            captures = regex.search(subject)
            if captures is not None:
                ctx.record([captures])  # nginx: the map's regex sets $1.. and its named captures
                return value
        return None

    def value(self, ctx) -> str:
        cache = ctx.stash.setdefault(NAME, {})
        if not self.volatile and self.variable in cache:
            return cache[self.variable]
        subject = self.source.render(ctx)
        if self.hostnames and subject.endswith("."):
            subject = subject[:-1]
        template = self.find(ctx, subject) or self.default
        result = template.render(ctx) if template is not None else ""
        if not self.volatile:
            cache[self.variable] = result
        return result


def _key_error(stmt, key: str):
    return stmt.error(f'invalid hostname or wildcard "{key}"')


def _add_hostname(spec: MapSpec, stmt, key: str, value: Template) -> bool:
    """A wildcard key of a ``hostnames`` map (False: not a wildcard, an exact key)."""
    if "*" not in key and not key.startswith("."):
        return False
    if key.startswith("*."):
        if "*" in key[1:]:
            raise _key_error(stmt, key)
        spec.heads.append((key[1:].lower(), value, False))
    elif key.startswith("."):
        if "*" in key:
            raise _key_error(stmt, key)
        spec.heads.append((key.lower(), value, True))
    elif key.endswith(".*"):
        if "*" in key[:-1]:
            raise _key_error(stmt, key)
        spec.tails.append((key[:-1].lower(), value))
    else:
        raise _key_error(stmt, key)
    return True


def _parse_map(statements, statement) -> MapSpec:
    """The map's block, line by line as ``ngx_http_map`` reads it."""
    source, variable = statement.args
    if not variable.startswith("$"):
        raise statement.error(f'invalid variable name "{variable}"')
    spec = MapSpec(Template(source), variable[1:].lower())
    for stmt in statements:
        if stmt.block is not None:
            raise stmt.error("invalid number of the map parameters")
        words = [stmt.name, *stmt.args]
        if len(words) == 1 and stmt.name in ("hostnames", "volatile"):
            setattr(spec, stmt.name, True)
            continue
        if len(words) != 2:
            raise stmt.error("invalid number of the map parameters")
        key, text = words
        try:
            value = Template(text)
        except ValueError as exc:
            raise stmt.error(str(exc)) from None
        if key == "default":
            if spec.default is not None:
                raise stmt.error("duplicate default map parameter")
            spec.default = value
            continue
        if key.startswith("~"):
            caseless = key.startswith("~*")
            try:
                spec.regexes.append((Regex(key[2:] if caseless else key[1:], caseless=caseless), value))
            except ValueError as exc:
                raise stmt.error(str(exc)) from None
            continue
        if key.startswith("\\"):
            key = key[1:]
        if spec.hostnames and _add_hostname(spec, stmt, key, value):
            continue
        if key.lower() in spec.exact:
            raise stmt.error(f'conflicting parameter "{key.lower()}"')  # nginx lowercased the key in place
        spec.exact[key.lower()] = value
    spec.heads.sort(key=lambda item: -len(item[0]))
    spec.tails.sort(key=lambda item: -len(item[0]))
    return spec


@hookimpl
def ngxsim_directives(register):
    register(Directive("map", (HTTP,), 2, data=_parse_map, multiple=True, default=[]))


@hookimpl
def ngxsim_postconfiguration(config):
    for http in config.blocks(HTTP):
        for spec, where in zip(http["map"], http.statements_of("map")):
            config.variables.add(Variable(spec.variable, spec.value), NAME, where, changeable=True)
