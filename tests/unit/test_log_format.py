"""log_format: variables (the upstreams module's too) in access log lines, nginx's escaping, and
secrets masked, in one process against a real loopback backend."""

from __future__ import annotations

import pytest

from ngxsim import ConfigError
from ngxsim.core.conf.loader import load_configuration
from ngxsim.core.process import build_application
from ngxsim.testing import Backend

CONF = """
load_module worker_events;
load_module upstreams;
http {
    worker_events_zone bus;
    log_format upstreamlog '$remote_addr "$request" $status $body_bytes_sent '
                           'up=$upstream_addr us=$upstream_status ua="$http_user_agent" ref=$http_referer';
    upstream backend { server %s; }
    server {
        listen 127.0.0.1:8080;
        access_log %s upstreamlog;
        location / { proxy_pass http://backend; }
        location /plain/ { access_log %s; return 200 "x"; }
        location /api/upstreams { upstreams_api; upstreams_api_key s3cret; }
    }
}
"""


@pytest.fixture
def app(tmp_path):
    backend = Backend("b").start()
    conf = tmp_path / "n.conf"
    conf.write_text(CONF % (backend.address, tmp_path / "up.log", tmp_path / "plain.log"))
    application = build_application(str(conf), role="standalone")
    yield application, backend, tmp_path
    application.runtime.close()
    backend.stop()


def test_upstream_variables_escaping_and_masking_in_a_log_format(app):
    application, backend, folder = app
    client = application.test_client()
    r = client.get("/x?a=1", headers={"User-Agent": 'say "hi"'})
    assert r.status_code == 200
    r.close()
    client.get("/api/upstreams/backend?%6bey=s3cret&key=again", headers={"User-Agent": ""}).close()
    lines = (folder / "up.log").read_text().splitlines()
    assert lines[0] == (f'127.0.0.1 "GET /x?a=1 HTTP/1.1" 200 5 up={backend.address} us=200 '
                        'ua="say \\x22hi\\x22" ref=-')
    assert "s3cret" not in lines[1] and "again" not in lines[1]
    assert '"GET /api/upstreams/backend?%6bey=***&key=*** HTTP/1.1" 200' in lines[1]
    assert lines[1].endswith("up=- us=- ua=\"-\" ref=-")


def test_combined_is_the_default_format(app):
    application, _, folder = app
    application.test_client().get("/plain/y", headers={"Referer": "http://r/", "User-Agent": ""})
    line = (folder / "plain.log").read_text().strip()
    assert line.startswith('127.0.0.1 - - [') and line.endswith('] "GET /plain/y HTTP/1.1" 200 1 "http://r/" "-"')


def test_unknown_log_format_names_the_line():
    with pytest.raises(ConfigError, match=r'unknown log format "nope" in /p/l.conf:3'):
        load_configuration("/p/l.conf", text="http {\n log_format a '$status';\n access_log /tmp/x nope;\n}")
    with pytest.raises(ConfigError, match=r'duplicate "log_format" name "a" in /p/l.conf:2'):
        load_configuration("/p/l.conf", text="http {\n log_format a x;\n log_format a y;\n}")
