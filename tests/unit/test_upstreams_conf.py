"""upstreams: config errors with file and line, and the balancer's order."""

from __future__ import annotations

import pytest

from ngxsim import ConfigError
from ngxsim.core.conf.loader import load_configuration
from ngxsim_plugins.upstreams.balancer import Peer, Snapshot

HEAD = "load_module worker_events;\nload_module upstreams;\n"


def error(text):
    with pytest.raises(ConfigError) as err:
        load_configuration("/p/u.conf", text=HEAD + text)
    return str(err.value)


@pytest.mark.parametrize("text, message", [
    ("http {\n upstream b { server 127.0.0.1:1; }\n}",
     'module "upstreams" publishes events into the http-level "worker_events_zone": add "worker_events_zone NAME;" to this http block in /p/u.conf:3'),
    ("http {\n worker_events_zone bus;\n server { location / { proxy_pass http://nope; } }\n}",
     'host not found in upstream "nope" in /p/u.conf:5'),
    ("http {\n worker_events_zone bus;\n upstream b {\n  server 127.0.0.1:1 weight=0;\n }\n}",
     'invalid parameter "weight=0": a number from 1 to 1000 in /p/u.conf:6'),
    ("http {\n worker_events_zone bus;\n upstream b {\n  server 127.0.0.1:1 slow;\n }\n}",
     'invalid parameter "slow" in /p/u.conf:6'),
    ("http {\n worker_events_zone bus;\n upstream b {\n  server example.com:80;\n }\n}",
     'host "example.com" in "example.com:80" must be an IP address or localhost'),
    ("http {\n worker_events_zone bus;\n upstream b {\n  server 127.0.0.1:99999;\n }\n}",
     'invalid port in "127.0.0.1:99999" in /p/u.conf:6'),
    ("http {\n worker_events_zone bus;\n upstream b {\n  server 127.0.0.1:1;\n  server 127.0.0.1:1;\n }\n}",
     'server "127.0.0.1:1" is listed twice in upstream "b" in /p/u.conf:7'),
    ("http {\n worker_events_zone bus;\n upstream b { }\n}", 'no servers are inside upstream "b" in /p/u.conf:5'),
    ("http {\n worker_events_zone bus;\n upstream b { server 127.0.0.1:1; }\n upstream b { server 127.0.0.1:2; }\n}",
     'duplicate upstream "b" in /p/u.conf:6'),
    ("http {\n worker_events_zone bus;\n upstream b {\n  server 127.0.0.1:1;\n  zone z 1k;\n }\n}",
     'zone "z" is too small or too large: give 32k to 64m, not "1k" in /p/u.conf:7'),
    ("http {\n worker_events_zone bus;\n upstream b {\n  server 127.0.0.1:1;\n  state /nonexistent/dir/b.state;\n }\n}",
     'the folder of state file "/nonexistent/dir/b.state" does not exist or is not writable in /p/u.conf:7'),
    ("http {\n worker_events_zone bus;\n upstream b {\n  server 127.0.0.1:1;\n  upstream_refresh interval=5s;\n }\n}",
     '"upstream_refresh" needs exactly one of file=PATH or url=URL in /p/u.conf:7'),
    ("http {\n worker_events_zone bus;\n upstream b {\n  server 127.0.0.1:1;\n  upstream_refresh file=/x interval=1ms;\n }\n}",
     'invalid parameter "interval=1ms": a time from 50ms to 1d in /p/u.conf:7'),
    ("http {\n worker_events_zone bus;\n upstream b { server 127.0.0.1:1; }\n server {\n  location ~ ^/x { proxy_pass http://b/y; }\n }\n}",
     '"proxy_pass" cannot have URI part in location given by regular expression'),
    ("http {\n worker_events_zone bus;\n server {\n  location / { proxy_pass https://127.0.0.1:1; }\n }\n}",
     'https upstreams are not supported in "proxy_pass"'),
    ("http {\n worker_events_zone bus;\n server {\n  location / {\n   proxy_pass http://127.0.0.1:1$uri;\n"
     "   proxy_redirect default;\n  }\n }\n}",
     '"proxy_redirect default" cannot be used with "proxy_pass" directive with variables in /p/u.conf:8'),
    ("http {\n worker_events_zone bus;\n proxy_next_upstream error sometimes;\n}",
     'invalid value "sometimes" in "proxy_next_upstream" directive in /p/u.conf:5'),
    ("http {\n worker_events_zone bus;\n proxy_read_timeout 2h;\n}", 'invalid value "2h": a time from 1ms to 1h in /p/u.conf:5'),
    ("http {\n worker_events_zone bus;\n server {\n  server 127.0.0.1:1;\n }\n}", '"server" directive is not allowed here in /p/u.conf:6'),
])
def test_config_errors_name_file_and_line(text, message):
    assert message in error(text)


