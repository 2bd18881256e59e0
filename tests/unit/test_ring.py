"""The event ring's layout, wrap-around, limits, scans and torn-slot detection."""

from __future__ import annotations

import os
import signal
import struct
import sys
import time

import pytest
from freezegun import freeze_time

from ngxsim.core.instance import STANDALONE, current_instance
from ngxsim.core.shm import HEADER_SIZE, attach_zone, remove_zone_files
from ngxsim_plugins.worker_events.ring import (
    ENTRIES_OFFSET, ENTRY_SIZE, MAX_CAPACITY, Ring, encode_event, ring_bytes,
)


@pytest.fixture
def make_ring(shm_leftovers, shm_path):
    """Rings on the C accelerator's path and on the pure-Python one (every test runs on both)."""
    inst = current_instance(STANDALONE)
    zones = []

    def make(capacity, name="ring"):
        zone = attach_zone(inst, f"{name}{len(zones)}", HEADER_SIZE + ring_bytes(capacity))
        zones.append(zone)
        return Ring(zone, capacity)

    yield make
    for z in zones:
        z.close()
    remove_zone_files(inst)


def pub(ring, type="t", payload="", channel="c", ts=None):
    return ring.publish(*encode_event(channel, type, payload), ts)


def test_layout_sizes():
    assert ENTRY_SIZE == 736
    assert ring_bytes(1024) == ENTRIES_OFFSET + 1024 * (736 + 4)  # entries, then one channel tag each
    assert ENTRIES_OFFSET % 8 == 0


def test_empty_ring_is_all_zero(make_ring):
    ring = make_ring(4)
    assert ring.control() == (0, 0, 0)
    scan = ring.scan()
    assert (scan.events, scan.newest, scan.oldest) == ([], 0, 0)


def test_generations_start_at_one_and_increase(make_ring):
    ring = make_ring(8)
    assert [pub(ring) for _ in range(3)] == [1, 2, 3]
    assert [e.generation for e in ring.scan().events] == [1, 2, 3]


@freeze_time("2026-01-02 03:04:05.678")
def test_timestamp_comes_from_time_time(make_ring):
    ring = make_ring(2)
    pub(ring)
    expected = int(time.time() * 1000)
    assert ring.scan().events[0].timestamp_msec == expected == 1767323045678
    assert ring.control()[2] == expected


def test_wrap_around_overwrites_the_oldest_and_counts_drops(make_ring):
    ring = make_ring(4)
    for i in range(1, 11):
        pub(ring, payload=f"p{i}")
    newest, dropped, _ = ring.control()
    assert (newest, dropped) == (10, 6)
    scan = ring.scan()
    assert scan.oldest == 7
    assert [(e.generation, e.payload) for e in scan.events] == [(7, "p7"), (8, "p8"), (9, "p9"), (10, "p10")]
    assert ring.read(6) is None and ring.read(7).payload == "p7"


def test_byte_limits_are_utf8_bytes_not_characters():
    assert encode_event("c", "t", "é" * 256)[2] == "é".encode() * 256  # 512 bytes: fits
    with pytest.raises(ValueError, match=r'"payload" is 514 bytes of UTF-8, more than the limit of 512'):
        encode_event("c", "t", "é" * 257)
    with pytest.raises(ValueError, match=r'"type" is 68 bytes'):
        encode_event("c", "€" * 22 + "xx", "")
    encode_event("c", "€" * 21 + "x", "")  # 64 bytes
    with pytest.raises(ValueError, match=r'"channel" is 65 bytes'):
        encode_event("c" * 65, "t", "")


@pytest.mark.parametrize("fields, message", [
    (("c", "", ""), '"type" must not be empty'),
    (("", "t", ""), '"channel" must not be empty'),
    (("c", 5, ""), '"type" must be a string, not a number'),
    (("c", "t", None), '"payload" must be a string, not null'),
    (("c", "t", "\ud800"), '"payload" is not valid Unicode'),
])
def test_invalid_fields(fields, message):
    with pytest.raises(ValueError, match=message):
        encode_event(*fields)


