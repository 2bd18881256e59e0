"""``ngxsim_status`` in one process (Flask's test client): the document, each module's part
through the ``ngxsim_status`` hook, a failing module, the page, and the worker table's counts."""

from __future__ import annotations

import os

from ngxsim.core.conf.loader import load_configuration

CONF = """
load_module worker_events;
load_module ngxsim_test_status;
%s
http {
    worker_events_zone bus;
    server {
        listen 127.0.0.1:8080;
        location = / { return 200 "hi"; }
        location /ev { worker_events_api; worker_events_channel c; worker_events_publish_key topsecret; }
        location = /status { ngxsim_status; }
    }
}
"""


def test_the_document_has_this_worker_the_zones_and_each_modules_part(make_app):
    client = make_app(CONF % "")
    for _ in range(3):
        client.get("/")
    r = client.get("/status")
    assert r.status_code == 200 and r.content_type == "application/json"
    doc = r.get_json()
    [me] = doc["workers"]
    assert me["pid"] == os.getpid() and me["alive"] is True and me["requests"] == 4  # the status request too
    assert {(z["name"], z["owner"]) for z in doc["zones"]} == {("bus", "worker_events"), ("@workers", "core")}
    assert list(doc["modules"]) == ["worker_events", "ngxsim_test_status"]  # load order
    assert doc["modules"]["ngxsim_test_status"]["answer"] == 42
    bus = doc["modules"]["worker_events"]["rings"]["bus"]
    assert (bus["capacity"], bus["used"], bus["newest_generation"]) == (1024, 0, 0)
    assert "topsecret" not in r.get_data(as_text=True)


def test_a_failing_module_shows_its_error_and_the_rest_is_answered(make_app):
    client = make_app(CONF % "status_test_fail on;")
    doc = client.get("/status").get_json()
    assert doc["modules"]["ngxsim_test_status"] == {"error": "RuntimeError: the module's table is gone"}
    assert "bus" in doc["modules"]["worker_events"]["rings"]


def test_the_page_for_browsers_escapes_what_modules_say(make_app):
    client = make_app(CONF % "")
    page = client.get("/status", headers={"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"})
    assert page.content_type == "text/html; charset=utf-8"
    text = page.get_data(as_text=True)
    assert "&lt;b&gt;bold&lt;/b&gt;" in text and "<b>bold</b>" not in text
    assert '<section class="module" data-module="ngxsim_test_status">' in text
    assert "never" in text  # refreshed_msec 0: a time that never was, not 56 years ago
    assert client.get("/status?format=html").content_type.startswith("text/html")
    assert client.get("/status?format=json", headers={"Accept": "text/html"}).content_type == "application/json"
    bad = client.get("/status?format=xml")
    assert bad.status_code == 400 and '"format" must be "json" or "html"' in bad.get_json()["message"]
    assert client.post("/status").status_code == 405


def test_the_worker_table_is_kept_only_for_a_status_location():
    with_status = load_configuration("a.conf", text="http { server { location = /s { ngxsim_status; } } }")
    without = load_configuration("b.conf", text="http { server { location = /s { return 200; } } }")
    assert "@workers" in with_status.zones and "@workers" not in without.zones
