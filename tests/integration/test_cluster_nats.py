"""The NATS JetStream engine of the cluster bridge against real ``nats-server -js`` processes:
one shared node for the plain semantics, nodes of their own for kill/pause/credentials, and a
3-node cluster with an R3 stream for a node lost mid-flow."""

from __future__ import annotations

import itertools
import socket
import threading
import time

import pytest

from ngxsim.testing import wait_for
from ngxsim_plugins.cluster.engine import EngineError, Reconnected, Record
from ngxsim_plugins.cluster.engines.nats import NatsEngine

_streams = itertools.count(1)
_ORIGIN = f"host-{id(_streams):x}"


def unique_stream(tag: str) -> str:
    return f"test.{tag}.{time.monotonic_ns()}.{next(_streams)}"


def records(count: int, start: int = 1, payload: str = "p{}", origin: str = _ORIGIN) -> list[Record]:
    return [Record(origin, g, "upstreams", "peer_down", payload.format(g), 1_700_000_000_000 + g)
            for g in range(start, start + count)]


@pytest.fixture
def engines():
    """A factory of NatsEngine; every engine is closed at teardown."""
    made = []

    def make(url: str, stream: str, *, retention: int = 1000, password: str | None = None,
             timeout: float = 2.0, connect: bool = True) -> NatsEngine:
        engine = NatsEngine(url, stream, retention=retention, password=password, timeout=timeout)
        made.append(engine)
        if connect:
            engine.connect()
        return engine

    yield make
    for engine in made:
        engine.close()


def read_all(engine: NatsEngine, cursor: str | None, count: int, block: float = 5.0):
    """Read until ``count`` entries came (each read bounded; the whole at most 30 reads)."""
    got = []
    for _ in range(30):
        if len(got) >= count:
            break
        batch = engine.read(cursor, block=block, limit=count - len(got))
        got.extend(batch.entries)
        cursor = batch.cursor
    return got, cursor


def reconnect(engine: NatsEngine, failures: list | None = None) -> None:
    """What the relay does after an EngineError: close, wait a little, connect again."""
    engine.close()
    time.sleep(0.1)
    try:
        engine.connect()
    except EngineError as exc:
        if failures is not None:
            failures.append(str(exc))


def read_all_as_relay(engine: NatsEngine, cursor: str | None, count: int):
    """``read_all``, but an EngineError is met the relay's way (close, connect, same cursor):
    right after a node is lost, the cluster may take a moment to place a new consumer."""
    got = []
    for _ in range(60):
        if len(got) >= count:
            break
        try:
            batch = engine.read(cursor, block=1.0, limit=count - len(got))
        except EngineError:
            reconnect(engine)
            continue
        assert not batch.lost
        got.extend(batch.entries)
        cursor = batch.cursor
    return got


# -- plain semantics on one shared server ---------------------------------------------------------


def test_append_then_read_gives_every_record_back_in_order_with_its_text(ngxsim_nats, engines):
    engine = engines(ngxsim_nats.url, unique_stream("roundtrip"))
    sent = [Record(_ORIGIN, 1, "cache_purge", "purge", "/caché/ünïcode ✓ 日本語 🚀", 1_700_000_000_001),
            Record(_ORIGIN, 2, "upstreams", "peer_down", "x" * 512, 1_700_000_000_002),
            Record("other-host", 7, "chan with spaces", "type\nwith newline", "", 1_700_000_000_003),
            Record(_ORIGIN, 3, "c", "t", '{"json": ["in", "payload"], "q": "\\"}', 1_700_000_000_004)]
    positions = engine.append(sent)
    assert [int(p) for p in positions] == sorted(int(p) for p in positions)
    assert len(set(positions)) == len(sent)
    assert engine.newest() == positions[-1]

    got, cursor = read_all(engine, NatsEngine.beginning, len(sent))
    assert [e.record for e in got] == sent
    assert [e.position for e in got] == positions
    assert NatsEngine.position_of(cursor) == positions[-1]


