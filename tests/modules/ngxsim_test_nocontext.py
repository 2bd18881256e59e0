"""A test module declaring a directive for a context nothing opens (a typo of "location")."""

from ngxsim import Directive, hookimpl


@hookimpl
def ngxsim_directives(register):
    register(Directive("t_where", ("locaton",), 1))
