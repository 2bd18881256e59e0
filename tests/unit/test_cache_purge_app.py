"""cache_purge in one process (the core's app with the in-process origin of ngxsim_test_origin):
the statuses, what is stored, both levels, the purge API and PURGE, events and races."""

from __future__ import annotations

import json
import time

import pytest

import ngxsim_test_origin as origin
from ngxsim import Gap
from ngxsim.core.process import build_application
from ngxsim_plugins.cache_purge import cache as cache_mod
from ngxsim_plugins.cache_purge.events import Invalidation

CONF = """
load_module worker_events;
load_module ngxsim_test_origin;
load_module cache_purge;
http {
    worker_events_zone bus;
    worker_events_ring_size 64;
    proxy_cache_path %(dir)s/cache keys_zone=assets:1m %(params)s;
    server {
        listen 127.0.0.1:8080;
        location /static/ {
            test_origin;
            proxy_cache assets;
            proxy_cache_key $uri;
            proxy_cache_valid 200 10m;
            proxy_cache_purge PURGE from 127.0.0.1;
            proxy_cache_bypass $arg_nocache;
            proxy_no_cache $arg_nostore;
            add_header X-Cache-Status $upstream_cache_status always;
        }
        location /stale/ {
            test_origin;
            proxy_cache assets;
            proxy_cache_key $uri;
            proxy_cache_use_stale http_500 http_404;
            proxy_cache_revalidate on;
            add_header X-Cache-Status $upstream_cache_status always;
        }
        location /twice/ {
            test_origin;
            proxy_cache assets;
            proxy_cache_key $uri;
            proxy_cache_valid 200 10m;
            proxy_cache_min_uses 3;
            proxy_cache_methods POST;
            add_header X-Cache-Status $upstream_cache_status always;
        }
        location /nohead/ {
            test_origin;
            proxy_cache assets;
            proxy_cache_key $uri;
            proxy_cache_valid 200 10m;
            proxy_cache_convert_head off;
            add_header X-Cache-Status $upstream_cache_status always;
        }
        location /other/ { test_origin; add_header X-Cache-Status "[$upstream_cache_status]" always; }
        location /api/cache { cache_purge_api assets; cache_purge_key changeme; }
        location /api/open { cache_purge_api assets; }
        location /events { worker_events_api; worker_events_zone bus; worker_events_channel cache.invalidate; }
    }
}
"""


@pytest.fixture
def make_app(tmp_path):
    apps = []

    def make(params="max_size=10m"):
        conf = tmp_path / f"n{len(apps)}.conf"
        conf.write_text(CONF % {"dir": tmp_path, "params": params})
        app = build_application(str(conf), role="standalone")
        apps.append(app)
        return app

    origin.ORIGIN.clear()
    origin.ORIGIN[None] = (200, {}, b"origin")
    origin.HITS.clear()
    yield make
    for app in apps:
        app.runtime.close()


@pytest.fixture
def app(make_app):
    return make_app()


@pytest.fixture
def client(app):
    return app.test_client()


def caches(app):
    return cache_mod.state(app.runtime).caches["assets"]


def statuses(client, path, n=3, **kw):
    return [client.get(path, **kw).headers.get("X-Cache-Status") for _ in range(n)]


def purge(client, body, key="changeme"):
    return client.post(f"/api/cache?key={key}", json=body)


def events(client):
    return client.get("/events").json["events"]


# -- lookups and statuses ----------------------------------------------------------------------


def test_miss_then_hit_from_memory_then_from_the_shared_level(client, app):
    origin.ORIGIN["/static/a.css"] = (200, {"Content-Type": "text/css"}, b"body-a")
    assert statuses(client, "/static/a.css") == ["MISS", "HIT", "HIT"]
    assert origin.HITS["/static/a.css"] == 1
    r = client.get("/static/a.css")
    assert (r.data, r.headers["Content-Type"], r.headers["Content-Length"]) == (b"body-a", "text/css", "6")
    assert caches(app).memory.stats()["entries"] == 1
    caches(app).memory.clear()  # as a worker that never saw it: the shared level answers
    assert statuses(client, "/static/a.css", 1) == ["HIT"] and origin.HITS["/static/a.css"] == 1
    assert caches(app).memory.stats()["entries"] == 1  # and promoted it


