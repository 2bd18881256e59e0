"""cache_purge's pure parts: what is stored and how long, tags, event payloads, the memory level
and the key index."""

from __future__ import annotations

import calendar
import time

import pytest
from freezegun import freeze_time
from werkzeug.datastructures import Headers

from ngxsim_plugins.cache_purge.conf import Valid
from ngxsim_plugins.cache_purge.events import (
    PAYLOAD_MAX, PURGE_BATCH, PURGED, BatchRef, Invalidation, message, read,
)
from ngxsim_plugins.cache_purge.levels import Entry, KeyIndex, MemoryLevel, _after_prefix
from ngxsim_plugins.cache_purge.policy import freshness, stored_headers, tags

VALID = (Valid(frozenset({200, 301}), 600.0), Valid(frozenset({404}), 60.0))
NOW = 1_800_000_000.0


def fresh(status=200, valid=VALID, **headers):
    h = Headers()
    for name, value in headers.items():
        for v in value if isinstance(value, list) else [value]:
            h.add(name.replace("_", "-"), v)
    return freshness(status, h, valid, NOW)


# -- freshness ---------------------------------------------------------------------------------


def test_proxy_cache_valid_by_status():
    assert fresh(200) == 600.0
    assert fresh(404) == 60.0
    assert fresh(500) is None  # no rule names it
    assert fresh(500, valid=(Valid(frozenset(), 5.0, any=True),)) == 5.0
    assert fresh(200, valid=(Valid(frozenset({200}), 0.0),)) is None  # 0: not stored


@pytest.mark.parametrize("control", ["no-store", "private", "no-cache", "public, no-store", 'private="x", max-age=60',
                                     "max-age=0", "max-age=soon"])
def test_cache_control_that_forbids_storing(control):
    assert fresh(200, Cache_Control=control) is None


def test_max_age_and_s_maxage_win_over_proxy_cache_valid():
    assert fresh(200, Cache_Control="public, max-age=30") == 30.0
    assert fresh(200, Cache_Control="max-age=30, s-maxage=90") == 90.0
    assert fresh(500, Cache_Control="max-age=30") == 30.0  # explicit freshness: any status (RFC 9111)
    assert fresh(200, Cache_Control=["public", "max-age=7"]) == 7.0  # several lines


def test_set_cookie_vary_and_206_are_never_stored():
    assert fresh(200, Set_Cookie="a=b", Cache_Control="max-age=60") is None
    assert fresh(200, Vary="*") is None
    assert fresh(200, Vary="Accept-Encoding") is None
    assert fresh(206, Cache_Control="max-age=60") is None


def test_x_accel_expires_and_expires():
    assert fresh(200, X_Accel_Expires="20", Cache_Control="no-store") == 20.0  # nginx: it decides
    assert fresh(200, X_Accel_Expires="0") is None
    assert fresh(200, X_Accel_Expires=f"@{int(NOW) + 50}") == 50.0
    assert fresh(200, Expires="Thu, 01 Jan 1970 00:00:00 GMT") is None
    assert fresh(200, Expires="garbage") is None
    assert fresh(200, Cache_Control="max-age=5", Expires="Thu, 01 Jan 1970 00:00:00 GMT") == 5.0


def test_expires_in_the_future_gives_the_difference():
    h = Headers([("Expires", "Fri, 15 Jan 2027 08:00:40 GMT")])
    now = float(calendar.timegm((2027, 1, 15, 8, 0, 0)))
    assert freshness(200, h, VALID, now) == 40.0


def test_tags_from_cache_tag_and_surrogate_key():
    h = Headers([("Cache-Tag", "assets, css  assets"), ("Surrogate-Key", "home,,  x"), ("Cache-Tag", "y")])
    assert tags(h) == ("assets", "css", "y", "home", "x")
    assert tags(Headers([("Cache-Tag", "a" * 257 + " ok")])) == ("ok",)
    assert len(tags(Headers([("Cache-Tag", " ".join(f"t{i}" for i in range(100)))]))) == 64


def test_stored_headers_drop_hop_by_hop_and_length():
    h = Headers([("Content-Type", "text/css"), ("Content-Length", "3"), ("Connection", "close"),
                 ("Transfer-Encoding", "chunked"), ("ETag", '"x"')])
    assert stored_headers(h) == [("Content-Type", "text/css"), ("ETag", '"x"')]


# -- event payloads ----------------------------------------------------------------------------


def test_one_key_or_tag_is_purged_with_a_text_payload():
    assert (message("z", Invalidation(keys=("/a",))).type, message("z", Invalidation(keys=("/a",))).payload) == (PURGED, "key:/a")
    assert message("z", Invalidation(tags=("assets",))).payload == "tag:assets"
    assert read(PURGED, "key:/a") == Invalidation(keys=("/a",))
    assert read(PURGED, "tag:assets") == Invalidation(tags=("assets",))


def test_batches_are_compact_json():
    m = message("z", Invalidation(keys=("/a", "/b")))
    assert (m.type, m.payload, m.batch) == (PURGE_BATCH, '{"keys":["/a","/b"]}', None)
    assert message("z", Invalidation(prefix="/static/")).payload == '{"prefix":"/static/"}'
    assert message("z", Invalidation(tags=("a", "b"))).payload == '{"tags":["a","b"]}'
    for m in (message("z", Invalidation(keys=("/a", "/b"))), message("z", Invalidation(prefix="/s/"))):
        assert read(m.type, m.payload) in (Invalidation(keys=("/a", "/b")), Invalidation(prefix="/s/"))


