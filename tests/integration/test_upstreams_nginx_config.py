"""The connection directives of nginx's upstream and proxy modules that ngxsim reads
(``keepalive``, ``keepalive_requests``, ``keepalive_time``, ``keepalive_timeout``, ``max_conns=``,
``proxy_http_version``): the same errors as ``nginx -t``, and the values kept in the module's
config for the proxy."""

from __future__ import annotations

import pytest

from ngxsim.testing import check_config, find_nginx

from ngxsim import ConfigError
from ngxsim.core.conf.loader import load_configuration

NGINX = find_nginx()

# ngxsim's lines that nginx has not: nginx reads them as comments, so the line numbers agree
NGXSIM_ONLY = ("load_module worker_events;", "load_module upstreams;", "worker_events_zone bus;")


def texts(body: str) -> tuple[str, str]:
    ngxsim = "load_module worker_events;\nload_module upstreams;\nhttp {\n  worker_events_zone bus;\n" + body + "}\n"
    nginx = ngxsim
    for line in NGXSIM_ONLY:
        nginx = nginx.replace(line, "# " + line)
    return ngxsim, nginx


BAD = {
    "keepalive-zero": "  upstream b {\n    server 127.0.0.1:1;\n    keepalive 0;\n  }\n",
    "keepalive-word": "  upstream b {\n    server 127.0.0.1:1;\n    keepalive many;\n  }\n",
    "keepalive-twice": "  upstream b {\n    server 127.0.0.1:1;\n    keepalive 4;\n    keepalive 5;\n  }\n",
    "keepalive-two-args": "  upstream b {\n    server 127.0.0.1:1;\n    keepalive 1 2;\n  }\n",
    "keepalive-outside-upstream": "  keepalive 4;\n",
    "keepalive-requests-word": "  upstream b {\n    server 127.0.0.1:1;\n    keepalive_requests x;\n  }\n",
    "keepalive-time-bad": "  upstream b {\n    server 127.0.0.1:1;\n    keepalive_time 1x;\n  }\n",
    "keepalive-timeout-bad": "  upstream b {\n    server 127.0.0.1:1;\n    keepalive_timeout soon;\n  }\n",
    "max-conns-word": "  upstream b {\n    server 127.0.0.1:1 max_conns=x;\n  }\n",
    "max-conns-negative": "  upstream b {\n    server 127.0.0.1:1 max_conns=-1;\n  }\n",
    "http-version-2": "  proxy_http_version 2.0;\n",
    "http-version-in-upstream": "  upstream b {\n    server 127.0.0.1:1;\n    proxy_http_version 1.1;\n  }\n",
    # proxy_pass with variables
    "variable-pass-redirect-default": "  server {\n    location / {\n      proxy_pass http://$host;\n"
                                      "      proxy_redirect default;\n    }\n  }\n",
    "variable-pass-invalid-name": "  server {\n    location / {\n      proxy_pass http://$;\n    }\n  }\n",
    "variable-pass-unclosed": "  server {\n    location / {\n      proxy_pass http://${host;\n    }\n  }\n",
    "variable-pass-twice": "  server {\n    location / {\n      proxy_pass http://$host;\n"
                           "      proxy_pass http://$host;\n    }\n  }\n",
}

# the forms of proxy_pass with variables nginx -t accepts: nothing but the variables is checked
# before a request (not the prefix, not a URI part in a regex location)
GOOD = {
    "group-name": "  server {\n    location / { proxy_pass http://$arg_to; }\n  }\n",
    "host-and-uri": "  server {\n    location / { proxy_pass http://$host$request_uri; }\n  }\n",
    "prefix-and-path": "  server {\n    location / { proxy_pass http://up_$arg_x/path; }\n  }\n",
    "no-prefix": "  server {\n    location / { proxy_pass $arg_u; }\n  }\n",
    "uri-in-regex-location": "  server {\n    location ~ ^/r/ { proxy_pass http://$host/x; }\n  }\n",
    "redirect-off-and-pairs": "  server {\n    location / { proxy_pass http://$host; proxy_redirect off; }\n"
                              "    location /p/ { proxy_pass http://$host; proxy_redirect http://a/ /; }\n  }\n",
}


@pytest.mark.skipif(NGINX is None, reason="no nginx binary on PATH or in /usr/sbin (.ci/run installs nginx-light)")
@pytest.mark.parametrize("name", sorted(BAD))
def test_same_config_error_as_nginx(tmp_path, name):
    ngxsim_text, nginx_text = texts(BAD[name])
    conf = tmp_path / "u.conf"
    conf.write_text(nginx_text)
    expected = check_config(NGINX, tmp_path / "prefix", conf)
    assert expected, f"nginx accepted the {name} config"
    conf.write_text(ngxsim_text)
    with pytest.raises(ConfigError) as err:
        load_configuration(str(conf))
    assert str(err.value) == expected


def test_the_values_are_kept_for_the_proxy():
    text, _ = texts("  upstream b {\n    server 127.0.0.1:1 max_conns=7;\n    server 127.0.0.1:2;\n"
                    "    keepalive 16;\n    keepalive_requests 50;\n    keepalive_timeout 5s;\n  }\n"
                    "  upstream d {\n    server 127.0.0.1:3;\n  }\n"
                    "  proxy_http_version 1.1;\n"
                    "  server {\n    location / { proxy_pass http://b; }\n"
                    "    location /old/ { proxy_http_version 1.0; proxy_pass http://d; }\n  }\n")
    config = load_configuration("/p/u.conf", text=text)
    b, d = config.stash["upstreams"].upstreams["b"], config.stash["upstreams"].upstreams["d"]
    assert (b.keepalive, b.keepalive_requests, b.keepalive_time, b.keepalive_timeout) == (16, 50, 3600.0, 5.0)
    assert b.max_conns == {"127.0.0.1:1": 7, "127.0.0.1:2": 0}
    assert (d.keepalive, d.keepalive_requests, d.keepalive_timeout) == (None, 1000, 60.0)  # nginx's defaults
    assert {loc.value.path: loc.get("proxy_http_version") for loc in config.blocks("location")} == \
        {"/": "1.1", "/old/": "1.0"}


@pytest.mark.skipif(NGINX is None, reason="no nginx binary on PATH or in /usr/sbin (.ci/run installs nginx-light)")
@pytest.mark.parametrize("name", sorted(GOOD))
def test_variable_proxy_pass_accepted_as_nginx_accepts_it(tmp_path, name):
    ngxsim_text, nginx_text = texts(GOOD[name])
    conf = tmp_path / "u.conf"
    conf.write_text(nginx_text + "events {}\n")
    assert check_config(NGINX, tmp_path / "prefix", conf) == ""
    conf.write_text(ngxsim_text)
    load_configuration(str(conf))  # raises ConfigError if refused
