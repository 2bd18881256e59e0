"""The engine contract (plugins/cluster/engine.py), checked against each real engine: what the
relay relies on. Runs once per engine of the pytest plugin's ENGINE_FIXTURES."""

from __future__ import annotations

import time
import uuid

import pytest

from ngxsim_plugins.cluster.engine import Batch, Conflict, EngineError, Reconnected, Record
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
        assert [e.record for e in batch.entries] == records(3) and engine.position_of(batch.cursor) == positions[2]
        rest = engine.read(batch.cursor, block=1.0)
        assert [e.record.origin_generation for e in rest.entries] == [4, 5] and engine.position_of(rest.cursor) == positions[-1]
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
        assert engine.position_of(batch.cursor) == positions[-1] and not batch.lost
        engine.append(records(2, origin="A", start=7))
        only_own = engine.read(batch.cursor, block=1.0, skip_origin="A")
        assert only_own.entries == [] and engine.position_of(only_own.cursor) == engine.newest() and not only_own.lost
        assert [e.record.origin for e in engine.read(start, block=1.0, skip_origin='A"').entries] == \
            ["A", "A", "B", "A", "A é", "A", "A"]
    finally:
        engine.close()


def read_through(engine, cursor, last_generation, block=1.0, limit=2000, within=20.0):
    """Reads from ``cursor`` until the entry of ``last_generation`` came (a read returns what has
    arrived so far: a NATS consumer may hand a batch over in parts): one Batch of every entry
    read, the first read's ``lost``/``lost_count``, the last read's cursor."""
    deadline = time.monotonic() + within
    first = batch = engine.read(cursor, block=block, limit=limit)
    entries = list(batch.entries)
    while not entries or entries[-1].record.origin_generation < last_generation:
        assert time.monotonic() < deadline, f"no entry {last_generation} within {within}s: {entries[-1:]}"
        batch = engine.read(batch.cursor, block=block, limit=limit)
        entries += batch.entries
    return Batch(entries, batch.cursor, first.lost, first.lost_count)


def test_reading_from_the_beginning_gives_everything_the_stream_holds(ngxsim_engine):
    engine = connect(ngxsim_engine.url)
    try:
        assert type(engine).beginning and engine.read(engine.beginning, block=0.01).cursor == engine.beginning
        positions = engine.append(records(3))
        batch = read_through(engine, engine.beginning, records(3)[-1].origin_generation)
        assert [e.record for e in batch.entries] == records(3) and engine.position_of(batch.cursor) == positions[-1] and not batch.lost
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
        batch = read_through(engine, cursor, 1001)
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


def append_checked(engine, batch):
    """``append`` the relay's way: after a reconnect (Reconnected: nothing was written) the caller
    has checked what it appended before (the tests do that themselves), then appends again."""
    for _ in range(3):
        try:
            return engine.append(batch)
        except Reconnected:
            engine.epoch()
    raise AssertionError("append refused three times")


def read_until(engine, cursor, wanted, origin):
    """Read from ``cursor`` until ``wanted`` entries of ``origin`` came (each read bounded, 30 at
    most); returns every batch."""
    batches = []
    for _ in range(30):
        if sum(e.record.origin == origin for b in batches for e in b.entries) >= wanted:
            break
        batches.append(engine.read(cursor, block=1.0))
        cursor = batches[-1].cursor
    return batches


def test_an_engine_restarted_without_entries_it_acknowledged_tells_its_writer(ngxsim_engine_factory):
    """The engine's loss made certain: a copy of its data taken, entries acknowledged after it,
    the engine restarted on the copy (as NATS R1 after kill -9, Redis with appendfsync everysec)."""
    server = ngxsim_engine_factory()
    writer = connect(server.url)
    try:
        kept = writer.append(records(3))
        snapshot = server.snapshot()  # (a restart: the writer's connection is a new one after it)
        with pytest.raises(Reconnected):
            writer.append(records(3, start=4))
        assert [writer.record_at(p) for p in kept] == records(3)  # nothing lost: the caller goes on
        writer.epoch()
        lost = writer.append(records(3, start=4))
        assert [writer.record_at(p) for p in lost] == records(3, start=4)
        server.restart(snapshot=snapshot)
        with pytest.raises(Reconnected):  # nothing is written before the caller has checked
            writer.append(records(1, start=7))
        assert [writer.record_at(p) for p in kept] == records(3)
        assert [writer.record_at(p) for p in lost] == [None, None, None]
        writer.epoch()
        again = writer.append(records(4, start=4))  # what was lost, then the next one
        assert [writer.record_at(p) for p in again] == records(4, start=4)
        batch = connect(server.url, writer.stream).read(writer.beginning, block=1.0)
        assert [e.record for e in batch.entries] == records(3) + records(4, start=4)
    finally:
        writer.close()


@pytest.mark.parametrize("reader_is", ["the same engine", "a new engine from the saved cursor"])
def test_a_reader_past_the_end_of_a_stream_restarted_without_entries_reads_every_new_one(ngxsim_engine_factory,
                                                                                         reader_is):
    """The restarted stream holds fewer entries than the reader had read, and new ones were
    appended since (NATS gives them the sequences the reader already passed): the reader gets
    every new one, and is told of a loss it cannot measure (what it had not read of the lost)."""
    server = ngxsim_engine_factory()
    writer = connect(server.url, retention=100)
    reader = connect(server.url, writer.stream, retention=100)
    try:
        append_checked(writer, records(3))
        snapshot = server.snapshot()
        append_checked(writer, records(5, start=4))  # 4..8, lost below
        batches = read_until(reader, reader.beginning, 8, "A")
        assert [e.record for b in batches for e in b.entries] == records(3) + records(5, start=4)
        cursor = batches[-1].cursor
        server.restart(snapshot=snapshot)
        append_checked(writer, records(8, origin="B", start=100))  # (NATS: sequences 4..11, past the reader's 8)
        if reader_is != "the same engine":
            reader.close()
            reader = connect(server.url, writer.stream)
        else:
            reader.close()  # (what the relay does after a failed read: the same engine connected again)
            reader.connect()
        batches = read_until(reader, cursor, 8, "B")
        got = [e.record for b in batches for e in b.entries]
        assert [r for r in got if r.origin == "B"] == records(8, origin="B", start=100)
        assert all(r in records(3) for r in got if r.origin == "A"), got  # read again: the relay drops them
        assert batches[0].lost and batches[0].lost_count is None
        assert not any(b.lost for b in batches[1:])  # said once
        # and the reader counts a later loss exactly: entries trimmed by retention while it was away
        cursor = batches[-1].cursor
        reader.close()
        for start in range(200, 1200, 200):
            append_checked(writer, records(200, origin="C", start=start))
        reader.connect()
        batch = reader.read(cursor, block=1.0, limit=2000)
        assert batch.lost and batch.lost_count == batch.entries[0].record.origin_generation - 200
    finally:
        writer.close()
        reader.close()


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
