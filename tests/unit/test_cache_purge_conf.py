"""cache_purge's directives: values, nginx's wording, and the file:line of every error."""

from __future__ import annotations

import pytest

from ngxsim import ConfigError
from ngxsim.core.conf.loader import load_configuration
from ngxsim_plugins.cache_purge.conf import CachePath, PurgeMethod, Valid

GOOD = """load_module worker_events;
load_module upstreams;
load_module cache_purge;
http {
    worker_events_zone bus;
    proxy_cache_path %(dir)s/assets keys_zone=assets:10m max_size=100m inactive=10m mem_size=2m;
    upstream backend { server 127.0.0.1:9; }
    server {
        listen 127.0.0.1:8080;
        location /static/ {
            proxy_pass http://backend;
            proxy_cache assets;
            proxy_cache_valid 200 301 10m;
            proxy_cache_valid 404 1m;
            proxy_cache_purge PURGE from 127.0.0.1 10.0.0.0/8;
        }
        location /plain/ { proxy_pass http://backend; }
        location /api/cache { cache_purge_api assets; cache_purge_key changeme; }
    }
}
"""


def load(tmp_path, text):
    path = tmp_path / "n.conf"
    path.write_text(text)
    return load_configuration(str(path))


def fails(tmp_path, text, message, line):
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text)
    assert info.value.message == message, info.value.message
    assert (info.value.file, info.value.line) == (str(tmp_path / "n.conf"), line)


def edit(tmp_path, old, new, text=GOOD):
    base = text % {"dir": tmp_path}
    assert old in base
    return base.replace(old, new)


def test_a_good_config_is_read_with_nginx_defaults(tmp_path):
    config = load(tmp_path, GOOD % {"dir": tmp_path})
    static = next(b for b in config.blocks("location") if b.value.path == "/static/")
    assert config.blocks("http")[0]["proxy_cache_path"] == [
        CachePath(f"{tmp_path}/assets", "assets", 10 * 1024**2, 600.0, 100 * 1024**2, 2 * 1024**2)]
    assert static["proxy_cache"] == "assets"
    assert static["proxy_cache_valid"] == [Valid(frozenset({200, 301}), 600.0), Valid(frozenset({404}), 60.0)]
    assert static["proxy_cache_purge"].method == "PURGE"
    assert static.stash["cache_purge"].key.source == "http://$proxy_host$request_uri"  # nginx's (its KEY: line)
    assert (tmp_path / "assets").is_dir()  # made at load, as nginx does (nginx -t too)
    assert "key" in config.secret_args
    assert "assets" in config.zones
    plain = next(b for b in config.blocks("location") if b.value.path == "/plain/")
    assert "cache_purge" not in plain.stash


def test_relative_cache_path_is_from_the_config_folder(tmp_path):
    config = load(tmp_path, edit(tmp_path, f"{tmp_path}/assets keys", "rel/assets keys"))
    assert config.blocks("http")[0]["proxy_cache_path"][0].path == "rel/assets"
    assert (tmp_path / "rel" / "assets").is_dir()


@pytest.mark.parametrize("param, message", [
    ("keys_zone=assets", 'invalid keys zone size "keys_zone=assets"'),
    ("keys_zone=assets:10q", 'invalid keys zone size "keys_zone=assets:10q"'),
    ("keys_zone=assets:4k", 'keys zone "assets" is too small'),
    ("keys_zone=assets:1m inactive=soon", 'invalid inactive value "inactive=soon"'),
    ("keys_zone=assets:1m max_size=big", 'invalid max_size value "max_size=big"'),
    ("keys_zone=assets:1m mem_size=0", 'invalid mem_size value "mem_size=0"'),
    ("keys_zone=assets:1m colour=blue", 'invalid parameter "colour=blue"'),
    ("keys_zone=assets:1m fast", 'invalid parameter "fast"'),
    ("keys_zone=assets:1m levels=1:2", '"levels" parameter of "proxy_cache_path" is not supported by ngxsim '
                                       '(the shared level is a diskcache directory); remove it'),
    ("inactive=1m", '"proxy_cache_path" must have "keys_zone" parameter'),
])
def test_proxy_cache_path_errors(tmp_path, param, message):
    text = edit(tmp_path, "keys_zone=assets:10m max_size=100m inactive=10m mem_size=2m", param)
    fails(tmp_path, text, message, 6)


