"""A test module that declares a directive the core already has."""

from ngxsim import SERVER, Directive, hookimpl


@hookimpl
def ngxsim_directives(register):
    register(Directive("listen", (SERVER,), 1))
