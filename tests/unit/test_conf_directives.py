"""Directive checking, values, inheritance and module loading, with nginx's wording."""

from __future__ import annotations

import pytest

from ngxsim import ConfigError
from ngxsim.core.conf.loader import load_configuration


def load(text):
    return load_configuration("/p/a.conf", text=text)


def error(text):
    with pytest.raises(ConfigError) as err:
        load(text)
    return str(err.value)


@pytest.mark.parametrize("text, message", [
    ("x;", 'unknown directive "x" in /p/a.conf:1'),
    ("http {\n  return 200;\n}", '"return" directive is not allowed here in /p/a.conf:2'),
    ("http {\n  server {\n    listen;\n  }\n}", 'invalid number of arguments in "listen" directive in /p/a.conf:3'),
    ("http {\n  server {\n    listen 1 2 3;\n  }\n}", 'invalid parameter "2" in /p/a.conf:3'),
    ("http;", 'directive "http" has no opening "{" in /p/a.conf:1'),
    ("worker_processes 2 { }", 'directive "worker_processes" is not terminated by ";" in /p/a.conf:1'),
    ("worker_processes 2;\nworker_processes 3;", '"worker_processes" directive is duplicate in /p/a.conf:2'),
    ("http { }\nhttp { }", '"http" directive is duplicate in /p/a.conf:2'),
    ("worker_processes none;", '"worker_processes" directive invalid value in /p/a.conf:1'),
    ("worker_processes 0;", '"worker_processes" directive invalid value: ngxsim needs at least one worker in /p/a.conf:1'),
    ("http {\n client_max_body_size 1x;\n}", '"client_max_body_size" directive invalid value "1x" in /p/a.conf:2'),
    ("http {\n server {\n  listen 80 ssl;\n }\n}", 'invalid parameter "ssl" in /p/a.conf:3'),
    ("http {\n server {\n  listen 127.0.0.1:99999;\n }\n}", 'invalid port in "127.0.0.1:99999" of the "listen" directive in /p/a.conf:3'),
    ("http {\n server {\n  return 999x;\n }\n}", 'invalid return code "999x" in /p/a.conf:3'),
    ("http {\n add_header X $nope;\n}", 'unknown "nope" variable'),  # nginx: once all is read, no line
    ("http {\n add_header X y sometimes;\n}", 'invalid parameter "sometimes" in /p/a.conf:2'),
    ("http {\n server {\n  location ~ ( { }\n }\n}", 'pcre2_compile() failed: missing closing parenthesis in "(" in /p/a.conf:3'),
    ("http {\n server {\n  location /a { }\n  location /a { }\n }\n}", 'duplicate location "/a" in /p/a.conf:4'),
    ("http {\n server {\n  location /a {\n   location /b { }\n  }\n }\n}", 'location "/b" is outside location "/a" in /p/a.conf:4'),
    ("http {\n server {\n  listen 127.0.0.1:80 default_server;\n }\n server {\n  listen 127.0.0.1:80 default_server;\n }\n}",
     "a duplicate default server for 127.0.0.1:80"),
    ("http {\n access_log /tmp/x.log main;\n}", 'unknown log format "main" in /p/a.conf:2'),
    ("load_module;", 'invalid number of arguments in "load_module" directive in /p/a.conf:1'),
    ("http {\n load_module worker_events;\n}", '"load_module" directive is not allowed here in /p/a.conf:2'),
])
def test_core_errors(text, message):
    assert message in error(text)


def test_unknown_module_is_a_config_error_with_file_and_line():
    msg = error("worker_processes 1;\nload_module no_such_module_here;\n")
    assert msg.startswith('module "no_such_module_here" not found')
    assert msg.endswith("in /p/a.conf:2")


def test_module_loaded_twice():
    assert error("load_module ngxsim_test_values;\nload_module ngxsim_test_values;") == \
        'module "ngxsim_test_values" is already loaded in /p/a.conf:2'


def test_module_that_fails_to_import_says_so():
    msg = error("load_module ngxsim_test_broken;")
    assert 'module "ngxsim_test_broken" failed to import' in msg and "ngxsim_no_such_dependency" in msg


