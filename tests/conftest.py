from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent / "modules"))

from helpers import start_server  # noqa: E402
from ngxsim.testing import stop_all  # noqa: E402


@pytest.fixture
def shm_leftovers():
    """Fails the test if it leaves zone files of this process's instances behind."""
    before = {e for e in os.listdir("/dev/shm") if e.startswith("ngxsim.")}
    yield
    after = {e for e in os.listdir("/dev/shm") if e.startswith("ngxsim.")}
    mine = {e for e in after - before if e.startswith(f"ngxsim.{os.getpid()}.")}
    assert not mine, f"left in /dev/shm: {sorted(mine)}"


@pytest.fixture
def make_app(tmp_path, shm_leftovers):
    """make(conf_text) -> a Flask test client of the core serving that config (in this process,
    no gunicorn); every app's runtime is closed at teardown."""
    from ngxsim.core.process import build_application

    apps = []

    def make(text):
        path = tmp_path / "t.conf"
        path.write_text(text)
        app = build_application(str(path))
        apps.append(app)
        return app.test_client()

    yield make
    for app in apps:
        app.runtime.close()


@pytest.fixture
def server_factory(tmp_path):
    """start(conf_text, **kw) -> a running Server; every server is stopped and checked for
    leftovers (processes, zone files) at teardown."""
    servers = []

    def start(conf_text: str, **kw):
        server = start_server(tmp_path, conf_text, **kw)
        servers.append(server)
        return server

    yield start
    stop_all(servers)
