"""nginx's phases: order by phase, then tryfirst/trylast, then module name (never load_module
order); server-level handlers run when no location matches; waits resume the request."""

from __future__ import annotations

import pytest

import ngxsim_test_order
from ngxsim import ConfigError
from ngxsim.core.conf.loader import load_configuration
from ngxsim.core.process import build_application

SERVER = """
http {
    server {
        listen 127.0.0.1:8080;
        add_header X-Order $test_order always;
        %s
        location /a/ { add_header X-Order $test_order always; %s test_jobs_status; }
    }
}
"""


def _app(tmp_path, modules, server="", location=""):
    conf = tmp_path / "n.conf"
    conf.write_text("".join(f"load_module {m};\n" for m in modules) + SERVER % (server, location))
    return build_application(str(conf), role="standalone")


@pytest.fixture
def serve(tmp_path):
    apps = []

    def make(modules, server="", location=""):
        app = _app(tmp_path, modules, server, location)
        apps.append(app)
        return app.test_client()

    yield make
    for app in apps:
        app.runtime.close()


BODY = ["rewrite", "preaccess", "access", "precontent"]


def test_phases_in_order_then_by_module_name_whatever_the_load_order(serve):
    expected = ",".join(f"{m}.{p}" for p in BODY for m in ("a", "b"))
    for modules in (["ngxsim_test_order_a", "ngxsim_test_order_b", "ngxsim_test_phases"],
                    ["ngxsim_test_phases", "ngxsim_test_order_b", "ngxsim_test_order_a"]):
        r = serve(modules).get("/a/x")
        assert r.status_code == 200  # the location's content handler answered: no content phase handlers ran
        assert r.headers["X-Order"] == "a.server_rewrite,b.server_rewrite," + expected


def test_tryfirst_runs_first_and_trylast_last_in_each_phase(serve):
    client = serve(["ngxsim_test_order_aa", "ngxsim_test_order_b", "ngxsim_test_order_a", "ngxsim_test_order_z",
                    "ngxsim_test_phases"])
    order = client.get("/a/x").headers["X-Order"].split(",")
    assert order[:4] == ["z.server_rewrite", "a.server_rewrite", "b.server_rewrite", "aa.server_rewrite"]
    assert order[4:8] == ["z.rewrite", "a.rewrite", "b.rewrite", "aa.rewrite"]


def test_no_location_runs_the_servers_handlers_through_content_then_404(serve):
    client = serve(["ngxsim_test_order_a", "ngxsim_test_phases"])
    r = client.get("/zzz")
    assert r.status_code == 404
    assert r.headers["X-Order"] == "a.server_rewrite,a.rewrite,a.preaccess,a.access,a.precontent,a.content"


def test_a_server_level_preaccess_limit_answers_before_the_404(serve):
    client = serve(["ngxsim_test_order_a", "ngxsim_test_phases"], server="test_order_reject;")
    assert client.get("/zzz").status_code == 503
    assert client.get("/a/x").status_code == 503  # inherited by the location


def test_precontent_runs_after_preaccess(serve):
    # ngxsim_precontent_handler's answer (a cache hit) comes after a preaccess limit, as in nginx
    client = serve(["ngxsim_test_phases", "ngxsim_test_order_a"], location="test_precontent on; test_order_reject;")
    assert client.get("/a/x?short=1").status_code == 503
    client = serve(["ngxsim_test_phases", "ngxsim_test_order_a"], location="test_precontent on;")
    assert client.get("/a/x?short=1").data == b"short-circuited"


def test_log_phase_sees_the_response(serve):
    ngxsim_test_order.LOGGED.clear()
    client = serve(["ngxsim_test_order_a", "ngxsim_test_phases"], location="test_order_reject;")
    client.get("/a/x")
    client.get("/zzz")
    assert ngxsim_test_order.LOGGED == [("/a/x", 503), ("/zzz", 404)]


def test_a_delay_resumes_with_its_then_on_the_same_thread_without_a_parking_server(serve):
    client = serve(["ngxsim_test_order_a", "ngxsim_test_phases"], location="test_order_delay 10ms;")
    r = client.get("/a/x")
    assert r.status_code == 200
    assert r.headers["X-Order"] == ("a.server_rewrite,a.rewrite,a.preaccess,a.delayed,a.access,a.precontent")


def test_server_rewrite_handler_for_a_location_fails_the_load(tmp_path):
    import sys
    import types

    import ngxsim
    mod = types.ModuleType("ngxsim_test_badphase")

    @ngxsim.hookimpl
    def ngxsim_phase_handlers(block, config):
        return ngxsim.PhaseHandler(ngxsim.SERVER_REWRITE, lambda ctx: None)

    mod.ngxsim_phase_handlers = ngxsim_phase_handlers
    sys.modules["ngxsim_test_badphase"] = mod
    try:
        with pytest.raises(ConfigError, match=r'module "ngxsim_test_badphase" \(ngxsim_phase_handlers\) returned a '
                                              r'"server_rewrite" handler for a location block.* in x.conf:1$'):
            load_configuration("x.conf", text="load_module ngxsim_test_badphase;\nhttp { server { location / { } } }")
        mod.ngxsim_phase_handlers = ngxsim.hookimpl(lambda block: ngxsim.PhaseHandler("prefilter", print))
        mod.ngxsim_phase_handlers.__name__ = "ngxsim_phase_handlers"
        with pytest.raises(ConfigError, match=r'unknown phase "prefilter".* in x.conf:1$'):
            load_configuration("x.conf", text="load_module ngxsim_test_badphase;\nhttp { server { } }")
    finally:
        del sys.modules["ngxsim_test_badphase"]