def test_a_location_without_proxy_cache_has_no_status(client):
    assert client.get("/other/x").headers["X-Cache-Status"] == "[]"


def test_a_hit_keeps_the_stored_headers_and_adds_no_content_type(client):
    origin.ORIGIN["/static/raw"] = (200, {"X-Origin": "1", "Cache-Tag": "t"}, b"raw")
    client.get("/static/raw")
    origin.ORIGIN["/static/raw"] = (200, {}, b"changed")  # the origin may change: the hit does not
    r = client.get("/static/raw")
    assert r.headers["X-Cache-Status"] == "HIT" and r.data == b"raw"
    assert r.headers["X-Origin"] == "1" and r.headers["Cache-Tag"] == "t"


def test_a_head_miss_is_fetched_as_a_get_and_stored(client):
    origin.ORIGIN["/static/h"] = (200, {}, b"12345")
    origin.SEEN.clear()
    r = client.head("/static/h")  # proxy_cache_convert_head on (nginx's default)
    assert (r.headers["X-Cache-Status"], r.data, r.headers["Content-Length"]) == ("MISS", b"", "5")
    assert origin.SEEN == [("GET", None, None)]
    r = client.head("/static/h")
    assert (r.headers["X-Cache-Status"], r.data, r.headers["Content-Length"]) == ("HIT", b"", "5")
    r = client.get("/static/h")
    assert (r.headers["X-Cache-Status"], r.data) == ("HIT", b"12345")
    assert origin.HITS["/static/h"] == 1


TAGGED = {"ETag": '"v1"', "Last-Modified": "Mon, 01 Jan 2024 00:00:00 GMT", "Content-Type": "text/plain"}


def test_if_none_match_gets_304_on_a_miss_and_a_hit_and_never_reaches_the_origin(client):
    origin.ORIGIN["/static/c"] = (200, TAGGED, b"tagged")
    origin.SEEN.clear()
    for status in ("MISS", "HIT"):
        r = client.get("/static/c", headers={"If-None-Match": 'W/"x", W/"v1"'})
        assert (r.status, r.headers["X-Cache-Status"], r.data) == ("304 Not Modified", status, b"")
        assert r.headers["ETag"] == '"v1"' and "Content-Type" not in r.headers and "Content-Length" not in r.headers
    assert origin.SEEN == [("GET", None, None)]  # nginx's proxy sends no conditional header where it caches
    r = client.get("/static/c", headers={"If-None-Match": '"v2"'})
    assert (r.status_code, r.data) == (200, b"tagged")
    r = client.get("/static/c", headers={"If-None-Match": '"v1"', "X-Keep": "1"})
    assert r.status_code == 304


@pytest.mark.parametrize("headers, status", [
    ({"If-Modified-Since": "Mon, 01 Jan 2024 00:00:00 GMT"}, 304),
    ({"If-Modified-Since": "Tue, 02 Jan 2024 00:00:00 GMT"}, 200),  # if_modified_since exact (nginx's default)
    ({"If-Match": '"v2"'}, 412),
    ({"If-Match": '"v1"'}, 200),
    ({"If-Unmodified-Since": "Sun, 31 Dec 2023 00:00:00 GMT"}, 412),
    ({"If-Unmodified-Since": "Mon, 01 Jan 2024 00:00:00 GMT"}, 200),
])
def test_the_other_conditions_on_a_hit(client, headers, status):
    origin.ORIGIN["/static/d"] = (200, TAGGED, b"tagged")
    client.get("/static/d")
    r = client.get("/static/d", headers=headers)
    assert (r.status_code, r.headers["X-Cache-Status"]) == (status, "HIT")


def test_an_answer_not_stored_is_not_judged(client):
    origin.ORIGIN["/static/n"] = (200, {**TAGGED, "Cache-Control": "no-store"}, b"tagged")
    r = client.get("/static/n", headers={"If-None-Match": '"v1"'})
    assert (r.status_code, r.data) == (200, b"tagged")  # nginx: disable_not_modified = !u->cacheable


