"""nginx's request-target parsing, Host check, PCRE2 regexes and variable syntax, piece by piece."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ngxsim import ConfigError
from ngxsim.core.conf.loader import load_configuration
from ngxsim.core.http.location import LocationMatcher, parse_location
from ngxsim.core.http.regex import Regex, to_bytes
from ngxsim.core.http import uri as uri_module
from ngxsim.core.http.uri import BadRequest, parse_path, split_target, validate_host
from ngxsim.core.http.variables import Template


@pytest.mark.parametrize("target, uri, args", [
    (b"/", b"/", b""),
    (b"/a//b/./c/../d", b"/a/b/d", b""),
    (b"/docs/a/..", b"/docs/", b""),  # a trailing /.. keeps nginx's result
    (b"/docs/a/.", b"/docs/a/", b""),
    (b"/caf%C3%A9/", "/café/".encode(), b""),
    (b"/a%2F..%2Fb", b"/b", b""),  # a decoded "/" or "." counts as the character
    (b"/a/%2e%2e", b"/", b""),
    (b"/%3F?a=%20", b"/?", b"a=%20"),  # a decoded "?" is part of the path; args stay raw
    (b"/%25", b"/%", b""),
    (b"/a?x=1#frag", b"/a", b"x=1"),
    (b"/a/..?q", b"/", b"q"),
    (b"/a#b?c", b"/a", b""),
])
def test_path_is_decoded_and_normalised_as_nginx_does(target, uri, args):
    assert parse_path(target) == (uri, args)


@pytest.mark.parametrize("target", [b"/../x", b"/a/../../x", b"//..", b"/%", b"/%a", b"/%zz", b"/a%00b",
                                    b"/%2E%2E/x"])
def test_paths_nginx_refuses(target):
    with pytest.raises(BadRequest):
        parse_path(target)


def test_merge_slashes_off_keeps_them():
    assert parse_path(b"/a//b", merge_slashes=False) == (b"/a//b", b"")


@pytest.mark.parametrize("target, path, host", [
    (b"/x", b"/x", None),
    (b"http://Exact.test:80/p?x", b"/p?x", b"Exact.test"),
    (b"http://h", b"/", b"h"),
    (b"http://h?x", b"/?x", b"h"),
    (b"https://[::1]:8080/a", b"/a", b"[::1]"),
])
def test_origin_and_absolute_form(target, path, host):
    assert split_target(target) == (path, host)


@pytest.mark.parametrize("target", [b"*", b"x/y", b"http://a_b/", b"1http://h/", b"http:/h/"])
def test_targets_nginx_refuses(target):
    with pytest.raises(BadRequest):
        split_target(target)


@pytest.mark.parametrize("raw, host", [
    (b"Other.TEST:8080", b"other.test"),
    (b"other.test.", b"other.test"),
    (b"[::1]:80", b"[::1]"),
    ("café.test".encode(), "café.test".encode()),  # UTF-8 stays as it is (ASCII letters lower-cased)
    (b"_", b"_"),
])
def test_host_is_checked_and_lower_cased(raw, host):
    assert validate_host(raw) == host


@pytest.mark.parametrize("raw", [b"", b".", b":80", b"a/b", b"a..b", b"a b", b"a\x00b", b"a\x7fb"])
def test_hosts_nginx_refuses(raw):
    with pytest.raises(BadRequest):
        validate_host(raw)


_HOST_BYTES = st.sampled_from(list(b"aZ09._-:[]/ \x00\x7f\xc3\xa9"))


@settings(max_examples=2000, deadline=None)
@given(st.one_of(st.binary(max_size=24), st.lists(_HOST_BYTES, max_size=24).map(bytes)))
def test_the_host_shortcut_agrees_with_nginx_byte_by_byte_reading(raw):
    """validate_host's regex shortcut for the usual Host never answers what nginx's loop would not."""
    def outcome(check):
        try:
            return check(raw)
        except BadRequest:
            return BadRequest
    assert outcome(validate_host) == outcome(uri_module._host_as_nginx_reads_it)


# -- regexes: PCRE2 on bytes, nginx's options and wording ------------------------------------------


@pytest.mark.parametrize("pattern, subject, matches", [
    (r"^/[[:digit:]]+\Z", "/123", True),  # POSIX class, \Z (Python's re knows neither)
    (r"^/[[:digit:]]+\Z", "/12a", False),
    (r"^/a(?i)bc$", "/aBC", True),  # inline caseless from the middle on
    (r"^/a(?i)bc$", "/ABC", False),
    (r"^/\w+$", "/café", False),  # \w is ASCII: no UTF mode, as in nginx
    (r"^/\p{L}+$", "/abc", True),
])
def test_pcre_features(pattern, subject, matches):
    assert Regex(pattern).matches(to_bytes(subject)) is matches


def test_captures_by_number_and_name():
    hit = Regex(r"^/(\d+)/(?<word>\w+)(x)?$").search(b"/42/hello")
    assert (hit.number(0), hit.number(1), hit.number(2), hit.number(3), hit.number(9)) == ("/42/hello", "42", "hello", "", "")
    assert hit.named("word") == "hello" and hit.named("nope") is None


@pytest.mark.parametrize("pattern, message", [
    ("(abc", 'pcre2_compile() failed: missing closing parenthesis in "(abc"'),
    ("a{2,1}", 'pcre2_compile() failed: numbers out of order in {} quantifier in "a{2,1}" at "}"'),
    ("(?<n>a)(?<n>b)", 'pcre2_compile() failed: two named subpatterns have the same name (PCRE2_DUPNAMES not set) '
                       'in "(?<n>a)(?<n>b)" at "b)"'),
])
def test_compile_errors_have_nginx_wording(pattern, message):
    with pytest.raises(ValueError) as err:
        Regex(pattern)
    assert str(err.value) == message


# -- locations: nesting, named, duplicates -----------------------------------------------------------


def nested(spec):
    """A matcher from [(args, name, [inner...])]."""
    m = LocationMatcher()
    for args, name, inner in spec:
        m.add(parse_location(args), name, nested(inner) if inner else None)
    return m


TREE = nested([
    (["/outer/"], "outer", [
        (["/outer/inner/"], "inner", []),
        (["~", r"\.txt$"], "outer-txt", []),
    ]),
    (["^~", "/noregex/"], "noregex", [(["~", r"\.txt$"], "nested-regex", [])]),
    (["~", r"\.txt$"], "top-txt", []),
    (["@named"], "named", []),
    (["/"], "root", []),
])


@pytest.mark.parametrize("uri, expected", [
    ("/outer/x", "outer"),
    ("/outer/inner/x", "inner"),
    ("/outer/a.txt", "outer-txt"),  # the nested regex before the outer level's
    ("/outer/inner/a.txt", "outer-txt"),  # the nested prefix has none: the outer's nested regexes run
    ("/noregex/a.txt", "nested-regex"),  # ^~ stops the regexes of its own level only
    ("/noregex/a", "noregex"),
    ("/a.txt", "top-txt"),
    ("/@named", "root"),  # a named location is never chosen by URI
])
def test_nested_locations(uri, expected):
    assert TREE.match(uri) == expected


def test_named_locations_are_kept_by_name():
    assert TREE.named == {"@named": "named"}


def test_duplicates_as_nginx_sees_them():
    m = LocationMatcher()
    m.add(parse_location(["/a"]), 1)
    m.add(parse_location(["=", "/a"]), 2)  # an exact and a prefix of one name may coexist
    m.add(parse_location(["~", "a"]), 3)
    m.add(parse_location(["~", "a"]), 4)  # nginx does not look for duplicate regexes
    with pytest.raises(ValueError, match='duplicate location "/a"'):
        m.add(parse_location(["^~", "/a"]), 5)
    with pytest.raises(ValueError, match='duplicate location "/a"'):
        m.add(parse_location(["=", "/a"]), 6)


@pytest.mark.parametrize("inside, message", [
    ("location = /a { location /a/b { } }", 'location "/a/b" cannot be inside the exact location "/a" in /p/n.conf:1'),
    ("location @n { location /x { } }", 'location "/x" cannot be inside the named location "@n" in /p/n.conf:1'),
    ("location /a { location @n { } }", 'named location "@n" can be on the server level only in /p/n.conf:1'),
    ("location /a { location /b { } }", 'location "/b" is outside location "/a" in /p/n.conf:1'),
    ("location /a { location = /b { } }", 'location "/b" is outside location "/a" in /p/n.conf:1'),
])
def test_nesting_rules(inside, message):
    with pytest.raises(ConfigError) as err:
        load_configuration("/p/n.conf", text=f"http {{ server {{ {inside} }} }}")
    assert str(err.value) == message


def test_allowed_nesting_loads():
    load_configuration("/p/n.conf", text="http { server { location /a { location /a/b { location ~ x { } } "
                                         "location ~ y { location ~ z { } location y/z { } } } location @n { } } }")


# -- variables: nginx's syntax -----------------------------------------------------------------------


@pytest.mark.parametrize("source, message", [
    ("cost 5$ total", "invalid variable name"),
    ("a$", "invalid variable name"),
    ("${", "invalid variable name"),
    ("${uri", 'the closing bracket in "uri" variable is missing'),
    ("${a-b}", 'the closing bracket in "a" variable is missing'),
    ("$nope", 'unknown "nope" variable'),
])
def test_variable_syntax_errors(source, message):
    with pytest.raises(ValueError) as err:
        Template(source)
    assert str(err.value) == message


def test_variable_names_are_case_insensitive_and_a_capture_is_one_digit():
    parts = Template("$URI ${Host}x $12").parts
    assert [p for p in parts if isinstance(p, str)] == [" ", "x ", "2"]
    assert sum(callable(p) for p in parts) == 3


def test_named_capture_may_be_used_before_its_regex():
    # nginx resolves variables once the whole config is read
    load_configuration("/p/c.conf", text="http { server { add_header X $word; location ~ (?<word>\\w+) { } } }")


def test_unknown_variable_is_reported_at_the_end_at_the_line_that_names_it():
    # nginx finds it once every regex's named captures are known, and names no line
    with pytest.raises(ConfigError) as err:
        load_configuration("/p/c.conf", text="http {\n server { add_header X $word;\n location ~ (?<other>\\w+) { } } }")
    assert str(err.value) == 'unknown "word" variable in /p/c.conf:2'