def test_duplicate_zone_and_path(tmp_path):
    line = f"    proxy_cache_path {tmp_path}/assets keys_zone=assets:10m max_size=100m inactive=10m mem_size=2m;\n"
    fails(tmp_path, edit(tmp_path, line, line + f"    proxy_cache_path {tmp_path}/other keys_zone=assets:1m;\n"),
          'duplicate zone "assets"', 7)
    fails(tmp_path, edit(tmp_path, line, line + f"    proxy_cache_path {tmp_path}/assets keys_zone=two:1m;\n"),
          f'the same path name "{tmp_path}/assets" used in {tmp_path}/n.conf:6 and', 7)


def test_keys_zone_name_clashes_with_another_zone(tmp_path):
    fails(tmp_path, edit(tmp_path, "keys_zone=assets:10m", "keys_zone=bus:10m").replace("assets;", "bus;"),
          'zone "bus" is already declared by module "worker_events"', 6)


def test_unwritable_cache_path(tmp_path):
    (tmp_path / "file").write_text("")
    fails(tmp_path, edit(tmp_path, f"{tmp_path}/assets keys", f"{tmp_path}/file/assets keys"),
          f'mkdir() "{tmp_path}/file/assets" failed (20: Not a directory)', 6)


def test_proxy_cache_names_an_unknown_zone(tmp_path):
    fails(tmp_path, edit(tmp_path, "proxy_cache assets;", "proxy_cache other;"), '"proxy_cache" zone "other" is unknown', 12)
    fails(tmp_path, edit(tmp_path, "cache_purge_api assets;", "cache_purge_api other;"),
          '"cache_purge_api" zone "other" is unknown', 18)


@pytest.mark.parametrize("old, new, message, line", [
    ("proxy_cache_valid 404 1m;", "proxy_cache_valid 404 soon;", 'invalid time value "soon"', 14),
    ("proxy_cache_valid 404 1m;", "proxy_cache_valid 99 1m;", 'invalid status "99"', 14),
    ("proxy_cache_valid 404 1m;", "proxy_cache_valid \u0662\u0660\u0660 1m;", 'invalid status "\u0662\u0660\u0660"', 14),
    ("proxy_cache_valid 404 1m;", "proxy_ignore_headers Set-Cookie Cookie;", 'invalid value "Cookie"', 14),
    ("proxy_cache_valid 404 1m;", "proxy_cache_valid;", 'invalid number of arguments in "proxy_cache_valid" directive', 14),
    ("proxy_cache_valid 404 1m;", "proxy_cache_use_stale error http_418;", 'invalid value "http_418"', 14),
    ("proxy_cache_valid 404 1m;", "proxy_cache_use_stale off error;", 'invalid value "off"', 14),
    ("proxy_cache_valid 404 1m;", "proxy_cache_methods GET PUT;", 'invalid value "PUT"', 14),
    ("PURGE from 127.0.0.1 10.0.0.0/8;", "PURGE from nowhere;", 'invalid parameter "nowhere"', 15),
    ("PURGE from 127.0.0.1 10.0.0.0/8;", "PURGE from;", 'invalid parameter "from": "from" needs "all" or addresses', 15),
    ("PURGE from 127.0.0.1 10.0.0.0/8;", "PURGE to 127.0.0.1;", 'invalid parameter "to"', 15),
    ("proxy_cache_purge PURGE from 127.0.0.1 10.0.0.0/8;", "proxy_cache_purge assets $uri;",
     'invalid method "assets" in "proxy_cache_purge" directive (ngxsim has the same-location form '
     '"on|off|METHOD [from all|ADDR...]"; purge other keys with "cache_purge_api")', 15),
    ("location /plain/ { proxy_pass http://backend; }", "location /plain/ { proxy_cache_purge on; }",
     '"proxy_cache_purge" requires "proxy_cache"', 17),
    ("cache_purge_api assets; cache_purge_key changeme;", "cache_purge_key changeme;",
     '"cache_purge_key" requires "cache_purge_api"', 18),
])
def test_location_errors(tmp_path, old, new, message, line):
    fails(tmp_path, edit(tmp_path, old, new), message, line)


