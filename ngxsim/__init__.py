"""ngxsim: nginx's module system in Python.

The public API for module authors: the hook markers, the directive declaration, the value
types of the event hooks, the error a configuration check raises, and the toolkit of a module's
JSON API endpoint (``ApiError``, ``check_key``, ``read_json``, ``Methods``, ``query_*``).
"""

from .core.conf.directive import (
    ARGS, FLAG, HTTP, LOCATION, MAIN, NUMBER, SERVER, SIZE, STRING, TIME, Directive, OutOfRange, parse_number,
    parse_size, parse_time,
)
from .core.conf.errors import ConfigError
from .core.conf.zones import MAX_ZONE_SIZE
from .core.events import Event, Gap, Subscription
from .core.http.jsonapi import (
    ApiError, Methods, check_key, query_int, query_seconds, query_str, read_body, read_json, register_secret_arg,
)
from .core.http.responses import json_error, json_response
from .hookspecs import hookimpl, hookspec

__version__ = "0.1.0"

__all__ = [
    "ARGS", "FLAG", "HTTP", "LOCATION", "MAIN", "MAX_ZONE_SIZE", "NUMBER", "SERVER", "SIZE", "STRING", "TIME",
    "OutOfRange", "parse_number", "parse_size", "parse_time",
    "ApiError", "ConfigError", "Directive", "Event", "Gap", "Methods", "Subscription", "check_key", "hookimpl",
    "hookspec", "json_error", "json_response", "query_int", "query_seconds", "query_str", "read_body", "read_json",
    "register_secret_arg", "__version__",
]
