"""The worker_events JSON API under gunicorn -w 4: the whole contract over HTTP."""

from __future__ import annotations

import json
import os
import signal
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from half_close import send
from ngxsim.testing import start_server, wait_for

CONF = """
load_module worker_events;
load_module ngxsim_test_zone;
worker_processes 4;
http {
    server {
        listen 127.0.0.1:{port};
        add_header X-Worker-Pid $pid always;
        access_log {tmp}/access.log;
        location / { return 200 ok; }
        location /internal/worker-events {
            worker_events_api;
            worker_events_zone bus;
            worker_events_channel cache.invalidate;
            worker_events_ring_size 1024;
            worker_events_publish_key changeme;
        }
        location /open {
            worker_events_api;
            worker_events_zone bus;
            worker_events_channel other;
        }
        location /hold { test_zone_hold bus; }
    }
}
"""
API = "/internal/worker-events"


@pytest.fixture(scope="module")
def record_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("record")


@pytest.fixture
def server(ngxsim_server, record_dir):
    return ngxsim_server(CONF, workers=4, extra_env={"NGXSIM_TEST_RECORD_DIR": str(record_dir)})


@pytest.fixture(scope="module")
def shared(tmp_path_factory, record_dir):
    """One server for the tests that only check answers to bad requests (they publish nothing)."""
    server = start_server(tmp_path_factory.mktemp("shared"), CONF, workers=4,
                          extra_env={"NGXSIM_TEST_RECORD_DIR": str(record_dir)})
    yield server
    server.stop()


def publish(server, body, key="changeme", path=API, **kw):
    url = path + (f"?key={key}" if key is not None else "")
    return server.post(url, json=body, **kw)


def test_publish_and_inspect(server):
    r = publish(server, {"type": "purged", "payload": "tag:assets"})
    assert r.status_code == 201 and r.headers["Content-Type"] == "application/json"
    event = r.json()
    assert set(event) == {"generation", "channel", "type", "payload", "timestamp_msec", "origin", "origin_generation"}
    assert (event["origin"], event["origin_generation"]) == (None, None)  # published here: local
    assert (event["generation"], event["channel"], event["type"], event["payload"]) == (1, "cache.invalidate", "purged", "tag:assets")
    assert publish(server, {"type": "no-payload"}).json()["payload"] == ""
    publish(server, {"type": "elsewhere"}, key=None, path="/open")
    body = server.get(API).json()
    assert {k: body[k] for k in ("module", "zone", "channel", "capacity", "oldest_generation", "newest_generation",
                                 "dropped_events")} == {
        "module": "worker_events", "zone": "bus", "channel": "cache.invalidate", "capacity": 1024,
        "oldest_generation": 1, "newest_generation": 3, "dropped_events": 0}
    assert body["last_publish_msec"] == body["events"][-1]["timestamp_msec"]
    assert [(e["generation"], e["channel"]) for e in body["events"]] == [(1, "cache.invalidate"), (2, "cache.invalidate"), (3, "other")]
    assert [e["generation"] for e in server.get(API + "?channel=other").json()["events"]] == [3]
    # the top "channel" is the endpoint's (where it publishes); the query's filter is shown apart
    filtered = server.get(API + "?channel=other").json()
    assert filtered["channel"] == "cache.invalidate" and filtered["filter"] == {"channel": "other"}
    assert body["filter"] is None
    assert [e["generation"] for e in server.get(API + "?limit=2").json()["events"]] == [2, 3]
    assert [e["generation"] for e in server.get(API + "?since=1&limit=1").json()["events"]] == [2]
    assert server.get(API + "?since=1").json()["missed"] == 0


def test_a_publish_through_one_worker_is_seen_by_every_other(server):
    r = publish(server, {"type": "purged", "payload": "x"})
    writer = r.worker_pid
    answers = server.each_worker(API)
    assert writer in answers and len(answers) == 4
    for pid, resp in answers.items():
        assert [e["payload"] for e in resp.json()["events"]] == ["x"], pid


def test_head_has_the_get_headers_and_no_body(server):
    publish(server, {"type": "t"})
    # the answer lists each worker's delivery counters: compare once they stopped moving
    server.events(API).wait_delivered()
    get = server.get(API)
    head = server.head(API)
    assert head.status_code == 200 and head.content == b""
    assert head.headers["Content-Length"] == get.headers["Content-Length"] == str(len(get.content))
    assert head.headers["Content-Type"] == get.headers["Content-Type"]


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH", "OPTIONS"])
def test_other_methods_get_405_with_allow(shared, method):
    r = shared.request(method, API)
    assert r.status_code == 405 and r.headers["Allow"] == "GET, HEAD, POST"
    assert method in r.json()["message"]


