"""Location choice and server choice, as nginx documents them."""

from __future__ import annotations

import pytest

from ngxsim.core.conf.loader import load_configuration
from ngxsim.core.http.location import LocationMatcher, parse_location

# nginx.org/en/docs/http/ngx_http_core_module.html#location
NGINX_DOCS_EXAMPLE = [
    (["=", "/"], "A"),
    (["/"], "B"),
    (["/documents/"], "C"),
    (["^~", "/images/"], "D"),
    (["~*", r"\.(gif|jpg|jpeg)$"], "E"),
]


def matcher(locations):
    m = LocationMatcher()
    for args, name in locations:
        m.add(parse_location(args), name)
    return m


@pytest.mark.parametrize("uri, expected", [
    ("/", "A"),
    ("/index.html", "B"),
    ("/documents/document.html", "C"),
    ("/images/1.gif", "D"),
    ("/documents/1.jpg", "E"),
])
def test_nginx_documented_example(uri, expected):
    assert matcher(NGINX_DOCS_EXAMPLE).match(uri) == expected


def test_regexes_are_tried_in_config_order_not_by_length():
    m = matcher([(["~", "/a"], "short-first"), (["~", "/a/b/c"], "long-second")])
    assert m.match("/a/b/c") == "short-first"


def test_regex_case_sensitivity():
    m = matcher([(["~", r"\.PNG$"], "cs"), (["~*", r"\.png$"], "ci"), (["/"], "root")])
    assert m.match("/x.PNG") == "cs"
    assert m.match("/x.png") == "ci"
    assert m.match("/x.Png") == "ci"
    m2 = matcher([(["~", r"\.png$"], "cs"), (["/"], "root")])
    assert m2.match("/x.PNG") == "root"


def test_longest_prefix_wins_over_shorter_even_if_declared_first():
    m = matcher([(["/a"], "short"), (["/a/b"], "long")])
    assert m.match("/a/b/c") == "long" and m.match("/a/x") == "short"


def test_caret_tilde_stops_regex_search_only_when_it_is_the_longest_prefix():
    m = matcher([(["^~", "/static/"], "static"), (["/static/img/"], "img"), (["~", r"\.gif$"], "gif")])
    assert m.match("/static/a.gif") == "static"
    assert m.match("/static/img/a.gif") == "gif"  # the longest prefix is plain: regexes still run


def test_exact_match_beats_everything():
    m = matcher([(["~", "^/x$"], "regex"), (["=", "/x"], "exact"), (["^~", "/x"], "prefix")])
    assert m.match("/x") == "exact"


def test_no_match_is_none():
    assert matcher([(["/a"], "a")]).match("/b") is None


def test_glued_modifier_form():
    spec = parse_location([r"~*\.png$"])
    assert spec.modifier == "~*" and spec.path == r"\.png$"


SERVERS = """
http {
    server { listen 127.0.0.1:8001; server_name first.example; return 200 first; }
    server { listen 127.0.0.1:8001; server_name example.com www.example.com; return 200 exact; }
    server { listen 127.0.0.1:8001; server_name *.example.com; return 200 head-short; }
    server { listen 127.0.0.1:8001; server_name *.api.example.com; return 200 head-long; }
    server { listen 127.0.0.1:8001; server_name mail.*; return 200 tail; }
    server { listen 127.0.0.1:8001; server_name ~^(?<user>.+)\\.users\\.test$; return 200 regex; }
    server { listen 127.0.0.1:8001 default_server; server_name _; return 200 default; }
    server { listen 127.0.0.1:8002; server_name other; return 200 p2-first; }
    server { listen 127.0.0.1:8002; server_name second; return 200 p2-second; }
}
"""


@pytest.fixture(scope="module")
def servers():
    config = load_configuration("/p/s.conf", text=SERVERS)
    table = config.stash["core.http"].servers

    def pick(port, host):
        block = table.select("127.0.0.1", port, host.lower())  # the request's host comes lower-cased
        return block["return"].text.source

    return pick


@pytest.mark.parametrize("host, expected", [
    ("example.com", "exact"),
    ("WWW.Example.COM", "exact"),
    ("x.example.com", "head-short"),
    ("x.api.example.com", "head-long"),
    ("mail.example.org", "tail"),
    ("mail.example.com", "head-short"),  # a leading wildcard is tried before a trailing one
    ("bob.users.test", "regex"),
    ("unknown.test", "default"),
    ("", "default"),
])
def test_server_name_choice(servers, host, expected):
    assert servers(8001, host) == expected


def test_without_default_server_the_first_of_the_address_answers(servers):
    assert servers(8002, "nobody") == "p2-first"
    assert servers(8002, "second") == "p2-second"


@pytest.mark.parametrize("name, message", [
    # nginx says these three without a place (it checks names once it has every server of an
    # address); here the server_name line that gives the name
    ("a*b.com", 'invalid server name or wildcard "a*b.com" on 0.0.0.0:80 in /p/s.conf:4'),
    ("*.a.*", 'invalid server name or wildcard "*.a.*" on 0.0.0.0:80 in /p/s.conf:4'),
    ("a..b", 'invalid server name or wildcard "a..b" on 0.0.0.0:80 in /p/s.conf:4'),
    ("~(unclosed", 'pcre2_compile() failed: missing closing parenthesis in "(unclosed" in /p/s.conf:4'),
    ("*", 'server name "*" is invalid in /p/s.conf:4'),
    ("~", 'empty regex in server name "~" in /p/s.conf:4'),
])
def test_bad_server_names_fail_with_nginx_wording(name, message):
    from ngxsim import ConfigError

    with pytest.raises(ConfigError) as err:
        load_configuration("/p/s.conf", text=f"http {{\n server {{\n  listen 80;\n  server_name ok {name};\n }}\n"
                                             f" server {{ listen 80; server_name other; }}\n}}")
    assert str(err.value) == message


def test_wildcards_of_an_address_with_one_server_are_not_checked():
    # nginx builds (and checks) the name hash of an address only when servers share it
    config = load_configuration("/p/s.conf", text="http { server { listen 80; server_name a*b.com; } }")
    assert config.stash["core.http"].servers.select("127.0.0.1", 80, "x") is not None


def test_a_name_two_servers_share_is_nginx_s_warning_and_the_first_keeps_it():
    config = load_configuration("/p/s.conf", text="http {\n server { listen 80; server_name ok.test; return 200 a; }\n"
                                                  " server { listen 80; server_name ok.test; return 200 b; }\n}")
    assert config.warnings == ['conflicting server name "ok.test" on 0.0.0.0:80, ignored']
    assert config.stash["core.http"].servers.select("127.0.0.1", 80, "ok.test")["return"].text.source == "a"


def test_ngxsim_t_prints_warnings(tmp_path, capsys):
    from ngxsim.cli import test_config

    conf = tmp_path / "w.conf"
    conf.write_text("http { server { server_name a; } server { server_name a; } }\n")
    assert test_config(str(conf)) == 0
    assert 'ngxsim: [warn] conflicting server name "a" on 127.0.0.1:8080, ignored' in capsys.readouterr().err
