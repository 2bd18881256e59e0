"""A test module whose directive default does not fit the directive's type."""

from ngxsim import HTTP, NUMBER, Directive, hookimpl


@hookimpl
def ngxsim_directives(register):
    register(Directive("t_count", (HTTP,), 1, type=NUMBER, default="ten"))
