"""Real servers, real backends and event assertions for tests of event flows between modules.

The pytest plugin (``pytest_ngxsim``, registered through the ``pytest11`` entry point) wraps
these as fixtures; they work without pytest too. Standard library only.
"""

from .backend import Backend, Reply, Request
from .server import Server, children, free_port, instance_files, start_server, stop_all, wait_for

__all__ = [
    "Backend", "Reply", "Request",
    "Server", "children", "free_port", "instance_files", "start_server", "stop_all", "wait_for",
]