def test_a_hit_has_the_status_line_the_origin_sent(client):
    origin.ORIGIN["/static/fine"] = ((200, "Fine"), {}, b"fine")
    r1, r2 = client.get("/static/fine"), client.get("/static/fine")
    assert [(r.status, r.headers["X-Cache-Status"]) for r in (r1, r2)] == [("200 Fine", "MISS"), ("200 Fine", "HIT")]


def test_a_hit_of_an_answer_without_length_has_none(client):
    origin.ORIGIN["/static/u"] = (200, {}, b"until-close")
    assert client.get("/static/u?nolength=1").data == b"until-close"  # read: stored once it all went out
    r = client.get("/static/u?nolength=1")
    assert (r.headers["X-Cache-Status"], r.data, r.headers.get("Content-Length")) == ("HIT", b"until-close", None)
    client.get("/static/c2")  # an answer with a length: the hit has it
    r = client.get("/static/c2")
    assert (r.headers["X-Cache-Status"], r.headers.get("Content-Length")) == ("HIT", "6")


def test_an_answer_with_vary_is_stored_per_variant_and_purged_with_its_key(client):
    origin.ORIGIN["/static/v"] = (200, {"Vary": "Accept, X-Lang"}, b"v")
    ask = [{"Accept": "a"}, {"Accept": "b"}, {"Accept": "a", "X-Lang": "fr"}]
    assert [client.get("/static/v", headers=h).headers["X-Cache-Status"] for h in ask] == ["MISS"] * 3
    assert [client.get("/static/v", headers=h).headers["X-Cache-Status"] for h in ask] == ["HIT"] * 3
    assert origin.HITS["/static/v"] == 3
    r = client.open("/static/v", method="PURGE")
    assert r.status_code == 200
    assert [client.get("/static/v", headers=h).headers["X-Cache-Status"] for h in ask] == ["MISS"] * 3
    origin.ORIGIN["/static/star"] = (200, {"Vary": "*"}, b"v")
    assert statuses(client, "/static/star", 2) == ["MISS", "MISS"]  # nginx: Vary: * is never stored


def test_other_methods_and_range_requests(client):
    assert client.post("/static/p").headers.get("X-Cache-Status") is None  # nginx: GET and HEAD only
    assert statuses(client, "/static/r", 2, headers={"Range": "bytes=0-1"}) == ["MISS", "MISS"]


def test_bypass_answers_from_the_origin_and_stores_the_answer(client):
    origin.ORIGIN["/static/b"] = (200, {}, b"v1")
    client.get("/static/b")
    origin.ORIGIN["/static/b"] = (200, {}, b"v2")
    r = client.get("/static/b?nocache=1")
    assert (r.headers["X-Cache-Status"], r.data) == ("BYPASS", b"v2")
    r = client.get("/static/b?nocache=0")  # "0" is false, as in nginx
    assert (r.headers["X-Cache-Status"], r.data) == ("HIT", b"v2")


def test_proxy_no_cache_does_not_store(client):
    assert statuses(client, "/static/n?nostore=yes") == ["MISS", "MISS", "MISS"]


@pytest.mark.parametrize("headers", [{"Cache-Control": "no-store"}, {"Cache-Control": "private, max-age=60"},
                                     {"Set-Cookie": "session=1"}, {"Cache-Control": "max-age=0"}])
def test_responses_that_must_not_be_stored_never_come_from_the_cache(client, headers):
    origin.ORIGIN["/static/x"] = (200, headers, b"personal")
    assert statuses(client, "/static/x", 4) == ["MISS"] * 4
    assert origin.HITS["/static/x"] == 4


def test_a_status_no_rule_names_is_not_stored(client):
    origin.ORIGIN["/static/404"] = (404, {}, b"nope")
    assert statuses(client, "/static/404") == ["MISS"] * 3


def test_max_age_stores_what_proxy_cache_valid_does_not_name(client):
    origin.ORIGIN["/static/404"] = (404, {"Cache-Control": "max-age=60"}, b"nope")
    assert statuses(client, "/static/404") == ["MISS", "HIT", "HIT"]