def test_without_worker_events_the_error_names_the_module_to_load():
    with pytest.raises(ConfigError, match='add "load_module worker_events;"'):
        load_configuration("/p/u.conf", text="load_module upstreams;\nhttp {\n upstream b { server 127.0.0.1:1; }\n}")


class _NoZone:
    """Counters of a peer that never failed."""

    def failure_window(self, slot):
        return 0, 0.0  # no failure, never checked

    def mark_checked(self, slot, now):
        raise AssertionError("no peer failed")


def peer(i, weight, **kw):
    return Peer(i, i, "127.0.0.1", 9000 + i, weight, 1, 10.0, kw.get("backup", False), kw.get("down", False),
                kw.get("drain", False), effective=weight)


def test_smooth_weighted_round_robin_is_nginx_order():
    # nginx's documented sequence for weights 5, 1, 1: a a b a c a a
    snap = Snapshot("b", 1, [peer(1, 5), peer(2, 1), peer(3, 1)])
    order = [snap.pick(_NoZone(), set(), 0.0).id for _ in range(14)]
    assert order == [1, 1, 2, 1, 3, 1, 1] * 2


def test_tried_down_draining_and_backup_peers():
    snap = Snapshot("b", 1, [peer(1, 1), peer(2, 1, down=True), peer(3, 1, drain=True), peer(4, 1, backup=True)])
    assert snap.pick(_NoZone(), set(), 0.0).id == 1
    assert snap.pick(_NoZone(), {1}, 0.0).id == 4  # the primary was tried: the backup next
    assert snap.pick(_NoZone(), {1, 4}, 0.0) is None


def test_proxy_host_and_port_are_known_before_the_proxy_runs(tmp_path):
    """A cache computes its key before the content handler: $proxy_host must not wait for it."""
    from ngxsim.core.process import build_application

    conf = tmp_path / "n.conf"
    conf.write_text(HEAD + "load_module ngxsim_test_phases;\nhttp {\n worker_events_zone bus;\n"
                    " upstream grp { server 127.0.0.1:9; }\n server {\n  listen 127.0.0.1:8080;\n"
                    "  add_header X-PH $proxy_host:$proxy_port always;\n"
                    "  location /g/ { test_precontent on; proxy_pass http://grp; }\n"
                    "  location /a/ { test_precontent on; proxy_pass http://127.0.0.1:9001/x/; }\n"
                    "  location /n/ { return 200; }\n }\n}\n")
    app = build_application(str(conf), role="standalone")
    try:
        client = app.test_client()
        # answered by the pre-content handler: the proxy never ran
        assert client.get("/g/?short=1").headers["X-PH"] == "grp:80"
        assert client.get("/a/?short=1").headers["X-PH"] == "127.0.0.1:9001:9001"
        assert client.get("/n/").headers["X-PH"] == ":"
    finally:
        app.runtime.close()


def test_api_field_errors_quote_values_as_nginx_does():
    from ngxsim_plugins.upstreams.snapshots import checked_fields

    for body, message in [({"weight": "3"}, 'field "weight" must be an integer from 1 to 1000, not "3"'),
                          ({"down": "yes"}, 'field "down" must be true or false, not "yes"'),
                          ({"colour": 1}, 'unknown field(s) "colour"; allowed: ')]:
        with pytest.raises(ValueError) as err:
            checked_fields(body, adding=False)
        assert str(err.value).startswith(message) and "'" not in str(err.value)
