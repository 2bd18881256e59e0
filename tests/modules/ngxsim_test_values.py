"""A test module declaring one directive of each value type, with and without inheritance."""

from ngxsim import FLAG, HTTP, LOCATION, NUMBER, SERVER, SIZE, STRING, TIME, Directive, hookimpl


@hookimpl
def ngxsim_directives(register):
    levels = (HTTP, SERVER, LOCATION)
    register(Directive("t_size", levels, 1, type=SIZE, default=0))
    register(Directive("t_time", levels, 1, type=TIME, default=1.0))
    register(Directive("t_number", levels, 1, type=NUMBER, default=7))
    register(Directive("t_flag", levels, 1, type=FLAG, default=False))
    register(Directive("t_switch", (LOCATION,), 0, type=FLAG, default=False))
    register(Directive("t_string", levels, 1, type=STRING, default="dflt"))
    register(Directive("t_local", levels, 1, type=STRING, default="none", inherit=False))
    register(Directive("t_list", levels, (1, None), multiple=True, default=[], parse=list))
