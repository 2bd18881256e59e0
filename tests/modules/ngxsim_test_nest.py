"""A test module with a block directive that may nest in itself (as a third-party module could)."""

from ngxsim import LOCATION, SERVER, Directive, hookimpl


@hookimpl
def ngxsim_directives(register):
    register(Directive("t_nest", (SERVER, LOCATION), 0, block=LOCATION, multiple=True))
