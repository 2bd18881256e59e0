"""See ngxsim_test_order: module "a" (plain), with its directives and $test_order."""
from ngxsim import hookimpl
from ngxsim_test_order import extra_handlers, make, ngxsim_directives, ngxsim_variables  # noqa: F401

_tracing = make("a")  # a marked function is still a plain function


@hookimpl
def ngxsim_phase_handlers(block, config):
    return _tracing(block, config) + extra_handlers(block, config)
