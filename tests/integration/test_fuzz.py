"""Fuzzing the worker_events API (one real server) and the config loader with hypothesis.

For any request: never a 5xx, never a traceback in the server's log, an error body that is JSON
naming the problem; afterwards the ring holds exactly the events that were answered 201.
"""

from __future__ import annotations

import json
import re
from urllib.parse import quote

import pytest
import requests
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from half_close import send
from ngxsim.testing import start_server

CONF = """
load_module worker_events;
worker_processes 2;
http {
    worker_events_ring_size 4096;
    server {
        listen 127.0.0.1:{port};
        location /api {
            worker_events_api;
            worker_events_zone bus;
            worker_events_channel fuzz;
            worker_events_publish_key s3cret;
        }
        location /open {
            worker_events_api;
            worker_events_zone bus;
            worker_events_channel open;
        }
    }
}
"""
EXAMPLES = 250  # each is one request to a live server: ~2 s in all on 2 cores

# JSON values of every shape, and texts that stress the byte limits of the fields
texts = st.one_of(st.text(max_size=20), st.text(min_size=60, max_size=70), st.text(min_size=500, max_size=520),
                  st.sampled_from(["", "purged", "é" * 257, "\x00", "\ud7ff"]))
json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | texts,
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
                           max_leaves=8)
events = st.fixed_dictionaries({"type": texts}, optional={"payload": texts | json_values})
bodies = st.one_of(
    events.map(lambda e: json.dumps(e).encode()),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.dictionaries(st.sampled_from(["type", "payload", "channel", "x"]), json_values, max_size=3).map(
        lambda d: json.dumps(d).encode()),
    st.binary(max_size=64),
    st.sampled_from([b"[" * 3000 + b"]" * 3000, b'{"type": NaN}', b'{"type": "t"' + b" " * 5000 + b"}", b"\xff\xfe"]),
)
query_values = st.one_of(st.sampled_from(["0", "1", "-1", "1.5", "", "x", "99999999999999999999", "0.01", "nan",
                                          "inf", "\u0661", "fuzz", "open"]), st.text(max_size=8))
queries = st.dictionaries(st.sampled_from(["since", "limit", "wait", "channel", "key", "%6bey", "other"]), query_values,
                          max_size=4)
