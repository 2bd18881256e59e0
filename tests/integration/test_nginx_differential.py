"""The same config and the same raw requests to real nginx and to ngxsim: the answers must match.

Compared for every request: status and reason phrase, body, ``Location``, ``Content-Type``, the
headers the config adds, and whether the connection was closed without an answer (``444``). The
servers' own headers (``Server``, ``Date``, ``Connection``) are not compared, and the port each
server listens on is written as ``{port}`` in both. Skipped, saying why, where no nginx binary
exists; ``.ci/run`` installs Debian's ``nginx-light``.
"""

from __future__ import annotations

import pytest

from ngxsim import ConfigError
from ngxsim.core.conf.loader import load_configuration
from ngxsim.testing import raw_request, start_server
from ngxsim.testing.nginx import Nginx, check_config, find_nginx

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
    location /hdrs { return 200 "cookie=[$http_cookie] multi=[$http_x_multi] xff=[$http_x_forwarded_for] ua=[$http_user_agent] ct=[$content_type]\n"; }
    location /loc-space { return 302 "not a url"; }
    location /loc-question { return 302 /x?; }
    location /loc-utf8 { return 302 "/café?a=b c"; }
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
    location / { return 200 "regex server $host $sub\n"; }
}

server {
    listen 127.0.0.1:{port};
    server_name nested.test;
    location /outer/ {
        add_header X-Outer o;
        location /outer/inner/ { return 200 "inner $uri\n"; }
        location ~ \.txt$ { return 200 "outer-txt $uri\n"; }
        return 200 "outer $uri\n";
    }
    location ^~ /noregex/ {
        location ~ \.txt$ { return 200 "nested-regex\n"; }
        return 200 "noregex\n";
    }
    location ~ \.txt$ { return 200 "top-txt\n"; }
    location ~ ^/cap/(\d+)/(?<word>\w+)$ { add_header X-Cap "$1-$word"; return 200 "cap $1 $2 $word $3\n"; }
    location ~ ^/posix/[[:digit:]]+\Z { return 200 "posix\n"; }
    location ~ ^/mid/a(?i)bc$ { return 200 "mid-i\n"; }
    location ~ "^/letters/\p{L}+$" { return 200 "letters\n"; }
    location ~ ^/word/\w+$ { return 200 "word\n"; }
    location /café/ { return 200 "cafe $uri\n"; }
    location @named { return 200 "named\n"; }
    location / { return 200 "nested-root $uri\n"; }
    location = /type.html { return 200 "<p>x</p>\n"; }
    location = /img.GIF { return 200 "gif\n"; }
    location /r-noabs { absolute_redirect off; return 301 /x; }
    location /r-noport { port_in_redirect off; return 301 /x; }
    location /r-sname { server_name_in_redirect on; return 301 /x; }
    location /r-rel { return 301 x/y; }
    location /r-text { return 302 "/to/$uri?a=$arg_a"; }
    location /not-modified { return 304; }
    location /odd { return 299 "odd\n"; }
    location /teapot { return 418; }
    location /e401 { return 401; }
    location /hdr-outer/ {
        add_header X-Outer outer;
        location /hdr-outer/inner/ { return 200 "inherits\n"; }
        location /hdr-outer/own/ { add_header X-Own own; return 200 "own\n"; }
    }
    location /small { client_max_body_size 4; return 200 "small\n"; }
    location "/a b/" { return 200 "space [$uri] [$request_uri]\n"; }
    location ~* ^/CASE/ { return 200 "caseless $uri\n"; }
}

server {
    listen 127.0.0.1:{port};
    server_name typed.test;
    types { text/css css CSS; application/x-thing thing; }
    types { text/x-later thing; }
    default_type application/octet-stream;
    location / { return 200 "typed\n"; }
    location /own { types { image/png png; } return 200 "own\n"; }
}

server {
    listen 127.0.0.1:{port};
    server_name "" noname.test;
    location / { return 200 "empty-name [$host] [$server_name]\n"; }
}

server {
    listen 127.0.0.1:{port};
    server_name down.test;
    add_header X-Down d always;
    client_max_body_size 1;
    return 503;
    location / { add_header X-Loc l always; return 200 ok; }
}