def test_use_stale_answers_the_expired_entry_when_the_origin_fails_as_named(client, app):
    origin.ORIGIN["/stale/s"] = (200, {"Cache-Control": "max-age=1", "ETag": '"s1"'}, b"s1")
    assert statuses(client, "/stale/s", 2) == ["MISS", "HIT"]
    time.sleep(1.05)
    origin.ORIGIN["/stale/s"] = (500, {}, b"broken")
    r = client.get("/stale/s")
    assert (r.status_code, r.headers["X-Cache-Status"], r.data) == (200, "STALE", b"s1")
    r = client.get("/stale/s", headers={"If-None-Match": '"s1"'})  # judged as a hit is
    assert (r.status_code, r.headers["X-Cache-Status"]) == (304, "STALE")
    origin.ORIGIN["/stale/s"] = (503, {}, b"busy")  # not named: the origin's answer
    r = client.get("/stale/s")
    assert (r.status_code, r.headers["X-Cache-Status"], r.data) == (503, "EXPIRED", b"busy")
    assert purge(client, {"prefix": "/stale/"}).json["purged"] == 1  # an expired entry is found by a prefix
    origin.ORIGIN["/stale/s"] = (500, {}, b"broken")
    r = client.get("/stale/s")
    assert (r.status_code, r.headers["X-Cache-Status"]) == (500, "MISS")  # purged: nothing stale to answer


def test_revalidate_asks_the_origin_conditionally_and_a_304_refreshes_the_entry(client):
    stored = {"Cache-Control": "max-age=1", "ETag": '"r1"', "Last-Modified": "Mon, 01 Jan 2024 00:00:00 GMT"}
    origin.ORIGIN["/stale/r"] = (200, stored, b"r1")
    assert statuses(client, "/stale/r", 2) == ["MISS", "HIT"]
    time.sleep(1.05)
    origin.ORIGIN["/stale/r"] = (304, {"Cache-Control": "max-age=60"}, b"")
    origin.SEEN.clear()
    r = client.get("/stale/r", headers={"If-None-Match": '"other"'})  # the client's own stays its own
    assert (r.status_code, r.headers["X-Cache-Status"], r.data) == (200, "REVALIDATED", b"r1")
    assert origin.SEEN == [("GET", '"r1"', "Mon, 01 Jan 2024 00:00:00 GMT")]
    assert statuses(client, "/stale/r", 2) == ["HIT", "HIT"]  # fresh for the 304's max-age
    assert len(origin.SEEN) == 1
    time.sleep(1.05)
    assert statuses(client, "/stale/r", 1) == ["HIT"]


def test_min_uses_stores_an_answer_once_its_key_was_asked_for_that_often(client):
    assert statuses(client, "/twice/m", 5) == ["MISS", "MISS", "MISS", "HIT", "HIT"]
    assert origin.HITS["/twice/m"] == 3


def test_convert_head_off_sends_a_head_and_stores_nothing(client):
    origin.SEEN.clear()
    assert [client.head("/nohead/h").headers["X-Cache-Status"] for _ in range(2)] == ["MISS", "MISS"]
    assert [method for method, _, _ in origin.SEEN] == ["HEAD", "HEAD"]
    client.get("/nohead/h")
    assert client.head("/nohead/h").headers["X-Cache-Status"] == "HIT"  # answered from a stored GET


def test_cache_methods_adds_post(client):
    assert [client.post("/twice/p").headers["X-Cache-Status"] for _ in range(4)] == ["MISS"] * 3 + ["HIT"]
    assert client.get("/twice/p").headers["X-Cache-Status"] == "HIT"  # one key (the body is not in it)
    assert client.put("/twice/p").headers.get("X-Cache-Status") is None


def test_expired_after_max_age(client):
    origin.ORIGIN["/static/e"] = (200, {"Cache-Control": "max-age=1"}, b"e1")
    assert statuses(client, "/static/e", 2) == ["MISS", "HIT"]
    time.sleep(1.05)
    origin.ORIGIN["/static/e"] = (200, {"Cache-Control": "max-age=60"}, b"e2")
    r = client.get("/static/e")
    assert (r.headers["X-Cache-Status"], r.data) == ("EXPIRED", b"e2")
    assert statuses(client, "/static/e", 1) == ["HIT"]


