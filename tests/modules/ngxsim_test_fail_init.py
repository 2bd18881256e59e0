"""Test module: ``fail_init_master on;`` (main) makes its ``ngxsim_init_master`` raise — a start or
reload that fails after the modules loaded before it ran their own ``ngxsim_init_master``."""

from ngxsim import FLAG, MAIN, Directive, hookimpl


@hookimpl
def ngxsim_directives(register):
    register(Directive("fail_init_master", (MAIN,), 1, type=FLAG, default=False))


@hookimpl
def ngxsim_init_master(runtime):
    if runtime.config.main["fail_init_master"]:
        raise RuntimeError("fail_init_master is on")
