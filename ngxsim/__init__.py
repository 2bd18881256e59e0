"""ngxsim: nginx's module system in Python.

The public API for module authors: the hook markers, the directive declaration, the value
types of the event hooks, and the error a configuration check raises.
"""

from .core.conf.directive import (
    ARGS, FLAG, HTTP, LOCATION, MAIN, NUMBER, SERVER, SIZE, STRING, TIME, Directive,
)
from .core.conf.errors import ConfigError
from .core.events import Event, Gap, Subscription
from .core.http.responses import json_error, json_response
from .hookspecs import hookimpl, hookspec

__version__ = "0.1.0"

__all__ = [
    "ARGS", "FLAG", "HTTP", "LOCATION", "MAIN", "NUMBER", "SERVER", "SIZE", "STRING", "TIME",
    "ConfigError", "Directive", "Event", "Gap", "Subscription", "hookimpl", "hookspec",
    "json_error", "json_response", "__version__",
]