def test_multibyte_round_trip(make_ring):
    ring = make_ring(2)
    pub(ring, type="ünïcode", payload="日本語 🎉", channel="kanäl")
    e = ring.scan().events[0]
    assert (e.channel, e.type, e.payload) == ("kanäl", "ünïcode", "日本語 🎉")


def test_filters_and_paging(make_ring):
    ring = make_ring(16)
    for i in range(1, 11):
        pub(ring, channel="a" if i % 2 else "b", payload=str(i))
    gens = lambda scan: [e.generation for e in scan.events]  # noqa: E731
    assert gens(ring.scan(limit=3)) == [8, 9, 10]  # newest N
    assert gens(ring.scan(since=4, limit=3)) == [5, 6, 7]  # oldest N after since
    assert gens(ring.scan(since=4)) == [5, 6, 7, 8, 9, 10]
    assert gens(ring.scan(channel="b")) == [2, 4, 6, 8, 10]
    assert gens(ring.scan(channel="b", limit=2)) == [8, 10]
    assert gens(ring.scan(channel="a", since=3, limit=2)) == [5, 7]
    assert gens(ring.scan(since=10)) == [] and gens(ring.scan(limit=0)) == []
    # paging forward reaches everything exactly once
    seen, since = [], 0
    while True:
        page = ring.scan(since=since, limit=4)
        if not page.events:
            break
        seen += gens(page)
        since = page.events[-1].generation
    assert seen == list(range(1, 11))


def test_since_older_than_the_ring_reports_missed(make_ring):
    ring = make_ring(4)
    for _ in range(10):
        pub(ring)
    scan = ring.scan(since=2)
    assert scan.missed == 4  # generations 3..6 are gone
    assert [e.generation for e in scan.events] == [7, 8, 9, 10]
    assert ring.scan(since=6).missed == 0


def _slot_offset(ring, gen):
    return ENTRIES_OFFSET + ((gen - 1) % ring.capacity) * ENTRY_SIZE


def test_a_slot_in_flux_is_never_returned(make_ring):
    ring = make_ring(4)
    for _ in range(3):
        pub(ring)
    off = _slot_offset(ring, 2)
    struct.pack_into("<Q", ring.buf, off, 2 * 2 - 1)  # a writer is in the middle of generation 2
    ring.buf[off + 40 : off + 44] = b"XXXX"
    assert ring.read(2) is None
    assert [e.generation for e in ring.scan().events] == [3]  # the newest-first scan stops at the hole
    scan = ring.scan(since=0)
    assert [e.generation for e in scan.events] == [1, 3] and scan.missed == 1


@pytest.mark.parametrize("shm_path", ["python"], indirect=True)
def test_a_torn_copy_is_detected_by_the_second_sequence_read(make_ring, monkeypatch):
    """A writer that laps the reader between its two reads of seq: the copy is discarded (the
    pure-Python reader, interleaved by hand; the C one cannot be: see the test with a writer
    process below)."""
    ring = make_ring(2)
    pub(ring, payload="one")
    import ngxsim_plugins.worker_events.ring as ring_mod

    real_body = ring_mod._BODY
    lapped = []

    class Interleaved:
        size = real_body.size
        pack_into = real_body.pack_into

        def unpack_from(self, buf, off):
            out = real_body.unpack_from(buf, off)
            if not lapped:
                lapped.append(True)
                pub(ring), pub(ring)  # generation 3 rewrites generation 1's slot mid-read
            return out

    monkeypatch.setattr(ring_mod, "_BODY", Interleaved())
    assert ring.read(1) is None