server {
    listen 127.0.0.1:{port};
    server_name ~^(?<first>[a-z]+)\.(\d+)\.caps\.test$ ~^\D+\.nodigit\.test$;
    location / { return 200 "caps [$first] [$1] [$2] [$server_name]\n"; }
    location ~ ^/(\w+)$ { return 200 "loc [$first] [$1] [$2]\n"; }
}
"""


WORKER_CLASS = "ngxsim.worker.Worker"


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
    "invalid-utf8-escape": req("/docs/%FF"),
    "utf8-host": req("/vars", host="café.test".encode().decode("latin-1")),
    "host-with-port-junk": req("/vars", host="other.test:abc"),
    "head-of-redirect": req("/r301", method="HEAD"),
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
    "repeated-cookie-xff-and-others": req("/hdrs", extra="Cookie: a=1\r\nX-Multi: 1\r\nCookie: b=2\r\nX-Multi: 2\r\n"
                                                        "X-Forwarded-For: 10.0.0.1\r\nX-Forwarded-For: 10.0.0.2\r\n"
                                                        "User-Agent: one\r\nUser-Agent: two\r\n"),
    "header-name-case-and-dash": req("/hdrs", extra="x-MULTI: v\r\ncOOkie: c=3\r\n"),
    "location-with-spaces": req("/loc-space"),
    "location-trailing-question-mark": req("/loc-question"),
    "location-utf8-and-space": req("/loc-utf8"),
    "raw-utf8-path": req("/docs/café".encode().decode("latin-1")),
    "raw-utf8-location-and-request-uri": req("/café/x?q=é".encode().decode("latin-1"), host="nested.test"),
    "bad-request-line-extra-word": req("/x", version="HTTP/1.1 extra"),
    "bad-request-line-lowercase-method": req("/x", method="get"),
    "bad-request-line-version": req("/x", version="HTTP/x.y"),
    "bad-request-line-missing-target": b"GET HTTP/1.1\r\nHost: exact.test\r\nConnection: close\r\n\r\n",
    "bad-header-line": req("/x", extra="No colon here\r\n"),
    "bad-header-name-space": req("/x", extra="X A: b\r\n"),
    "duplicate-host": req("/vars", extra="Host: other.test\r\n"),
    "duplicate-content-length": req("/small", host="nested.test", method="POST",
                                    extra="Content-Length: 1\r\nContent-Length: 2\r\n") + b"ab",
    "length-and-chunked-request": req("/small", host="nested.test", method="POST",
                                      extra="Content-Length: 3\r\nTransfer-Encoding: chunked\r\n") + b"1\r\na\r\n0\r\n\r\n",
    "underscore-header-ignored": req("/hdr", extra="X_A: under\r\n"),
    "folded-header": req("/hdr", extra="X-A: one\r\n two\r\n"),
    "header-without-value": req("/hdr", extra="X-A:\r\n"),
    "http2-version": req("/exact", version="HTTP/2.0"),
    "http-major-12": req("/exact", version="HTTP/12.1"),
    "http-version-0-9-with-headers": req("/exact", version="HTTP/0.9"),
    "http11-absolute-uri-with-port": req("http://other.test:1234/p", host="exact.test"),
    "head-of-not-modified": req("/not-modified", host="nested.test", method="HEAD"),
    "header-case": req("/hdr", extra="x-a: lower\r\n"),
    "trace": req("/exact", method="TRACE"),
    "absolute-form-without-host-header": req("http://other.test/p", host=None),
    "head-of-error-page": req("/e404", method="HEAD"),
    "chrome-padding": req("/e404", extra="User-Agent: Mozilla/5.0 (X11; Linux x86_64) Chrome/120.0 Safari/537.36\r\n"),
    "msie-padding": req("/e404", extra="User-Agent: Mozilla/4.0 (compatible; MSIE 8.0; Windows NT 6.1)\r\n"),
    "firefox-no-padding": req("/e404", extra="User-Agent: Mozilla/5.0 (X11; rv:120.0) Gecko/20100101 Firefox/120.0\r\n"),
    # nested locations, regex captures, PCRE features
    "nested-prefix": req("/outer/inner/x", host="nested.test"),
    "nested-regex": req("/outer/a.txt", host="nested.test"),
    "nested-prefix-then-outer-regex": req("/outer/inner/a.txt", host="nested.test"),
    "outer-return": req("/outer/x", host="nested.test"),
    "caret-tilde-nested-regex": req("/noregex/a.txt", host="nested.test"),
    "caret-tilde-plain": req("/noregex/a", host="nested.test"),
    "top-regex": req("/top.txt", host="nested.test"),
    "captures": req("/cap/42/hello", host="nested.test"),
    "posix-class-and-Z": req("/posix/123", host="nested.test"),
    "posix-class-no-match": req("/posix/12a", host="nested.test"),
    "inline-caseless": req("/mid/aBC", host="nested.test"),
    "inline-caseless-not-before": req("/mid/ABC", host="nested.test"),
    "unicode-letter-class": req("/letters/abc", host="nested.test"),
    "ascii-word": req("/word/caf%C3%A9", host="nested.test"),
    "utf8-location": req("/caf%C3%A9/x", host="nested.test"),
    "utf8-location-raw-case": req("/caf%c3%a9/x", host="nested.test"),
    "named-location-not-by-uri": req("/@named", host="nested.test"),
    "type-by-extension": req("/type.html", host="nested.test"),
    "type-by-extension-case": req("/img.GIF", host="nested.test"),
    "no-absolute-redirect": req("/r-noabs", host="nested.test"),
    "no-port-in-redirect": req("/r-noport", host="nested.test"),
    "server-name-in-redirect": req("/r-sname", host="Nested.Test"),
    "relative-redirect-text": req("/r-rel", host="nested.test"),
    "redirect-with-variables": req("/r-text?a=1", host="nested.test:99"),
    "redirect-http10-no-host": req("/r-rel", host=None, version="HTTP/1.0"),
    "not-modified": req("/not-modified", host="nested.test"),
    "unknown-code-with-text": req("/odd", host="nested.test"),
    "unknown-error-code": req("/teapot", host="nested.test"),
    "return-401": req("/e401", host="nested.test"),
    "types-block": req("/a.css", host="typed.test"),
    "types-later-line-wins": req("/a.thing", host="typed.test"),
    "types-unknown-extension": req("/a.html", host="typed.test"),
    "types-own-level-inherits-none": req("/own/a.css", host="typed.test"),
    "types-own-level": req("/own/a.png", host="typed.test"),
    "nested-inherits-add-header": req("/hdr-outer/inner/x", host="nested.test"),
    "nested-own-add-header": req("/hdr-outer/own/x", host="nested.test"),
    "body-over-limit": req("/small", host="nested.test", method="POST", extra="Content-Length: 5\r\n") + b"hello",
    "body-at-limit": req("/small", host="nested.test", method="POST", extra="Content-Length: 4\r\n") + b"hell",
    "encoded-space": req("/a%20b/c?x=%20", host="nested.test"),
    "fragment-in-target": req("/docs/x#frag"),
    "bad-escape-in-args-only": req("/docs/?a=%zz"),
    "caseless-regex": req("/case/x", host="nested.test"),
    "backslash-in-path": req("/docs/a\\b"),
    # the empty server name, server-level return, server_name regex captures
    "http10-without-host-empty-name": req("/x", host=None, version="HTTP/1.0"),
    "empty-name-server-by-name": req("/x", host="noname.test"),
    "server-return-keeps-server-headers": req("/x", host="down.test"),
    "server-return-before-body-limit": req("/x", host="down.test", method="POST",
                                           extra="Content-Length: 5\r\n") + b"hello",
    "server-regex-captures": req("/", host="abc.42.caps.test"),
    "location-regex-replaces-numbered": req("/zzz", host="abc.42.caps.test"),
    "server-regex-with-upper-escape": req("/", host="abc.nodigit.test"),
    "server-regex-with-upper-escape-no-match": req("/", host="a1c.nodigit.test"),
}


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """nginx and ngxsim (gunicorn, one worker of ngxsim's own class, as ``ngxsim -c`` runs it)
    serving SERVERS, stopped at the end."""
    folder = tmp_path_factory.mktemp("differential")
    nginx = Nginx(NGINX, folder / "nginx", SERVERS).start()
    try:
        ngxsim = start_server(folder, "http {\n" + SERVERS + "\n}\n", workers=1, worker_class=WORKER_CLASS)
    except BaseException:
        nginx.stop()
        raise
    yield nginx, ngxsim
    ngxsim.stop()
    nginx.stop()


# Where ngxsim still answers differently, and why; each is listed in docs/configuration.md. The
# tests run anyway and must fail (strict): one that starts to pass means the docs need updating.
KNOWN_DIFFERENCES: dict[str, str] = {}


def _cases(table):
    return [pytest.param(name, marks=pytest.mark.xfail(strict=True, reason=KNOWN_DIFFERENCES[name]))
            if name in KNOWN_DIFFERENCES else name for name in sorted(table)]


@pytest.mark.parametrize("name", _cases(CASES))
def test_same_answer_as_nginx(pair, name):
    nginx, ngxsim = pair
    data = CASES[name]
    expected = comparable(nginx.port, data)
    # the one difference on purpose: ngxsim's own pages sign as ngxsim (docs/configuration.md)
    expected["body"] = expected["body"].replace(b"<hr><center>nginx</center>", b"<hr><center>ngxsim</center>")
    got = comparable(ngxsim.port, data)
    assert got == expected, f"request {data!r}"


def comparable(port: int, data: bytes) -> dict:
    """``RawAnswer.comparable``, and for answers that never have a body (204, 304) the
    ``Content-Length`` sent (elsewhere it follows from the body, or differs by the pages'
    signature)."""
    answer = raw_request(port, data)
    seen = answer.comparable(port)
    if answer.status in (204, 304):
        seen["content-length"] = answer.header("Content-Length")
    return seen


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
    "eof-without-newline": "http {\n  server {\n    listen 8080;",
    "listen-extra-words": "http {\n  server {\n    listen 8080 default_server\n    other;\n  }\n}\n",
    "statement-ends-later": "http {\n  server {\n    location /a\n    /b { }\n  }\n}\n",
    "bad-flag": "http {\n  absolute_redirect maybe;\n}\n",
    "dollar-at-end": "http {\n  server {\n    location / { return 200 \"a$\"; }\n  }\n}\n",
    "bracket-bad-name": "http {\n  server {\n    location / { return 200 \"${a-b}\"; }\n  }\n}\n",
    "regex-error-offset": "http {\n  server {\n    location ~ ^/a{2,1} { }\n  }\n}\n",
    # nginx runs each directive as it reads it: an error in one comes before a syntax error after it
    "directive-error-before-unclosed-block": "http {\n  server {\n    bogus on;\n    location / {\n",
    "directive-error-before-unclosed-string": "http {\n  server {\n    listen 1 2 3 x;\n    return 200 \"a;\n}\n",
    "directive-error-before-stray-semicolon": "http {\n  server {\n    return 200 a b c d;;\n    bogus on;\n  }\n}\n",
    "arguments-before-unexpected-brace": "http {\n  server {\n    server_name;\n    }\n  }\n}\n}\n",
    "server-name-regex-error": "http {\n  server {\n    server_name ~^(x;\n  }\n}\n",
    "duplicate-caret-prefix": "http {\n  server {\n    location /a { }\n    location ^~ /a { }\n  }\n}\n",
    "duplicate-exact": "http {\n  server {\n    location = /a { }\n    location /a { }\n    location = /a { }\n  }\n}\n",
    "inside-named-location": "http {\n  server {\n    location @n {\n      location /x { }\n    }\n  }\n}\n",
    "location-in-http": "http {\n  location / { }\n}\n",
    "server-name-star": "http {\n  server {\n    server_name *;\n  }\n}\n",
    "types-nested-block": "http {\n  types {\n    text/html html;\n    text/x { }\n  }\n}\n",
    "worker-processes-word": "worker_processes none;\nhttp { }\n",
    "wildcard-on-shared-address": "http {\n  server { listen 8080; server_name a*b; }\n  server { listen 8080; }\n}\n",
    "unknown-variable": "http {\n  server {\n    location / { return 200 $nope; }\n  }\n}\n",
    "bad-variable-syntax": "http {\n  server {\n    location / { return 200 \"cost 5$ total\"; }\n  }\n}\n",
    "unclosed-brace-variable": "http {\n  server {\n    location / { return 200 \"${uri\"; }\n  }\n}\n",
    "bad-return-code": "http {\n  server {\n    location / { return 2000; }\n  }\n}\n",
}


# nginx finds these once the whole file is read and names no place; ngxsim names the line that
# causes them (every config error names its file and line): name -> that line
PLACED_HERE = {"unknown-variable": 3, "wildcard-on-shared-address": 2}


@pytest.mark.parametrize("name", _cases(BAD_CONFIGS))
def test_same_config_error_as_nginx(tmp_path, name):
    conf = tmp_path / "t.conf"
    conf.write_text(BAD_CONFIGS[name])
    expected = check_config(NGINX, tmp_path / "prefix", conf)
    assert expected, f"nginx accepted the {name} config"
    with pytest.raises(ConfigError) as err:  # what `ngxsim -t` prints after "[emerg] "
        load_configuration(str(conf))
    if name in PLACED_HERE:  # nginx's words, and the place nginx does not give
        assert " in /" not in expected
        expected += f" in {conf}:{PLACED_HERE[name]}"
    assert str(err.value) == expected
