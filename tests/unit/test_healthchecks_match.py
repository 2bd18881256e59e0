"""``match`` blocks: parsing each line (errors name file and line) and judging responses."""

from __future__ import annotations

import pytest

from ngxsim import ConfigError
from ngxsim.core.conf.loader import load_configuration
from ngxsim_plugins.healthchecks.match import Match, default_check, parse_body, parse_header, parse_status

CONF = """load_module worker_events;
load_module healthchecks;
http {
    worker_events_zone bus;
    match ok {
        %s
    }
    server { location / { health_check_status; } }
}
"""


def load(inside: str):
    return load_configuration("/p/m.conf", text=CONF % inside)


def match_of(inside: str) -> Match:
    block = load(inside).blocks("match")[0]
    return Match(block.value, tuple(block["status"] or ()), tuple(block["header"] or ()), tuple(block["body"] or ()))


JSON = [("Content-Type", "application/json")]


def test_the_issue_example_passes_an_up_answer_and_fails_a_down_one():
    m = match_of('status 200-399;\n header Content-Type ~ json;\n body ~ "\\"status\\": *\\"up\\"";')
    assert m.check(200, JSON, '{"status": "up"}') is None
    assert m.check(200, JSON, '{"status":"up"}') is None
    assert m.check(503, JSON, '{"status": "down"}') == "status 503"
    assert m.check(200, JSON, '{"status": "down"}') == 'body does not match "\"status\": *\"up\""'
    assert m.check(200, [("Content-Type", "text/plain")], '{"status": "up"}').startswith("header Content-Type")


@pytest.mark.parametrize("line, passing, failing", [
    ("status 200;", [200], [201, 500]),
    ("status ! 500;", [200, 404, 503], [500]),
    ("status 200 204;", [200, 204], [201]),
    ("status ! 301 302;", [200, 303], [301, 302]),
    ("status 200-399;", [200, 301, 399], [199, 400, 503]),
    ("status ! 400-599;", [200, 399], [400, 599]),
    ("status 301-303 307;", [301, 303, 307], [304, 200]),
    ("status 200; status ! 204;", [200], [204, 500]),  # every line must hold
])
def test_status_codes_ranges_and_negation(line, passing, failing):
    m = match_of(line)
    assert all(m.check(code, []) is None for code in passing)
    assert all(m.check(code, []) == f"status {code}" for code in failing)


@pytest.mark.parametrize("line, headers, ok", [
    ("header Content-Type;", [("content-type", "x")], True),   # names compare case-insensitively
    ("header Content-Type;", [], False),
    ("header ! X-Maintenance;", [], True),
    ("header ! X-Maintenance;", [("X-Maintenance", "1")], False),
    ("header Content-Type = text/html;", [("Content-Type", "text/html")], True),
    ("header Content-Type = text/html;", [("Content-Type", "text/html; charset=utf-8")], False),
    ("header Content-Type = text/html;", [], False),
    ("header Content-Type != text/html;", [("Content-Type", "application/json")], True),
    ("header Content-Type != text/html;", [], True),           # absent: no value equals it
    ("header Content-Type != text/html;", [("Content-Type", "text/html")], False),
    ("header Connection ~ close;", [("Connection", "keep-alive, close")], True),
    ("header Connection ~ ^close$;", [("Connection", "keep-alive, close")], False),
    ("header Server !~ ^old;", [("Server", "new/2")], True),
    ("header Server !~ ^old;", [("Server", "old/1")], False),
    # a repeated header: any value may satisfy = and ~, none may satisfy != and !~
    ("header X-Role = primary;", [("X-Role", "replica"), ("X-Role", "primary")], True),
    ("header X-Role != primary;", [("X-Role", "replica"), ("X-Role", "primary")], False),
])
def test_header_presence_equality_and_regex(line, headers, ok):
    assert (match_of(line).check(200, headers) is None) == ok


def test_header_failures_say_which_header_and_why():
    assert match_of("header X-Ready;").check(200, []) == "header X-Ready missing"
    assert match_of("header ! X-Down;").check(200, [("X-Down", "1")]) == "header X-Down present"
    assert match_of("header X-A = 1;").check(200, [("X-A", "2")]) == 'header X-A "2" fails = "1"'