def test_the_default_key_needs_a_module_that_gives_proxy_host(tmp_path):
    text = (f"load_module worker_events;\nload_module cache_purge;\nhttp {{\n    worker_events_zone bus;\n"
            f"    proxy_cache_path {tmp_path}/c keys_zone=c:1m;\n"
            f"    server {{ listen 127.0.0.1:8080; location / {{ proxy_cache c; return 200; }} }}\n}}\n")
    fails(tmp_path, text, 'the default "proxy_cache_key" (http://$proxy_host$request_uri) needs $proxy_host '
                          '("load_module upstreams;" and "proxy_pass"): set "proxy_cache_key" here', 6)


def test_an_unknown_variable_in_the_key_fails_as_in_nginx(tmp_path):
    # nginx resolves variables after the parse and names no line: ngxsim names the value's
    with pytest.raises(ConfigError) as info:
        load(tmp_path, edit(tmp_path, "proxy_cache_purge PURGE", "proxy_cache_key $nope; proxy_cache_purge PURGE"))
    assert info.value.message == 'unknown "nope" variable'
    with open(info.value.file) as fh:
        assert "proxy_cache_key $nope;" in fh.read().splitlines()[info.value.line - 1]


def test_no_bus_is_an_error_with_the_fix(tmp_path):
    text = (f"load_module worker_events;\nload_module cache_purge;\nhttp {{\n"
            f"    proxy_cache_path {tmp_path}/c keys_zone=c:1m;\n}}\n")
    fails(tmp_path, text, 'module "cache_purge" publishes events into the http-level "worker_events_zone": add '
                          '"worker_events_zone NAME;" to this http block', 3)
    fails(tmp_path, text.replace("load_module worker_events;\n", ""),
          'module "cache_purge" publishes events, but no loaded module provides them: add "load_module worker_events;" '
          'and "worker_events_zone NAME;" in the http block', 2)


def test_proxy_ignore_headers_names_are_case_blind(tmp_path):
    config = load(tmp_path, edit(tmp_path, "proxy_cache_valid 404 1m;",
                                 "proxy_ignore_headers set-cookie X-Accel-Expires X-Accel-Redirect;"))
    static = next(b for b in config.blocks("location") if b.value.path == "/static/")
    assert static["proxy_ignore_headers"] == {"set-cookie", "x-accel-expires", "x-accel-redirect"}


def test_valid_defaults_and_any():
    from ngxsim_plugins.cache_purge.conf import parse_valid

    assert parse_valid(["5m"]) == Valid(frozenset({200, 301, 302}), 300.0)
    assert parse_valid(["any", "1m"]) == Valid(frozenset(), 60.0, any=True)
    assert parse_valid(["404", "any", "1m"]) == Valid(frozenset({404}), 60.0, any=True)


def test_purge_method_addresses():
    from ngxsim_plugins.cache_purge.conf import parse_purge

    assert parse_purge(["off"]) is None
    assert parse_purge(["on"]) == PurgeMethod("PURGE")
    rule = parse_purge(["BAN", "from", "127.0.0.1", "10.0.0.0/8", "::1"])
    assert rule.method == "BAN"
    assert rule.allows("127.0.0.1") and rule.allows("10.2.3.4") and rule.allows("::1")
    assert not rule.allows("127.0.0.2") and not rule.allows("") and not rule.allows("garbage")
    assert parse_purge(["PURGE", "from", "all"]).allows("192.0.2.1")


def test_an_inherited_proxy_cache_applies_where_the_location_proxies(tmp_path):
    text = edit(tmp_path, "        listen 127.0.0.1:8080;\n",
                "        listen 127.0.0.1:8080;\n        proxy_cache assets;\n"
                "        location /events { worker_events_api; worker_events_zone bus; worker_events_channel x; }\n")
    config = load(tmp_path, text)
    cached = {b.value.path for b in config.blocks("location") if "cache_purge" in b.stash}
    assert cached == {"/static/", "/plain/"}  # not the purge API, not the worker_events API
