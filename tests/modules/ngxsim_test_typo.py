"""A test module whose hook name has a typo: loading it must fail loudly."""

from ngxsim import hookimpl


@hookimpl
def ngxsim_postconfigration(config):  # sic
    pass