def test_a_streamed_body_is_stored_once_complete_and_a_short_one_never(client):
    origin.ORIGIN["/static/s"] = (200, {}, b"0123456789")
    r = client.get("/static/s?stream=1")
    assert (r.headers["X-Cache-Status"], r.data) == ("MISS", b"0123456789")
    r = client.get("/static/s?stream=1")
    assert (r.headers["X-Cache-Status"], r.data) == ("HIT", b"0123456789")
    origin.ORIGIN["/static/t"] = (200, {}, b"0123456789")
    for _ in range(2):
        r = client.get("/static/t?short=1")
        assert r.headers["X-Cache-Status"] == "MISS"  # the body fell short of its Content-Length


def test_a_body_of_known_length_is_stored_before_its_last_bytes_go_out(client, app):
    """A client that has read the whole response can count on it being stored (a purge it sends
    next finds it)."""
    origin.ORIGIN["/static/order"] = (200, {}, b"0123456789")
    r = client.get("/static/order?stream=1", buffered=False)
    chunks = iter(r.response)
    assert next(chunks) == b"01234" and caches(app).shared.disk.get("/static/order") is None
    assert next(chunks) == b"56789" and caches(app).shared.disk.get("/static/order") is not None
    r.close()


def test_an_origin_error_the_proxy_made_is_not_stored(client, app):
    """upstreams records an empty $upstream_status when no backend answered: never store that."""
    loc = next(b for b in app.runtime.config.blocks("location") if b.value.path == "/static/")
    cached = loc.stash["cache_purge"]
    original = cached.body_filter

    def as_proxy_error(ctx, response):
        ctx.vars["upstream_status"] = ""
        return original(ctx, response)

    loc.stash["core.plan"].body_filters = [as_proxy_error]
    origin.ORIGIN["/static/502"] = (200, {}, b"made by the proxy")
    assert statuses(client, "/static/502", 2) == ["MISS", "MISS"]


def test_a_shared_level_that_cannot_be_read_sends_the_request_to_the_origin(client, app, monkeypatch):
    import sqlite3

    def broken(key):
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(caches(app).shared, "get", broken)
    origin.ORIGIN["/static/io"] = (200, {}, b"from origin")
    for _ in range(2):
        r = client.get("/static/io")
        assert (r.status_code, r.data, r.headers["X-Cache-Status"]) == (200, b"from origin", "MISS")
    assert origin.HITS["/static/io"] == 2


# -- inactive and max_size ---------------------------------------------------------------------


def test_entries_unused_for_inactive_are_removed(make_app):
    app = make_app("inactive=1s")
    client = app.test_client()
    origin.ORIGIN["/static/i"] = (200, {}, b"i")
    assert statuses(client, "/static/i", 2) == ["MISS", "HIT"]
    time.sleep(1.05)
    assert statuses(client, "/static/i", 1) == ["MISS"]  # gone from disk, and memory went with it


def test_the_shared_level_honours_max_size(make_app):
    app = make_app("max_size=1m")
    client = app.test_client()
    origin.ORIGIN[None] = (200, {}, b"x" * 65536)
    for i in range(40):  # 2.5 MiB of 64 KiB bodies
        assert client.get(f"/static/big-{i}").headers["X-Cache-Status"] == "MISS"
    shared = caches(app).shared
    shared.manage()  # what the cache manager job runs
    stats = shared.stats()
    assert stats["size"] <= 1024 * 1024
    assert 0 < stats["entries"] < 40
    assert stats["keys"] == 40  # the index still knows every key a worker may hold in memory
    assert purge(client, {"key": "/static/big-*"}).json["purged"] == 40


# -- the purge API -----------------------------------------------------------------------------


def warm(client, *paths):
    for path in paths:
        client.get(path)
        assert client.get(path).headers["X-Cache-Status"] == "HIT"


def test_purge_by_key_answers_and_publishes_purged(client):
    origin.ORIGIN["/static/k"] = (200, {}, b"old")
    warm(client, "/static/k")
    origin.ORIGIN["/static/k"] = (200, {}, b"new")
    r = purge(client, {"key": "/static/k"})
    assert r.status_code == 200
    assert r.json == {"purged": 1, "type": "purged", "generation": r.json["generation"]}
    ev = events(client)[-1]
    assert (ev["generation"], ev["type"], ev["payload"]) == (r.json["generation"], "purged", "key:/static/k")
    r = client.get("/static/k")
    assert (r.headers["X-Cache-Status"], r.data) == ("MISS", b"new")


