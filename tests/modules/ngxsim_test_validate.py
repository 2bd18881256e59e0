"""A test module whose postconfiguration rejects a value, naming the line."""

from ngxsim import LOCATION, Directive, hookimpl


@hookimpl
def ngxsim_directives(register):
    register(Directive("t_even", (LOCATION,), 1, type="number", default=0))


@hookimpl
def ngxsim_postconfiguration(config):
    for loc in config.blocks(LOCATION):
        if loc["t_even"] % 2:
            raise loc.error("t_even", f'"t_even" must be even, not {loc["t_even"]}')
