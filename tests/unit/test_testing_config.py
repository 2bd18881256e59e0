"""How ngxsim.testing fills a test's config and keeps both hosting modes the same shape."""

from __future__ import annotations

import pytest

from ngxsim.testing.server import _api_location, prepare_config

CONF = "http {\n  server { listen 127.0.0.1:{port}; access_log {tmp}/a.log; location / { return 200 {word}; } }\n}\n"


def test_placeholders_are_filled_and_gunicorn_mode_leaves_the_config_alone():
    text, workers = prepare_config(CONF, "gunicorn", None, "gthread", {"port": 8081, "tmp": "/t", "word": "hi"})
    assert text == "http {\n  server { listen 127.0.0.1:8081; access_log /t/a.log; location / { return 200 hi; } }\n}\n"
    assert workers == 2
    assert prepare_config("worker_processes 3;\n" + CONF, "gunicorn", None, None, {})[1] == 3
    assert prepare_config("worker_processes 3;\n" + CONF, "gunicorn", 5, None, {})[1] == 5  # gunicorn's -w wins


def test_ngxsim_mode_appends_the_worker_count_and_class_so_line_numbers_stay():
    text, workers = prepare_config(CONF, "ngxsim", 4, "gthread", {})
    assert workers == 4 and text.startswith(CONF) and text.endswith("\nworker_processes 4;\nworker_class gthread;\n")
    text, workers = prepare_config("worker_processes  auto ;\n" + CONF, "ngxsim", None, None, {})
    assert text == "worker_processes  auto ;\n" + CONF and workers >= 1


@pytest.mark.parametrize("conf, kw, words", [
    ("worker_processes 3;\n", dict(workers=4), "workers=4 but the config says worker_processes 3"),
    ("worker_class sync;\n", dict(workers=None, worker_class="gthread"), "worker_class=gthread but the config says worker_class sync"),
])
def test_ngxsim_mode_refuses_a_worker_shape_the_config_contradicts(conf, kw, words):
    with pytest.raises(ValueError, match=words):
        prepare_config(conf + CONF, "ngxsim", kw["workers"], kw.get("worker_class"), {})


def test_the_events_location_is_found_when_there_is_exactly_one():
    one = "location /a { return 200; }\nlocation = /internal/ev {\n  worker_events_api;\n  worker_events_zone bus;\n}"
    assert _api_location(one) == "/internal/ev"
    with pytest.raises(ValueError, match="the config has none"):
        _api_location("location /a { return 200; }")
    with pytest.raises(ValueError, match=r"\['/x', '/y'\]"):
        _api_location("location /x { worker_events_api; }\nlocation /y { worker_events_api; }")
