"""Benchmark module: a subscriber that does nothing, so every worker runs its dispatcher and
every publish wakes every worker (the cost of a broadcast, measured)."""

from ngxsim import hookimpl


@hookimpl
def ngxsim_event(runtime, event):
    pass
