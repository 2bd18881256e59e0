"""cache_purge's pure parts: what is stored and how long, tags, event payloads, the memory level
and the key index."""

from __future__ import annotations

import calendar
import json
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from freezegun import freeze_time
from werkzeug.datastructures import Headers

from ngxsim_plugins.cache_purge.conf import Valid
from ngxsim_plugins.cache_purge.events import (
    PAYLOAD_MAX, PURGE_BATCH, PURGED, BatchRef, Invalidation, message, read,
)
from ngxsim_plugins.cache_purge.levels import Entry, KeyIndex, MemoryLevel, _after_prefix
from ngxsim_plugins.cache_purge.policy import ascii_number, freshness, stored_headers, tags

VALID = (Valid(frozenset({200, 301}), 600.0), Valid(frozenset({404}), 60.0))
NOW = 1_800_000_000.0


def fresh(status=200, valid=VALID, **headers):
    h = Headers()
    for name, value in headers.items():
        for v in value if isinstance(value, list) else [value]:
            h.add(name.replace("_", "-"), v)
    return freshness(status, h.items(), valid, NOW)


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


def test_set_cookie_vary_star_and_206_are_never_stored():
    assert fresh(200, Set_Cookie="a=b", Cache_Control="max-age=60") is None
    assert fresh(200, Vary="*") is None
    assert fresh(200, Vary="Accept-Encoding") == 600.0  # stored per variant (policy.vary)
    assert fresh(206, Cache_Control="max-age=60") is None


def test_the_variant_is_the_values_of_the_headers_vary_names():
    from ngxsim_plugins.cache_purge.policy import variant, vary
    names = vary([("Vary", "Accept, X-LANG"), ("X-Other", "1"), ("vary", "accept,cookie")])
    assert names == ("accept", "x-lang", "cookie")
    assert vary([("Vary", "Accept")], frozenset({"vary"})) == ()  # proxy_ignore_headers Vary
    assert variant({"HTTP_ACCEPT": "a", "HTTP_X_LANG": "fr"}, names) != variant({"HTTP_ACCEPT": "a"}, names)


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
    assert freshness(200, h.items(), VALID, now) == 40.0


def lines(*pairs, status=200, ignore=(), valid=VALID):
    """freshness of header lines given in order: ("Name", "value"), ..."""
    return freshness(status, list(pairs), valid, NOW, frozenset(ignore))


@pytest.mark.parametrize("control", ["max-age=\u00b2", "max-age=\u0663\u0660", "s-maxage=\uff16\uff10",
                                     'max-age="60"', "max-age=6x", "max-age=-1", "max-age=60, stale-if-error=\u00b2",
                                     "stale-while-revalidate=soon, max-age=60"])
def test_a_max_age_that_is_not_ascii_digits_is_not_stored(control):
    # nginx (ngx_http_upstream_process_delta_seconds): any byte but 0-9 before , ; or space:
    # u->cacheable = 0. Not stored, and no exception (int("\u00b2") raises)
    assert lines(("Cache-Control", control)) is None


def test_max_age_digits_end_at_a_separator_and_huge_ones_are_capped():
    assert lines(("Cache-Control", "max-age=60;x")) == 60.0
    assert lines(("Cache-Control", "max-age=60 , public")) == 60.0
    assert lines(("Cache-Control", "max-age=")) is None  # no digits: 0, not stored
    assert lines(("Cache-Control", "max-age=" + "9" * 5000)) > 10**18


@pytest.mark.parametrize("value", ["\u00b2", "\u0663", "-1", "+5", "1.5", "", "@", "@\u00b2", "@-5", "9" * 5000])
def test_an_x_accel_expires_that_is_not_a_number_is_ignored(value):
    # ngx_atoi fails: the header changes nothing, the other rules decide
    assert lines(("X-Accel-Expires", value)) == 600.0
    assert lines(("X-Accel-Expires", value), ("Cache-Control", "private")) is None


def test_x_accel_expires_zero_wins_in_any_order_and_only_the_first_counts():
    assert lines(("Cache-Control", "max-age=60"), ("X-Accel-Expires", "0")) is None
    assert lines(("X-Accel-Expires", "0"), ("Cache-Control", "max-age=60")) is None
    assert lines(("X-Accel-Expires", "0"), ("Expires", "Fri, 15 Jan 2100 08:00:40 GMT")) is None
    assert lines(("X-Accel-Expires", "00")) is None
    assert lines(("X-Accel-Expires", "30"), ("X-Accel-Expires", "0")) == 30.0  # nginx ignores the duplicate
    assert lines(("X-Accel-Expires", "0"), ("X-Accel-Expires", "30")) is None


def test_a_positive_x_accel_expires_outranks_cache_control_and_expires_but_not_set_cookie():
    assert lines(("Cache-Control", "private"), ("X-Accel-Expires", "30")) == 30.0
    assert lines(("X-Accel-Expires", "30"), ("Cache-Control", "no-store, max-age=5")) == 30.0
    assert lines(("Expires", "garbage"), ("X-Accel-Expires", "30")) == 30.0
    assert lines(("X-Accel-Expires", "30"), ("Set-Cookie", "user=alice")) is None
    assert lines(("X-Accel-Expires", "30"), ("Vary", "*")) is None