@pytest.mark.parametrize("kwargs, status, words", [
    (dict(key=None, json={"type": "t"}), 403, "key"),
    (dict(key="wrong", json={"type": "t"}), 403, "key"),
    (dict(data="{}", headers={"Content-Type": "text/plain"}), 415, "Content-Type"),
    (dict(data='{"type": "t"}'), 415, "Content-Type"),
    (dict(data="{nope", headers={"Content-Type": "application/json"}), 400, "not valid JSON"),
    (dict(data=b"\xff", headers={"Content-Type": "application/json"}), 400, "not valid JSON"),
    (dict(json=["type"]), 400, "JSON object"),
    (dict(json={}), 400, '"type" is required'),
    (dict(json={"type": ""}), 400, '"type" must not be empty'),
    (dict(json={"type": 1}), 400, '"type" must be a string'),
    (dict(json={"type": "t", "payload": {"a": 1}}), 400, '"payload" must be a string'),
    (dict(json={"type": "t", "payload": None}), 400, '"payload" must be a string'),
    (dict(json={"type": "t", "channel": "x"}), 400, "channel"),
    (dict(json={"type": "t", "extra": 1}), 400, '"extra"'),
    (dict(json={"type": "x" * 65}), 400, '"type" is 65 bytes'),
    (dict(json={"type": "t", "payload": "é" * 257}), 400, '"payload" is 514 bytes'),
    (dict(data='{"type": "t", "payload": "' + "x" * 5000 + '"}', headers={"Content-Type": "application/json"}), 413, "larger"),
    (dict(data='{"type": NaN}', headers={"Content-Type": "application/json"}), 400, "not valid JSON"),
])
def test_bad_publishes_are_rejected_and_publish_nothing(shared, kwargs, status, words):
    server = shared
    before = server.get(API).json()["newest_generation"]
    key = kwargs.pop("key", "changeme")
    url = API + (f"?key={key}" if key is not None else "")
    r = server.post(url, **kwargs)
    assert r.status_code == status, r.text
    assert r.headers["Content-Type"] == "application/json" and words in r.json()["message"]
    assert server.get(API).json()["newest_generation"] == before


def test_json_content_type_with_parameters_is_accepted(server):
    r = server.post(API + "?key=changeme", data=json.dumps({"type": "t"}),
                    headers={"Content-Type": "Application/JSON; charset=utf-8"})
    assert r.status_code == 201


