"""The engine contract (plugins/cluster/engine.py), checked against each real engine: what the
relay relies on. Runs once per engine of the pytest plugin's ENGINE_FIXTURES."""

from __future__ import annotations

import time
import uuid

import pytest

from ngxsim_plugins.cluster.engine import Batch, Conflict, EngineError, Record
from ngxsim_plugins.cluster.engines import engine_class


def connect(url, stream=None, retention=1000, **kw):
    engine = engine_class(url)(url, stream or f"contract.{uuid.uuid4().hex[:10]}", retention=retention, **kw)
    engine.connect()
    return engine


def records(n, origin="A", start=1):
    return [Record(origin, start + i, "c", "t", f"p{start + i}", 1_700_000_000_000 + i) for i in range(n)]


def test_append_then_read_in_order_from_a_cursor(ngxsim_engine):
    server = ngxsim_engine
    engine = connect(server.url)
    try:
        first = engine.read(None, block=0.01)
        assert isinstance(first, Batch) and first.entries == [] and first.cursor is not None and not first.lost
        positions = engine.append(records(5))
        assert len(positions) == 5 and engine.newest() == positions[-1]
        batch = engine.read(first.cursor, block=1.0, limit=3)
        assert [e.record for e in batch.entries] == records(3) and batch.cursor == positions[2]
        rest = engine.read(batch.cursor, block=1.0)
        assert [e.record.origin_generation for e in rest.entries] == [4, 5] and rest.cursor == positions[-1]
        began = time.monotonic()
        empty = engine.read(rest.cursor, block=0.2)  # nothing new: returns after the block, at the same place
        assert empty.entries == [] and empty.cursor == rest.cursor and time.monotonic() - began < 5
    finally:
        engine.close()


def test_a_read_skipping_the_caller_s_origin_leaves_its_entries_out_and_moves_past_them(ngxsim_engine):
    # the relay's own events come back from the engine: skipped unparsed (no echo, less CPU)
    engine = connect(ngxsim_engine.url)
    try:
        start = engine.read(None, block=0.01).cursor
        mixed = [*records(2, origin="A"), *records(1, origin="B", start=3), *records(1, origin="A", start=4),
                 Record("A é", 5, "c", "t", "p", 1), Record('A"', 6, "c", "t", "p", 1)]
        positions = engine.append(mixed)
        batch = engine.read(start, block=1.0, skip_origin="A")
        assert [e.record for e in batch.entries] == [mixed[2], mixed[4], mixed[5]]
        assert [e.position for e in batch.entries] == [positions[2], positions[4], positions[5]]
        assert batch.cursor == positions[-1] and not batch.lost
        engine.append(records(2, origin="A", start=7))
        only_own = engine.read(batch.cursor, block=1.0, skip_origin="A")
        assert only_own.entries == [] and only_own.cursor == engine.newest() and not only_own.lost
        assert [e.record.origin for e in engine.read(start, block=1.0, skip_origin='A"').entries] == \
            ["A", "A", "B", "A", "A é", "A", "A"]
    finally:
        engine.close()


def test_reading_from_the_beginning_gives_everything_the_stream_holds(ngxsim_engine):
    engine = connect(ngxsim_engine.url)
    try:
        assert type(engine).beginning and engine.read(engine.beginning, block=0.01).cursor == engine.beginning
        positions = engine.append(records(3))
        batch = engine.read(engine.beginning, block=1.0)
        assert [e.record for e in batch.entries] == records(3) and batch.cursor == positions[-1] and not batch.lost
    finally:
        engine.close()


def test_an_engine_knows_its_own_positions_from_another_engine_s(ngxsim_engine):
    engine = connect(ngxsim_engine.url)
    try:
        own = [engine.beginning, engine.read(None, block=0.01).cursor, *engine.append(records(2))]
        assert all(engine.is_position(p) for p in own), own
        foreign = {"redis": "42", "nats": "1712345678901-0#42"}[ngxsim_engine.url.partition(":")[0]]
        assert not engine.is_position(foreign) and not engine.is_position("")
    finally:
        engine.close()


def test_entries_trimmed_before_they_were_read_are_a_counted_loss(ngxsim_engine):
    server = ngxsim_engine
    engine = connect(server.url, retention=100)
    try:
        cursor = engine.read(None, block=0.01).cursor
        engine.append(records(1))
        cursor = engine.read(cursor, block=1.0).cursor
        engine.close()  # the reader is away (a live NATS consumer would have been handed them all)
        writer = connect(server.url, engine.stream, retention=100)
        for start in range(2, 1002, 200):  # 1000 more: the engine keeps about 100 of them
            writer.append(records(200, start=start))
        writer.close()
        engine.connect()
        batch = engine.read(cursor, block=1.0, limit=2000)
        assert batch.lost and batch.lost_count and batch.entries
        first = batch.entries[0].record.origin_generation
        assert batch.lost_count == first - 2  # exactly what was trimmed between the cursor and the first kept
        assert batch.entries[-1].record.origin_generation == 1001
        again = engine.read(batch.cursor, block=0.05)
        assert not again.lost  # said once
    finally:
        engine.close()


