"""ngxsim: nginx's module system in Python.

The public API for module authors: the hook markers, the directive and variable declarations,
the value types of the event hooks, value parsers, response helpers, the error a configuration
check raises, and the toolkit of a module's JSON API endpoint (``ApiError``, ``check_key``,
``read_json``, ``Methods``, ``query_*``), and work after or beside a request
(``run_in_background``, nginx's background ``subrequest``). First-party modules use nothing else
of ngxsim.
"""

from .core.conf.directive import (
    ARGS, FLAG, HTTP, LOCATION, MAIN, NUMBER, SERVER, SIZE, STRING, TIME, Directive, OutOfRange, Unsupported,
    parse_number, parse_size, parse_time,
)
from .core.conf.errors import ConfigError
from .core.conf.params import (LIMIT_LOG_LEVELS, check_zone_references, declare_keyed_zones, key_values,
                               limit_directives, number_in, one_of, positive_param, rate_param, require_param,
                               zone_name_param, zone_param)
from .core.conf.parser import Statement
from .core.conf.zones import MAX_ZONE_SIZE
from .core.events import Event, Gap, Subscription, http_event_zone
from .core.http.logs import LEVELS as LOG_LEVELS
from .core.counters import CounterRows
from .core.http.api import ApiAnswer, ApiRequest, ApiSection, counters_section, iso_time
from .core.http.background import BackgroundWork, run_in_background, run_subrequest, subrequest
from .core.http.connection import ClientGone, ResponseCut, client_closed, client_gone, cut_connection, wait_readable
from .core.http.jsonapi import (
    ApiError, Methods, check_key, query_int, query_seconds, query_str, read_body, read_json, register_secret_arg,
    request_body, wants_html,
)
from .core.http.phases import ACCESS, CONTENT, LOG, PHASES, PRECONTENT, PREACCESS, REWRITE, SERVER_REWRITE, PhaseHandler
from .core.http.logs import ALERT, EMERG, NOTICE, error_context
from .core.http.regex import Regex
from .core.http.responses import as_http09, checked_headers, compact_json, error_page, json_error, json_response, keep_status_line
from .core.http.readable import age as format_age
from .core.http.variables import Template, Variable
from .core.http.waits import Delay, Park, Waker, serving_request
from .core.instance import LivenessWatch, process_start_time
from .core.instance import alive as process_alive
from .core.modules import call_impl, tracing
from .core.shm import HEADER_SIZE as ZONE_HEADER_SIZE
from .core.shm import Wait, Zone, prompt_wakeups, store_words, words
from .core.table import SharedTable, TableFull
from ._version import __version__
from .hookspecs import hookimpl, hookspec

__all__ = [
    "ALERT", "EMERG", "NOTICE", "ApiAnswer", "ApiRequest", "ApiSection", "iso_time", "CounterRows", "counters_section",
    "ARGS", "FLAG", "HTTP", "LOCATION", "MAIN", "MAX_ZONE_SIZE", "NUMBER", "SERVER", "SIZE", "STRING", "TIME",
    "ZONE_HEADER_SIZE", "Wait", "Zone", "prompt_wakeups", "store_words", "words", "call_impl", "tracing", "ApiError", "ConfigError", "Directive", "Event", "Gap", "LivenessWatch", "Methods",
    "OutOfRange", "Regex", "Subscription", "Template", "Unsupported", "Variable", "check_key", "compact_json",
    "ClientGone", "ResponseCut", "client_closed", "client_gone", "cut_connection", "wait_readable",
    "as_http09", "error_context", "error_page", "format_age",
    "hookimpl",
    "hookspec", "http_event_zone", "json_error", "json_response", "keep_status_line", "checked_headers", "parse_number",
    "parse_size", "parse_time", "process_alive", "process_start_time", "query_int", "query_seconds", "query_str",
    "read_body", "request_body",
    "read_json", "register_secret_arg", "wants_html", "__version__",
    # nginx's phases and requests that wait
    "ACCESS", "CONTENT", "LOG", "PHASES", "PRECONTENT", "PREACCESS", "REWRITE", "SERVER_REWRITE", "PhaseHandler",
    "Delay", "Park", "Waker", "serving_request",
    # work after or beside a request, without its client: nginx's background subrequest
    "BackgroundWork", "run_in_background", "run_subrequest", "subrequest",
    # parsing context: statements, nginx's key=value parameters
    "SharedTable", "TableFull", "LOG_LEVELS",
    "Statement", "check_zone_references", "declare_keyed_zones", "key_values", "number_in", "one_of",
    "LIMIT_LOG_LEVELS", "limit_directives", "positive_param", "rate_param", "require_param", "zone_name_param", "zone_param",
]
