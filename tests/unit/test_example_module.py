"""The example module in examples/ keeps working."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture
def app(shm_leftovers, monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES))
    from ngxsim.core.process import build_application

    application = build_application(str(EXAMPLES / "hello.conf"))
    yield application.test_client()
    application.runtime.close()
    sys.modules.pop("hello_module", None)


def test_hello_module_publishes_and_every_request_sees_the_latest(app):
    assert app.get("/hello").get_json()["greeting"] == "Hi, nobody!"
    assert app.post("/hello?name=Ada").status_code == 201
    assert app.get("/hello").get_json()["greeting"] == "Hi, Ada!"
    assert app.post("/hello").status_code == 400
    events = app.get("/internal/worker-events").get_json()["events"]
    assert [(e["channel"], e["type"], e["payload"]) for e in events] == [("hello", "greeted", "Ada")]