def test_read_after_a_cursor_starts_right_after_it(ngxsim_nats, engines):
    engine = engines(ngxsim_nats.url, unique_stream("cursor"))
    sent = records(6)
    positions = engine.append(sent)
    got, _ = read_all(engine, positions[2], 3)
    assert [e.record for e in got] == sent[3:]
    # a second engine (another instance) resuming at a stored position reads the same
    other = engines(ngxsim_nats.url, engine.stream)
    got, _ = read_all(other, positions[4], 1)
    assert [e.record for e in got] == sent[5:]


def test_the_batch_limit_holds_and_the_next_read_continues_the_same_consumer(ngxsim_nats, engines):
    engine = engines(ngxsim_nats.url, unique_stream("limit"))
    sent = records(10)
    engine.append(sent)
    first = engine.read("0", block=5.0, limit=4)
    assert [e.record for e in first.entries] == sent[:4]
    second = engine.read(first.cursor, block=5.0, limit=100)
    got = second.entries
    if len(got) < 6:
        got += read_all(engine, second.cursor, 6 - len(got))[0]
    assert [e.record for e in got] == sent[4:]


def test_a_caller_going_back_to_an_older_cursor_reads_from_there_again(ngxsim_nats, engines):
    engine = engines(ngxsim_nats.url, unique_stream("rewind"))
    sent = records(5)
    positions = engine.append(sent)
    read_all(engine, "0", 5)
    # the relay's worker died after reading, before storing: the next one resumes at the stored cursor
    got, _ = read_all(engine, positions[1], 3)
    assert [e.record for e in got] == sent[2:]


def test_cursor_none_sees_only_what_is_appended_from_then_on(ngxsim_nats, engines):
    engine = engines(ngxsim_nats.url, unique_stream("new"))
    engine.append(records(3))
    empty = engine.read(None, block=0.3)
    assert empty.entries == [] and not empty.lost
    later = records(2, start=10)
    engine.append(later)
    got, _ = read_all(engine, empty.cursor, 2)
    assert [e.record for e in got] == later


def test_a_blocked_read_returns_when_an_entry_arrives_not_at_the_end_of_its_block(ngxsim_nats, engines):
    engine = engines(ngxsim_nats.url, unique_stream("push"))
    writer = engines(ngxsim_nats.url, engine.stream)
    start = writer.append(records(1))[0]
    engine.read(start, block=0.1)  # the consumer exists: the next read waits on it
    block = 60.0
    result = {}

    def reader():
        result["batch"] = engine.read(start, block=block)
        result["at"] = time.monotonic()

    thread = threading.Thread(target=reader)
    thread.start()
    time.sleep(0.2)  # let it wait
    sent = records(1, start=2)
    writer.append(sent)
    returned_by = time.monotonic() + block
    thread.join(30.0)
    assert not thread.is_alive(), "read still waiting: it did not return on arrival"
    assert result["at"] < returned_by
    assert [e.record for e in result["batch"].entries] == sent


def test_entries_trimmed_by_retention_are_reported_as_lost_with_their_exact_count(ngxsim_nats, engines):
    engine = engines(ngxsim_nats.url, unique_stream("trim"), retention=5)
    sent = records(12)
    positions = engine.append(sent)
    batch = engine.read("0", block=5.0)
    assert batch.lost and batch.lost_count == 7
    got = batch.entries + read_all(engine, batch.cursor, 5 - len(batch.entries))[0]
    assert [e.record for e in got] == sent[7:]

    # a reader that had read up to the 3rd entry and comes back after 10 more were appended
    later = records(10, start=13)
    more = engine.append(later)
    batch = engine.read(positions[2], block=5.0)
    first_kept = int(more[-1]) - 4
    assert batch.lost and batch.lost_count == first_kept - int(positions[2]) - 1
    assert batch.entries and batch.entries[0].position == str(first_kept)


