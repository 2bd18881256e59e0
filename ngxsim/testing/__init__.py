"""Real servers, real backends and event assertions for tests of event flows between modules.

The pytest plugin (``pytest_ngxsim``, registered through the ``pytest11`` entry point) wraps
these as fixtures; they work without pytest too. Standard library only. See docs/testing.md.
"""

from .backend import Backend, Reply, Request
from .client import PendingRequest, Response
from .events import ApiEvents, ZoneEvents, matches
from .nginx import Nginx, check_config, config_errors, find_nginx, nginx_version
from .origin import Answer, Received, RecordingOrigin
from .procs import children
from .raw import RawAnswer, raw_request
from .server import (MODES, ReloadRejected, Server, ServerStartError, free_port, instance_files, start_server, stop_all,
                     wait_for)

__all__ = [
    "Backend", "Reply", "Request",
    "PendingRequest", "Response",
    "ApiEvents", "ZoneEvents", "matches",
    "Answer", "Received", "RecordingOrigin",
    "RawAnswer", "raw_request",
    "Nginx", "check_config", "config_errors", "find_nginx", "nginx_version",
    "MODES", "ReloadRejected", "Server", "ServerStartError", "children", "free_port", "instance_files", "start_server", "stop_all",
    "wait_for",
]