def test_purge_by_tag_prefix_keys_and_tags(client):
    origin.ORIGIN["/static/t1"] = (200, {"Cache-Tag": "assets css"}, b"1")
    origin.ORIGIN["/static/t2"] = (200, {"Surrogate-Key": "assets"}, b"2")
    origin.ORIGIN["/static/t3"] = (200, {"Cache-Tag": "js"}, b"3")
    warm(client, "/static/t1", "/static/t2", "/static/t3", "/static/d/1", "/static/d/2")
    assert purge(client, {"tag": "assets"}).json["purged"] == 2
    assert events(client)[-1]["payload"] == "tag:assets"
    assert statuses(client, "/static/t1", 1) == statuses(client, "/static/t2", 1) == ["MISS"]
    assert statuses(client, "/static/t3", 1) == ["HIT"]
    r = purge(client, {"key": "/static/d/*"})
    assert r.json["purged"] == 2 and r.json["type"] == "purge_batch"
    assert events(client)[-1]["payload"] == '{"prefix":"/static/d/"}'
    warm(client, "/static/t1", "/static/t2")
    assert purge(client, {"tags": ["css", "js", "none"]}).json == {
        "purged": 2, "type": "purge_batch", "generation": events(client)[-1]["generation"]}
    assert events(client)[-1]["payload"] == '{"tags":["css","js"]}'  # the tags that matched
    assert purge(client, {"keys": ["/static/t2", "/static/t1", "/static/zz"]}).json["purged"] == 1
    assert events(client)[-1]["payload"] == "key:/static/t2"  # one key matched: purged
    warm(client, "/static/t1", "/static/t2")
    assert purge(client, {"prefix": "/static/t"}).json["purged"] == 2


def test_a_purge_that_matches_nothing_is_404_and_publishes_nothing(client):
    before = events(client)
    r = purge(client, {"key": "/static/never"})
    assert r.status_code == 404
    assert r.json["message"] == 'nothing cached in zone "assets" matches key "/static/never"'
    assert purge(client, {"tags": ["a", "b"]}).status_code == 404
    assert events(client) == before


def test_a_large_batch_is_stored_in_the_shared_level(client, app):
    paths = [f"/static/many/file-{i:03d}.css" for i in range(40)]
    warm(client, *paths)
    r = purge(client, {"keys": paths})
    assert r.json["purged"] == 40
    payload = json.loads(events(client)[-1]["payload"])
    assert set(payload) == {"batch", "count", "zone"} and (payload["count"], payload["zone"]) == (40, "assets")
    stored = json.loads(caches(app).shared.get_batch(payload["batch"]))
    assert stored == {"keys": sorted(paths)}
    assert all(statuses(client, p, 1) == ["MISS"] for p in paths)


@pytest.mark.parametrize("body, status, message", [
    ({"key": "/a", "tag": "b"}, 400, 'give exactly one of "key", "keys", "prefix", "tag", "tags" (got "key", "tag")'),
    ({}, 400, 'give exactly one of "key", "keys", "prefix", "tag", "tags" (got none)'),
    ({"url": "/a"}, 400, 'unknown field(s) "url"; use one of key, keys, prefix, tag, tags'),
    ({"key": ""}, 400, '"key" must be a non-empty string'),
    ({"tag": 5}, 400, '"tag" must be a non-empty string'),
    ({"keys": []}, 400, '"keys" must be a non-empty array of non-empty strings'),
    ({"tags": ["a", ""]}, 400, '"tags" must be a non-empty array of non-empty strings'),
    ({"prefix": None}, 400, '"prefix" must be a string'),
    ([1], 400, "body must be a JSON object"),
])
def test_bad_purge_requests(client, body, status, message):
    before = events(client)
    r = purge(client, body)
    assert (r.status_code, r.json["message"]) == (status, message)
    assert events(client) == before


