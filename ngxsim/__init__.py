"""ngxsim: nginx's module system in Python.

The public API for module authors: the hook markers, the directive and variable declarations,
the value types of the event hooks, value parsers, response helpers, and the error a
configuration check raises. First-party modules use nothing else of ngxsim.
"""

from .core.conf.directive import (
    ARGS, FLAG, HTTP, LOCATION, MAIN, NUMBER, SERVER, SIZE, STRING, TIME, Directive, parse_size, parse_time,
)
from .core.conf.errors import ConfigError
from .core.events import Event, Gap, Subscription, http_event_zone
from .core.http.responses import compact_json, error_page, json_error, json_response
from .core.http.variables import Template, Variable
from .hookspecs import hookimpl, hookspec

__version__ = "0.1.0"

__all__ = [
    "ARGS", "FLAG", "HTTP", "LOCATION", "MAIN", "NUMBER", "SERVER", "SIZE", "STRING", "TIME",
    "ConfigError", "Directive", "Event", "Gap", "Subscription", "Template", "Variable", "compact_json",
    "error_page", "hookimpl", "hookspec", "http_event_zone", "json_error", "json_response", "parse_size",
    "parse_time", "__version__",
]