def test_a_reader_up_to_date_is_not_told_of_a_loss(ngxsim_nats, engines):
    engine = engines(ngxsim_nats.url, unique_stream("nogap"), retention=5)
    positions = engine.append(records(12))
    batch = engine.read(positions[-1], block=0.2)
    assert not batch.lost and batch.entries == [] and NatsEngine.position_of(batch.cursor) == positions[-1]
    sent = records(1, start=20)
    engine.append(sent)
    batch = engine.read(batch.cursor, block=5.0)
    assert not batch.lost and [e.record for e in batch.entries] == sent


def test_a_purged_stream_reports_what_the_reader_had_not_read_as_lost(ngxsim_nats, engines):
    import asyncio

    import nats

    engine = engines(ngxsim_nats.url, unique_stream("purged"))
    positions = engine.append(records(6))

    async def purge():
        nc = await nats.connect(ngxsim_nats.url)
        await nc.jetstream().purge_stream(engine.name)
        await nc.close()

    asyncio.run(purge())
    batch = engine.read(positions[1], block=0.2)
    assert batch.lost and batch.lost_count == 4 and batch.entries == []
    assert NatsEngine.position_of(batch.cursor) == positions[-1]
    sent = records(1, start=7)
    engine.append(sent)
    batch = engine.read(batch.cursor, block=5.0)
    assert not batch.lost and [e.record for e in batch.entries] == sent


def test_a_cursor_past_the_end_means_the_stream_was_recreated(ngxsim_nats, engines):
    engine = engines(ngxsim_nats.url, unique_stream("recreated"))
    sent = records(3)
    engine.append(sent)
    batch = engine.read("500", block=5.0)
    assert batch.lost and batch.lost_count is None
    got = batch.entries + read_all(engine, batch.cursor, 3 - len(batch.entries))[0]
    assert [e.record for e in got] == sent

    # recreated and still empty: the loss is said at once, and reading goes on from its start
    empty = engines(ngxsim_nats.url, unique_stream("recreated-empty"))
    batch = empty.read("500", block=0.2)
    assert batch.lost and batch.lost_count is None and batch.entries == []
    sent = records(1)
    empty.append(sent)
    assert [e.record for e in read_all(empty, batch.cursor, 1)[0]] == sent


def test_a_stream_deleted_and_made_again_under_a_live_reader_is_a_loss_then_reading_goes_on(ngxsim_nats, engines):
    import asyncio

    import nats

    stream = unique_stream("remade")
    reader = engines(ngxsim_nats.url, stream)
    writer = engines(ngxsim_nats.url, stream)
    first = writer.append(records(5))
    got, cursor = read_all(reader, "0", 5)
    assert NatsEngine.position_of(cursor) == first[-1]

    async def delete():
        nc = await nats.connect(ngxsim_nats.url)
        await nc.jetstream().delete_stream(reader.name)
        await nc.close()

    asyncio.run(delete())
    writer.close()
    writer.connect()  # makes it again, empty: its sequences start at 1 again
    sent = records(7, start=10)  # past the reader's position: sequences alone would not tell
    writer.append(sent)
    batch = reader.read(cursor, block=0.2)
    assert batch.lost and batch.lost_count is None
    got = batch.entries + read_all(reader, batch.cursor, 7 - len(batch.entries))[0]
    assert [e.record for e in got] == sent


def test_two_streams_on_one_server_stay_apart_even_when_their_names_sanitize_alike(ngxsim_nats, engines):
    base = unique_stream("apart")
    one = engines(ngxsim_nats.url, f"{base}.a/b")
    two = engines(ngxsim_nats.url, f"{base}.a_b")
    assert one.name != two.name
    sent_one, sent_two = records(3, payload="one {}"), records(4, payload="two {}")
    one.append(sent_one)
    two.append(sent_two)
    assert [e.record for e in read_all(one, "0", 3)[0]] == sent_one
    assert [e.record for e in read_all(two, "0", 4)[0]] == sent_two
    assert one.read(str(len(sent_one)), block=0.2).entries == []