def _publishing_child(publish_forever) -> int:
    """Fork a process that runs ``publish_forever()`` (until killed); returns once it runs."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            os.write(w, b"x")
            publish_forever()
        finally:
            os._exit(1)
    os.close(w)
    try:
        assert os.read(r, 1) == b"x"
    finally:
        os.close(r)
    return pid


def _payload_of(gen: int) -> str:
    return f"{gen}:" + "x" * (gen * 7 % 500)  # the length moves with the generation


def test_a_reader_racing_a_writer_never_returns_a_torn_event(make_ring):
    """A process publishes as fast as it can into a 2-entry ring (every slot rewritten every
    other publish) while this one reads the newest generations: every event read is whole (its
    payload is the one written for its generation, lengths and bytes agree), the rest None."""
    ring = make_ring(2)

    def publish_forever():
        gen = 0
        while True:
            gen += 1
            ring.publish_text(f"c{gen % 3}", f"t{gen % 5}", _payload_of(gen))

    pid = _publishing_child(publish_forever)
    try:
        whole = missed = 0
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline or whole < 1000:
            newest = ring.newest
            for gen in (newest, newest - 1):
                event = ring.read(gen)
                if event is None:
                    missed += 1
                    continue
                whole += 1
                assert event.generation == gen and event.zone == ring.name
                assert (event.channel, event.type, event.payload) == (f"c{gen % 3}", f"t{gen % 5}", _payload_of(gen))
            assert time.monotonic() < deadline + 30, "too few whole reads"
        assert missed > 0  # the writer did lap the reader: the race was run
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def test_the_words_a_reader_reads_without_the_lock_only_move_forward(make_ring):
    """A process publishes as fast as it can while this one reads, without the lock, what
    readers trust: ``newest``, ``dropped`` and the last publish's time never go back, and a
    slot's seq only ever moves forward (old lap whole, in flux, whole): never through 0 or any
    other value. A writer SIGKILLed at any instant leaves what a reader could see at that
    instant: a newest a reader sees at 0 mid-publish is a newest a killed writer leaves at 0,
    and the next publish would take generation 1 again."""
    ring = make_ring(2)

    def publish_forever():
        while True:
            ring.publish_text("c", "t", "p" * 512)

    pid = _publishing_child(publish_forever)
    try:
        seq_at = [_slot_offset(ring, gen) for gen in (1, 2)]
        last = (0, 0, 0)
        last_seqs = [0, 0]
        advances = reads = 0
        deadline = time.monotonic() + 60  # a bound, not a measure: ends when the writer ran enough
        while advances < 20_000:  # a few hundred thousand reads while the writer runs
            control = ring.control()
            seqs = [struct.unpack_from("<Q", ring.buf, off)[0] for off in seq_at]
            assert all(now >= before for now, before in zip(control, last)), f"read {reads}: {last} -> {control}"
            assert all(now >= before for now, before in zip(seqs, last_seqs)), (
                f"read {reads}: seq {last_seqs} -> {seqs}")
            advances += control[0] > last[0]
            last, last_seqs, reads = control, seqs, reads + 1
            if not reads % 1024:
                assert time.monotonic() < deadline, f"the writer advanced newest only {advances} times"
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


@pytest.mark.parametrize("shm_path", ["python"], indirect=True)
def test_a_big_endian_machine_stores_the_same_little_endian_words(make_ring, monkeypatch):
    """Where a memoryview's 8-byte items would be big endian, the words go through ctypes'
    little-endian u64 instead: the same bytes in the zone (here, on a little-endian machine,
    that branch is run and compared byte for byte with the memoryview's)."""
    native = make_ring(4)
    with monkeypatch.context() as m:
        m.setattr(sys, "byteorder", "big")
        other = make_ring(4)
    assert not isinstance(other._words, memoryview)
    for ring in (native, other):
        _same_key(ring)
        for i in range(6):
            ring.publish(*encode_event("c", "t", f"p{i}"), 1_700_000_000_000 + i)
    assert bytes(native.buf) == bytes(other.buf)
    assert other.control() == (6, 2, 1_700_000_000_005) and other.newest == 6
    assert [e.payload for e in other.scan().events] == ["p2", "p3", "p4", "p5"]


@pytest.mark.parametrize("shm_path", ["c"], indirect=True)
def test_the_c_reader_reads_what_the_python_reader_reads(make_ring):
    """Every field, non-ASCII and at its limits, through both readers of the same slots."""
    ring = make_ring(4)
    for fields in (("c", "t", ""), ("kanäl", "tÿpe", "é 日本 🎉 \u2028"), ("c" * 64, "t" * 64, "p" * 512),
                   ("é" * 32, "t", "ü" * 256), ("a", "b", "c")):
        pub(ring, fields[1], fields[2], channel=fields[0], ts=1_700_000_000_123)
    writer, ring._writer = ring._writer, None
    try:
        by_python = [ring.read(g) for g in range(0, 7)]
    finally:
        ring._writer = writer
    by_c = [ring.read(g) for g in range(0, 7)]
    assert by_c == by_python and by_c[0] is None and by_c[1] is None  # 0 never exists; 1 was lapped
    assert ring.read(-1) is None and ring.read(2**70) is None
    assert by_c[6] is None and all(type(e) is type(by_python[2]) for e in by_c[2:6])
    assert by_c[2].channel == "kanäl" and by_c[2].payload == "é 日本 🎉 \u2028" and by_c[2].timestamp_msec == 1_700_000_000_123


def test_a_writer_killed_mid_write_leaves_the_ring_usable(make_ring):
    ring = make_ring(8)
    pub(ring, payload="before")
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the writer: takes the lock, marks generation 2 in flux, then dies
        try:
            with ring.zone.lock():
                struct.pack_into("<Q", ring.buf, _slot_offset(ring, 2), 3)
                os.write(w, b"x")
                time.sleep(60)
        finally:
            os._exit(1)
    assert os.read(r, 1) == b"x"
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    assert ring.newest == 1 and ring.read(2) is None
    assert pub(ring, payload="after") == 2  # the lock is free and generation 2 is written whole
    assert [(e.generation, e.payload) for e in ring.scan().events] == [(1, "before"), (2, "after")]


def test_capacity_bounds(make_ring):
    with pytest.raises(ValueError):
        Ring(make_ring(1).zone, 0)
    with pytest.raises(ValueError):
        Ring(make_ring(1).zone, MAX_CAPACITY + 1)
    with pytest.raises(ValueError, match="has .* bytes, the ring needs"):
        Ring(make_ring(1).zone, 2)


def test_worker_slots(make_ring):
    ring = make_ring(4)
    me = current_instance(STANDALONE)
    slot = ring.claim_slot(os.getpid(), me.start_time, 0)
    ring.update_slot(slot, 5, 1, 3, 123, 9, 2)
    [s] = ring.live_slots()
    assert (s.pid, s.delivered, s.gaps, s.lost, s.last_delivery_msec, s.events, s.wakeups) == (os.getpid(), 5, 1, 3, 123, 9, 2)
    ring.claim_slot(999_999_99, 1, 0)  # a dead process: not listed
    assert [s.pid for s in ring.live_slots()] == [os.getpid()]
    ring.release_slot(slot, os.getpid())
    assert ring.live_slots() == []


def test_a_workers_delivery_counters_never_read_back_while_it_updates_them(make_ring):
    """A dispatcher updates its slot without the lock after each delivery while the status reads
    it: every counter a reader sees is the old value or the new one, never 0 in between (which
    the status would show as a lag of the whole ring)."""
    ring = make_ring(4)
    slot = ring.claim_slot(os.getpid(), current_instance(STANDALONE).start_time, 1, subscribers=1)

    def update_forever():
        n = 1
        while True:
            n += 1
            ring.update_slot(slot, n, n, n, n, n, n)

    pid = _publishing_child(update_forever)
    try:
        last = (1, 0, 0, 0, 0, 0)
        advances = reads = 0
        deadline = time.monotonic() + 60  # a bound, not a measure: ends when the writer ran enough
        while advances < 20_000:
            s = ring.slot(slot)
            now = (s.delivered, s.gaps, s.lost, s.last_delivery_msec, s.events, s.wakeups)
            assert all(a >= b for a, b in zip(now, last)), f"read {reads}: {last} -> {now}"
            advances += now[0] > last[0]
            last, reads = now, reads + 1
            if not reads % 1024:
                assert time.monotonic() < deadline, f"the worker updated its slot only {advances} times"
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        ring.release_slot(slot, os.getpid())


def test_json_scan_matches_scan_and_its_cache_stays_bounded(make_ring, monkeypatch):
    import json

    import ngxsim_plugins.worker_events.ring as ring_mod

    monkeypatch.setattr(ring_mod, "_JSON_CACHE_MAX", 8)
    ring = make_ring(64)
    for i in range(1, 41):
        pub(ring, channel="a" if i % 3 else "b", payload=f"p{i}")
    for args in [(None, None, None), (None, 5, "b"), (10, 7, None), (0, None, "a"), (None, 0, None)]:
        texts, newest, oldest, missed = ring.json_scan(*args)
        scan = ring.scan(*args)
        assert [json.loads(t) for t in texts] == [e.as_json() for e in scan.events], args
        assert (newest, oldest, missed) == (scan.newest, scan.oldest, scan.missed)
    big = make_ring(1024)
    for _ in range(400):  # read whole, 400 events are more than the cap allows: only the newest stay
        pub(big)
    assert len(big.json_scan()[0]) == 400
    assert sorted(big._json) == list(range(393, 401))


def _full_decode(ring, since, limit, channel):
    """The channel-filtered answer computed the slow way: every slot decoded."""
    scan = ring.scan(since, None, None)
    events = [e for e in scan.events if e.channel == channel]
    if limit is not None:
        events = events[:limit] if since is not None else events[-limit:] if limit else []
    return [e.generation for e in events], scan.missed if limit != 0 else 0  # limit=0 reads nothing


@pytest.mark.parametrize("capacity, count", [(16, 10), (16, 16), (16, 45), (7, 100)])
def test_channel_filter_by_tag_gives_what_decoding_every_slot_gives(make_ring, capacity, count):
    ring = make_ring(capacity)
    for i in range(1, count + 1):
        pub(ring, channel="rare" if i % 5 == 0 else "common", payload=str(i))
    newest = ring.newest
    for channel in ("rare", "common", "none"):
        for since in (None, 0, 3, newest - capacity // 2, newest - 1, newest):
            for limit in (None, 0, 1, 2, 5, 1000):
                scan = ring.scan(since, limit, channel)
                assert ([e.generation for e in scan.events], scan.missed) == _full_decode(ring, since, limit, channel), \
                    (channel, since, limit)
                assert all(e.channel == channel for e in scan.events)


def test_channel_filter_reads_only_the_slots_whose_tag_matches(make_ring, monkeypatch):
    ring = make_ring(1000)
    for i in range(1, 1001):
        pub(ring, channel="other" if i % 100 == 0 else "busy")
    reads = []
    real = Ring.read
    monkeypatch.setattr(Ring, "read", lambda self, gen: reads.append(gen) or real(self, gen))
    assert [e.generation for e in ring.scan(channel="other").events] == list(range(100, 1001, 100))
    # the 989 other "busy" slots were never decoded; the oldest is read whole because on a full
    # ring the next publish rewrites it, so its tag may already be the next lap's
    assert sorted(reads) == [1] + list(range(100, 1001, 100))


def test_a_tag_collision_is_caught_by_the_channel_itself(make_ring):
    ring = make_ring(8)
    for i in range(1, 7):
        pub(ring, channel="a" if i % 2 else "b", payload=str(i))
    # forge: every slot's tag says "a" (as two channels with the same tag would)
    for slot in range(8):
        ring.buf[ring._tags_off + 4 * slot: ring._tags_off + 4 * slot + 4] = ring.channel_tag(b"a")
    assert [e.generation for e in ring.scan(channel="a").events] == [1, 3, 5]
    assert [e.generation for e in ring.scan(since=0, limit=2, channel="a").events] == [1, 3]
    assert [e.generation for e in ring.scan(limit=2, channel="a").events] == [3, 5]


@pytest.mark.parametrize("since", [None, 0])
def test_writers_lapping_a_filtered_scan_never_yield_a_wrong_or_uncounted_event(make_ring, monkeypatch, since):
    """Publishes that land while the tags are searched: the slots they rewrote are read whole
    (a stale tag is not trusted), overwritten generations count as missed, no event is wrong."""
    ring = make_ring(8)
    for i in range(1, 9):
        pub(ring, channel="x" if i % 2 else "y", payload=f"p{i}")
    real_find = Ring._find_tag
    bursts = [3]

    def find_then_publish(self, *args):
        out = real_find(self, *args)
        if bursts:
            for _ in range(bursts.pop()):  # generations 9..11 rewrite the slots of 1..3
                pub(ring, channel="y", payload="late")
        return out

    monkeypatch.setattr(Ring, "_find_tag", find_then_publish)
    scan = ring.scan(since=since, channel="x")
    assert all(e.channel == "x" and e.payload == f"p{e.generation}" for e in scan.events)
    if since is None:
        assert [e.generation for e in scan.events] == [5, 7]  # newest first, stops where the ring was lapped
    else:
        # generation 1 (on a full ring the next to go) was read whole before the search; 2 and 3
        # went while the tags were searched: missed, not returned from their stale tags
        assert [e.generation for e in scan.events] == [1, 5, 7] and scan.missed == 2


def test_an_events_json_text_is_exactly_the_apis_compact_json(make_ring):
    from ngxsim.core.http.responses import compact_json

    ring = make_ring(4)
    pub(ring, type='q"uote\\back', payload="line\nfeed\x01 tab\t é 日本 🎉 \u2028", channel="kanäl")
    ring.publish(*encode_event("c", "t", "p"), None, 'h"st'.encode(), 77)  # a remote event
    texts = ring.json_scan()[0]
    assert texts == [compact_json(e.as_json()) for e in ring.scan().events]
    assert '"origin":null,"origin_generation":null' in texts[0] and '"origin":"h\\"st","origin_generation":77' in texts[1]


def test_a_remote_events_origin_reads_back_on_both_paths_and_a_local_one_has_none(make_ring):
    ring = make_ring(4)
    local = pub(ring)
    remote = ring.publish(*encode_event("c", "t", "p"), 5, b"host-a", 123)
    for event in (ring.read(local), ring.scan().events[0]):
        assert (event.origin, event.origin_generation) == (None, None)
    writer, ring._writer = ring._writer, None
    try:
        by_python = ring.read(remote)
    finally:
        ring._writer = writer
    assert ring.read(remote) == by_python
    assert (by_python.origin, by_python.origin_generation, by_python.timestamp_msec) == ("host-a", 123, 5)
    with pytest.raises(ValueError):
        ring.publish(*encode_event("c", "t", "p"), None, b"o" * 65, 1)


def test_the_rings_birth_is_set_once_and_shared(make_ring):
    ring = make_ring(4)
    birth = ring.birth_usec
    assert birth > 1_700_000_000_000_000 and Ring(ring.zone, 4).birth_usec == birth == ring.birth_usec


def test_tags_are_keyed_per_zone_so_a_client_cannot_aim_a_collision(make_ring):
    one, two = make_ring(4), make_ring(4)
    pub(one), pub(two)
    assert Ring(one.zone, 4).channel_tag(b"c") == one.channel_tag(b"c")  # every process of a zone agrees
    assert one.channel_tag(b"c") != two.channel_tag(b"c")  # another zone, another random key
    import zlib

    assert one.channel_tag(b"c") != zlib.crc32(b"c").to_bytes(4, "little")  # not an unkeyed CRC


def _same_key(ring, key=b"k" * 16):
    """Both rings' channel tags from one key, so their memory can be compared byte for byte."""
    ring.buf[32:48] = key
    ring._key = None
    ring._tags.clear()


@pytest.mark.parametrize("fields", [
    ("c", "t", ""),
    ("chan", "type", "payload"),
    ("é" * 32, "t" * 64, "ü" * 256),          # non-ASCII text: checked and encoded in Python
    ("c" * 64, "t" * 64, "p" * 512),          # every field at its limit
])
def test_the_c_writer_writes_every_byte_as_the_python_writer_does(shm_leftovers, monkeypatch, fields):
    from ngxsim.core import shm

    if shm.accel is None:
        pytest.skip("the C accelerator is not built here")
    inst = current_instance(STANDALONE)
    zone_c = attach_zone(inst, "bytes-c", HEADER_SIZE + ring_bytes(4))
    monkeypatch.setattr(shm, "accel", None)
    zone_py = attach_zone(inst, "bytes-py", HEADER_SIZE + ring_bytes(4))
    monkeypatch.undo()
    try:
        ring_c, ring_py = Ring(zone_c, 4), Ring(zone_py, 4)
        assert ring_c._writer is not None and ring_py._writer is None
        for ring in (ring_c, ring_py):
            _same_key(ring)
            ring.buf[ENTRIES_OFFSET:ENTRIES_OFFSET + 4 * ENTRY_SIZE] = b"\xff" * (4 * ENTRY_SIZE)  # padding is written
            for i in range(6):  # laps the ring: drops counted alike
                ring.publish(*encode_event(*fields), 1_700_000_000_000 + i)
            ring.publish(*encode_event(*fields), 1_700_000_000_009, b"host-b:8080", 2**63 + 5)  # a remote event
            ring.publish(*encode_event(*fields), 1_700_000_000_010, b"o" * 64, 1)  # its origin at the limit
            with freeze_time("2026-01-02 03:04:05.678"):
                ring.publish_text(*fields)  # the hook's path, with a patched clock
        assert bytes(zone_c.buf) == bytes(zone_py.buf)
        assert ring_c.control() == (9, 5, 1767323045678)
        assert zone_c.doorbell.value == zone_py.doorbell.value == 9
        assert ring_c.read(7)[2:] == ring_py.read(7)[2:] and ring_c.read(7).origin == "host-b:8080"
    finally:
        zone_c.close()
        zone_py.close()
        remove_zone_files(inst)


def test_publish_text_checks_fields_as_encode_event_does(make_ring):
    ring = make_ring(4)
    for fields, message in [(("", "t", ""), '"channel" must not be empty'), (("c", "t" * 65, ""), "more than the limit"),
                            (("c", 5, ""), '"type" must be a string'), ((None, "t", ""), '"channel" must be a string'),
                            (("c", "t", "\ud800"), "lone surrogate"), (("c", "t", "p" * 513), "more than the limit")]:
        with pytest.raises(ValueError, match=message):
            ring.publish_text(*fields)
    assert ring.newest == 0
    assert ring.publish_text("ç", "t", "ü") == 1 and ring.read(1).channel == "ç"


def test_a_writer_sigkilled_while_publishing_leaves_whole_events_and_a_free_lock(make_ring):
    """Kills a process publishing as fast as it can, many times: wherever the kill lands (inside
    the lock most of the time), the lock is free afterwards, every generation up to newest is
    whole, and the next publish takes newest + 1."""
    ring = make_ring(16)
    payload = "p" * 512
    expected = 0
    def publish_forever():
        while True:
            ring.publish_text("c", "t", payload)

    for kill in range(12):
        pid = _publishing_child(publish_forever)
        time.sleep(0.001 + kill * 0.0007)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        fd = os.open(f"/proc/self/fd/{ring.zone._fd}", os.O_RDWR)
        try:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError if the dead writer kept it
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
        newest = ring.newest
        assert newest >= expected
        for gen in range(max(1, newest - 14), newest + 1):  # newest - 15 shares newest + 1's slot
            event = ring.read(gen)
            assert event is not None and event.payload == payload
        seq = struct.unpack_from("<Q", ring.buf, _slot_offset(ring, newest + 1))[0]
        # in flux, whole but not yet counted (killed between marking the slot whole and advancing
        # newest: never acknowledged, overwritten by the next publish below), or the old lap's
        # entry (0: a slot never written, so only in the first lap)
        assert seq in (2 * (newest + 1) - 1, 2 * (newest + 1), 2 * (newest + 1 - 16) if newest >= 16 else 0)
        expected = ring.publish_text("c", "t", payload)
        assert expected == newest + 1 and ring.read(expected).payload == payload
