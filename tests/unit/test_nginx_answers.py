"""The core's own answers, as nginx 1.22 makes them, through Flask's test client (no nginx needed;
tests/integration/test_nginx_differential.py compares the same things with a real nginx)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from werkzeug.datastructures import Headers
from werkzeug.test import EnvironBuilder, run_wsgi_app



def send(client, environ: dict) -> SimpleNamespace:
    """Run one request with ``environ`` exactly as given; the status line as the app wrote it."""
    app_iter, status, headers = run_wsgi_app(client.application, environ, buffered=True)
    body = b"".join(app_iter)
    return SimpleNamespace(status=status, headers=Headers(headers), data=body, text=body.decode("utf-8", "replace"))


def page(code: int, title: str) -> str:
    heading = f"{code} {title}"
    return (f"<html>\r\n<head><title>{heading}</title></head>\r\n<body>\r\n<center><h1>{heading}</h1></center>\r\n"
            "<hr><center>ngxsim</center>\r\n</body>\r\n</html>\r\n")


RESPONSES = r"""
http {
    server {
        listen 127.0.0.1:8080;
        server_name main.test alias.test;
        add_header X-Srv s;
        location /e404 { return 404; }
        location /e503 { return 503; }
        location /text403 { return 403 "nope"; }
        location /r301 { return 301 /elsewhere?x=1; }
        location /r302 { return 302 http://x.test/a; }
        location /bare { return 301; }
        location /url { return https://y.test/$uri; }
        location /noabs { absolute_redirect off; return 301 /x; }
        location /noport { port_in_redirect off; return 301 /x; }
        location /sname { server_name_in_redirect on; return 301 /x; }
        location /n204 { return 204 "dropped"; }
        location /n304 { return 304; }
        location /teapot { return 418; }
        location /odd { return 299 "odd"; }
        location /close { return 444; }
        location /t { return 200 "typed"; }
    }
}
"""


@pytest.mark.parametrize("path, status, reason, title", [
    ("/e404", 404, "Not Found", "Not Found"),
    ("/e503", 503, "Service Temporarily Unavailable", "Service Temporarily Unavailable"),
    ("/r302", 302, "Moved Temporarily", "Found"),  # nginx's page title and phrase differ here
    ("/nothing-here", 404, "Not Found", "Not Found"),
])
def test_core_made_answers_are_nginx_pages(make_app, path, status, reason, title):
    r = make_app(RESPONSES).get(path, headers={"Host": "main.test:8080"})
    assert (r.status, r.content_type, r.text) == (f"{status} {reason}", "text/html", page(status, title))


def test_return_with_text_is_the_text(make_app):
    r = make_app(RESPONSES).get("/text403", headers={"Host": "main.test"})
    assert (r.status, r.content_type, r.text) == ("403 Forbidden", "text/plain", "nope")
    assert "X-Srv" not in r.headers  # add_header without "always" skips a 403


@pytest.mark.parametrize("path, env, location", [
    ("/r301", {}, "http://main.test:8080/elsewhere?x=1"),
    ("/r302", {}, "http://x.test/a"),
    ("/bare", {}, ""),
    ("/url/p", {}, "https://y.test//url/p"),
    ("/noabs", {}, "/x"),
    ("/noport", {}, "http://main.test/x"),
    ("/sname", {}, "http://main.test:8080/x"),
    ("/r301", {"SERVER_PORT": "80"}, "http://main.test/elsewhere?x=1"),  # the default port is left out
])
def test_redirects(make_app, path, env, location):
    env = {"SERVER_PORT": "8080", **env}
    r = make_app(RESPONSES).get(path, headers={"Host": "Main.Test:1234"}, environ_overrides=env)
    assert r.headers["Location"] == location
    assert r.headers["X-Srv"] == "s"


def test_server_name_in_redirect_uses_the_first_name(make_app):
    r = make_app(RESPONSES).get("/sname", headers={"Host": "alias.test"})
    assert r.headers["Location"] == "http://main.test/x"


def test_204_has_no_body_nor_type_and_304_keeps_its_type(make_app):
    c = make_app(RESPONSES)
    r = c.get("/n204")
    assert (r.status, r.data, r.headers.get("Content-Type")) == ("204 No Content", b"", None)
    r = c.get("/n304")
    assert (r.status, r.data, r.headers.get("Content-Type")) == ("304 Not Modified", b"", "text/plain")


def test_codes_without_a_phrase_or_page(make_app):
    c = make_app(RESPONSES)
    r = send(c, raw_environ("/teapot"))
    assert (r.status, r.data, r.headers.get("Content-Type")) == ("418 ", b"", None)
    r = send(c, raw_environ("/odd"))
    assert (r.status, r.text) == ("299 ", "odd")


def test_444_without_a_socket_stays_a_444(make_app):
    # under gunicorn the connection is closed (tests/integration/test_core_raw_http.py)
    assert make_app(RESPONSES).get("/close").status_code == 444


def test_type_by_extension(make_app):
    c = make_app(RESPONSES)
    assert c.get("/t/a.html").content_type == "text/html"
    assert c.get("/t/a.GIF").content_type == "image/gif"
    assert c.get("/t/a.png").content_type == "text/plain"  # not among nginx's built-in types
    assert c.get("/t/.html").content_type == "text/plain"  # a dot file has no extension


@pytest.mark.parametrize("agent, padded", [
    ("Mozilla/5.0 (X11; Linux x86_64) Chrome/120.0 Safari/537.36", True),
    ("Mozilla/4.0 (compatible; MSIE 8.0; Windows NT 6.1)", True),
    ("Mozilla/5.0 (X11; rv:120.0) Gecko/20100101 Firefox/120.0", False),
    ("Opera/9.80 (MSIE 6.0)", False),
    ("curl/8", False),
])
def test_error_pages_are_padded_for_msie_and_chrome(make_app, agent, padded):
    c = make_app(RESPONSES)
    body = c.get("/e404", headers={"User-Agent": agent}).text
    assert ("friendly error page" in body) is padded
    assert "friendly error page" not in c.get("/r302", headers={"User-Agent": agent}).text  # 4xx/5xx only


# -- requests nginx refuses ----------------------------------------------------------------------

REFUSE = "http { server { listen 127.0.0.1:8080; add_header X-A a always; location / { return 200 ok; } } }"


def raw_environ(target: str, **over) -> dict:
    environ = EnvironBuilder(path="/").get_environ()
    environ["RAW_URI"] = environ["REQUEST_URI"] = target
    environ.update(over)
    return {k: v for k, v in environ.items() if v is not None}


@pytest.mark.parametrize("environ", [
    raw_environ("/../x"),
    raw_environ("/%"),
    raw_environ("/%zz"),
    raw_environ("/a%00b"),
    raw_environ("*", REQUEST_METHOD="OPTIONS"),
    raw_environ("/", HTTP_HOST=""),
    raw_environ("/", HTTP_HOST="a/b"),
    raw_environ("/", HTTP_HOST="a..b"),
    raw_environ("/", HTTP_HOST=None),  # HTTP/1.1 without Host
    raw_environ("http://x.test/", HTTP_HOST=None),
])
def test_bad_requests_get_400(make_app, environ):
    r = send(make_app(REFUSE), environ)
    assert (r.status, r.text) == ("400 Bad Request", page(400, "Bad Request"))
    assert r.headers["X-A"] == "a"  # the server's "always" headers, as nginx adds them


def test_trace_is_not_allowed(make_app):
    r = send(make_app(REFUSE), raw_environ("/", REQUEST_METHOD="TRACE"))
    assert (r.status, r.text) == ("405 Not Allowed", page(405, "Not Allowed"))


def test_http10_without_host_is_served(make_app):
    r = send(make_app(REFUSE), raw_environ("/", HTTP_HOST=None, SERVER_PROTOCOL="HTTP/1.0"))
    assert r.text == "ok"


# -- servers, $host and variables ----------------------------------------------------------------

SERVERS = r"""
http {
    server {
        listen 127.0.0.1:8080 default_server;
        server_name first.test;
        location / { return 200 "first [$host] [$server_name]"; }
    }
    server {
        listen 127.0.0.1:8080;
        server_name "" noname.test;
        location / { return 200 "noname [$host] [$server_name]"; }
    }
    server {
        listen 127.0.0.1:8080;
        server_name _;
        location / { return 200 "underscore [$server_name]"; }
    }
    server {
        listen 127.0.0.1:8080;
        server_name .dot.test;
        location / { return 200 "dot [$server_name]"; }
    }
    server {
        listen 127.0.0.1:8080;
        server_name ~^(?<user>[a-z]+)\.(\d+)\.users\.test$;
        add_header X-User $user;
        location / { return 200 "user [$user] [$1] [$2] [$server_name]"; }
        location ~ ^/n/(\d+)$ { return 200 "loc [$user] [$1] [$2]"; }
    }
    server {
        listen 127.0.0.1:8080;
        server_name down.test;
        add_header X-Down d always;
        return 503;
        location / { add_header X-Loc l always; return 200 up; }
    }
    server {
        listen 127.0.0.1:8080;
        server_name vars.test;
        location /café/ { return 200 "uri=$uri ru=$request_uri"; }
        location /v { return 200 "a=$arg_a b=$ARG_B args=$args is=$is_args p=$server_protocol r=$request"; }
        location ~ ^/cap/(?<id>\d+)$ { add_header X-Id "$id-$1"; return 200 "$1"; }
    }
}
"""


@pytest.mark.parametrize("environ, body", [
    (raw_environ("/", HTTP_HOST="first.test"), "first [first.test] [first.test]"),
    (raw_environ("/", HTTP_HOST="unknown.test"), "first [unknown.test] [first.test]"),
    (raw_environ("/", HTTP_HOST=None, SERVER_PROTOCOL="HTTP/1.0"), "noname [] []"),  # the empty name
    (raw_environ("/", HTTP_HOST="_"), "underscore [_]"),  # "_" is an ordinary name
    (raw_environ("/", HTTP_HOST="a.dot.test"), "dot [dot.test]"),
    (raw_environ("/", HTTP_HOST="Bob.42.Users.test"),
     r"user [bob] [bob] [42] [~^(?<user>[a-z]+)\.(\d+)\.users\.test$]"),
    (raw_environ("/n/7", HTTP_HOST="bob.42.users.test"), "loc [bob] [7] []"),  # a location regex replaces $1..
    (raw_environ("http://first.test/", HTTP_HOST="noname.test"), "first [first.test] [first.test]"),
])
def test_server_choice_and_host(make_app, environ, body):
    assert send(make_app(SERVERS), environ).text == body


def test_server_level_return_keeps_the_servers_headers(make_app):
    r = make_app(SERVERS).get("/", headers={"Host": "down.test"})
    assert r.status_code == 503 and r.headers["X-Down"] == "d" and "X-Loc" not in r.headers


def test_utf8_uri_and_raw_arguments(make_app):
    c = make_app(SERVERS)
    r = send(c, raw_environ("/caf%C3%A9/x", HTTP_HOST="vars.test"))
    assert r.data == "uri=/café/x ru=/caf%C3%A9/x".encode()
    r = send(c, raw_environ("/v?A=1%202&b=x&a=3", HTTP_HOST="vars.test", QUERY_STRING="A=1%202&b=x&a=3"))
    assert r.text == "a=1%202 b=x args=A=1%202&b=x&a=3 is=? p=HTTP/1.1 r=GET /v?A=1%202&b=x&a=3 HTTP/1.1"


def test_captures_in_add_header(make_app):
    r = make_app(SERVERS).get("/cap/12", headers={"Host": "vars.test"})
    assert (r.text, r.headers["X-Id"]) == ("12", "12-12")


def test_module_json_api_errors_stay_json(make_app):
    c = make_app("""
load_module worker_events;
http { server { listen 127.0.0.1:8080; location /ev { worker_events_api; worker_events_zone z; worker_events_channel c; } } }""")
    r = c.post("/ev", data="not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.content_type == "application/json" and r.get_json()["status"] == 400
    assert r.status == "400 Bad Request"


def test_types_blocks_and_an_included_types_file(make_app, tmp_path):
    (tmp_path / "mime.types").write_text("types {\n    text/css css;\n    application/json json map;\n}\n")
    c = make_app("""
http {
    include mime.types;
    default_type application/octet-stream;
    server {
        listen 127.0.0.1:8080;
        location / { return 200 x; }
        location /own/ { types { text/x-own map; } return 200 y; }
    }
}""")
    assert c.get("/a.css").content_type == "text/css"
    assert c.get("/a.MAP").content_type == "application/json"
    assert c.get("/a.html").content_type == "application/octet-stream"  # a types table replaces the built-in one
    assert c.get("/own/a.map").content_type == "text/x-own"
    assert c.get("/own/a.css").content_type == "application/octet-stream"  # a level with its own inherits none


def test_a_block_inside_types_is_nginx_s_error():
    from ngxsim import ConfigError
    from ngxsim.core.conf.loader import load_configuration

    with pytest.raises(ConfigError) as err:
        load_configuration("/p/t.conf", text="http {\n  types {\n    text/x x { }\n  }\n}\n")
    assert str(err.value) == 'unexpected "{" in /p/t.conf:3'


def test_a_kept_status_line_is_sent_as_it_is_and_others_get_nginx_s_phrase():
    from ngxsim import keep_status_line
    from ngxsim.core.http.responses import NginxResponse, set_status_line

    kept = keep_status_line(NginxResponse(b"x", status=200), "200 Fine")
    set_status_line(kept)  # the core's finishing step leaves it alone
    assert (kept.status, kept.status_code) == ("200 Fine", 200)
    plain = NginxResponse(b"x", status=302)
    set_status_line(plain)
    assert plain.status == "302 Moved Temporarily"


def test_the_wsgi_headers_are_the_responses_own_unless_they_change():
    """The server only reads them: no copy per response, but a change never reaches the
    response's own headers."""
    from ngxsim.core.http.responses import NginxResponse

    env = EnvironBuilder().get_environ()
    sent = NginxResponse(b"abc", status=200)
    assert sent.get_wsgi_headers(env) is sent.headers
    streamed = NginxResponse(iter([b"abc"]), status=200)
    assert streamed.get_wsgi_headers(env) is streamed.headers  # nothing to add to a stream
    unmeasured = NginxResponse([b"ab", b"c"], status=200)
    del unmeasured.headers["Content-Length"]
    headers = unmeasured.get_wsgi_headers(env)
    assert headers["Content-Length"] == "3" and "Content-Length" not in unmeasured.headers
    informational = NginxResponse(b"", status=103)
    assert "Content-Length" not in informational.get_wsgi_headers(env)
    assert "Content-Length" in informational.headers


def test_checked_headers_hold_the_pairs_as_they_are():
    from ngxsim import checked_headers

    pairs = [("X-A", " spaced "), ("x-a", "2"), ("Content-Type", "text/plain")]
    headers = checked_headers(pairs)
    assert headers.getlist("X-A") == [" spaced ", "2"] and headers.to_wsgi_list() == pairs
    assert list(headers) == pairs
