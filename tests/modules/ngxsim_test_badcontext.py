"""A test module declaring a directive for a context that is no context name ("Location")."""

from ngxsim import Directive, hookimpl


@hookimpl
def ngxsim_directives(register):
    register(Directive("t_where", ("Location",), 1))
