"""The ngxsim pytest plugin: real ngxsim servers and real loopback backends as fixtures.

Registered through the ``pytest11`` entry point, so ``pip install ngxsim`` is all a test suite
needs (``-p no:ngxsim`` turns it off). It lives outside the ``ngxsim`` package on purpose:
importing ``ngxsim`` pulls in Flask and werkzeug (~150 ms), and every pytest session on a machine
with ngxsim installed loads this module — so nothing here imports ngxsim until a fixture runs.
"""

from __future__ import annotations

import pytest


@pytest.fixture
def ngxsim_backend():
    """A factory of started :class:`ngxsim.testing.Backend` s (HTTP/1.1 keep-alive on 127.0.0.1).

    ``backend = ngxsim_backend(name="a")``; every backend it made is stopped at teardown, and
    a backend whose threads do not end fails the test.
    """
    from ngxsim.testing import Backend, stop_all

    made: list[Backend] = []

    def make(name: str | None = None, **kw) -> Backend:
        backend = Backend(name, **kw)
        made.append(backend)
        return backend.start()

    yield make
    stop_all(made)
