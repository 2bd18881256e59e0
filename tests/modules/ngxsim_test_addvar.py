"""Test module: ``test_alias $NEW TEXT;`` (http, multiple) declares ``$NEW`` once the config was
read (``config.variables.add``, nginx's ``ngx_http_add_variable``), whose value is TEXT with its
variables rendered; ``test_is_capture NAME;`` (http) records whether ``$NAME`` is a capture in
``config.stash``; ``test_where WORD;`` (location, multiple) parses with its statement."""

from __future__ import annotations

from ngxsim import ARGS, HTTP, Directive, Template, Variable, hookimpl


@hookimpl
def ngxsim_postconfiguration(config):
    for http in config.blocks(HTTP):
        for args, where in zip(http["test_alias"], http.statements_of("test_alias")):
            name, text = args[0].lstrip("$"), Template(args[1])
            config.variables.add(Variable(name, text.render), "ngxsim_test_addvar", where)
        if http["test_is_capture"]:
            config.stash["test_is_capture"] = config.variables.is_capture(http["test_is_capture"])


def _parse_with_statement(args, statement):
    """``test_where WORD;`` (location): the value says where it stands and in which block."""
    if args[0] == "bad":
        raise ValueError(f'bad "test_where" at line {statement.line}')
    return f"{args[0]}@{statement.line} in {statement.parent.name} {' '.join(statement.parent.args)}"


@hookimpl
def ngxsim_directives(register):
    register(Directive("test_alias", (HTTP,), 2, type=ARGS, multiple=True, default=[]))
    register(Directive("test_is_capture", (HTTP,), 1, default=None))
    register(Directive("test_where", ("location",), 1, parse=_parse_with_statement, multiple=True, default=[]))
