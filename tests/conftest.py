"""The project's tests use ngxsim's own pytest plugin (pytest_ngxsim, registered by the
package's pytest11 entry point: not listed here, or it would be registered twice) for real
servers and backends. The test modules in tests/modules are importable here, and so — the
plugin passes this process's project folders on — in every server the tests start."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "modules"))


@pytest.fixture
def shm_leftovers():
    """Fails the test if it leaves zone files of this process's instances behind."""
    before = {e for e in os.listdir("/dev/shm") if e.startswith("ngxsim.")}
    yield
    after = {e for e in os.listdir("/dev/shm") if e.startswith("ngxsim.")}
    mine = {e for e in after - before if e.startswith(f"ngxsim.{os.getpid()}.")}
    assert not mine, f"left in /dev/shm: {sorted(mine)}"


@pytest.fixture(params=["c", "python"])
def shm_path(request, monkeypatch):
    """Runs the test on each path of the shared-memory hot path: the core's C accelerator, and
    the pure-Python code that runs without it. Zones attached during the test use that path."""
    from ngxsim.core import shm

    if request.param == "python":
        monkeypatch.setattr(shm, "accel", None)
    elif shm.accel is None:
        pytest.skip("the C accelerator ngxsim.core._shm_accel is not built here (no compiler at install)")
    return request.param


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