def test_duplicate_directive_names_both_modules():
    assert 'duplicate directive "listen" declared by modules "core" and "ngxsim_test_dup"' in error("load_module ngxsim_test_dup;")


def test_hookimpl_typo_fails_the_load():
    assert "ngxsim_postconfigration" in error("load_module ngxsim_test_typo;")


def test_entry_point_is_tried_before_the_import_path():
    config = load("load_module worker_events;")
    # "worker_events" is no importable module name: only the entry point can have found it
    assert dict(config.modules)["worker_events"].__name__ == "ngxsim_plugins.worker_events"


def test_module_postconfiguration_error_names_the_line():
    assert error("load_module ngxsim_test_validate;\nhttp {\n server {\n  location / {\n   t_even 3;\n  }\n }\n}") == \
        '"t_even" must be even, not 3 in /p/a.conf:5'


VALUES = """
load_module ngxsim_test_values;
http {
    t_size 1m;
    t_time 1h30m;
    t_flag on;
    t_local top;
    t_list a b;
    server {
        t_number 12;
        t_string s;
        location /a {
            t_size 512k;
            t_time 500ms;
            t_switch;
        }
        location /b {
            t_flag off;
            t_list c;
            t_list d e;
        }
    }
}
"""


def test_value_types_and_inheritance():
    config = load(VALUES)
    a, b = config.blocks("location")
    assert (a["t_size"], a["t_time"], a["t_switch"]) == (512 * 1024, 0.5, True)
    assert (b["t_size"], b["t_time"], b["t_switch"]) == (1024 * 1024, 5400.0, False)
    assert a["t_number"] == b["t_number"] == 12 and a["t_string"] == "s"
    assert (a["t_flag"], b["t_flag"]) == (True, False)
    # inherit=False: a level that does not set it starts from the default
    assert config.blocks("http")[0]["t_local"] == "top" and a["t_local"] == "none"
    # multiple: a level with its own list inherits none of the outer one
    assert a["t_list"] == [["a", "b"]] and b["t_list"] == [["c"], ["d", "e"]]


@pytest.mark.parametrize("line, message", [
    ("t_flag maybe;", 'invalid value "maybe" in "t_flag" directive, it must be "on" or "off"'),
    ("t_time 5x;", '"t_time" directive invalid value "5x"'),
    ("t_number -1;", '"t_number" directive invalid value "-1"'),
    ("t_size 1t;", '"t_size" directive invalid value "1t"'),
])
def test_value_errors(line, message):
    assert error(f"load_module ngxsim_test_values;\nhttp {{\n {line}\n}}") == f"{message} in /p/a.conf:3"


def test_worker_processes_auto():
    import os

    assert load("worker_processes auto;").worker_processes == (os.cpu_count() or 1)


def test_same_name_in_disjoint_contexts_and_module_contexts():
    from ngxsim import HTTP, Directive
    from ngxsim.core.conf.directive import DirectiveTable

    table = DirectiveTable()
    table.registrar("core")(Directive("server", (HTTP,), 0, block="server"))
    reg = table.registrar("ups")
    reg(Directive("upstream", (HTTP,), 1, block="upstream"))
    reg(Directive("server", ("upstream",), (1, None), type="args"))
    table.freeze()
    assert table.get("server", "http").block == "server"
    assert table.get("server", "upstream").type == "args"
    assert table.get("server", "location") is None

    clash = DirectiveTable()
    clash.registrar("a")(Directive("x", (HTTP, "server"), 1))
    with pytest.raises(ConfigError, match='duplicate directive "x" declared by modules "a" and "b"'):
        clash.registrar("b")(Directive("x", ("server",), 1))

    lost = DirectiveTable()
    lost.registrar("m")(Directive("y", ("nowhere",), 1))
    with pytest.raises(ConfigError, match=r'module "m" \(ngxsim_directives\): directive "y" names unknown context\(s\) nowhere, which no directive opens$'):
        lost.freeze()