def test_the_same_record_appended_twice_is_stored_once(ngxsim_nats, engines):
    # what an append that timed out after the server stored it becomes when the relay retries
    engine = engines(ngxsim_nats.url, unique_stream("dedup"))
    sent = records(3)
    first = engine.append(sent)
    again = engine.append(sent[1:])
    assert again == first[1:]
    assert engine.newest() == first[-1]


def test_a_batch_is_sent_at_once_each_record_stored_only_right_after_its_predecessor(ngxsim_nats, engines):
    # pipelined (one write, not one round trip a record): each record after the first names its
    # predecessor (Nats-Expected-Last-Msg-Id), so nothing is stored ahead of an earlier record
    import asyncio

    import nats

    from ngxsim_plugins.cluster.engines.nats import msg_id

    engine = engines(ngxsim_nats.url, unique_stream("pipelined"))
    sent = records(3)
    positions = engine.append(sent)
    assert positions == ["1", "2", "3"]

    async def stored_headers():
        nc = await nats.connect(ngxsim_nats.url)
        try:
            return [(await nc.jetstream().get_msg(engine.name, seq)).headers or {} for seq in (1, 2, 3)]
        finally:
            await nc.close()

    headers = asyncio.run(stored_headers())
    assert "Nats-Expected-Last-Msg-Id" not in headers[0]
    assert [h.get("Nats-Expected-Last-Msg-Id") for h in headers[1:]] == [msg_id(sent[0]), msg_id(sent[1])]


def test_a_batch_after_another_instance_s_record_keeps_each_origin_in_order(ngxsim_nats, engines):
    # the relay appends its batch again after a failure: the head is stored already and another
    # instance's record came after it, so the server refuses the rest of the pipelined batch
    # (its predecessor is not the last), and they are stored one at a time, in order
    stream = unique_stream("interleaved")
    ours, theirs = engines(ngxsim_nats.url, stream), engines(ngxsim_nats.url, stream)
    sent = records(3)
    other = records(1, origin="other-host")
    assert ours.append(sent[:1]) == ["1"]
    assert theirs.append(other) == ["2"]
    assert ours.append(sent) == ["1", "3", "4"]
    got, _ = read_all(ours, NatsEngine.beginning, 4)
    assert [e.record for e in got] == [sent[0], other[0], sent[1], sent[2]]


def test_a_batch_asks_for_two_acknowledgements_and_still_knows_every_position(ngxsim_nats, engines):
    # only the first and the last record of a pipelined batch ask for an acknowledgement (each
    # is a message nats-py parses in the relaying worker); the chain of expected predecessors
    # makes the last one say the whole batch was stored in one run of sequences
    engine = engines(ngxsim_nats.url, unique_stream("twoacks"))
    engine.append(records(1, start=100))  # (the first append's extra answers: stream lookups)
    before = engine._nc.stats["in_msgs"]
    positions = engine.append(records(10))
    assert engine._nc.stats["in_msgs"] - before == 2
    assert positions == [str(n) for n in range(2, 12)]
    got, _ = read_all(engine, "1", 10)
    assert [e.record for e in got] == records(10)


def test_a_batch_whose_chain_breaks_midway_is_sent_on_one_at_a_time_with_exact_positions(ngxsim_nats, engines):
    # the third record was stored already (an earlier append that timed out): JetStream drops
    # its repeat, so the fourth's predecessor is not the stream's last and is refused; the
    # positions come from the one-at-a-time acknowledgements, the repeat's its first one
    engine = engines(ngxsim_nats.url, unique_stream("midway"))
    sent = records(4)
    assert engine.append(sent[2:3]) == ["1"]
    assert engine.append(sent) == ["2", "3", "1", "4"]
    got, _ = read_all(engine, NatsEngine.beginning, 4)
    assert [e.record for e in got] == [sent[2], sent[0], sent[1], sent[3]]