def test_purge_api_key_methods_types_and_size(client):
    assert purge(client, {"key": "/a"}, key="wrong").status_code == 403
    assert client.post("/api/cache", json={"key": "/a"}).json["message"] == 'purging needs the "key" query parameter'
    r = client.put("/api/cache?key=changeme")
    assert (r.status_code, r.headers["Allow"]) == (405, "GET, HEAD, POST")
    assert client.post("/api/cache?key=changeme", data="key=/a").status_code == 415
    big = json.dumps({"keys": ["/x" * 100] * 400})
    assert client.post("/api/cache?key=changeme", data=big, content_type="application/json").status_code == 413
    assert client.post("/api/open", json={"key": "/nothing"}).status_code == 404  # no key configured: open


def test_purge_api_get_shows_both_levels(client):
    origin.ORIGIN["/static/g"] = (200, {}, b"g")
    warm(client, "/static/g")
    body = client.get("/api/cache").json
    assert body["zone"] == "assets" and body["shared"]["entries"] == 1 and body["shared"]["keys"] == 1
    assert body["memory"]["entries"] == 1 and body["memory"]["size"] > 0


# -- the PURGE method --------------------------------------------------------------------------


def test_purge_method_answers_like_ngx_cache_purge(client):
    origin.ORIGIN["/static/m"] = (200, {}, b"m")
    warm(client, "/static/m", "/static/dir/a", "/static/dir/b")
    r = client.open("/static/m", method="PURGE")
    assert r.status_code == 200 and b"Successful purge" in r.data and b"Key : /static/m" in r.data
    assert r.headers.get("X-Cache-Status") is None
    assert client.open("/static/m", method="PURGE").status_code == 404
    assert client.open("/static/m", method="PURGE", environ_base={"REMOTE_ADDR": "10.9.9.9"}).status_code == 403
    assert client.open("/static/dir/*", method="PURGE").status_code == 200  # a trailing * purges the prefix
    assert events(client)[-1]["payload"] == '{"prefix":"/static/dir/"}'
    assert statuses(client, "/static/dir/a", 1) == ["MISS"]


# -- events, gaps and races --------------------------------------------------------------------


def test_events_evict_memory_and_a_gap_drops_it_all(client, app):
    warm(client, "/static/1", "/static/2")
    memory = caches(app).memory
    app.runtime.publish("bus", "cache.invalidate", "purged", "key:/static/1")  # as another worker's purge would
    client.get("/other/x")  # a request delivers what is pending
    assert memory.get("/static/1") is None and memory.get("/static/2") is not None
    app.runtime.hook.ngxsim_event_gap(runtime=app.runtime, gap=Gap("bus", 1, 5))
    assert memory.stats()["entries"] == 0


def test_a_batch_no_longer_stored_drops_all_memory(client, app):
    warm(client, "/static/1", "/static/2")
    app.runtime.publish("bus", "cache.invalidate", "purge_batch", '{"batch":"0123456789abcdef","count":9,"zone":"assets"}')
    client.get("/other/x")
    assert caches(app).memory.stats()["entries"] == 0


def test_other_types_on_the_channel_leave_memory_alone(client, app):
    warm(client, "/static/1")
    app.runtime.publish("bus", "cache.invalidate", "hello", "key:/static/1")
    client.get("/other/x")
    assert caches(app).memory.get("/static/1") is not None


def test_a_response_fetched_before_a_purge_is_not_stored_after_it(client):
    """The origin answers old content, and a purge happens while the request is in flight:
    storing the old content afterwards would undo the purge."""

    def old_then_purge():
        cache_mod.purge(client.application.runtime, "assets", Invalidation(keys=("/static/race",)))
        return b"old"

    origin.ORIGIN["/static/race"] = (200, {}, old_then_purge)
    assert statuses(client, "/static/race", 1) == ["MISS"]
    origin.ORIGIN["/static/race"] = (200, {}, b"new")
    r = client.get("/static/race")
    assert (r.headers["X-Cache-Status"], r.data) == ("MISS", b"new")


def test_a_purge_between_the_disk_write_and_its_check_undoes_the_write(client, app, monkeypatch):
    shared = caches(app).shared
    real_set = shared.disk.set

    def set_then_purge(key, value, **kw):
        real_set(key, value, **kw)
        shared.remove(keys=["/static/unrelated"])  # any purge beginning now

    monkeypatch.setattr(shared.disk, "set", set_then_purge)
    origin.ORIGIN["/static/late"] = (200, {}, b"old")
    client.get("/static/late")
    monkeypatch.undo()
    assert shared.disk.get("/static/late") is None
    assert caches(app).memory.get("/static/late") is None


