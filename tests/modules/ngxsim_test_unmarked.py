"""A test module with a function named like a hook but not marked @hookimpl: never called."""


def ngxsim_postconfiguration(config):
    raise AssertionError("not a hook implementation: the core must never call it")