def test_an_existing_stream_is_kept_as_it_is_on_connect(ngxsim_nats, engines):
    stream = unique_stream("keep")
    engine = engines(ngxsim_nats.url, stream, retention=100)
    sent = records(4)
    engine.append(sent)
    engine.close()
    again = engines(ngxsim_nats.url, stream, retention=100)
    assert [e.record for e in read_all(again, "0", 4)[0]] == sent


def test_entries_that_are_not_records_are_skipped_and_counted(ngxsim_nats, engines):
    import asyncio

    import nats

    engine = engines(ngxsim_nats.url, unique_stream("foreign"))
    engine.append(records(1))

    async def foreign():
        nc = await nats.connect(ngxsim_nats.url)
        await nc.jetstream().publish(engine.subject, b"not a record")
        await nc.close()

    asyncio.run(foreign())
    sent = records(1, start=2)
    engine.append(sent)
    got, cursor = read_all(engine, "1", 1)
    assert [e.record for e in got] == sent and NatsEngine.position_of(cursor) == "3"
    assert engine.skipped == 1


# -- errors ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("url, wrong", [
    ("redis://127.0.0.1:6379", "scheme"),
    ("nats://", "no host"),
    ("nats://127.0.0.1:port", "invalid port"),
    ("nats://127.0.0.1:4222,tls://127.0.0.1:4223", "same scheme"),
    ("nats://127.0.0.1:4222?replicas=0", '"replicas" must be'),
    ("nats://127.0.0.1:4222?replicas=three", '"replicas" must be'),
    ("nats://127.0.0.1:4222?stream=x", 'unknown parameter "stream"'),
    ("nats://127.0.0.1:4222/events", "unexpected path"),
])
def test_check_url_names_what_is_wrong_and_connect_says_the_same(url, wrong):
    problem = NatsEngine.check_url(url)
    assert problem is not None and wrong in problem
    engine = NatsEngine(url, "s", retention=10, timeout=1.0)
    with pytest.raises(EngineError, match="invalid URL") as caught:
        engine.connect()
    assert wrong in str(caught.value)


@pytest.mark.parametrize("url", ["nats://127.0.0.1:4222", "nats://a:1,b:2,c:3?replicas=3",
                                 "tls://relay@a:1,tls://relay@b:2", "nats://[::1]:4222"])
def test_check_url_accepts_good_urls(url):
    assert NatsEngine.check_url(url) is None


def _bounded(call, within: float = 20.0):
    """``call()`` in a thread; the exception it raised. Fails if it is still running after ``within``."""
    caught = {}

    def run():
        try:
            call()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            caught["exc"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(within)
    assert not thread.is_alive(), f"still running after {within}s: not bounded"
    return caught.get("exc")


def test_an_unreachable_server_is_an_engine_error_naming_it(engines):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: connections are refused
        engine = engines(f"nats://127.0.0.1:{port}", "s", timeout=1.0, connect=False)
        exc = _bounded(engine.connect)
    assert isinstance(exc, EngineError)
    assert f"127.0.0.1:{port}" in str(exc) and "connection refused" in str(exc)
    assert "Error(" not in str(exc) and "<" not in str(exc)
    with pytest.raises(EngineError, match="not connected"):
        engine.append(records(1))


def test_a_server_that_never_answers_is_an_engine_error_within_the_timeout(engines):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)  # accepts at the kernel, never says a word
        port = sock.getsockname()[1]
        engine = engines(f"nats://127.0.0.1:{port}", "s", timeout=1.0, connect=False)
        exc = _bounded(engine.connect)
    assert isinstance(exc, EngineError) and f"127.0.0.1:{port}" in str(exc)
    assert "timed out" in str(exc) or "no answer" in str(exc)