def test_chunked_body_over_the_limit_is_413(shared):
    def chunks():
        yield b'{"type": "t", "payload": "'
        for _ in range(10):
            yield b"x" * 1000
        yield b'"}'

    before = shared.get(API).json()["newest_generation"]
    r = shared.post(API + "?key=changeme", data=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413
    assert shared.get(API).json()["newest_generation"] == before


@pytest.mark.parametrize("query, name", [("since=-1", "since"), ("since=x", "since"), ("limit=1.5", "limit"),
                                         ("limit=", "limit"), ("since=1&wait=31", "wait"), ("since=1&wait=x", "wait"),
                                         ("wait=1", "wait")])
def test_bad_query_values_are_400_naming_the_parameter(shared, query, name):
    r = shared.get(f"{API}?{query}")
    assert r.status_code == 400 and f'"{name}"' in r.json()["message"]


def test_get_and_head_need_no_key_and_the_key_never_reaches_the_access_log(server, tmp_path):
    assert server.get(API).status_code == 200
    publish(server, {"type": "t"})
    publish(server, {"type": "t"}, key="wrong-guess")
    log = (tmp_path / "access.log").read_text()
    assert "key=***" in log and "changeme" not in log and "wrong-guess" not in log


def test_since_older_than_the_ring_says_how_many_were_missed(ngxsim_server, record_dir):
    server = ngxsim_server(CONF.replace("worker_events_ring_size 1024;", "").replace("http {", "http {\n    worker_events_ring_size 4;"), workers=2,
                            extra_env={"NGXSIM_TEST_RECORD_DIR": str(record_dir)})
    for i in range(10):
        publish(server, {"type": "t", "payload": str(i)})
    body = server.get(API + "?since=2").json()
    assert body["missed"] == 4 and [e["generation"] for e in body["events"]] == [7, 8, 9, 10]
    assert body["dropped_events"] == 6 and body["oldest_generation"] == 7


def test_a_get_answers_at_most_a_page_and_since_pages_through_the_rest(ngxsim_server, record_dir):
    conf = CONF.replace("worker_events_ring_size 1024;", "").replace(
        "http {", "http {\n    worker_events_ring_size 8;\n    worker_events_page_size 3;")
    server = ngxsim_server(conf, workers=2, extra_env={"NGXSIM_TEST_RECORD_DIR": str(record_dir)})
    for i in range(1, 11):  # every third on the other channel; 1 and 2 are overwritten
        publish(server, {"type": "t", "payload": str(i)}, **({"key": None, "path": "/open"} if i % 3 == 0 else {}))
    gens = lambda body: [e["generation"] for e in body["events"]]  # noqa: E731
    assert gens(server.get(API).json()) == [8, 9, 10]  # no limit: the newest page
    assert gens(server.get(API + "?limit=100").json()) == [8, 9, 10]  # a bigger limit is capped
    assert gens(server.get(API + "?limit=2").json()) == [9, 10]
    assert gens(server.get(API + "?channel=other").json()) == [3, 6, 9]

    def page_through(channel=None):
        pages, since = [], 0
        while True:
            body = server.get(API, params={"since": since, **({"channel": channel} if channel else {})}).json()
            if not body["events"]:
                return pages
            pages.append((gens(body), body["missed"]))
            since = body["events"][-1]["generation"]

    # forward from 0: each held event once, in pages of 3; missed counts 1 and 2 once, exactly
    assert page_through() == [([3, 4, 5], 2), ([6, 7, 8], 0), ([9, 10], 0)]
    assert page_through("cache.invalidate") == [([4, 5, 7], 2), ([8, 10], 0)]


def test_concurrent_publishers_get_contiguous_generations_and_intact_payloads(server):
    def client(n):
        out = []
        for i in range(40):
            payload = f"client{n}-{i}-" + "p" * (n * 50)
            r = server.post(API + "?key=changeme", json={"type": f"t{n}", "payload": payload})
            assert r.status_code == 201
            out.append((r.json()["generation"], f"t{n}", payload))
        return out

    with ThreadPoolExecutor(8) as pool:
        sent = [e for result in pool.map(client, range(8)) for e in result]
    gens = sorted(g for g, _, _ in sent)
    assert gens == list(range(1, 321))
    stored = {e["generation"]: (e["type"], e["payload"]) for e in server.get(API).json()["events"]}
    assert stored == {g: (t, p) for g, t, p in sent}


def test_a_killed_worker_is_replaced_and_its_replacement_sees_the_ring(server):
    for i in range(3):
        publish(server, {"type": "before", "payload": str(i)})
    victim = server.worker_pids()[1]
    server.kill_worker(victim)
    answers = server.each_worker(API)
    for resp in answers.values():
        assert [e["payload"] for e in resp.json()["events"]] == ["0", "1", "2"]
    assert publish(server, {"type": "after"}).json()["generation"] == 4
    wait_for(lambda: victim not in [w["pid"] for w in server.get(API).json()["workers"]], 10, what="the dead worker to leave the list")


def test_a_worker_killed_while_holding_the_ring_lock_does_not_wedge_the_others(server, record_dir):
    holder_file = record_dir / "holder"
    holder_file.unlink(missing_ok=True)
    threading.Thread(target=lambda: _quiet_get(server, "/hold"), daemon=True).start()
    holder = int(wait_for(lambda: holder_file.exists() and holder_file.read_text(), 10, what="a worker to hold the lock"))
    os.kill(holder, signal.SIGKILL)
    r = publish(server, {"type": "after-kill"}, timeout=5)
    assert r.status_code == 201 and r.json()["generation"] == 1
    assert server.get(API).json()["events"][0]["type"] == "after-kill"


def _quiet_get(server, path):
    try:
        server.get(path, timeout=30)
    except (OSError, AssertionError):
        pass  # the worker serving it is killed on purpose


def _raw(server, head: bytes, body: bytes = b"", half_close: bool = False) -> tuple[int, dict]:
    """Send one hand-made request; returns (status, JSON body)."""
    status, _, content = send(server.port, head + body, half_close)
    return status, json.loads(content)


def _post_head(length: bytes | None = None, chunked: bool = False) -> bytes:
    lines = [f"POST {API}?key=changeme HTTP/1.1", "Host: localhost", "Content-Type: application/json", "Connection: close"]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    if chunked:
        lines.append("Transfer-Encoding: chunked")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def test_a_body_shorter_than_its_content_length_is_400_and_publishes_nothing(shared):
    before = shared.get(API).json()["newest_generation"]
    body = b'{"type": "half"}'
    status, answer = _raw(shared, _post_head(100), body, half_close=True)
    assert status == 400 and f"after {len(body)} of the 100 bytes" in answer["message"]
    assert shared.get(API).json()["newest_generation"] == before


@pytest.mark.parametrize("body, words", [
    (b"zz\r\n{}\r\n0\r\n\r\n", "chunk"),                       # not a hex size
    (b'10\r\n{"type": "t"}', "incomplete"),                      # the connection ends inside a chunk
])
def test_a_broken_chunked_body_is_400_and_publishes_nothing(shared, body, words):
    before = shared.get(API).json()["newest_generation"]
    status, answer = _raw(shared, _post_head(chunked=True), body, half_close=True)
    assert status == 400 and words in answer["message"], answer
    assert shared.get(API).json()["newest_generation"] == before


def test_json_nested_too_deep_is_400(shared):
    before = shared.get(API).json()["newest_generation"]
    r = shared.post(API + "?key=changeme", data="[" * 2000 + "]" * 2000, headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and "nested too deeply" in r.json()["message"]
    assert shared.get(API).json()["newest_generation"] == before


def test_a_percent_encoded_key_name_is_masked_in_the_access_log(server, tmp_path):
    def post(query):  # sent as is (requests would decode %6b to k)
        return server.post(API + query, data=b'{"type": "t"}', headers={"Content-Type": "application/json"}).status_code

    assert post("?%6bey=changeme") == 201
    assert post("?%6Bey=guess%20two") == 403
    log = (tmp_path / "access.log").read_text()
    # the line keeps the target as sent (as nginx logs it), with the secret's value masked
    assert "changeme" not in log and "guess" not in log
    assert "?%6bey=*** HTTP/1.1" in log and "?%6Bey=*** HTTP/1.1" in log
