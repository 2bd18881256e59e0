"""Module variables, the pre-content phase and body filters, in one process."""

from __future__ import annotations

import pytest

from ngxsim import ConfigError
from ngxsim.core.conf.loader import load_configuration
from ngxsim.core.process import build_application

CONF = """
load_module ngxsim_test_phases;
http {
    server {
        listen 127.0.0.1:8080;
        location /pre/ { test_precontent on; add_header X-Phase $test_phase; return 200 "from return"; }
        location /both/ {
            test_precontent on;
            test_body_filter on;
            add_header X-Phase "[$test_phase]";
            test_jobs_status;
        }
        location /plain/ { test_jobs_status; add_header X-Phase "[$test_phase]"; }
    }
}
"""


@pytest.fixture
def client(tmp_path):
    conf = tmp_path / "n.conf"
    conf.write_text(CONF)
    app = build_application(str(conf), role="standalone")
    yield app.test_client()
    app.runtime.close()


def test_precontent_answers_before_the_content_handler(client):
    r = client.get("/both/x?short=1")
    # the body filter also ran on the pre-content answer
    assert r.data == b"SHORT-CIRCUITED"
    assert r.headers["X-Phase"] == "[precontent-saw-it]"


def test_precontent_passes_on_and_body_filter_replaces_the_response(client):
    r = client.get("/both/x")
    assert r.status_code == 200
    assert b'"JOBS":[]' in r.data  # the content handler answered, the filter upper-cased it
    assert r.headers["X-Phase"] == "[precontent-saw-it]"


def test_ctx_stash_carries_a_modules_data_from_precontent_to_its_body_filter(client):
    assert client.get("/both/x").headers["X-Stash"] == "/both/x"
    assert client.get("/both/y?short=1").headers["X-Stash"] == "/both/y"  # a fresh stash per request


def test_a_location_without_the_phases_is_untouched(client):
    r = client.get("/plain/x")
    assert b'"jobs":[]' in r.data
    assert r.headers["X-Phase"] == "[]"


def test_return_runs_before_precontent(client):
    r = client.get("/pre/x?short=1")
    assert r.data == b"from return"
    assert "X-Phase" not in r.headers  # empty value: no header, as nginx does


def test_module_variable_unknown_without_its_module(tmp_path):
    conf = tmp_path / "n.conf"
    conf.write_text('http { server { location / { add_header X $test_phase; } } }\n')
    with pytest.raises(ConfigError) as err:  # nginx names no line; ngxsim the value's
        load_configuration(str(conf))
    assert str(err.value) == f'unknown "test_phase" variable in {conf}:1'


def test_module_variable_that_shadows_a_core_one_fails(tmp_path):
    import types

    import ngxsim
    mod = types.ModuleType("ngxsim_test_shadow")

    @ngxsim.hookimpl
    def ngxsim_variables(register):
        register(ngxsim.Variable("uri", lambda ctx: "x"))

    mod.ngxsim_variables = ngxsim_variables
    import sys
    sys.modules["ngxsim_test_shadow"] = mod
    try:
        with pytest.raises(ConfigError, match='duplicate variable "uri" declared by modules "core" and "ngxsim_test_shadow"'):
            load_configuration("x.conf", text="load_module ngxsim_test_shadow;\n")
    finally:
        del sys.modules["ngxsim_test_shadow"]


def test_job_interval_out_of_range_names_the_line(tmp_path):
    with pytest.raises(ConfigError, match=r"interval 0.001s is outside 10ms..1d in x.conf:2"):
        load_configuration("x.conf", text="load_module ngxsim_test_phases;\ntest_job 1ms;\n")