def test_an_engine_that_lost_its_data_is_a_loss_of_unknown_size(ngxsim_engine_factory):
    server = ngxsim_engine_factory()
    stream = f"contract.{uuid.uuid4().hex[:10]}"
    engine = connect(server.url, stream)
    try:
        cursor = engine.read(None, block=0.01).cursor
        engine.append(records(3))
        cursor = engine.read(cursor, block=1.0).cursor
        server.restart(wipe=True)
        engine.close()
        engine.connect()
        batch = engine.read(cursor, block=0.05)
        assert batch.lost and batch.lost_count is None
        engine.append(records(1, start=10))
        assert [e.record.origin_generation for e in engine.read(batch.cursor, block=1.0).entries] == [10]
    finally:
        engine.close()


def test_an_unreachable_engine_fails_within_its_timeout_and_names_no_secret(ngxsim_engine_factory):
    server = ngxsim_engine_factory(password="s3cret")
    with pytest.raises(EngineError) as err:
        connect(server.url, password="wrong", timeout=1.0)
    assert "s3cret" not in str(err.value) and "wrong" not in str(err.value)
    assert connect(server.url, password="s3cret").newest() is None  # the right one works
    url = server.url
    server.stop()
    began = time.monotonic()
    with pytest.raises(EngineError) as err:
        connect(url, timeout=0.5)
    assert time.monotonic() - began < 5 and "127.0.0.1" in str(err.value)


# -- the key-value store ----------------------------------------------------------------------


@pytest.fixture
def opened():
    """``connect`` whose engines are closed at teardown."""
    made = []

    def make(url, stream=None):
        made.append(connect(url, stream))
        return made[-1]

    yield make
    for engine in made:
        engine.close()


def test_kv_absent_then_created_then_compare_and_set(ngxsim_engine, opened):
    engine = opened(ngxsim_engine.url)
    assert engine.kv_get("lease.a") == (None, 0)
    first = engine.kv_put("lease.a", "one", revision=0)
    assert first >= 1 and engine.kv_get("lease.a") == ("one", first)
    with pytest.raises(Conflict):  # revision 0: only if absent
        engine.kv_put("lease.a", "again", revision=0)
    second = engine.kv_put("lease.a", "two", revision=first)
    assert second > first and engine.kv_get("lease.a") == ("two", second)
    with pytest.raises(Conflict):  # a stale revision loses and changes nothing
        engine.kv_put("lease.a", "stale", revision=first)
    assert engine.kv_get("lease.a") == ("two", second)
    with pytest.raises(Conflict):  # a revision from the future as well
        engine.kv_put("lease.a", "future", revision=second + 100)
    assert engine.kv_get("lease.a") == ("two", second)


def test_kv_keeps_any_text_in_keys_and_values_and_refuses_bad_arguments(ngxsim_engine, opened):
    engine = opened(ngxsim_engine.url)
    text = "état ✓ 東京 \n\"q\" {}" * 3
    for key in ("clé ✓/x y", "=odd", "a..b", ".lead", "plain.key-1_2"):
        revision = engine.kv_put(key, text + key, revision=0)
        assert engine.kv_get(key) == (text + key, revision)
    big = "é" * (32 * 1024)  # 64 KiB of UTF-8: the most a value may be
    revision = engine.kv_put("big", big, revision=0)
    assert engine.kv_get("big") == (big, revision)
    with pytest.raises(ValueError, match="more than 65536"):
        engine.kv_put("big", big + "x", revision=revision)
    with pytest.raises(ValueError, match="non-empty"):
        engine.kv_put("", "v", revision=0)
    with pytest.raises(ValueError, match="revision"):
        engine.kv_put("k", "v", revision=-1)
    assert engine.kv_get("big") == (big, revision)


def test_kv_of_two_streams_on_one_engine_stay_apart(ngxsim_engine, opened):
    stream = f"contract.{uuid.uuid4().hex[:10]}"
    one, two = opened(ngxsim_engine.url, stream + ".a"), opened(ngxsim_engine.url, stream + "_a")
    one.kv_put("k", "of one", revision=0)
    assert two.kv_get("k") == (None, 0)
    two.kv_put("k", "of two", revision=0)
    assert one.kv_get("k")[0] == "of one" and two.kv_get("k")[0] == "of two"


def test_kv_values_outlive_an_engine_restart(ngxsim_engine_factory, opened):
    server = ngxsim_engine_factory()
    engine = opened(server.url)
    revision = engine.kv_put("lease.x", "kept ✓", revision=0)
    revision = engine.kv_put("lease.x", "kept ✓✓", revision=revision)
    server.restart()
    engine.close()
    engine.connect()
    assert engine.kv_get("lease.x") == ("kept ✓✓", revision)
    assert engine.kv_put("lease.x", "after", revision=revision) > revision
