"""What a module author needs from the config: variables declared once the directives are read,
the statement a parse callable stands in, each occurrence's line, nginx's key=value parameters."""

from __future__ import annotations

import pytest

from ngxsim import (ConfigError, key_values, positive_param, rate_param, require_param, zone_name_param,
                    zone_param)
from ngxsim.core.conf.loader import load_configuration
from ngxsim.core.process import build_application


def _load(text):
    return load_configuration("x.conf", text="load_module ngxsim_test_addvar;\n" + text)


def test_a_variable_added_after_the_directives_were_read_is_found_by_values_before_it(tmp_path):
    conf = tmp_path / "n.conf"
    conf.write_text("""load_module ngxsim_test_addvar;
http {
    server {
        listen 127.0.0.1:8080;
        location / { return 200 "[$greeting]"; }
    }
    test_alias $greeting "hello $uri";
}
""")
    app = build_application(str(conf), role="standalone")
    try:
        assert app.test_client().get("/x").data == b"[hello /x]"
    finally:
        app.runtime.close()


def test_a_duplicate_added_variable_names_the_second_occurrences_line():
    with pytest.raises(ConfigError, match=r'^the duplicate "a" variable in x.conf:5$'):
        _load("http {\n test_alias $a x;\n\n test_alias $a y;\n}\n")
    with pytest.raises(ConfigError, match=r'^the duplicate "uri" variable in x.conf:3$'):
        _load("http {\n test_alias $uri x;\n}\n")


def test_an_unknown_variable_is_still_refused():
    with pytest.raises(ConfigError, match=r'^unknown "nope" variable in x.conf:3$'):  # the line that names it
        _load("http {\n test_alias $a $nope;\n server { location / { return 200 $a; } }\n}\n")


def test_is_capture_knows_numbered_and_named_captures():
    conf = _load('http {\n server { location ~ ^/(?<part>x) { } }\n test_is_capture part;\n}\n')
    assert conf.stash["test_is_capture"] is True
    assert _load("http {\n test_is_capture 3;\n}\n").stash["test_is_capture"] is True
    assert _load("http {\n test_is_capture uri;\n}\n").stash["test_is_capture"] is False
    assert conf.variables.exists("binary_remote_addr") and not conf.variables.exists("nope")


def test_binary_remote_addr_is_a_core_variable(tmp_path):
    conf = tmp_path / "n.conf"
    conf.write_text('http { server { listen 127.0.0.1:8080; location / { return 200 "$binary_remote_addr"; } } }\n')
    app = build_application(str(conf), role="standalone")
    try:
        client = app.test_client()
        assert client.get("/", environ_base={"REMOTE_ADDR": "127.0.0.1"}).data == b"\x7f\x00\x00\x01"
        assert len(client.get("/", environ_base={"REMOTE_ADDR": "::1"}).data) == 16
    finally:
        app.runtime.close()


def test_parse_gets_its_statement_and_the_enclosing_block():
    conf = _load("http {\n server {\n  location /a/ {\n   test_where one;\n   test_where two;\n  }\n }\n}\n")
    assert conf.blocks("location")[0]["test_where"] == ["one@5 in location /a/", "two@6 in location /a/"]


def test_an_error_in_the_second_occurrence_of_a_multiple_directive_names_its_line():
    with pytest.raises(ConfigError, match=r'^bad "test_where" at line 6 in x.conf:6$'):
        _load("http {\n server {\n  location /a/ {\n   test_where one;\n   test_where bad;\n  }\n }\n}\n")
    conf = _load("http {\n test_alias $a x;\n test_alias $b y;\n}\n")
    http = conf.blocks("http")[0]
    assert [st.line for st in http.statements_of("test_alias")] == [3, 4]
    assert http.where_of("test_alias").line == 3


LIMIT_REQ = {"zone": zone_name_param, "burst": positive_param("burst value"), "delay": positive_param("delay value"),
             "nodelay": None}
LIMIT_REQ_ZONE = {"zone": zone_param(), "rate": rate_param}


def test_key_values_parses_nginx_parameters():
    assert key_values(["zone=one", "burst=3", "nodelay"], LIMIT_REQ) == {"zone": "one", "burst": 3, "nodelay": True}
    assert key_values(["zone=one:1m", "rate=30r/m"], LIMIT_REQ_ZONE) == {"zone": ("one", 1 << 20), "rate": 500}
    assert key_values(["rate=5r/s"], LIMIT_REQ_ZONE) == {"rate": 5000}


@pytest.mark.parametrize("keys, args, message", [
    (LIMIT_REQ, ["burst=0"], 'invalid burst value "burst=0"'),
    (LIMIT_REQ, ["delay=x"], 'invalid delay value "delay=x"'),
    (LIMIT_REQ, ["nodelay=1"], 'invalid parameter "nodelay=1"'),
    (LIMIT_REQ, ["fast"], 'invalid parameter "fast"'),
    (LIMIT_REQ_ZONE, ["zone=one"], 'invalid zone size "zone=one"'),
    (LIMIT_REQ_ZONE, ["zone=one:big"], 'invalid zone size "zone=one:big"'),
    (LIMIT_REQ_ZONE, ["zone=one:1k"], 'zone "zone=one:1k" is too small'),
    (LIMIT_REQ_ZONE, ["rate=0r/s"], 'invalid rate "rate=0r/s"'),
    (LIMIT_REQ_ZONE, ["rate=fast"], 'invalid rate "rate=fast"'),
])
def test_key_values_errors_are_nginxs(keys, args, message):
    with pytest.raises(ValueError, match=f"^{message}$"):
        key_values(args, keys)


def test_require_param():
    with pytest.raises(ValueError, match='^"limit_req" must have "zone" parameter$'):
        require_param(key_values(["burst=2"], LIMIT_REQ), "zone", "limit_req")


def test_http_event_zone_says_a_subscriber_subscribes(tmp_path):
    from ngxsim import http_event_zone

    conf = load_configuration("x.conf", text="http {\n}\n")
    with pytest.raises(ConfigError, match=r'^module "audit" subscribes to events, but no loaded module provides '
                                          r'them: add "load_module worker_events;" .* in x.conf:1$'):
        http_event_zone(conf, "audit", subscribes=True)
    conf = load_configuration("x.conf", text="load_module worker_events;\nhttp {\n}\n")
    with pytest.raises(ConfigError, match=r'^module "audit" subscribes to events of the http-level '
                                          r'"worker_events_zone": add .* in x.conf:2$'):
        http_event_zone(conf, "audit", subscribes=True)
    with pytest.raises(ConfigError, match=r'^module "audit" publishes events into the http-level'):
        http_event_zone(conf, "audit")