def test_a_server_without_jetstream_is_an_engine_error_saying_so(tmp_path, engines):
    import subprocess

    from ngxsim.testing import free_port
    from ngxsim.testing.nats_server import nats_server_binary, nats_server_missing

    if nats_server_missing():
        pytest.skip(nats_server_missing())
    port = free_port()
    proc = subprocess.Popen([nats_server_binary(), "-a", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def listening():
            with socket.socket() as probe:
                return probe.connect_ex(("127.0.0.1", port)) == 0

        wait_for(listening, 10, what="nats-server without JetStream to listen")
        engine = engines(f"nats://127.0.0.1:{port}", "s", timeout=1.0, connect=False)
        with pytest.raises(EngineError, match="JetStream"):
            engine.connect()
    finally:
        proc.terminate()
        proc.wait(10)


def test_a_stream_the_server_cannot_make_or_that_is_not_ours_is_an_engine_error_naming_it(ngxsim_nats, engines):
    import asyncio

    import nats

    engine = engines(f"{ngxsim_nats.url}?replicas=3", unique_stream("r3-on-one"), connect=False)
    with pytest.raises(EngineError, match="JetStream refused it") as caught:
        engine.connect()
    assert f"stream {engine.name}" in str(caught.value)

    taken = engines(ngxsim_nats.url, unique_stream("taken"), connect=False)

    async def make_other():
        nc = await nats.connect(ngxsim_nats.url)
        await nc.jetstream().add_stream(name=taken.name, subjects=[f"elsewhere.{taken.name}"])
        await nc.close()

    asyncio.run(make_other())
    with pytest.raises(EngineError, match=f"stream {taken.name} exists with subjects"):
        taken.connect()


def test_credentials_right_ones_work_wrong_ones_say_authentication_and_never_show(ngxsim_nats_node, engines):
    secret = "s3cr3t-Pa55"
    node = ngxsim_nats_node(user="relay", password=secret)
    url = f"nats://relay@{node.address}"
    good = engines(url, unique_stream("auth"), password=secret)
    assert good.append(records(1)) == ["1"]

    for bad_url, bad_password in [(url, "wrong-one"), (f"nats://relay:wrong-inline@{node.address}", None),
                                  (f"nats://{node.address}", secret)]:
        engine = engines(bad_url, good.stream, password=bad_password, timeout=2.0, connect=False)
        exc = _bounded(engine.connect)
        assert isinstance(exc, EngineError), bad_url
        text = str(exc)
        assert "authentication failed" in text
        assert node.address in text
        for hidden in (secret, "wrong-one", "wrong-inline"):
            assert hidden not in text


def test_without_a_user_in_the_url_the_password_is_the_server_s_token(ngxsim_nats_node, engines):
    node = ngxsim_nats_node(token="t0ken-value")
    good = engines(node.url, unique_stream("token"), password="t0ken-value")
    assert good.append(records(1)) == ["1"]
    engine = engines(node.url, good.stream, password="not-the-token", connect=False)
    exc = _bounded(engine.connect)
    assert isinstance(exc, EngineError) and "authentication failed" in str(exc)
    assert "not-the-token" not in str(exc)


# -- the server going away ------------------------------------------------------------------------


def test_a_server_killed_loses_at_most_a_tail_of_what_it_acknowledged_and_the_writer_finds_which(
        ngxsim_nats_node, engines):
    """nats-server 2.9's file store writes out asynchronously (no option to sync each write
    before 2.10's sync_interval): an R1 stream killed (-9) may lose the last entries it
    acknowledged (3 of 20 once, on a loaded box). What it keeps is a head of them; the writer
    finds the rest with record_at and appends them again, and a reader gets every one
    (docs/cluster.md: R1 against R3)."""
    node = ngxsim_nats_node()
    engine = engines(node.url, unique_stream("restart"), timeout=1.0)
    reader = engines(node.url, engine.stream, timeout=1.0)
    sent = records(20)
    acked = engine.append(sent)
    batch = reader.read("0", block=5.0, limit=5)
    assert [e.record for e in batch.entries] == sent[:5]
    node.kill()
    with pytest.raises(EngineError):
        engine.append(records(1, start=100))
    node.start()
    engine.close()
    engine.connect()
    held = [engine.record_at(p) for p in acked]
    kept = held.index(None) if None in held else len(held)
    assert held == sent[:kept] + [None] * (20 - kept)  # a head kept, a tail lost (often none of it)
    assert engine.append(sent[kept:]) == acked[kept:]
    got, _ = read_all(engine, "0", 20)
    assert [e.record for e in got] == sent
    reader.close()
    reader.connect()  # (the same reader resumes: entries it had read and the stream lost are read again)
    rest, cursor = [], batch.cursor
    for _ in range(30):
        if sum(r not in sent[:5] for r in rest) >= 15:
            break
        more = reader.read(cursor, block=1.0)
        rest, cursor = rest + [e.record for e in more.entries], more.cursor
    assert [r for r in rest if r not in sent[:5]] == sent[5:]
    assert engine.append(records(1, start=21)) == ["21"]


def test_a_paused_server_makes_calls_time_out_then_they_work_again(ngxsim_nats_node, engines):
    node = ngxsim_nats_node()
    engine = engines(node.url, unique_stream("pause"), timeout=0.5)
    cursor = engine.append(records(2))[-1]
    engine.read(cursor, block=0.1)
    node.pause()
    try:
        for call in (lambda: engine.read(cursor, block=0.2), lambda: engine.append(records(1, start=3)),
                     engine.newest):
            exc = _bounded(call)
            assert isinstance(exc, EngineError), exc
            assert node.address in str(exc)
        _bounded(engine.close)
    finally:
        node.resume()
    engine.connect()
    sent = records(2, start=10)
    engine.append(sent)
    got, _ = read_all(engine, cursor, 3)
    # the append made while paused may have been stored (it reached the server's socket before
    # the pause took it): if it was, it comes first, once
    assert [e.record for e in got if e.record.origin_generation != 3] == sent
    assert sum(e.record.origin_generation == 3 for e in got) <= 1


# -- a 3-node cluster, one node lost mid-flow ----------------------------------------------------


def _node_of_client(cluster) -> int:
    counts = [node.client_count() if node.running() else 0 for node in cluster.nodes]
    assert sum(counts) == 1, counts
    return counts.index(1)


@pytest.mark.parametrize("victim", ["connected", "leader", "leader stopped"])
def test_r3_stream_on_three_nodes_loses_nothing_acknowledged_when_a_node_dies(ngxsim_nats_cluster, engines,
                                                                                 victim):
    """A node killed (the writer's, or the stream's leader: a 4-9 s Raft election in which
    appends fail and are retried the relay's way) or the leader stopped for maintenance
    (``SIGTERM``: it hands over, and appends only pause)."""
    cluster = ngxsim_nats_cluster(3)
    stream = unique_stream("r3")
    writer = engines(f"{cluster.url}?replicas=3", stream, timeout=4.0)

    def placement():
        detail = cluster.nodes[0].monitor("jsz?streams=true")["account_details"][0]["stream_detail"][0]["cluster"]
        # (until the stream's first election is over, node 1 may list all three as replicas)
        return detail if detail.get("leader") else None

    assert len(wait_for(placement, 20, what="the R3 stream's leader")["replicas"]) == 2  # the leader and two replicas
    if victim == "connected":
        doomed = _node_of_client(cluster)
    else:
        doomed = cluster.nodes.index(cluster.stream_leader(writer.name))

    acked: dict[int, str] = {}
    failures = []
    held = []  # after each reconnect: did the engine still hold the last acknowledged append?
    stop = threading.Event()

    def write():
        generation = 1
        while not stop.is_set() and generation <= 400:
            record = records(1, start=generation)
            try:
                try:
                    acked[generation] = writer.append(record)[0]
                    generation += 1
                except Reconnected:  # the relay's way: what was acknowledged is still there, go on
                    last = max(acked, default=0)
                    held.append(not last or writer.record_at(acked[last]) == records(1, start=last)[0])
                    writer.epoch()
            except EngineError as exc:  # the relay's way: close, wait, connect again, same record
                failures.append(str(exc))
                reconnect(writer, failures)

    reader = engines(cluster.url, stream, timeout=2.0)
    seen = []
    lost = []

    def read():  # another instance, reading across the node's loss the relay's way
        cursor = "0"
        while not (not thread.is_alive() and len(seen) >= max(acked, default=0)):
            try:
                batch = reader.read(cursor, block=0.5)
            except EngineError:
                reconnect(reader)
                continue
            lost.append(batch.lost) if batch.lost else None
            seen.extend(e.record.origin_generation for e in batch.entries)
            cursor = batch.cursor

    thread = threading.Thread(target=write)
    thread.start()
    reading = threading.Thread(target=read)
    reading.start()
    try:

        wait_for(lambda: len(acked) >= 50, 30, what="50 acknowledged appends before the kill")
        if victim == "leader stopped":
            cluster.nodes[doomed].stop()
        else:
            cluster.nodes[doomed].kill()
        killed_at = len(acked)
        wait_for(lambda: len(acked) >= killed_at + 100 or not thread.is_alive(), 60,
                 what="100 more acknowledged appends after the kill")
    finally:
        stop.set()
        thread.join(60)
        reading.join(60)
    assert not thread.is_alive() and not reading.is_alive()
    assert len(acked) >= killed_at + 100
    assert not lost
    assert all(held), held
    if victim == "leader stopped":
        assert failures == [], "a leader handing over costs the appends a pause, not an error"
    assert seen == list(range(1, max(acked) + 1)), "the reader got every entry, in order, once"

    # a reader on a surviving node only
    survivor = next(n for i, n in enumerate(cluster.nodes) if i != doomed)
    reader = engines(survivor.url, stream, timeout=2.0)
    count = max(acked)
    got = read_all_as_relay(reader, "0", count)
    generations = [e.record.origin_generation for e in got]
    assert generations == list(range(1, count + 1)), "every acknowledged append, in order, once"
    positions = {e.record.origin_generation: e.position for e in got}
    assert all(positions[g] == p for g, p in acked.items())


def test_nothing_published_while_the_client_reconnects_reaches_the_server_it_reconnects_to(
        ngxsim_nats_node, engines):
    """nats-py keeps what is published while it reconnects and sends it to the server it
    reconnects to before anyone could check what that server lost: a record of a batch would be
    stored ahead of the acknowledged entries the relay sends again after a restart (and the
    others' watermarks would then drop those). The engine's client keeps nothing: the publish
    fails, and the relay sends it after its check."""
    from ngxsim_plugins.cluster.engines.nats import encode, msg_id

    node = ngxsim_nats_node()
    engine = engines(node.url, unique_stream("buffer"), timeout=1.0)
    sent = records(2)
    engine.append(sent)
    node.kill()
    wait_for(lambda: engine._nc.is_reconnecting, 10, what="the client to see its server gone")
    late = records(1, start=3)[0]
    # what a pipelined batch does between two of its records: a plain publish on the client
    with pytest.raises(EngineError):
        engine._run(engine._nc.publish(engine.subject, encode(late), headers={"Nats-Msg-Id": msg_id(late)}),
                    "publish")
    node.start()
    wait_for(lambda: engine._nc.is_connected, 20, what="the client to reconnect")
    time.sleep(0.5)  # (a kept publish is sent at once after the reconnect)
    engine.close()
    engine.connect()
    stored = [engine.record_at(str(seq)) for seq in range(1, 5)]
    assert late not in stored, stored  # (the two before it: kept, or lost with the killed node's tail)
    assert [r for r in stored if r is not None] == sent[:len([r for r in stored if r is not None])]