keys = st.sampled_from([None, "s3cret", "wrong", ""])
content_types = st.sampled_from(["application/json", "application/json; charset=utf-8", "text/plain", "", "APPLICATION/JSON"])
methods = st.sampled_from(["GET", "HEAD", "POST", "POST", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"])
# how the body travels: as declared, chunked, cut short by a half-close, or with broken chunking
transports = st.sampled_from(["plain", "plain", "chunked", "short", "bad-chunk"])


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = start_server(tmp_path_factory.mktemp("fuzz"), CONF, workers=2)
    yield srv
    srv.stop()


def _send(server, method, path, query, body, ctype, transport):
    """One request; returns (status, parsed JSON or None)."""
    target = path + ("?" + "&".join(f"{k}={quote(v)}" for k, v in query.items()) if query else "")
    if method != "POST" or transport == "plain":
        headers = {"Content-Type": ctype} if ctype else {}
        r = requests.request(method, server.url(target), data=body if method == "POST" else None, headers=headers,
                             timeout=10)
        return r.status_code, (r.json() if r.content else None)
    head = [f"POST {target} HTTP/1.1", "Host: localhost", "Connection: close"] + ([f"Content-Type: {ctype}"] if ctype else [])
    if transport == "short":
        data = "\r\n".join(head + [f"Content-Length: {len(body) + 10}"]).encode() + b"\r\n\r\n" + body
    elif transport == "chunked":
        data = "\r\n".join(head + ["Transfer-Encoding: chunked"]).encode() + b"\r\n\r\n"
        data += b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body) if body else b"0\r\n\r\n"
    else:  # a chunk size that is not hex, after a good first chunk
        data = "\r\n".join(head + ["Transfer-Encoding: chunked"]).encode() + b"\r\n\r\n1\r\n{\r\nzz\r\n"
    status, _, content = send(server.port, data, half_close=True)
    return status, json.loads(content)


def _names_the_problem(message: str, query: dict, method: str) -> bool:
    words = ["body", "JSON", "field", "Content-Type", "key", "type", "payload", "channel", method, *query]
    return any(w and w in message for w in words)


def test_any_request_gets_a_clean_answer_and_the_ring_holds_exactly_the_accepted_events(server):
    accepted: dict[int, tuple[str, str, str]] = {}

    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    @given(method=methods, path=st.sampled_from(["/api", "/open"]), query=queries, key=keys, body=bodies,
           ctype=content_types, transport=transports)
    def one(method, path, query, key, body, ctype, transport):
        if key is not None:
            query = {**query, "key": key}
        if "wait" in query:  # a long-poll may wait: keep it short
            query["wait"] = "0.01"
        status, answer = _send(server, method, path, query, body, ctype, transport)
        assert status < 500, (status, answer)
        if method == "HEAD":
            return
        assert isinstance(answer, dict), answer
        if status == 201:
            accepted[answer["generation"]] = (answer["channel"], answer["type"], answer["payload"])
        elif status >= 400:
            assert answer["status"] == status and _names_the_problem(answer["message"], query, method), answer

    one()
    assert "Traceback" not in server.output() and "Error handling request" not in server.output()
    ring = requests.get(server.url("/api"), timeout=10).json()
    stored = {e["generation"]: (e["channel"], e["type"], e["payload"]) for e in ring["events"]}
    assert stored == accepted
    assert sorted(stored) == list(range(1, len(stored) + 1))  # no generation lost or torn


# -- the config loader ------------------------------------------------------------------------

VOCABULARY = [
    "http", "server", "location", "listen", "server_name", "return", "add_header", "client_max_body_size",
    "access_log", "default_type", "worker_processes", "worker_threads", "worker_class", "error_log",
    "worker_events_api", "worker_events_zone", "worker_events_channel", "worker_events_ring_size",
    "worker_events_publish_key", "worker_events_gil_switch_interval", "t_size", "t_time", "t_number", "t_flag",
    "{", "}", ";", ";", "\n", "~", "~*", "=", "^~", "/", "/a", "80", "127.0.0.1:80", "[::1]:99999", "0", "1", "-1",
    "1k", "1g", "99999999999999999999g", "500ms", "1h30m", "1" + "0" * 40 + "ms", "on", "off", "auto", "bus",
    "always", "$uri", "${uri}", "a${", "$nope", '"', "'", "\\", "#", '"a{99999999999}"', '"~a{4294967296}"',
    '"' + "(" * 300 + ")" * 300 + '"', "(", "*.x", "x.*", "~^x$", "\u0661", "\x00", "é",
    # what gave an [emerg] without a place (issue 19): an unknown variable, includes that fail
    "include", "/tmp", "/nonexistent.conf", "/dev/null", "$nope_${uri}", "${nope}",
]
# nginx's "... in FILE:LINE" (the text below is named /p/fuzz.conf; an included file names itself)
PLACE = re.compile(r" in (/\S+|command line):\d+$")


# the text as it comes, and inside a location (where values, and so variables, are read)
FRAMES = ["{}", "http {{ server {{ listen 127.0.0.1:1; location / {{ {} }} }} }}"]


_WORD = st.sampled_from(VOCABULARY) | st.text(max_size=6)
# statements whose values are read (variables among them) and includes
_DIRECTIVES = st.sampled_from(["return", "add_header", "include", "worker_events_channel", "client_max_body_size"])
_VALUES = st.sampled_from(["200", "X", "always", "$uri", "$nope", "${nope}", "a$nope_${uri}", "/tmp", "/nonexistent.conf"])
_STATEMENT = st.tuples(_DIRECTIVES | _WORD, st.lists(_VALUES | _WORD, max_size=4)).map(lambda t: " ".join([t[0], *t[1]]) + ";")
# any words; or statements, which reach the checks past the syntax's
_TEXTS = st.lists(_WORD, max_size=60).map(" ".join) | st.lists(_STATEMENT, max_size=8).map("\n".join)


@pytest.mark.parametrize("frame", FRAMES, ids=["main", "location"])
@settings(max_examples=400, deadline=None, database=None)
@given(_TEXTS)
@example("add_header X $nope;")  # the cases of issue 19 that had no file:line, always tried
@example("return 200 ${nope};")
@example("include /nonexistent.conf;")
@example("include /tmp;")
@example('include "a\x00*";')  # found by this test: a ValueError from open() and glob()
def test_the_config_loader_answers_any_text_with_a_config_error_or_a_config(frame, text):
    from ngxsim import ConfigError
    from ngxsim.core.conf.loader import load_configuration

    text = frame.format(text)
    try:
        load_configuration("/p/fuzz.conf", text="load_module worker_events;\nload_module ngxsim_test_values;\n" + text)
    except ConfigError as exc:
        assert str(exc).strip()
        assert PLACE.search(str(exc)), f"no file:line in {str(exc)!r}"
