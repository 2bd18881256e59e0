"""The same config and the same raw requests to real nginx and to ngxsim: the answers must match.

Compared for every request: status and reason phrase, body, ``Location``, ``Content-Type``, the
headers the config adds, and whether the connection was closed without an answer (``444``). The
servers' own headers (``Server``, ``Date``, ``Connection``) are not compared, and the port each
server listens on is written as ``{port}`` in both. Skipped, saying why, where no nginx binary
exists; ``.ci/run`` installs Debian's ``nginx-light``.
"""

from __future__ import annotations

import pytest

from helpers import start_server
from nginx_reference import Nginx, check_config, find_nginx, first_emerg, raw_request

NGINX = find_nginx()
pytestmark = pytest.mark.skipif(NGINX is None, reason="no nginx binary on PATH or in /usr/sbin "
                                "(.ci/run installs Debian's nginx-light; install it to run the differential tests)")

SERVERS = r"""
server {
    listen 127.0.0.1:{port} default_server;
    server_name exact.test;
    add_header X-Srv s;

    location / { return 200 "root $uri\n"; }
    location = /exact { return 200 "exact\n"; }
    location /docs/ { return 200 "docs $uri\n"; }
    location ^~ /static/ { return 200 "static $uri\n"; }
    location ~* \.(gif|png)$ { return 200 "image $uri\n"; }

    location /r301 { return 301 /elsewhere; }
    location /r302 { return 302 http://x.test/a; }
    location /r307 { return 307 /temp?x=1; }
    location /bare301 { return 301; }
    location /url { return https://y.test/b; }

    location /e404 { return 404; }
    location /e500 { return 500; }
    location /e503 { return 503; }
    location /etext { return 403 "nope\n"; }
    location /n204 { return 204; }
    location /n204text { return 204 "ignored"; }
    location /close { return 444; }
    location /ok-empty { return 200; }

    location /vars { return 200 "uri=$uri args=$args a=$arg_a A=$arg_A ru=$request_uri m=$request_method h=$host sn=$server_name\n"; }
    location /hdr { return 200 "x=$http_x_a\n"; }
}

server {
    listen 127.0.0.1:{port};
    server_name other.test *.wild.test;
    add_header X-Other o always;
    location / { return 200 "other $host $uri\n"; }
    location /missing { return 404; }
}

server {
    listen 127.0.0.1:{port};
    server_name www.served.* ~^(?<sub>[a-z]+)\.re\.test$;
    location / { return 200 "regex server $host\n"; }
}
"""


def req(target: str, host: str | None = "exact.test", method: str = "GET", version: str = "HTTP/1.1",
        extra: str = "") -> bytes:
    head = f"{method} {target} {version}\r\n"
    if host is not None:
        head += f"Host: {host}\r\n"
    return (head + extra + "Connection: close\r\n\r\n").encode("latin-1")