@pytest.mark.parametrize("line, body, ok", [
    ("body ~ ready;", "all ready now", True),
    ("body ~ ready;", "starting", False),
    ("body ~ ^ready;", "not ready", False),             # searched, anchors mean what they say
    ("body !~ maintenance;", "ok", True),
    ("body !~ maintenance;", "under maintenance", False),
    ("body ~ Ready;", "ready", False),                  # case-sensitive
    ("body ~ ok; body !~ error;", "ok", True),
    ("body ~ ok; body !~ error;", "ok but error", False),
    # PCRE2 as nginx, where Python's re differs: POSIX classes, \Z, an ASCII-only \w
    ('body ~ "^[[:digit:]]+$";', "200", True),
    ('body ~ "^[[:digit:]]+$";', "2x0", False),
    ('body ~ "up\\Z";', "up\n", True),
    ('body ~ "^\\w+$";', "été", False),
])
def test_body_regexes(line, body, ok):
    assert (match_of(line).check(200, [], body) is None) == ok


def test_an_empty_match_block_passes_any_answer_and_no_match_wants_2xx_or_3xx():
    assert match_of("").check(500, []) is None
    assert default_check(200) is None and default_check(399) is None
    assert default_check(404) == "status 404" and default_check(199) == "status 199"


def test_only_body_tests_make_the_prober_read_the_body():
    assert match_of("body ~ x;").reads_body
    assert not match_of("status 200; header A;").reads_body


@pytest.mark.parametrize("inside, message", [
    ("status 99;", 'invalid status "99" in "status" directive: a code from 100 to 599, or a range like 200-399, is required in /p/m.conf:6'),
    ("status 600;", 'invalid status "600" in "status" directive'),
    ("status abc;", 'invalid status "abc"'),
    ("status 200-;", 'invalid status "200-"'),
    ("status 399-200;", 'invalid status range "399-200" in "status" directive: 399 is above 200 in /p/m.conf:6'),
    ("status !;", '"status !" needs at least one code or range in /p/m.conf:6'),
    ("status !500;", 'invalid status "!500"'),
    ("status;", 'invalid number of arguments in "status" directive in /p/m.conf:6'),
    ("header;", 'invalid number of arguments in "header" directive in /p/m.conf:6'),
    ("header A = b c;", 'invalid number of arguments in "header" directive in /p/m.conf:6'),
    ("header A b;", 'invalid "header" test "A b": use "header NAME", "header ! NAME" or "header NAME =|!=|~|!~ VALUE" in /p/m.conf:6'),
    ("header A == b;", 'invalid operator "==" in "header" directive: use =, !=, ~ or !~ in /p/m.conf:6'),
    ('header "Bad Name" = b;', 'invalid header name "Bad Name" in "header" directive in /p/m.conf:6'),
    ("header A ~ (;", 'pcre2_compile() failed: missing closing parenthesis in "(" in /p/m.conf:6'),
    # nginx's PCRE2, not Python's re, which reads "[[:digit:]+" as a class of "[:digt" and "+"
    ("header A ~ [[:digit:]+;", 'pcre2_compile() failed: missing terminating ] for character class in '
                                '"[[:digit:]+" in /p/m.conf:6'),
    ("body ready;", 'invalid number of arguments in "body" directive in /p/m.conf:6'),
    ("body = ready;", 'invalid operator "=" in "body" directive: use ~ or !~ in /p/m.conf:6'),
    ("body ~ [;", 'pcre2_compile() failed: missing terminating ] for character class in "["'),
    ("health_check;", '"health_check" directive is not allowed here in /p/m.conf:6'),
    ("send x;", 'unknown directive "send" in /p/m.conf:6'),
])
def test_every_bad_line_names_file_and_line(inside, message):
    with pytest.raises(ConfigError) as err:
        load(inside)
    assert message in str(err.value)


def test_bad_lines_point_at_their_own_line():
    with pytest.raises(ConfigError) as err:
        load("status 200;\n        header A;\n        body ~ ok;\n        status 700;")
    assert str(err.value).endswith("in /p/m.conf:9")


def test_match_blocks_stand_in_http_only_and_need_a_valid_name():
    bad_place = CONF.replace("server { location / {", "server { match x { } location / {") % ""
    with pytest.raises(ConfigError, match=r'"match" directive is not allowed here in /p/m.conf:8'):
        load_configuration("/p/m.conf", text=bad_place)
    with pytest.raises(ConfigError, match=r'invalid match name "a/b"'):
        load_configuration("/p/m.conf", text=CONF.replace("match ok", "match a/b") % "")


def test_a_duplicate_match_name_names_both_places():
    text = CONF.replace("    server {", "    match ok { status 200; }\n    server {") % ""
    with pytest.raises(ConfigError) as err:
        load_configuration("/p/m.conf", text=text)
    assert str(err.value) == 'duplicate match "ok", first defined at /p/m.conf:5 in /p/m.conf:8'


def test_parsers_directly():
    assert parse_status(["!", "500", "502-504"]).ranges == ((500, 500), (502, 504))
    assert parse_header(["!", "X"]).negate and parse_header(["X", "~", "a+"]).regex.source == "a+"
    assert parse_body(["!~", "x"]).negate
