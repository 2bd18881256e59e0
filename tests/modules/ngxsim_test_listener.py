"""A test module that listens to every event zone (ngxsim_event, no subscriptions hook)."""

from ngxsim import hookimpl


@hookimpl
def ngxsim_event(runtime, event):
    pass