CASES = {
    # location choice
    "prefix": req("/anything/x"),
    "exact": req("/exact"),
    "exact-not-prefix": req("/exact/more"),
    "longest-prefix": req("/docs/a/b"),
    "caret-tilde-stops-regex": req("/static/a.png"),
    "regex-case-insensitive": req("/docs/A.PNG"),
    # core-generated responses
    "return-301-relative": req("/r301"),
    "return-302-absolute": req("/r302"),
    "return-307-query": req("/r307"),
    "return-301-without-url": req("/bare301"),
    "return-url": req("/url"),
    "return-404": req("/e404"),
    "return-500": req("/e500"),
    "return-503": req("/e503"),
    "return-403-text": req("/etext"),
    "return-204": req("/n204"),
    "return-204-text": req("/n204text"),
    "return-444-closes": req("/close"),
    "return-200-empty": req("/ok-empty"),
    "head-of-return": req("/exact", method="HEAD"),
    "no-location-404": req("/missing", host="other.test"),
    # request validation
    "dotdot-above-root": req("/../x"),
    "dotdot-inside": req("/docs/a/../b"),
    "trailing-dotdot": req("/docs/a/.."),
    "trailing-dot": req("/docs/a/."),
    "merged-slashes": req("//docs//x"),
    "percent-alone": req("/%"),
    "percent-bad-hex": req("/%zz"),
    "percent-nul": req("/a%00b"),
    "percent-encoded-utf8": req("/docs/caf%C3%A9"),
    "percent-slash": req("/docs%2Fx"),
    "http11-without-host": req("/exact", host=None),
    "http10-without-host": req("/exact", host=None, version="HTTP/1.0"),
    "empty-host": req("/exact", host=""),
    "host-with-slash": req("/exact", host="a/b"),
    "host-double-dot": req("/exact", host="a..b"),
    "options-star": req("*", method="OPTIONS"),
    "absolute-form": req("http://other.test/p", host="exact.test"),
    # servers and $host
    "host-port-and-case": req("/vars", host="Other.TEST:8080"),
    "host-trailing-dot": req("/vars", host="other.test."),
    "wildcard-server": req("/w", host="a.b.wild.test"),
    "tail-wildcard-server": req("/w", host="www.served.org"),
    "regex-server": req("/w", host="abc.re.test"),
    "unknown-host-default": req("/vars", host="nobody.test"),
    # variables
    "args": req("/vars?a=1&A=2&b=%20x"),
    "arg-case-insensitive": req("/vars?A=up"),
    "repeated-header": req("/hdr", extra="X-A: one\r\nX-A: two\r\n"),
}


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """nginx and ngxsim (gunicorn, one worker) serving SERVERS, stopped at the end."""
    folder = tmp_path_factory.mktemp("differential")
    nginx = Nginx(NGINX, folder / "nginx", SERVERS).start()
    try:
        ngxsim = start_server(folder, "http {\n" + SERVERS + "\n}\n", workers=1)
    except BaseException:
        nginx.stop()
        raise
    yield nginx, ngxsim
    ngxsim.stop()
    nginx.stop()


@pytest.mark.parametrize("name", sorted(CASES))
def test_same_answer_as_nginx(pair, name):
    nginx, ngxsim = pair
    data = CASES[name]
    expected = raw_request(nginx.port, data).comparable(nginx.port)
    got = raw_request(ngxsim.port, data).comparable(ngxsim.port)
    assert got == expected, f"request {data!r}"


BAD_CONFIGS = {
    "unknown-directive": "http {\n    server {\n        bogus on;\n    }\n}\n",
    "not-allowed-here": "http {\n    return 200;\n}\n",
    "duplicate-location": "http {\n  server {\n    location /a { }\n    location /b { }\n    location /a { }\n  }\n}\n",
    "named-location-nested": "http {\n  server {\n    location /a {\n      location @n { }\n    }\n  }\n}\n",
    "inside-exact-location": "http {\n  server {\n    location = /a {\n      location /a/b { }\n    }\n  }\n}\n",
    "outside-location": "http {\n  server {\n    location /a {\n      location /b { }\n    }\n  }\n}\n",
    "bad-regex": "http {\n  server {\n    location ~ ^/(a {\n    }\n  }\n}\n",
    "missing-semicolon": "http {\n  server {\n    listen 8080\n    server_name a;\n  }\n}\n",
    "eof-inside-block": "http {\n  server {\n    listen 8080;\n",
    "unknown-variable": "http {\n  server {\n    location / { return 200 $nope; }\n  }\n}\n",
    "bad-variable-syntax": "http {\n  server {\n    location / { return 200 \"cost 5$ total\"; }\n  }\n}\n",
    "unclosed-brace-variable": "http {\n  server {\n    location / { return 200 \"${uri\"; }\n  }\n}\n",
    "bad-return-code": "http {\n  server {\n    location / { return 2000; }\n  }\n}\n",
}


@pytest.mark.parametrize("name", sorted(BAD_CONFIGS))
def test_same_config_error_as_nginx(tmp_path, name):
    import subprocess
    import sys

    conf = tmp_path / "t.conf"
    conf.write_text(BAD_CONFIGS[name])
    expected = check_config(NGINX, tmp_path / "prefix", conf)
    assert expected, f"nginx accepted the {name} config"
    out = subprocess.run([sys.executable, "-m", "ngxsim.cli", "-t", "-c", str(conf)], capture_output=True,
                         text=True, timeout=60)
    assert first_emerg(out.stderr) == expected
