"""The same proxy config and the same raw requests to real nginx and to ngxsim, each with a
recording origin behind it: what the origin received and what the client got must match.

Compared for every case: each request the origin received (request line, the set of header
lines with names as written and repeated ones apart, the body) and each answer the client got
(status and reason, the headers the config and the origin decide, the body,
``$upstream_cache_status`` through
``add_header X-Cache``). Sequences (a hit after a miss, an expired entry, a purge, a bypass)
count the answers of every ngxsim worker against nginx's. The origins count requests per path
in their default body (``origin /cache/a #2``), so a cached copy and a fresh one differ.

The servers' own headers (``Server``, ``Date``, ``Connection``, ...: ``RawAnswer.comparable``)
are not compared, and each front's and origin's port is written as ``{port}``. Where ngxsim
still differs the case is ``xfail(strict=True)`` with the reason (issue #22), listed in
docs/nginx-differences.md: a case that starts to pass fails, so the list stays true.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from ngxsim.testing import Nginx, RawAnswer, RecordingOrigin, find_nginx, raw_request, start_server

NGINX = find_nginx()
pytestmark = pytest.mark.skipif(NGINX is None, reason="no nginx binary on PATH or in /usr/sbin "
                                "(.ci/run installs Debian's nginx-light; install it to run the differential tests)")

WORKERS = 3  # ngxsim's (of its own worker class, as ngxsim -c runs them); sequences ask each of them

# {port}: the front's; {origin}: its origin's port; {cache}: its cache folder; {purge}: ngxsim's
# purge method (nginx has no purge of its own: its test deletes the cache file, as
# ngx_cache_purge does)
SERVERS = r"""
upstream up { server 127.0.0.1:{origin} max_fails=0; }
upstream lone { server 127.0.0.1:{origin} max_fails=1 fail_timeout=30s; }
upstream kept { server 127.0.0.1:{origin} max_fails=0; keepalive 4; }
upstream kept2 { server 127.0.0.1:{origin} max_fails=0; keepalive 4; keepalive_requests 2; }
proxy_cache_path {cache} keys_zone=dc:1m inactive=10m;
{bgformat}

