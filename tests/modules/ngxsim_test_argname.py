"""A test module whose hook implementation asks for an argument the hook does not pass."""

from ngxsim import hookimpl


@hookimpl
def ngxsim_postconfiguration(conf):  # the hook passes "config"
    pass