def test_x_accel_expires_at_a_time():
    assert lines(("X-Accel-Expires", f"@{int(NOW) + 50}")) == 50.0
    assert lines(("X-Accel-Expires", f"@{int(NOW) - 50}")) is None  # dated in the past: not stored
    assert lines(("X-Accel-Expires", "@0"), ("Cache-Control", "max-age=60")) is None


@pytest.mark.parametrize("control", ["PRIVATE", "Private, max-age=60", "public, max-age=60, private=\"set-cookie\"",
                                     "No-Store", "NO-CACHE", "max-age=60, no-cache=\"x\""])
def test_cache_control_names_are_case_blind_substrings(control):
    assert lines(("Cache-Control", control)) is None


def test_each_cache_control_line_counts():
    assert lines(("Cache-Control", "max-age=60"), ("Cache-Control", "private")) is None
    assert lines(("Cache-Control", "private"), ("Cache-Control", "max-age=60")) is None
    assert lines(("Cache-Control", "max-age=60, pr\u0130vate")) == 60.0  # nginx lowers ASCII letters only


def test_expires_only_when_nothing_set_a_time_and_only_the_first():
    future, past = "Fri, 15 Jan 2100 08:00:40 GMT", "Thu, 01 Jan 1970 00:00:00 GMT"
    assert lines(("Expires", past), ("Cache-Control", "max-age=5")) == 5.0  # max-age clears "expired"
    assert lines(("Cache-Control", "max-age=5"), ("Expires", past)) == 5.0  # a time was set: Expires not read
    assert lines(("Expires", future), ("Expires", past)) > 600
    assert lines(("Expires", past), ("Expires", future)) is None
    assert lines(("Expires", "\u00b2")) is None


_NAMES = st.sampled_from(["Cache-Control", "X-Accel-Expires", "Expires", "Set-Cookie", "Vary", "cache-control",
                          "X-ACCEL-EXPIRES", "Content-Length", "X-Other"])
_VALUES = st.one_of(st.text(max_size=40),
                    st.builds(lambda a, b: a + b, st.sampled_from(["max-age=", "s-maxage=", "@", "stale-if-error=",
                                                                     "private, max-age=", "Thu, 01 Jan "]),
                              st.text(max_size=20)))


@settings(max_examples=2000, deadline=None)
@given(st.lists(st.tuples(_NAMES, _VALUES), max_size=6), st.integers(100, 599),
       st.sets(st.sampled_from(["x-accel-expires", "expires", "cache-control", "set-cookie", "vary"])))
def test_no_header_value_makes_the_storage_rules_raise(pairs, status, ignore):
    seconds = freshness(status, pairs, VALID, NOW, frozenset(ignore))
    assert seconds is None or seconds > 0
    if any(n.lower() == "set-cookie" for n, _ in pairs) and "set-cookie" not in ignore:
        assert seconds is None  # nothing outranks Set-Cookie


@given(st.text(max_size=30))
def test_ascii_number_takes_ascii_digits_only(text):
    n = ascii_number(text)
    assert n is None or (text.isascii() and text.isdigit() and n == int(text))


def test_proxy_ignore_headers_takes_lines_out_of_the_rules():
    assert lines(("Set-Cookie", "a=b"), ignore=("set-cookie",)) == 600.0
    assert lines(("X-Accel-Expires", "0"), ignore=("x-accel-expires",)) == 600.0
    assert lines(("X-Accel-Expires", "0"), ("Cache-Control", "max-age=9"), ignore=("x-accel-expires",)) == 9.0
    assert lines(("Cache-Control", "private"), ignore=("cache-control",)) == 600.0
    assert lines(("Expires", "garbage"), ignore=("expires",)) == 600.0
    assert lines(("Vary", "*"), ignore=("vary",)) == 600.0
    assert lines(("Cache-Control", "private"), ("Set-Cookie", "a=b"), ignore=("cache-control",)) is None


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


def test_a_refresh_is_its_own_type_and_evicts_its_key():
    short = message("assets", Invalidation(keys=("k1",)), refreshed=True)
    assert (short.type, short.payload, short.batch) == ("refreshed", "key:k1", None)
    assert read(short.type, short.payload) == Invalidation(keys=("k1",))
    long = message("assets", Invalidation(keys=("k" * 600,)), refreshed=True)
    ref = read(long.type, long.payload)
    assert long.type == "refreshed" and ref == BatchRef("assets", long.batch[0])
    assert read("refreshed", "nonsense") == Invalidation(everything=True)


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


def test_a_purge_crossing_hosts_goes_inline_in_several_events_instead_of_a_batch_only_this_host_can_read():
    from ngxsim_plugins.cache_purge.events import PAYLOAD_MAX, Invalidation, message, messages, parse_body

    keys = tuple(f"httpbackend/static/file-{i:04d}.css" for i in range(60))
    assert message("assets", Invalidation(keys=keys)).batch is not None  # on one host: stored, referenced
    assert len(messages("assets", Invalidation(keys=keys))) == 1
    sent = messages("assets", Invalidation(keys=keys), inline=True)
    assert len(sent) > 1 and all(m.batch is None and len(m.payload.encode()) <= PAYLOAD_MAX for m in sent)
    assert tuple(k for m in sent for k in parse_body(json.loads(m.payload)).keys) == keys
    one_long = messages("assets", Invalidation(tags=("t" * 600,)), inline=True)
    assert len(one_long) == 1 and one_long[0].batch is not None  # cannot be split: the others drop all
