"""Test module: a subscriber that raises on events of type "boom"."""

from ngxsim import hookimpl


@hookimpl
def ngxsim_event(runtime, event):
    if event.type == "boom":
        raise RuntimeError(f"boom at generation {event.generation}")