def test_a_batch_over_512_bytes_is_stored_and_named_by_id():
    keys = tuple(f"/static/file-{i:04d}.css" for i in range(40))
    m = message("assets", Invalidation(keys=keys))
    assert len(m.payload.encode()) <= PAYLOAD_MAX and m.type == PURGE_BATCH
    batch_id, text = m.batch
    assert read(m.type, m.payload) == BatchRef("assets", batch_id)
    assert m.payload == f'{{"batch":"{batch_id}","count":40,"zone":"assets"}}'
    assert text == '{"keys":[' + ",".join(f'"{k}"' for k in keys) + "]}"
    # one key too long for "key:K" goes the same way
    long = message("assets", Invalidation(keys=("/" + "x" * 600,)))
    assert long.type == PURGE_BATCH and long.batch is not None


@pytest.mark.parametrize("event_type, payload", [
    (PURGED, "garbage"), (PURGED, "key:"), (PURGED, "color:red"),
    (PURGE_BATCH, "not json"), (PURGE_BATCH, "[1]"), (PURGE_BATCH, '{"keys":[1]}'), (PURGE_BATCH, '{"keys":["a"],"tags":[]}'),
])
def test_an_unreadable_payload_drops_everything(event_type, payload):
    assert read(event_type, payload) == Invalidation(everything=True)


def test_other_types_on_the_channel_are_not_ours():
    assert read("hello", "key:/a") is None


# -- the memory level --------------------------------------------------------------------------


def entry(body=b"x", until=None, tags=()):
    e = Entry(200, [("Content-Type", "text/plain")], body, until or time.time() + 60, tuple(tags))
    e.mem_until = e.valid_until
    return e


def test_memory_level_bounds_bytes_lru():
    mem = MemoryLevel(3 * entry(b"x" * 1000).size)
    for k in "abc":
        assert mem.put(k, entry(b"x" * 1000), mem.epoch)
    mem.get("a")  # used: b is now the least recently used
    mem.put("d", entry(b"x" * 1000), mem.epoch)
    assert [k for k in "abcd" if mem.get(k)] == ["a", "c", "d"]
    assert not mem.put("huge", entry(b"x" * 10_000), mem.epoch)


def test_memory_entries_leave_when_stale():
    with freeze_time("2027-01-01 00:00:00") as clock:
        mem = MemoryLevel(1 << 20)
        mem.put("a", entry(until=time.time() + 5), mem.epoch)
        assert mem.get("a") is not None
        clock.tick(6)
        assert mem.get("a") is None


def test_a_put_made_before_an_invalidation_is_dropped():
    mem = MemoryLevel(1 << 20)
    epoch = mem.epoch
    mem.evict(keys=["unrelated"])  # any invalidation delivered meanwhile
    assert not mem.put("a", entry(), epoch)
    assert mem.get("a") is None
    assert mem.put("a", entry(), mem.epoch)


def test_memory_evict_by_key_prefix_tag_and_clear():
    mem = MemoryLevel(1 << 20)
    for k, t in (("/s/a", ("css",)), ("/s/b", ("js",)), ("/t/c", ("css", "home")), ("/u/d", ())):
        mem.put(k, entry(tags=t), mem.epoch)
    assert mem.evict(keys=["/u/d", "/nope"]) == 1
    assert mem.evict(tags=["home"]) == 1
    assert mem.evict(prefix="/s/") == 2
    assert mem.stats()["entries"] == 0
    mem.put("x", entry(), mem.epoch)
    assert mem.clear() == 1 and mem.get("x") is None


# -- the key index -----------------------------------------------------------------------------


def test_key_index_prefix_tags_and_growing_bounds(tmp_path):
    index = KeyIndex(str(tmp_path / "keys.sqlite3"))
    index.add("/s/a", 100.0, ("css",))
    index.add("/s/b", 100.0, ("js",))
    index.add("/s", 100.0)
    index.add("/t/c", 100.0, ("css",))
    index.add("/t/c", 50.0, ("home",))  # a later, shorter-lived copy: the bound stays, the tags add up
    assert index.take_keys(["/t/c", "/zz"]) == [("/t/c", 100.0)]
    index.add("/t/c", 100.0, ("css", "home"))
    found, by_tag = index.take_tags(["home"])
    assert found == [("/t/c", 100.0)] and by_tag == {"home": ["/t/c"]}
    assert sorted(index.take_prefix("/s/")) == [("/s/a", 100.0), ("/s/b", 100.0)]  # not "/s"
    assert index.take_tags(["css"]) == ([], {})  # its keys went with them
    assert index.count() == 1
    index.add("/old", 10.0)
    assert index.expire(20.0) == 1 and index.count() == 1
    assert index.take_prefix("") == [("/s", 100.0)]
    index.close()


def test_after_prefix_bounds_exactly_the_prefixed_strings():
    assert _after_prefix("/a") == "/b"
    assert _after_prefix("") is None
    assert _after_prefix("a\U0010ffff") == "b"
    assert _after_prefix("\ud7ff") == "\ue000"
    for s in ("/a", "/a/", "/a\U0010ffff\U0010ffff", "/ab"):
        assert "/a" <= s < _after_prefix("/a")
    assert not ("/a" <= "/b" < _after_prefix("/a"))