server {
    listen 127.0.0.1:{port};
    server_name front.test;

    location /plain/ { proxy_pass http://up; }
    location /strip/ { proxy_pass http://up/new/; }
    location /direct/ { proxy_pass http://127.0.0.1:{origin}; }
    location /lone/ { proxy_pass http://lone; }
    location /set/ {
        proxy_pass http://up;
        proxy_set_header X-Real-IP $remote_addr;
        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        proxy_set_header X-Uri "$uri $args";
        proxy_set_header Accept "";
    }
    location /nohost/ { proxy_pass http://up; proxy_set_header Host ""; }
    location /noredir/ { proxy_pass http://up; proxy_redirect off; }
    location /redir/ { proxy_pass http://up; proxy_redirect http://else.test/ /moved/; proxy_redirect http://up/ /; }
    location /hide/ { proxy_pass http://up; proxy_hide_header X-Secret; proxy_pass_header X-Pad; }
    location /v11/ { proxy_pass http://kept; proxy_http_version 1.1; proxy_set_header Connection ""; }
    location /v11two/ { proxy_pass http://kept2; proxy_http_version 1.1; proxy_set_header Connection ""; }
    location /v11close/ { proxy_pass http://kept; proxy_http_version 1.1; }
    location /cache/ {
        proxy_pass http://up;
        proxy_cache dc;
        proxy_cache_valid 200 302 10m;
        add_header X-Cache $upstream_cache_status always;
        {purge}
    }
    location /short/ {
        proxy_pass http://up;
        proxy_cache dc;
        proxy_cache_valid 200 1s;
        add_header X-Cache $upstream_cache_status always;
    }
    location /stale/ {
        proxy_pass http://up;
        proxy_cache dc;
        proxy_cache_valid 200 1s;
        proxy_cache_use_stale error timeout http_500;
        add_header X-Cache $upstream_cache_status always;
    }
    location /bg/ {
        proxy_pass http://up;
        proxy_cache dc;
        proxy_cache_valid 200 1s;
        proxy_cache_use_stale updating;
        proxy_cache_background_update on;
        add_header X-Cache $upstream_cache_status always;
    }
    # the cache statuses a background update counts: nginx's log has the subrequest's line too
    location /bgcount/ {
        proxy_pass http://up;
        proxy_cache dc;
        proxy_cache_valid 200 1s;
        proxy_cache_use_stale updating;
        proxy_cache_background_update on;
        {bglog}
    }
    location /bgpost/ {
        proxy_pass http://up;
        proxy_cache dc;
        proxy_cache_methods POST;
        proxy_cache_valid 200 1s;
        proxy_cache_use_stale updating;
        proxy_cache_background_update on;
        add_header X-Cache $upstream_cache_status always;
    }
    {api}
    location /reval/ {
        proxy_pass http://up;
        proxy_cache dc;
        proxy_cache_valid 200 1s;
        proxy_cache_revalidate on;
        add_header X-Cache $upstream_cache_status always;
    }
    # proxy_pass with variables: the group, an address, the URI as made, nginx's refusals
    location /vgroup/ { proxy_pass http://$arg_to; }
    location /vuri/ { proxy_pass http://up/made/$arg_p; }
    location /vquery/ { proxy_pass http://up?$arg_q; }
    location /vaddr/ { proxy_pass http://127.0.0.1:{origin}$uri; }
    location /vbad/ { proxy_pass $arg_u; }
    location /vcache/ {
        proxy_pass http://$arg_to;
        proxy_cache dc;
        proxy_cache_valid 200 10m;
        add_header X-Cache $upstream_cache_status always;
    }
    location /bypass/ {
        proxy_pass http://up;
        proxy_cache dc;
        proxy_cache_valid 200 10m;
        proxy_cache_bypass $http_x_refresh;
        add_header X-Cache $upstream_cache_status always;
    }
}
"""

NGXSIM_HEAD = "load_module worker_events;\nload_module upstreams;\nload_module cache_purge;\nhttp {\n" \
              "    worker_events_zone bus;\n"


@dataclass
class Front:
    """One proxy (nginx or ngxsim) and the origin behind it."""

    name: str
    port: int
    origin: RecordingOrigin
    cache: Path
    workers: int
    server: Any = None  # ngxsim's Server (each_worker), None for nginx
    errors: Any = None  # () -> the error log's text so far

    def send(self, data: bytes) -> RawAnswer:
        # until the front closes: it has finished the request (stored the answer) by then
        return raw_request(self.port, data, wait_close=True)

    def comparable(self, answer: RawAnswer) -> dict:
        seen = answer.comparable(self.port)
        # the one difference on purpose: ngxsim's own pages sign as ngxsim (docs/configuration.md)
        seen["body"] = seen["body"].replace(b"<hr><center>nginx</center>", b"<hr><center>ngxsim</center>")
        # how the body's end is told (the length itself follows from the body compared above)
        seen["framing"] = "length" if answer.header("Content-Length") is not None else \
            "chunked" if (answer.header("Transfer-Encoding") or "").lower() == "chunked" else "close"
        return seen

    def received(self, since: int = 0) -> list[dict]:
        return [r.comparable(self.port, self.origin.port) for r in self.origin.received[since:]]


@pytest.fixture(scope="module")
def fronts(tmp_path_factory):
    folder = tmp_path_factory.mktemp("proxy-differential")
    made: list = []
    try:
        origin_n = RecordingOrigin().start()
        made.append(origin_n)
        cache_n = folder / "nginx-cache"
        text = SERVERS.replace("{origin}", str(origin_n.port)).replace("{cache}", str(cache_n)).replace("{purge}", "") \
            .replace("{bgformat}", "log_format cachestatus '$uri $upstream_cache_status';") \
            .replace("{bglog}", f"access_log {folder / 'nginx-bg.log'} cachestatus; log_subrequest on;") \
            .replace("{api}", "")
        nginx = Nginx(NGINX, folder / "nginx", text, workers=2, writes_files=True).start()
        made.append(nginx)
        origin_x = RecordingOrigin().start()
        made.append(origin_x)
        cache_x = folder / "ngxsim-cache"
        text = NGXSIM_HEAD + SERVERS.replace("{origin}", str(origin_x.port)).replace("{cache}", str(cache_x)) \
            .replace("{purge}", "proxy_cache_purge PURGE from 127.0.0.1;").replace("{bgformat}", "") \
            .replace("{bglog}", "").replace("{api}", "location /api { api; }") + "}\n"
        ngxsim = start_server(folder, text, workers=WORKERS, worker_class="ngxsim.worker.Worker")
        made.append(ngxsim)
        yield (Front("nginx", nginx.port, origin_n, cache_n, 1, errors=lambda: nginx.error_log.read_text()),
               Front("ngxsim", ngxsim.port, origin_x, cache_x, WORKERS, ngxsim, errors=ngxsim.output))
    finally:
        for thing in reversed(made):
            thing.stop()


def req(target: str, method: str = "GET", headers: str = "", body: bytes = b"", host: str = "front.test",
        version: str = "HTTP/1.1") -> bytes:
    head = f"{method} {target} {version}\r\nHost: {host}\r\n"
    # what a browser sends; cases without them say so
    if "user-agent:" not in headers.lower() and "NO-UA" not in headers:
        head += "User-Agent: differential/1\r\nAccept-Encoding: gzip\r\n"
    head += headers.replace("NO-UA\r\n", "")
    return (head + "Connection: close\r\n\r\n").encode("latin-1") + body


@dataclass
class Case:
    """Requests in order (each with the origin's answer for its path set before it)."""

    steps: list[tuple[bytes, dict]] = field(default_factory=list)

    def then(self, data: bytes, **answer) -> "Case":
        self.steps.append((data, answer))
        return self


def one(data: bytes, **answer) -> Case:
    return Case().then(data, **answer)


def _path(data: bytes) -> str:
    return data.split(b" ", 2)[1].decode("latin-1").split("?", 1)[0]


CASES: dict[str, Case] = {
    # what the origin receives
    "get-with-query": one(req("/plain/a?x=1&y=%20z")),
    "post-with-length": one(req("/plain/post", "POST", "Content-Type: text/plain\r\nContent-Length: 5\r\n", b"hello")),
    "post-chunked": one(req("/plain/chunked", "POST", "Transfer-Encoding: chunked\r\n", b"5\r\nhello\r\n0\r\n\r\n")),
    "put-empty": one(req("/plain/put", "PUT", "Content-Length: 0\r\n")),
    "delete": one(req("/plain/del", "DELETE")),
    "head-not-cached": one(req("/plain/head", "HEAD")),
    "uri-part-replaced": one(req("/strip/x/y?q=1")),
    "address-host": one(req("/direct/a")),
    "set-headers": one(req("/set/a?b=c", headers="X-Forwarded-For: 10.0.0.1\r\nAccept: text/html\r\n")),
    "client-headers-passed": one(req("/plain/h", headers="Accept: */*\r\nCookie: a=1\r\nX-Custom: yes\r\n"
                                                         "Authorization: Basic eDp5\r\n")),
    "header-names-as-written": one(req("/plain/case", headers="x-lower: 1\r\nX-UPPER: 2\r\nx-MiXeD: 3\r\n")),
    "hop-by-hop-dropped": one(req("/plain/hop", headers="Keep-Alive: 300\r\nTE: trailers\r\nUpgrade: websocket\r\n")),
    "encoded-path": one(req("/plain/a%20b/%7Ec")),
    "dot-segments-kept-without-uri": one(req("/plain/a/../b")),
    "dot-segments-with-uri": one(req("/strip/a/../b")),
    "host-cleared": one(req("/nohost/a")),
    "no-user-agent-no-accept-encoding": one(req("/plain/bare", headers="NO-UA\r\n")),
    "connection-named-header": one(req("/plain/named", headers="X-Drop: 1\r\nConnection: X-Drop\r\n")),
    "proxy-headers": one(req("/plain/proxyauth", headers="Proxy-Authorization: Basic eDp5\r\nProxy-Connection: keep-alive\r\n")),
    "expect-continue": one(req("/plain/expect", "POST", "Expect: 100-continue\r\nContent-Length: 2\r\n", b"ok")),
    "repeated-header": one(req("/plain/multi", headers="X-Multi: 1\r\nX-Multi: 2\r\n")),
    "brackets-in-path": one(req("/strip/[]")),
    "http10-client": one(req("/plain/ten", version="HTTP/1.0")),
    # proxy_pass with variables
    "variable-group-uri-as-sent": one(req("/vgroup/a%20b?to=up&x=1")),
    "variable-group-any-case": one(req("/vgroup/c?to=UP")),
    "variable-uri-part-as-made": one(req("/vuri/x/y?p=z%41&w=1")),
    "variable-query-only": one(req("/vquery/x?q=a=1")),
    "variable-address": one(req("/vaddr/p/q?r=1")),
    "variable-address-port-80-not-the-group": one(req("/vgroup/d?to=up:80")),
    "variable-unknown-name-no-resolver": one(req("/vgroup/e?to=nosuch.test")),
    "variable-empty-host": one(req("/vgroup/f?to=")),
    "variable-bad-port": one(req("/vgroup/g?to=127.0.0.1:99999")),
    "variable-bad-prefix": one(req("/vbad/h?u=ftp://x")),
    "variable-cached-hit-after-miss": one(req("/vcache/a?to=up")).then(req("/vcache/a?to=up")),
    "variable-cached-no-resolver-not-stored": one(req("/vcache/b?to=nosuch.test")).then(req("/vcache/b?to=nosuch.test")),
    # what the client gets
    "origin-status-and-headers": one(req("/plain/st"), status=404, headers=[("X-Origin", "1"), ("Set-Cookie", "s=1"),
                                                                           ("Cache-Control", "no-store")]),
    "origin-204": one(req("/plain/nc"), status=204),
    "origin-redirect-relative": one(req("/plain/rel"), status=302, headers=[("Location", "/plain/there")]),
    "origin-redirect-absolute": one(req("/plain/abs"), status=302, headers=[("Location", "http://up/plain/there")]),
    "origin-redirect-absolute-with-uri": one(req("/strip/r"), status=302, headers=[("Location", "http://up/new/z")]),
    # Werkzeug would percent-encode it and drop the trailing "?"
    "origin-location-as-sent": one(req("/plain/odd"), status=302, headers=[("Location", "/plain/not a url?")]),
    "origin-redirect-elsewhere": one(req("/plain/else"), status=301, headers=[("Location", "http://else.test/x")]),
    "proxy-redirect-off": one(req("/noredir/a"), status=302, headers=[("Location", "http://up/noredir/x")]),
    "proxy-redirect-from-to": one(req("/redir/a"), status=302, headers=[("Location", "http://else.test/y")])
    .then(req("/redir/b"), status=302, headers=[("Location", "http://up/redir/c")]),
    "hide-and-pass-header": one(req("/hide/a"), headers=[("X-Secret", "1"), ("X-Pad", "p"), ("X-Kept", "k")]),
    "hop-by-hop-response": one(req("/plain/hopresp"), headers=[("Upgrade", "h2c"), ("Proxy-Authenticate", "Basic"),
                                                              ("Trailer", "X-T"), ("X-Named", "1"),
                                                              ("Connection", "X-Named")]),
    "header-without-colon": one(req("/plain/nocolon"),
                                raw=b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nNoColonHere\r\n\r\nok"),
    "no-status-line": one(req("/plain/http09"), raw=b"just bytes\n"),
    "no-status-line-cached": one(req("/cache/http09"), raw=b"just bytes\n").then(req("/cache/http09"), raw=b"more\n"),
    "length-and-chunked": one(req("/plain/both"), raw=b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n"
                                                      b"Transfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"),
    "origin-closes": one(req("/plain/closes"), raw=b""),
    # the origin closes inside the answer's head: nginx's 502 (the parser still wants the line's end)
    "closes-inside-status-line": one(req("/plain/cstatus"), raw=b"HTTP/1.1 200 OK"),
    "closes-inside-status-code": one(req("/plain/ccode"), raw=b"HTTP/1.1 20"),
    "closes-inside-header-line": one(req("/plain/cheader"), raw=b"HTTP/1.1 200 OK\r\nContent-Ty"),
    "closes-before-blank-line": one(req("/plain/cblank"), raw=b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"),
    # not a status nginx parses: an HTTP/0.9 answer, every byte relayed
    "bad-status": one(req("/plain/badstatus"), raw=b"HTTP/1.1 abc\r\n\r\n"),
    "bad-status-then-close": one(req("/plain/badstatus2"), raw=b"HTTP/1.1 abc"),
    "closes-inside-status-line-cached": one(req("/cache/cstatus"), raw=b"HTTP/1.1 200 OK")
    .then(req("/cache/cstatus")),
    "lone-server-not-marked-down": one(req("/lone/a"), raw=b"").then(req("/lone/a")),
    # what is cached
    "hit-after-miss": one(req("/cache/hit")).then(req("/cache/hit")),
    "head-of-cached": one(req("/cache/headhit")).then(req("/cache/headhit", "HEAD")),
    "post-not-cached": one(req("/cache/post", "POST", "Content-Length: 1\r\n", b"x"))
    .then(req("/cache/post", "POST", "Content-Length: 1\r\n", b"x")),
    "not-cached-404": one(req("/cache/e404"), status=404).then(req("/cache/e404"), status=404),
    "no-store-not-cached": one(req("/cache/nostore"), headers=[("Cache-Control", "no-store")])
    .then(req("/cache/nostore"), headers=[("Cache-Control", "no-store")]),
    "set-cookie-not-cached": one(req("/cache/cookie"), headers=[("Set-Cookie", "a=1")])
    .then(req("/cache/cookie"), headers=[("Set-Cookie", "a=1")]),
    "reason-on-hit": one(req("/cache/found"), status=302, reason="Found", headers=[("Location", "http://else.test/x")])
    .then(req("/cache/found")),
    "length-added-on-hit": one(req("/cache/nolength"), raw=b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil-close")
    .then(req("/cache/nolength")),
    "x-accel-expires-zero": one(req("/cache/accel"), headers=[("X-Accel-Expires", "0"), ("Cache-Control", "max-age=60")])
    .then(req("/cache/accel")),
    "if-none-match-on-hit": one(req("/cache/etag"), headers=[("ETag", '"v1"')])
    .then(req("/cache/etag", headers='If-None-Match: "v1"\r\n')),
    "conditional-miss": one(req("/cache/cond", headers='If-None-Match: "v1"\r\nIf-Modified-Since: '
                                                       'Mon, 01 Jan 2024 00:00:00 GMT\r\n'),
                            headers=[("ETag", '"v1"'), ("Last-Modified", "Mon, 01 Jan 2024 00:00:00 GMT")]),
    "vary-stored-per-variant": one(req("/cache/vary"), headers=[("Vary", "Accept")])
    .then(req("/cache/vary")),
    "vary-variants-apart": one(req("/cache/vary2", headers="Accept: a\r\n"), headers=[("Vary", "Accept")])
    .then(req("/cache/vary2", headers="Accept: b\r\n"), headers=[("Vary", "Accept")])
    .then(req("/cache/vary2", headers="Accept: a\r\n")).then(req("/cache/vary2", headers="Accept: b\r\n")),
    "vary-star-not-stored": one(req("/cache/varystar"), headers=[("Vary", "*")]).then(req("/cache/varystar")),
    "head-miss-stores-get": one(req("/cache/headmiss", "HEAD")).then(req("/cache/headmiss")),
}

# Where ngxsim differs today and why (issue #22; docs/nginx-differences.md). Strict: a case
# that starts to pass fails, so the list and the docs stay true.
KNOWN_DIFFERENCES: dict[str, str] = {}


def _cases(table):
    return [pytest.param(name, marks=pytest.mark.xfail(strict=True, reason=KNOWN_DIFFERENCES[name]))
            if name in KNOWN_DIFFERENCES else name for name in sorted(table)]


def play(front: Front, case: Case) -> tuple[list[dict], list[dict]]:
    """The case's requests through one front: (what the client got, what the origin received)."""
    since = len(front.origin.received)
    answers = []
    for data, answer in case.steps:
        front.origin.answer(_path(data), **answer)
        answers.append(front.comparable(front.send(data)))
    return answers, front.received(since)


# Differences that every case would show, compared by their own tests below, not in each case:
# nginx speaks HTTP/1.0 with Connection: close to the origin (no proxy_http_version 1.1 here)
def _without_version(received: list[dict]) -> list[dict]:
    out = []
    for r in received:
        line = r["request_line"].rsplit(" ", 1)[0]
        out.append({**r, "request_line": line, "headers": [h for h in r["headers"] if h[0].lower() != "connection"]})
    return out


@pytest.mark.parametrize("name", _cases(CASES))
def test_same_as_nginx(fronts, name):
    nginx, ngxsim = fronts
    case = CASES[name]
    expected_answers, expected_received = play(nginx, case)
    got_answers, got_received = play(ngxsim, case)
    assert got_answers == expected_answers, "what the client got:\n" + differences(got_answers, expected_answers)
    got_received, expected_received = _without_version(got_received), _without_version(expected_received)
    assert got_received == expected_received, "what the origin received:\n" + differences(got_received,
                                                                                            expected_received)


def differences(got: list[dict], expected: list[dict]) -> str:
    """Each differing part, as ``[i] key: ngxsim ... nginx ...``."""
    lines = [f"ngxsim {len(got)} items, nginx {len(expected)}"] if len(got) != len(expected) else []
    for i, (g, e) in enumerate(zip(got, expected)):
        for key in e:
            if g.get(key) != e[key]:
                if key == "headers":
                    lines.append(f"[{i}] headers only in ngxsim: {sorted(set(g[key]) - set(e[key]))}, "
                                 f"only in nginx: {sorted(set(e[key]) - set(g[key]))}")
                else:
                    lines.append(f"[{i}] {key}: ngxsim {g.get(key)!r}, nginx {e[key]!r}")
    return "\n".join(lines)


@pytest.mark.parametrize("target", [
    "/plain/version",  # HTTP/1.0 and Connection: close (nginx's default)
    "/v11/version",  # proxy_http_version 1.1 and Connection "" (with keepalive in the upstream)
])
def test_same_http_version_and_connection_header_to_the_origin(fronts, target):
    nginx, ngxsim = fronts
    case = one(req(target))
    _, expected = play(nginx, case)
    _, got = play(ngxsim, case)
    assert [(r["request_line"], [h for h in r["headers"] if h[0].lower() == "connection"]) for r in got] == \
        [(r["request_line"], [h for h in r["headers"] if h[0].lower() == "connection"]) for r in expected]


def test_origin_204_keeps_its_type(fronts):
    """An origin's 204 goes on with its Content-Type (nginx's own 204 has none)."""
    case = one(req("/plain/nc204"), status=204)
    got = [play(front, case)[0][0]["content-type"] for front in fronts]
    assert got == ["text/plain", "text/plain"]


def error_line(front: Front, data: bytes, message: str) -> str:
    """The one error-log line with ``message`` that sending ``data`` through ``front`` writes,
    from the message on (the time, pid and connection differ)."""
    before = len(front.errors())
    front.send(data)
    deadline = time.monotonic() + 5
    found: list[str] = []
    while not found and time.monotonic() < deadline:
        found = [line[line.index(message):] for line in front.errors()[before:].splitlines() if message in line]
        time.sleep(0.02)
    assert len(found) == 1, (front.name, found)
    return found[0]


@pytest.mark.parametrize("target, message", [
    ("/vgroup/lines?to=nosuch.test", "no resolver defined to resolve nosuch.test"),
    ("/vbad/lines?u=ftp://x", 'invalid URL prefix in "ftp://x"'),
    ("/vgroup/lines?to=127.0.0.1:99999", 'invalid port in upstream "127.0.0.1:99999"'),
])
def test_variable_proxy_pass_error_line_as_nginx(fronts, target, message):
    """The error-log line of a proxy_pass with variables that cannot be proxied: nginx's, with
    its request context (the line from the message on: the time, pid and connection differ)."""
    lines = [error_line(front, req(target), message) for front in fronts]
    assert lines[1] == lines[0]
    assert lines[0] == f'{message}, client: 127.0.0.1, server: front.test, request: "GET {target} HTTP/1.1", ' \
                       'host: "front.test"'


@pytest.mark.parametrize("path, raw, message", [
    ("/plain/lstatus", b"HTTP/1.1 200 OK", "upstream prematurely closed connection"),
    ("/plain/lheader", b"HTTP/1.1 200 OK\r\nContent-Ty", "upstream prematurely closed connection"),
    ("/plain/lblank", b"HTTP/1.1 200 OK\r\nX-A: 1\r\n", "upstream prematurely closed connection"),
    ("/plain/lbad", b"HTTP/1.1 abc\r\n\r\n", "upstream sent no valid HTTP/1.0 header"),
])
def test_head_fault_error_line_as_nginx(fronts, path, raw, message):
    """The one error line of an origin that closes inside the answer's head, or sends no status
    line: nginx's words and request context, from the message on (ports written as {port})."""
    lines = []
    for front in fronts:
        front.origin.answer(path, raw=raw)
        lines.append(error_line(front, req(path), message).replace(str(front.origin.port), "{origin}"))
    assert lines[1] == lines[0]
    assert lines[0] == f'{message} while reading response header from upstream, client: 127.0.0.1, server: ' \
                       f'front.test, request: "GET {path} HTTP/1.1", upstream: "http://127.0.0.1:{{origin}}{path}", ' \
                       'host: "front.test"'


# (location, requests, fewest and most connections for them): keepalive 4 with HTTP/1.1 and
# Connection "" reuses one connection per worker; keepalive_requests 2 closes each after two
# requests; without Connection "" (nginx's default Connection: close) nothing is reused
REUSE = [("/v11/", 9, 1, WORKERS), ("/v11two/", 9, 5, 9), ("/v11close/", 6, 6, 6), ("/plain/", 6, 6, 6)]


@pytest.mark.parametrize("location, count, fewest, most", REUSE)
def test_connections_reused_as_nginx_keepalive_reuses_them(fronts, location, count, fewest, most):
    for front in fronts:
        since = len(front.origin.received)
        for i in range(count):
            answer = front.send(req(f"{location}reuse{i}"))
            assert answer.status == 200, (front.name, answer)
        connections = {r.connection for r in front.origin.received[since:]}
        assert fewest <= len(connections) <= most, (front.name, len(connections))


# -- sequences across workers ------------------------------------------------------------------


def everyone(front: Front, data: bytes) -> list[tuple]:
    """The answer of every worker of the front (nginx: as many requests as ngxsim has workers,
    its cache is one for all of them), sorted: (status, X-Cache, body)."""
    if front.server is None:
        answers = [front.send(data) for _ in range(WORKERS)]
    else:
        method, target = data.split(b" ", 2)[:2]
        headers = dict(line.split(": ", 1) for line in data.split(b"\r\n\r\n", 1)[0].decode().split("\r\n")[1:]
                       if not line.lower().startswith("connection:"))
        got = front.server.each_worker(target.decode(), method=method.decode(), headers=headers)
        answers = [RawAnswer(r.status_code, r.reason, list(r.headers.items()), r.content) for r in got.values()]
    return sorted((a.status, a.header("X-Cache"), a.body) for a in answers)


def purge(front: Front, target: str) -> None:
    """ngxsim: its PURGE method; nginx (no purge module here): delete the entry's file, as
    ngx_cache_purge does, so the next request misses."""
    if front.server is not None:
        answer = front.send(req(target, "PURGE"))
        assert answer.status == 200, answer
        return
    # nginx's key without proxy_cache_key: the proxy_pass URL and the request URI (what its
    # cache file's "KEY:" line says; its docs write $scheme$proxy_host$request_uri)
    key = f"http://up{target}".encode()
    (front.cache / hashlib.md5(key).hexdigest()).unlink()


def sequence_hit_after_miss_on_every_worker(front: Front) -> list:
    return [front.comparable(front.send(req("/cache/seq-hit"))), everyone(front, req("/cache/seq-hit")),
            origin_hits(front, "/cache/seq-hit")]


def origin_hits(front: Front, path: str) -> int:
    return sum(1 for r in front.origin.received if r.path == path)


def sequence_expiry(front: Front) -> list:
    first = front.comparable(front.send(req("/short/exp")))
    time.sleep(2.1)  # proxy_cache_valid 200 1s: in nginx's whole seconds, expired after 2
    # (no request after it: the refreshed copy expires again after a second on a slow machine)
    return [first, front.comparable(front.send(req("/short/exp"))), origin_hits(front, "/short/exp")]


def sequence_purge(front: Front) -> list:
    first = [front.comparable(front.send(req("/cache/seq-purge"))), everyone(front, req("/cache/seq-purge"))]
    purge(front, "/cache/seq-purge")
    return first + [front.comparable(front.send(req("/cache/seq-purge"))), everyone(front, req("/cache/seq-purge")),
                    origin_hits(front, "/cache/seq-purge")]


def sequence_bypass(front: Front) -> list:
    warm = everyone(front, req("/bypass/b"))  # every worker has the first copy (ngxsim: in its memory)
    refreshed = front.comparable(front.send(req("/bypass/b", headers="X-Refresh: 1\r\n")))
    return [warm, refreshed, everyone(front, req("/bypass/b")), origin_hits(front, "/bypass/b")]


def sequence_stale(front: Front) -> list:
    """proxy_cache_use_stale: an expired entry answers when refreshing it fails as named."""
    front.origin.answer("/stale/s")
    first = front.comparable(front.send(req("/stale/s")))
    time.sleep(2.1)  # proxy_cache_valid 200 1s: expired in nginx's whole seconds
    front.origin.answer("/stale/s", status=500)
    on_500 = front.comparable(front.send(req("/stale/s")))
    front.origin.answer("/stale/s", status=503)  # not named: the origin's answer
    on_503 = front.comparable(front.send(req("/stale/s")))
    # the origin closes: an error (last: ngxsim's proxy sends the GET again, origin-closes)
    front.origin.answer("/stale/s", raw=b"")
    on_error = front.comparable(front.send(req("/stale/s")))
    return [first, on_500, on_503, on_error]


def sequence_revalidate(front: Front) -> list:
    """proxy_cache_revalidate: the expired entry is asked for with its ETag and Last-Modified;
    a 304 makes it fresh again."""
    tagged = [("ETag", '"r1"'), ("Last-Modified", "Mon, 01 Jan 2024 00:00:00 GMT")]
    front.origin.answer("/reval/r", headers=tagged)
    since = len(front.origin.received)
    first = front.comparable(front.send(req("/reval/r")))
    time.sleep(2.1)  # proxy_cache_valid 200 1s: expired in nginx's whole seconds
    front.origin.answer("/reval/r", status=304, headers=tagged)
    again = front.comparable(front.send(req("/reval/r")))
    then = front.comparable(front.send(req("/reval/r")))
    return [first, again, then, _without_version(front.received(since))]


def settled(front: Front, data: bytes) -> dict:
    """The first answer that is not ``UPDATING`` (bounded): nginx holds the client's connection
    until its background update ends, ngxsim closes it at once, so its refresh may still be
    storing when the next request comes."""
    for _ in range(100):
        answer = front.send(data)
        if answer.header("X-Cache") != "UPDATING":
            return front.comparable(answer)
        time.sleep(0.05)
    raise AssertionError(f"{front.name}: still UPDATING after 100 requests")


def wait_origin_hits(front: Front, path: str, count: int) -> int:
    deadline = time.monotonic() + 10
    while origin_hits(front, path) < count and time.monotonic() < deadline:
        time.sleep(0.02)
    return origin_hits(front, path)


def sequence_background_update(front: Front) -> list:
    """proxy_cache_background_update: an expired entry answers at once (STALE, the old copy), a
    background subrequest refreshes it; then every worker has the new copy (HIT)."""
    front.origin.answer("/bg/u")
    since = len(front.origin.received)
    first = front.comparable(front.send(req("/bg/u")))
    time.sleep(2.1)  # proxy_cache_valid 200 1s: expired in nginx's whole seconds
    stale = front.comparable(front.send(req("/bg/u")))
    refreshed = wait_origin_hits(front, "/bg/u", 2)
    return [first, stale, refreshed, settled(front, req("/bg/u")), everyone(front, req("/bg/u")),
            origin_hits(front, "/bg/u"), _without_version(front.received(since))]


def sequence_background_update_fails(front: Front) -> list:
    """A background refresh the origin answers 500 (not stored: proxy_cache_valid 200): the
    expired copy goes on answering STALE, and the next one starts a refresh again."""
    front.origin.answer("/bg/f")
    first = front.comparable(front.send(req("/bg/f")))
    time.sleep(2.1)
    front.origin.answer("/bg/f", status=500)
    stale = front.comparable(front.send(req("/bg/f")))
    failed = wait_origin_hits(front, "/bg/f", 2)
    again = settled(front, req("/bg/f"))
    return [first, stale, failed, again, wait_origin_hits(front, "/bg/f", 3)]


def test_background_update_counted_as_nginx_counts_its_requests(fronts):
    """A background update is two requests in nginx: the client's (``STALE``: the old copy at
    once) and its background subrequest's (``EXPIRED``: it finds the entry updating, as the
    background one it fetches it; ``log_subrequest on`` writes its line). ngxsim's ``http/caches``
    counts each of them once: ``stale`` +1, ``expired`` +1 with the refreshed copy as its
    ``responses_written`` — what nginx's requests of the sequence carry, nothing more."""
    nginx, ngxsim = fronts
    log = nginx.cache.parent / "nginx-bg.log"
    before = ngxsim_cache_counts(ngxsim)
    for front in fronts:
        front.origin.answer("/bgcount/c")
        assert front.send(req("/bgcount/c")).status == 200
    time.sleep(2.1)  # proxy_cache_valid 200 1s: expired in nginx's whole seconds
    for front in fronts:
        assert front.send(req("/bgcount/c")).header("X-Cache") is None  # no add_header here
        assert wait_origin_hits(front, "/bgcount/c", 2) == 2
    deadline = time.monotonic() + 10
    statuses: list[str] = []
    while len(statuses) < 3 and time.monotonic() < deadline:  # the subrequest's line comes when it ends
        statuses = [line.split()[1] for line in log.read_text().splitlines() if line.startswith("/bgcount/c ")]
        time.sleep(0.02)
    assert sorted(statuses) == ["EXPIRED", "MISS", "STALE"], statuses
    expected = {status.lower(): statuses.count(status) for status in statuses}
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # the refresh counts (and stores) on a background thread
        got = _delta(before, ngxsim_cache_counts(ngxsim))
        if got.get("expired", 0) >= 1:
            break
        time.sleep(0.02)
    assert {key: n for key, n in got.items() if not key.endswith("written")} == expected
    assert (got.get("miss written"), got.get("expired written")) == (1, 1)


def ngxsim_cache_counts(front: Front) -> dict:
    answer = front.send(req("/api/9/http/caches"))
    assert answer.status == 200, answer
    return json.loads(answer.body)["dc"]


def _delta(before: dict, after: dict) -> dict:
    """Responses counted meanwhile, per status (``KEY written``: those stored), the non-zero ones."""
    out = {}
    for key in ("hit", "stale", "updating", "revalidated", "miss", "expired", "bypass"):
        n = after[key]["responses"] - before[key]["responses"]
        if n:
            out[key] = n
        if "responses_written" in after[key]:
            n = after[key]["responses_written"] - before[key]["responses_written"]
            if n:
                out[f"{key} written"] = n
    return out


def sequence_background_update_of_a_post(front: Front) -> list:
    """proxy_cache_methods POST: the background subrequest that refreshes a POST's entry goes to
    the origin as nginx sends it: the parent's method, header lines and body (nginx reads the
    body before it looks in the cache, and a subrequest shares its parent's)."""
    front.origin.answer("/bgpost/p")
    since = len(front.origin.received)
    first = front.comparable(front.send(req("/bgpost/p", "POST", "Content-Type: text/plain\r\nContent-Length: 5\r\n",
                                            b"hello")))
    time.sleep(2.1)  # proxy_cache_valid 200 1s: expired in nginx's whole seconds
    stale = front.comparable(front.send(req("/bgpost/p", "POST", "Transfer-Encoding: chunked\r\n",
                                            b"6\r\nchunks\r\n0\r\n\r\n")))
    refreshed = wait_origin_hits(front, "/bgpost/p", 2)
    return [first, stale, refreshed, _without_version(front.received(since))]


SEQUENCES = {
    "background-update-of-a-post": sequence_background_update_of_a_post,
    "background-update": sequence_background_update,
    "background-update-fails": sequence_background_update_fails,
    "revalidate": sequence_revalidate,
    "stale-on-error-and-500": sequence_stale,
    "hit-after-miss-on-every-worker": sequence_hit_after_miss_on_every_worker,
    "expiry": sequence_expiry,
    "purge": sequence_purge,
    "bypass-refresh-reaches-every-worker": sequence_bypass,
}
KNOWN_SEQUENCE_DIFFERENCES: dict[str, str] = {}


@pytest.mark.parametrize("name", [
    pytest.param(n, marks=pytest.mark.xfail(strict=True, reason=KNOWN_SEQUENCE_DIFFERENCES[n]))
    if n in KNOWN_SEQUENCE_DIFFERENCES else n for n in sorted(SEQUENCES)])
def test_same_sequence_as_nginx(fronts, name):
    nginx, ngxsim = fronts
    expected = SEQUENCES[name](nginx)
    got = SEQUENCES[name](ngxsim)
    assert got == expected
