"""Test module: an ``ngxsim_status`` contribution; ``status_test_fail on;`` makes it raise."""

from ngxsim import FLAG, MAIN, Directive, hookimpl


@hookimpl
def ngxsim_directives(register):
    register(Directive("status_test_fail", (MAIN,), 1, type=FLAG, default=False))


@hookimpl
def ngxsim_status(runtime):
    if runtime.config.main["status_test_fail"]:
        raise RuntimeError("the module's table is gone")
    return {"answer": 42, "label": "<b>bold</b>", "refreshed_msec": 0, "peers": [{"name": "a", "up": True}]}
