"""map against real nginx: the same maps answer the same requests the same way (exact keys without
regard to case, regexes with numbered and named captures, caseless regexes, hostnames with
wildcards, include, default, values with variables), and broken maps give nginx's ``-t`` errors.
Skipped, saying why, where no nginx binary is installed."""

from __future__ import annotations

import http.client

import pytest

from ngxsim.testing import config_errors, find_nginx

MAPS = r"""
map $uri $m_exact {
    default       d;
    /a            A;
    /B            b-upper;
    ~^/re/(?<part>[a-z]+)/(\d+)$   "re $part $2";
    ~*^/CI/       ci;
    \~tilde       t;
    /var          "uri=$uri";
}
map $http_host $m_host {
    hostnames;
    default        none;
    example.com    ex;
    *.example.com  wild;
    .org.test      org;
    www.*          www;
    ~^(?<sub>[a-z]+)\.re\.test$  "re-$sub";
}
map $arg_a $m_arg {
    ""        empty;
    default   "arg=$arg_a";
    include   {inc};
}
map $m_exact $m_chain {
    A        chained;
    default  "";
}
map $uri $m_volatile {
    volatile;
    default  v;
}
server {
    listen 127.0.0.1:{port} default_server;
    location / { return 200 "$m_exact|$m_host|$m_arg|$m_chain|$m_volatile|$1\n"; }
}
"""

INCLUDED = "from-include  inc;\nx  ex;\n"

REQUESTS = [
    ("/a", "localhost"), ("/A", "localhost"), ("/b", "localhost"), ("/nothing", "localhost"),
    ("/re/abc/42", "localhost"), ("/re/ABC/42", "localhost"), ("/ci/x", "localhost"), ("/Ci/x", "localhost"),
    ("/~tilde", "localhost"), ("/var", "localhost"),
    ("/", "example.com"), ("/", "EXAMPLE.com"), ("/", "a.example.com"), ("/", "a.b.example.com"),
    ("/", "org.test"), ("/", "x.org.test"), ("/", "www.any.thing"), ("/", "abc.re.test"), ("/", "example.com."),
    ("/", "other.test"),
    ("/?a=from-include", "localhost"), ("/?a=x", "localhost"), ("/?a=zzz", "localhost"), ("/?a=", "localhost"),
]

NGINX = find_nginx()
pytestmark = pytest.mark.skipif(NGINX is None, reason="no nginx binary on PATH or in /usr/sbin "
                                "(apt-get install nginx-light to run the differential tests)")


@pytest.fixture
def pair(ngxsim_server, ngxsim_nginx, tmp_path):
    inc = tmp_path / "map.inc"
    inc.write_text(INCLUDED)
    nginx = ngxsim_nginx(MAPS, placeholders={"inc": inc})  # its master reads the config as the test's user
    ngxsim = ngxsim_server("load_module map;\nhttp {\n" + MAPS + "}\n", workers=1, placeholders={"inc": inc})
    return nginx, ngxsim


def get(port: int, path: str, host: str) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers={"Host": host})
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def test_same_answers_as_nginx(pair):
    nginx, ngxsim = pair
    expected = [get(nginx.port, path, host) for path, host in REQUESTS]
    got = [get(ngxsim.port, path, host) for path, host in REQUESTS]
    assert got == expected


BAD = {
    "dest-not-variable": "map $uri b { }",
    "three-words": "map $uri $b {\n  a b c;\n}",
    "one-word": "map $uri $b {\n  a;\n}",
    "duplicate-default": "map $uri $b {\n  default x;\n  default y;\n}",
    "conflicting-key": "map $uri $b {\n  a 1;\n  A 2;\n}",
    "bad-regex": "map $uri $b {\n  ~(x 1;\n}",
    "bad-wildcard": "map $http_host $b {\n  hostnames;\n  a*b x;\n}",
    "shadows-core-variable": "map $uri $uri { }",
    "unknown-source": "map $nope $b { }",
    "unknown-in-value": "map $uri $b {\n  default $nope;\n}",
    "one-argument": "map $uri { }",
    "in-server": "server {\n  map $uri $b { }\n}",
}


# nginx finds these once the whole file is read and names no place; ngxsim names the line that
# causes them (every config error names its file and line): name -> that line
PLACED_HERE = {"unknown-source": 3, "unknown-in-value": 4}


@pytest.mark.parametrize("name", sorted(BAD))
def test_same_config_error_as_nginx(tmp_path, name):
    expected, got = config_errors(NGINX, tmp_path, BAD[name], ("map",))
    assert expected, f"nginx accepted the {name} config"
    if name in PLACED_HERE:
        expected += f" in {tmp_path / 't.conf'}:{PLACED_HERE[name]}"
    assert got == expected