def test_an_invalidation_between_a_shared_read_and_the_memory_copy_voids_the_copy(client, app, monkeypatch):
    origin.ORIGIN["/static/p"] = (200, {}, b"p")
    warm(client, "/static/p")
    cache = caches(app)
    cache.memory.clear()
    real_get = cache.shared.get

    def get_then_invalidated(key):
        entry = real_get(key)
        cache.memory.evict(keys=[key])  # the event of a purge delivered right now
        return entry

    monkeypatch.setattr(cache.shared, "get", get_then_invalidated)
    assert statuses(client, "/static/p", 1) == ["HIT"]  # read before the purge: served once
    assert cache.memory.get("/static/p") is None       # but not kept


def test_the_shared_level_survives_a_new_instance(make_app):
    first = make_app()
    origin.ORIGIN["/static/keep"] = (200, {"Cache-Tag": "kept"}, b"kept")
    warm(first.test_client(), "/static/keep")
    first.runtime.close()
    second = make_app()
    client = second.test_client()
    assert statuses(client, "/static/keep", 1) == ["HIT"] and origin.HITS["/static/keep"] == 1
    assert purge(client, {"tag": "kept"}).json["purged"] == 1  # its index came along too


PROXY_HOST_CONF = """
load_module worker_events;
load_module upstreams;
load_module cache_purge;
http {
    worker_events_zone bus;
    proxy_cache_path %(dir)s/pcache keys_zone=assets:1m;
    upstream backend { server %(backend)s; }
    server {
        listen 127.0.0.1:8080;
        add_header X-Cache-Status $upstream_cache_status always;
        location /address/ { proxy_pass http://%(backend)s; proxy_cache assets; proxy_cache_valid 200 10m; }
        location /group/ { proxy_pass http://backend; proxy_cache assets; proxy_cache_valid 200 10m; }
        location /own/ {
            proxy_pass http://%(backend)s;
            proxy_cache assets;
            proxy_cache_key "$proxy_host:$proxy_port$uri";
            proxy_cache_valid 200 10m;
        }
        location /api/cache { cache_purge_api assets; cache_purge_key changeme; }
    }
}
"""


def test_keys_use_proxy_host_of_an_address_or_a_group(tmp_path, ngxsim_backend):
    """nginx's default key and a key of one's own read $proxy_host and $proxy_port from the
    location's proxy_pass before proxying: the group's name, or the address as written
    ("host:port", so "$proxy_host:$proxy_port" repeats the port, as in nginx)."""
    backend = ngxsim_backend()
    conf = tmp_path / "p.conf"
    conf.write_text(PROXY_HOST_CONF % {"dir": tmp_path, "backend": backend.address})
    app = build_application(str(conf), role="standalone")
    try:
        client = app.test_client()
        for path in ("/address/a", "/group/a", "/own/a"):
            assert statuses(client, path, 2) == ["MISS", "HIT"], path
        for key in (f"http://{backend.address}/address/a", "http://backend/group/a", f"{backend.address}:{backend.port}/own/a"):
            r = purge(client, {"key": key})
            assert r.json.get("purged") == 1, (key, r.json)
        assert statuses(client, "/address/a", 1) == ["MISS"]
    finally:
        app.runtime.close()


def test_a_cache_lock_older_than_its_age_is_taken_although_others_kept_asking(app):
    from ngxsim_plugins.cache_purge.lock import CacheLock, zone_name
    lock = CacheLock("assets", 5.0, 5.0, (zone_name("assets"),))
    now = time.time()
    assert lock.take(app.runtime, "k", now)
    assert not any(lock.take(app.runtime, "k", now + t) for t in (1.0, 2.0, 3.0, 4.0, 4.9))
    assert lock.take(app.runtime, "k", now + 5.0)  # lock_age passed: the next request goes
    lock.release(app.runtime, "k")
    assert lock.take(app.runtime, "k", now + 5.1)
