"""worker_events across hosts: instances (real gunicorn, several workers each) sharing a real
engine. Parametrized over engines (the pytest plugin's ENGINE_FIXTURES: an engine joins
there)."""

from __future__ import annotations

import os
import re
import signal
import threading
import time
import uuid

import pytest

from ngxsim.testing import procs, wait_for


CONF = """
load_module worker_events;
load_module cluster;
load_module ngxsim_test_recorder;
{main}
http {
    worker_events_zone bus;
    worker_events_ring_size {ring};
    cluster_bridge bus {engine} channels=c,cache.invalidate state={state} stream={stream} instance={instance} {extra};
    server {
        listen 127.0.0.1:{port};
        location /ev { worker_events_api; worker_events_channel c; }
        location /local { worker_events_api; worker_events_channel local.only; }
        location /dump { recorder_dump; }
    }
}
"""
API = "/ev"


@pytest.fixture
def engine(ngxsim_engine):
    """The engine every instance of a test shares (the session's server; once per engine)."""
    return ngxsim_engine


@pytest.fixture
def fresh_engine(ngxsim_engine_factory):
    """A factory of engine servers of this test's own (to stop, pause, restart)."""
    return ngxsim_engine_factory


@pytest.fixture
def stream():
    return f"test.{uuid.uuid4().hex[:12]}"


def placeholders(ring=1024, extra="", main=""):
    return {"ring": ring, "extra": extra, "main": main}


def start(cluster, stream, count=3, workers=(2, 3, 2), **kw):
    members = cluster.start(CONF, count=count, workers=list(workers)[:count], stream=stream,
                            placeholders=placeholders(**kw))
    for m in members:
        m.wait_connected(API)
    return members


REPLAY = "recorder_replay on;"  # a worker that starts late still hears all the ring holds


def restart(cluster, member, stream, workers=2, **kw):
    """Stop ``member`` and start it again under the same instance id and state folder."""
    member.server.stop()
    cluster.members.remove(member)
    again = cluster.start_one(CONF, member.name, workers, stream, placeholders=placeholders(**kw))
    again.wait_connected(API)
    return again


def relay_worker(member):
    """The worker holding ``member``'s relay lease (the one that started the relay's process)."""
    return wait_for(lambda: member.cluster_view(API).get("relay_worker"), 20, what=f"{member.name}'s relay")


def relay_process(member):
    """The relay's own process (a child of ``relay_worker``)."""
    return wait_for(lambda: member.cluster_view(API).get("relay_pid"), 20, what=f"{member.name}'s relay")


def ring_events(member, origin):
    events = member.server.get(API + "?limit=10000&since=0").json()["events"]
    return [e for e in events if e["origin"] == origin]


def publish(member, n, prefix="p", path=API):
    gens = []
    for i in range(n):
        r = member.server.post(path, json={"type": "t", "payload": f"{prefix}{i}"})
        assert r.status_code == 201, r.text
        gens.append(r.json()["generation"])
    return gens


_REMOTE = re.compile(r"^E (\d+) (\S+) (\S+) (\S*) from (\S+)#(\d+)$")


def remote_events(lines, origin=None):
    """(channel, payload, origin, origin generation) of each remote event a worker recorded."""
    out = []
    for line in lines:
        m = _REMOTE.match(line)
        if m and (origin is None or m.group(5) == origin):
            out.append((m.group(2), m.group(4), m.group(5), int(m.group(6))))
    return out


def wait_all_workers(member, predicate, what, timeout=20.0):
    """Until every live worker's record satisfies ``predicate``; returns the records."""
    def check():
        recs = member.records()
        return recs if recs and all(predicate(lines) for lines in recs.values()) else None

    return wait_for(check, timeout, 0.05, what=f"{what} in every worker of {member.name}")


def test_a_publish_on_one_instance_reaches_every_worker_of_the_others_once_in_order_and_never_echoes(
        ngxsim_cluster, engine, stream):
    a, b, c = start(ngxsim_cluster(engine.url), stream)
    publish(a, 20)
    publish(a, 1, prefix="x", path="/local")  # a channel that is not bridged stays on A
    for member in (b, c):
        recs = wait_all_workers(member, lambda lines: len(remote_events(lines, "A")) >= 20, "A's 20 events")
        for pid, lines in recs.items():
            got = remote_events(lines)
            assert [p for _, p, _, _ in got] == [f"p{i}" for i in range(20)], (member.name, pid, lines)
            gens = [g for _, _, _, g in got]
            assert gens == sorted(gens) and len(set(gens)) == 20  # in order, once
            assert not any("local.only" in line for line in lines)
    publish(b, 5, prefix="b")
    wait_all_workers(c, lambda lines: len(remote_events(lines, "B")) >= 5, "B's events")
    wait_all_workers(a, lambda lines: len(remote_events(lines, "B")) >= 5, "B's events")
    for pid, lines in a.records().items():
        # A's own events came back from the engine, and were not delivered again (no echo)
        assert remote_events(lines, "A") == [], lines
        assert sum(1 for line in lines if line.endswith(" c t p3")) == 1, lines
    view = b.cluster_view(API)
    assert view["instance"] == "B" and view["connected"] is True and view["relayed_in"] >= 20
    assert {row["instance"] for row in view["instances"]} == {"A"}  # the others it heard from (C sent nothing)
    assert all(row["last_seen_msec"] and row["origin_generation"] for row in view["instances"])
    ring = b.server.get(API + "?limit=1000").json()["events"]
    remote = [e for e in ring if e["origin"] == "A"]
    assert len(remote) == 20 and all(e["origin_generation"] for e in remote)


@pytest.mark.parametrize("victim", ["worker", "process"])
def test_killing_either_relay_mid_flow_loses_nothing_and_delivers_nothing_twice(ngxsim_cluster, engine, stream,
                                                                                 victim):
    # "worker": SIGKILL of the worker holding the relay's lease (its relay process stops, another
    # worker takes over); "process": SIGKILL of the relay's own process (its worker starts it again)
    import threading
    import time

    a, b = start(ngxsim_cluster(engine.url), stream, count=2, workers=(2, 3), main=REPLAY)
    sent: list[int] = []
    done = threading.Event()

    ring = a.server.zone_events("bus")  # published into A's ring from here: no request to a worker being killed

    def flow():
        try:
            for i in range(150):
                sent.append(ring.publish("t", f"k{i}-0", channel="c"))
                time.sleep(0.01)
        finally:
            done.set()

    killed = {}

    def kill(member):
        worker, process = killed[member.name] = relay_worker(member), relay_process(member)
        if victim == "worker":
            member.server.kill_worker(worker)
        else:
            os.kill(process, signal.SIGKILL)

    thread = threading.Thread(target=flow)
    thread.start()
    try:
        wait_for(lambda: len(sent) >= 40, 30, what="40 publishes")
        kill(a)  # the relay sending A's events out
        wait_for(lambda: len(sent) >= 90, 30, what="90 publishes")
        kill(b)  # and the one bringing them into B
    finally:
        thread.join(60)
        ring.close()
    assert done.is_set() and len(sent) == 150
    for member in (a, b):
        worker, process = killed[member.name]
        if victim == "worker":
            assert relay_worker(member) != worker  # taken over by another worker
        else:
            wait_for(lambda: relay_process(member) != process, 20, what="the relay process to start again")
            assert relay_worker(member) == worker  # the worker kept its lease and started it again
            assert member.server.logged("alert", f"service cluster.relay.bus process {process} exited on signal 9")
    expected = [f"k{i}-0" for i in range(150)]
    recs = wait_all_workers(b, lambda lines: len(remote_events(lines, "A")) >= 150, "A's 150 events", timeout=40)
    for pid, lines in recs.items():
        assert [p for _, p, _, _ in remote_events(lines, "A")] == expected, (pid, lines)


def test_a_restarted_instance_resumes_where_it_stopped(ngxsim_cluster, engine, stream):
    cluster = ngxsim_cluster(engine.url)
    a, b = start(cluster, stream, count=2, main=REPLAY)
    publish(a, 3, prefix="before")
    wait_for(lambda: len(ring_events(b, "A")) == 3, 20, what="B to get the first 3")
    b.server.stop()
    cluster.members.remove(b)
    publish(a, 5, prefix="away")  # published while B is down
    b = cluster.start_one(CONF, "B", 2, stream, placeholders=placeholders(main=REPLAY))
    b.wait_connected(API)
    wait_for(lambda: len(ring_events(b, "A")) >= 5, 20, what="B to get what it missed")
    publish(a, 2, prefix="after")
    got = wait_for(lambda: (lambda e: e if len(e) >= 7 else None)(ring_events(b, "A")), 20, what="the rest")
    # the new ring of B: exactly what A published since B stopped, once, in order
    assert [e["payload"] for e in got] == [f"away{i}" for i in range(5)] + ["after0", "after1"]
    wait_all_workers(b, lambda lines: len(remote_events(lines, "A")) == 7, "the 7 events")


def test_an_instance_away_past_the_engines_retention_gets_a_gap_naming_the_origin(ngxsim_cluster, engine, stream):
    cluster = ngxsim_cluster(engine.url)
    a, b = start(cluster, stream, count=2, main=REPLAY, extra="retention=100")
    publish(a, 2, prefix="seen")
    wait_for(lambda: len(ring_events(b, "A")) == 2, 20, what="B to get the first events")
    b.server.stop()
    cluster.members.remove(b)
    publish(a, 400, prefix="gone")  # the engine keeps ~100: B never reads most of them
    wait_for(lambda: a.cluster_view(API)["relayed_generation"] >= 402, 30, what="A to relay all of it")
    publish(a, 1, prefix="later")
    b = cluster.start_one(CONF, "B", 2, stream, placeholders=placeholders(main=REPLAY, extra="retention=100"))
    b.wait_connected(API)
    recs = wait_all_workers(b, lambda lines: any(line.endswith("later0 from A#" + line.rsplit("#", 1)[-1])
                                                 for line in lines if "later0" in line), "A's event after the gap")
    for pid, lines in recs.items():
        gaps = [line for line in lines if line.startswith("G ")]
        assert any(g.endswith(" from A") for g in gaps), (pid, lines)  # named: lost events of A
        assert any(g.endswith(" from *") for g in gaps), (pid, lines)  # and at once, before any of A's
        got = remote_events(lines, "A")
        assert 0 < len(got) < 401 and got[-1][1] == "later0"
    view = b.cluster_view(API)
    assert view["gaps"] >= 1


def test_after_the_engine_dropped_entries_an_origins_first_record_without_a_predecessor_is_a_counted_gap(
        ngxsim_cluster, engine, stream):
    # records that name no predecessor (a relay without a past, an older version): after the
    # engine dropped entries B had not read, what lies between the last one of Z that B saw and
    # Z's next one is a gap naming Z, counted in the view and said in the error log like any gap
    cluster = ngxsim_cluster(engine.url)
    [b] = start(cluster, stream, count=1, workers=(2,), main=REPLAY, extra="retention=100")
    append_records(engine, stream, [("Z", 1, "one"), ("Z", 2, "two")], retention=100)
    wait_for(lambda: len(ring_events(b, "Z")) == 2, 20, what="B to get Z's first events")
    b.server.stop()
    cluster.members.remove(b)
    append_records(engine, stream, [("Z", g, f"g{g}") for g in range(3, 403)], retention=100)  # B away
    b = cluster.start_one(CONF, b.name, 2, stream, placeholders=placeholders(main=REPLAY, extra="retention=100"))
    b.wait_connected(API)
    recs = wait_all_workers(b, lambda lines: any(line.endswith(" g402 from Z#402") for line in lines), "Z's last")
    first = min(g for _, _, _, g in remote_events(next(iter(recs.values())), "Z") if g > 2)
    assert first > 3  # the engine dropped some
    for pid, lines in recs.items():
        assert f"G 3 {first - 1} from Z" in lines, (pid, lines)
    view = b.cluster_view(API)
    assert view["gaps"] == 2, view  # the engine's drop (every origin) and Z's own
    assert b.server.logged("warn", f"cluster: zone bus: events of instance Z after its generation 2, up to {first - 1}, "
                                   "never came")


def append_records(engine_server, stream, records, retention=1000):
    """Append records ``(origin, generation, payload[, previous])`` straight into the engine,
    through the engine contract (what a relay of another instance, or one that took over, would
    append)."""
    from ngxsim_plugins.cluster.engine import Record
    from ngxsim_plugins.cluster.engines import engine_class

    engine = engine_class(engine_server.url)(engine_server.url, stream, retention=retention)
    engine.connect()
    try:
        return engine.append([Record(o, g, "c", "t", p, 1_700_000_000_000, *previous) for o, g, p, *previous in records])
    finally:
        engine.close()


def test_a_record_relayed_twice_is_delivered_once_and_an_older_one_of_its_origin_never(ngxsim_cluster, engine, stream):
    [b] = start(ngxsim_cluster(engine.url), stream, count=1, workers=(2,))
    append_records(engine, stream, [("Z", 5, "five"), ("Z", 5, "five"), ("Z", 4, "four"), ("Z", 6, "six")])
    got = wait_for(lambda: (lambda e: e if len(e) >= 2 else None)(ring_events(b, "Z")), 20, what="Z's events")
    append_records(engine, stream, [("Z", 7, "seven")])  # a marker: everything before it was read
    wait_for(lambda: len(ring_events(b, "Z")) >= 3, 20, what="the marker")
    assert [(e["payload"], e["origin_generation"]) for e in ring_events(b, "Z")] == [("five", 5), ("six", 6), ("seven", 7)]
    # the relay drops what its watermark says was delivered: the older one (Z 4) on every engine;
    # the exact repeat (Z 5 twice) Redis stores twice, NATS once (the same Nats-Msg-Id)
    assert b.cluster_view(API)["duplicates"] == {"redis": 2, "nats": 1}[engine_name(engine)]
    wait_all_workers(b, lambda lines: [p for _, p, _, _ in remote_events(lines, "Z")] == ["five", "six", "seven"],
                     "Z's events once each")
    assert got


def test_a_relay_that_took_over_from_a_stale_state_delivers_nothing_twice(ngxsim_cluster, engine, stream):
    import json

    [b] = start(ngxsim_cluster(engine.url), stream, count=1, workers=(3,), main=REPLAY)
    state_file = next(b.state.glob("cluster.bus.*.json"))
    stale = json.loads(state_file.read_text())  # before anything was delivered
    append_records(engine, stream, [("Z", 1, "one"), ("Z", 2, "two")])
    wait_for(lambda: len(ring_events(b, "Z")) == 2, 20, what="Z's events")
    # the relay is killed after it delivered, before its state said so: its successor starts
    # from the old cursor and reads both again; the ring tells it they were delivered
    holder = relay_worker(b)
    state_file.write_text(json.dumps(stale))  # (the relay is idle: it writes nothing now)
    b.server.kill_worker(holder)
    wait_for(lambda: (relay_worker(b) != holder) and b.cluster_view(API).get("connected"), 20, what="a new relay")
    append_records(engine, stream, [("Z", 3, "three")])
    wait_for(lambda: len(ring_events(b, "Z")) >= 3, 20, what="the marker")
    assert [e["payload"] for e in ring_events(b, "Z")] == ["one", "two", "three"]


def test_a_position_stored_for_another_engine_is_a_gap_then_the_stream_from_its_beginning(ngxsim_cluster, engine,
                                                                                         stream, tmp_path):
    import json

    # the bridge moved engines keeping its state folder: the stored cursor is the other one's
    foreign = {"redis": "42", "nats": "1712345678901-0#42"}[engine_name(engine)]
    cluster = ngxsim_cluster(engine.url)
    state = cluster.folder / "state-B"
    state.mkdir(parents=True)
    (state / f"cluster.bus.{stream}.json").write_text(json.dumps(
        {"ring_birth": 0, "relayed": 0, "cursor": foreign, "seen": {"Z": 1}}))
    append_records(engine, stream, [("Z", 1, "one"), ("Z", 2, "two")])  # on the new engine before B came
    [b] = cluster.start(CONF, count=1, workers=2, stream=stream, names="B", placeholders=placeholders(main=REPLAY))
    b.wait_connected(API)
    wait_for(lambda: len(ring_events(b, "Z")) >= 1, 20, what="Z's event from the stream's beginning")
    append_records(engine, stream, [("Z", 3, "three")])
    wait_for(lambda: len(ring_events(b, "Z")) >= 2, 20, what="the marker")
    assert [e["payload"] for e in ring_events(b, "Z")] == ["two", "three"]  # Z 1: delivered before (watermark)
    view = b.cluster_view(API)
    assert view["gaps"] == 1 and view["connected"] and engine.url in view["engine"]
    assert len(error_lines(b, "unreachable")) == 0 and len(error_lines(b, "is not one of engine")) == 1
    recs = wait_all_workers(b, lambda lines: len(remote_events(lines, "Z")) == 2, "Z's events")
    for lines in recs.values():
        assert [line for line in lines if line.startswith("G ")][0].endswith(" from *"), lines


STATUS_CONF = CONF.replace("location /dump { recorder_dump; }", "location /dump { recorder_dump; }\n        location /status { ngxsim_status; }")


def test_the_cluster_view_in_the_status_page_and_ngxsim_status(ngxsim_cluster, engine, stream):
    import subprocess
    import sys

    cluster = ngxsim_cluster(engine.url)
    a, b = cluster.start(STATUS_CONF, count=2, stream=stream, placeholders=placeholders())
    for m in (a, b):
        m.wait_connected(API)
    publish(a, 3)
    wait_for(lambda: b.cluster_view(API)["relayed_in"] == 3, 20, what="B to relay 3 in")
    doc = b.server.get("/status?format=json").json()
    view = doc["modules"]["worker_events"]["rings"]["bus"]["cluster"]
    assert (view["instance"], view["connected"], view["relayed_in"], view["engine"]) == ("B", True, 3, engine.url)
    tail = subprocess.run([sys.executable, "-m", "ngxsim.cli", "events", "tail", "-c", b.server.url(API), "--since", "0",
                           "--count", "3"], capture_output=True, text=True, timeout=30).stdout
    assert tail.splitlines()[0].endswith(" c t p0 (from A)"), tail
    out = subprocess.run([sys.executable, "-m", "ngxsim.cli", "status", "-c", b.server.url("/status")],
                         capture_output=True, text=True, timeout=30).stdout
    assert "cluster:" in out and "relayed_in: 3" in out and f"engine: {engine.url}" in out, out
    assert "instance" in out and " A " in out.split("instances:")[1], out


def engine_name(server) -> str:
    return server.url.partition("://")[0]


def down(member, direction=None) -> bool:
    """Has ``member``'s relay found the engine gone (one direction, or either)? (Beyond the
    call's timeout: the NATS client rides out a shorter outage, reconnecting within a call.)"""
    view = member.cluster_view(API)
    return not view["links"][direction] if direction else not view["connected"]


def error_lines(member, needle):
    return [line for line in member.server.output().splitlines() if needle in line]


def test_an_engine_restarted_mid_flow_loses_nothing_acknowledged(fresh_engine, ngxsim_cluster, stream):
    engine = fresh_engine()
    # (the default timeout: a shorter one times out a read now and then on a loaded machine, an
    # "unreachable" more than the outage's)
    a, b = start(ngxsim_cluster(engine.url), stream, count=2, main=REPLAY)
    publish(a, 10, prefix="one")
    wait_for(lambda: len(ring_events(b, "A")) == 10, 20, what="the first 10")
    engine.stop()
    publish(a, 10, prefix="two")  # while the engine is down: they wait in A's ring
    for m in (a, b):  # down for longer than a call's timeout: both relays find it gone
        wait_for(lambda: down(m), 20, what=f"{m.name} to see the engine gone")
    engine.start()  # same port, same data (append-only file, fsync always)
    wait_for(lambda: len(ring_events(b, "A")) == 20, 30, what="the 10 published while it was down")
    publish(a, 5, prefix="three")
    got = wait_for(lambda: (lambda e: e if len(e) >= 25 else None)(ring_events(b, "A")), 20, what="the rest")
    assert [e["payload"] for e in got] == ([f"one{i}" for i in range(10)] + [f"two{i}" for i in range(10)]
                                           + [f"three{i}" for i in range(5)])
    for m in (a, b):
        # said once per change of state, not once per retry
        assert len(error_lines(m, "unreachable")) == 1, m.server.output()
        assert len(error_lines(m, "connected to")) == 2
        assert m.cluster_view(API)["last_error"]


def away(cluster, member):
    member.server.stop()
    cluster.members.remove(member)


def back(cluster, name, stream, **kw):
    member = cluster.start_one(CONF, name, 2, stream, placeholders=placeholders(main=REPLAY, **kw))
    member.wait_connected(API)
    return member


def until_last(member, payload, what):
    """Every live worker's record once each has ``payload`` from A (A's events come in order:
    a repeat of an earlier one would have come before it)."""
    return wait_all_workers(member, lambda lines: any(p == payload for _, p, _, _ in remote_events(lines, "A")),
                            what, timeout=30)


def test_entries_the_engine_lost_after_acknowledging_them_are_sent_again_and_delivered_once(
        fresh_engine, ngxsim_cluster, stream):
    """The engine restarted without entries it had acknowledged (taken back to a copy of its data:
    as NATS R1 after kill -9, Redis with appendfsync everysec): the origin finds out and appends
    them again from its ring. C, away meanwhile, gets them once; D, reading all along, and B,
    away with its saved position past the restarted stream's end, had them: not twice, and every
    new event all the same (NATS gives the new entries the sequences they had passed)."""
    engine = fresh_engine()
    cluster = ngxsim_cluster(engine.url)
    a, b, c, d = start(cluster, stream, count=4, workers=(2, 2, 2, 2), main=REPLAY)
    publish(a, 3, prefix="one")
    for m in (b, c, d):
        wait_for(lambda: len(ring_events(m, "A")) == 3, 20, what=f"{m.name} to get the first 3")
    snapshot = engine.snapshot()
    away(cluster, c)
    publish(a, 4, prefix="two")  # acknowledged by the engine, read by B and D, then lost
    for m in (b, d):
        wait_for(lambda: len(ring_events(m, "A")) == 7, 20, what=f"{m.name} to get the next 4")
    away(cluster, b)
    engine.restart(snapshot=snapshot)
    wait_for(lambda: a.cluster_view(API)["engine_lost"] == 4, 30, what="A to find its 4 entries lost")
    publish(a, 2, prefix="three")
    b, c = (back(cluster, name, stream) for name in "BC")
    ones, twos, threes = ([f"{p}{i}" for i in range(n)] for p, n in (("one", 3), ("two", 4), ("three", 2)))
    # (B's and C's rings are new: what they read since they started)
    for m, want in ((d, ones + twos + threes), (b, threes), (c, twos + threes)):
        for pid, lines in until_last(m, "three1", "A's last event").items():
            assert [p for _, p, _, _ in remote_events(lines, "A")] == want, (m.name, pid, lines)
        assert [e["payload"] for e in ring_events(m, "A") if e["channel"] == "c"] == want
    assert "lost 4 acknowledged entries" in a.server.output()


def test_entries_the_engine_lost_that_the_origins_ring_no_longer_holds_are_a_gap_naming_it(
        fresh_engine, ngxsim_cluster, stream):
    """As above, but A's ring (16) overwrote the lost entries: a gap naming A instead, in one
    entry where there were three, so the new entries take sequences B's saved position had
    passed (NATS): B still gets every one."""
    engine = fresh_engine()
    cluster = ngxsim_cluster(engine.url)
    a = cluster.start_one(CONF, "A", 2, stream, placeholders=placeholders(main=REPLAY, ring=16))
    b, c = (back(cluster, name, stream) for name in "BC")
    a.wait_connected(API)
    publish(a, 2, prefix="one")
    for m in (b, c):
        wait_for(lambda: len(ring_events(m, "A")) == 2, 20, what=f"{m.name} to get the first 2")
    snapshot = engine.snapshot()
    away(cluster, c)
    publish(a, 3, prefix="two")
    wait_for(lambda: len(ring_events(b, "A")) == 5, 20, what="B to get the next 3")
    lost = [e["origin_generation"] for e in ring_events(b, "A")[2:]]
    away(cluster, b)
    publish(a, 20, prefix="local", path="/local")  # not bridged: A's ring of 16 no longer holds two*
    engine.restart(snapshot=snapshot)
    wait_for(lambda: a.cluster_view(API)["engine_lost"] == 3, 30, what="A to find its 3 entries lost")
    publish(a, 3, prefix="three")
    b, c = (back(cluster, name, stream) for name in "BC")
    for pid, lines in until_last(c, "three2", "A's events after the gap").items():
        gaps = [tuple(map(int, line.split()[1:3])) for line in lines if line.startswith("G ") and line.endswith(" from A")]
        assert any(first <= lost[0] and lost[-1] <= last for first, last in gaps), (pid, lines)
        assert [p for _, p, _, _ in remote_events(lines, "A")] == ["three0", "three1", "three2"]
    for pid, lines in until_last(b, "three2", "A's events after the gap").items():
        assert [p for _, p, _, _ in remote_events(lines, "A")] == ["three0", "three1", "three2"]
    assert c.cluster_view(API)["lost_events"] >= 3


def test_an_origin_restarted_while_the_engine_lost_its_entries_tells_the_others_of_a_gap(
        fresh_engine, ngxsim_cluster, stream):
    """A's relay no longer knows what the engine acknowledged but its state file's last entry,
    and its new ring holds nothing of its previous life: the others get a gap naming A."""
    engine = fresh_engine()
    cluster = ngxsim_cluster(engine.url)
    a, b = start(cluster, stream, count=2, main=REPLAY)
    publish(a, 2, prefix="one")
    wait_for(lambda: len(ring_events(b, "A")) == 2, 20, what="B to get the first 2")
    snapshot = engine.snapshot()
    away(cluster, b)
    publish(a, 3, prefix="two")  # acknowledged, then lost, never read by B
    wait_for(lambda: a.cluster_view(API)["relayed_out"] == 5, 20, what="A to send them")
    away(cluster, a)
    engine.restart(snapshot=snapshot)
    a = back(cluster, "A", stream)
    wait_for(lambda: a.cluster_view(API)["engine_lost"] >= 1, 30, what="A to find its entries lost")
    b = back(cluster, "B", stream)
    publish(a, 1, prefix="three")
    for pid, lines in until_last(b, "three0", "A's event after the gap").items():
        assert [p for _, p, _, _ in remote_events(lines, "A")] == ["three0"], (pid, lines)
        assert [line for line in lines if line.startswith("G ") and line.endswith(" from A")], (pid, lines)


def test_an_engine_paused_then_resumed_delivers_what_was_published_meanwhile(fresh_engine, ngxsim_cluster, stream):
    engine = fresh_engine()
    a, b = start(ngxsim_cluster(engine.url), stream, count=2, main=REPLAY, extra="timeout=300ms")
    publish(a, 2, prefix="before")
    wait_for(lambda: len(ring_events(b, "A")) == 2, 20, what="the first events")
    engine.pause()  # SIGSTOP: connections stay open, nothing answers
    try:
        r = a.server.post(API, json={"type": "t", "payload": "during0"})  # a request never waits on the engine
        assert r.status_code == 201
        publish(a, 4, prefix="during", path=API)
    finally:
        engine.resume()
    got = wait_for(lambda: (lambda e: e if len(e) >= 7 else None)(ring_events(b, "A")), 30, what="the paused events")
    assert [e["payload"] for e in got] == ["before0", "before1", "during0"] + [f"during{i}" for i in range(4)]


def test_events_published_just_before_an_instance_stops_still_reach_the_others(fresh_engine, ngxsim_cluster, stream):
    # a relay told to stop sends what its ring still holds before it exits (bounded): the ring
    # goes with the instance, so the events its requests published last would never leave it.
    # Made certain here: the relay is held in an append (the engine paused) while more events
    # come, the instance stops, then the engine answers
    engine = fresh_engine()
    a, b = start(ngxsim_cluster(engine.url), stream, count=2, main=REPLAY, extra="timeout=10s")
    publish(a, 1, prefix="first")
    wait_for(lambda: len(ring_events(b, "A")) == 1, 20, what="the first event")
    relay = relay_process(a)
    holder = relay_worker(a)
    engine.pause()
    stopping = None
    try:
        publish(a, 1, prefix="held")
        time.sleep(0.3)  # the relay takes it and waits for the engine's answer
        publish(a, 4, prefix="last")
        # the workers exit; the relay's worker, having told it to stop, waits for it (at most 2.5 s)
        stopping = threading.Thread(target=a.server.stop)
        stopping.start()
        wait_for(lambda: a.server.logged("info", f"Worker exiting (pid: {holder})"), 10, 0.01,
                 what="the relay's worker to stop")
    finally:
        engine.resume()
        if stopping is not None:
            stopping.join(30)
    got = wait_for(lambda: (lambda e: e if len(e) >= 6 else None)(ring_events(b, "A")), 20, what="A's last events")
    assert [e["payload"] for e in got] == ["first0", "held0"] + [f"last{i}" for i in range(4)]
    wait_for(lambda: not procs.alive(relay), 10, what="A's relay to exit")


def test_a_relay_that_cannot_send_when_it_stops_says_how_many_events_it_leaves(fresh_engine, ngxsim_cluster,
                                                                               stream):
    engine = fresh_engine()
    a, _ = start(ngxsim_cluster(engine.url), stream, count=2, extra="timeout=500ms")
    relay = relay_process(a)
    engine.pause()  # for good: the relay's append fails, and so does every connect after it
    try:
        publish(a, 1, prefix="held")
        time.sleep(0.3)  # the relay takes it and waits for the engine's answer
        publish(a, 4, prefix="last")
        publish(a, 2, prefix="home", path="/local")  # (a channel that stays home is not counted)
        a.server.stop()
    finally:
        engine.resume()
    wait_for(lambda: not procs.alive(relay), 10, what="A's relay to exit")
    assert a.server.logged("warn", "cluster: zone bus: the relay stops with 5 event(s) not sent to engine ")
    assert not a.server.logged("alert", "service cluster.relay.bus")  # it stopped in time: not killed


def test_two_clusters_on_one_engine_stay_apart(ngxsim_cluster, engine):
    one = ngxsim_cluster(engine.url, folder="one")
    two = ngxsim_cluster(engine.url, folder="two")
    a1, b1 = start(one, "cluster.one", count=2)
    [a2] = two.start(CONF, count=1, stream="cluster.two", names="AZ", placeholders=placeholders())
    a2.wait_connected(API)  # instance "A" of another cluster: same id, another stream
    publish(a1, 3, prefix="one")
    publish(a2, 3, prefix="two")
    wait_for(lambda: len(ring_events(b1, "A")) == 3, 20, what="cluster one's events")
    publish(a1, 1, prefix="marker")
    wait_for(lambda: len(ring_events(b1, "A")) == 4, 20, what="the marker")
    assert [e["payload"] for e in ring_events(b1, "A")] == ["one0", "one1", "one2", "marker0"]
    assert ring_events(a2, "A") == [] and a2.cluster_view(API)["relayed_in"] == 0


@pytest.mark.parametrize("dead", ["redis://127.0.0.1:{port}/0", "nats://127.0.0.1:{port}"])
def test_an_unreachable_engine_does_not_stop_a_server_from_starting_and_serving(ngxsim_cluster, stream, dead):
    from ngxsim.testing import free_port

    if dead.startswith("nats"):
        pytest.importorskip("nats", reason="nats-py is not installed: pip install 'ngxsim[cluster]'")
    dead = dead.format(port=free_port())  # nothing listens there
    [a] = ngxsim_cluster(dead).start(CONF, count=1, stream=stream, placeholders=placeholders())
    assert publish(a, 2) == [1, 2]  # serves, publishes: the relay keeps trying in the background
    wait_for(lambda: error_lines(a, "unreachable"), 20, what="the error log to say so")
    view = a.cluster_view(API)
    assert view["connected"] is False and "127.0.0.1" in view["last_error"] and view["engine"] == dead
    wait_for(lambda: a.cluster_view(API)["engine_errors"] >= 6, 20, what="several retries")
    assert len(error_lines(a, "unreachable")) == 1  # said once, not once per retry


def test_events_the_origins_ring_overwrote_before_its_relay_sent_them_are_a_gap_for_the_others(
        ngxsim_engine_factory, ngxsim_cluster, stream):
    engine = ngxsim_engine_factory()
    cluster = ngxsim_cluster(engine.url)
    # A's ring is the small one; B's holds the 17 entries the relay appends at once when the
    # engine is back (a gap and 16 events: one pipelined batch, also with NATS), which a ring of
    # 16 would itself overwrite before B's workers read them (a local gap, not this test's)
    a, b = (cluster.start_one(CONF, name, 2, stream, placeholders=placeholders(main=REPLAY, ring=ring,
                                                                             extra="timeout=500ms"))
            for name, ring in (("A", 16), ("B", 1024)))
    for member in (a, b):
        member.wait_connected(API)
    publish(a, 1, prefix="first")
    wait_for(lambda: len(ring_events(b, "A")) == 1, 20, what="the first event")
    engine.stop()
    wait_for(lambda: down(a), 20, what="A to see the engine gone")
    publish(a, 40, prefix="while")  # A's ring holds 16: 24 are overwritten before its relay can send them
    wait_for(lambda: down(a, "out"), 20, what="A's relay to fail sending them")  # (NATS: after its timeout)
    engine.start()
    recs = wait_all_workers(b, lambda lines: any("while39" in line for line in lines), "the last event", timeout=30)
    for pid, lines in recs.items():
        gaps = [line for line in lines if line.startswith("G ")]
        assert len(gaps) == 1 and gaps[0].endswith(" from A"), (pid, lines)
        first, last = map(int, gaps[0].split()[1:3])
        assert last - first + 1 == 24  # generations 2..25 of A, as origin generations
        got = [p for _, p, _, _ in remote_events(lines, "A")]
        assert got[-16:] == [f"while{i}" for i in range(24, 40)]
    assert b.cluster_view(API)["lost_events"] == 24


def test_a_password_file_authenticates_and_the_password_shows_nowhere(ngxsim_engine_factory, ngxsim_cluster, stream,
                                                                      tmp_path):
    engine = ngxsim_engine_factory(password="s3cret-pw")
    secret = tmp_path / "engine.pass"
    secret.write_text("s3cret-pw\n")
    a, b = start(ngxsim_cluster(engine.url), stream, count=2, extra=f"password_file={secret}")
    publish(a, 2)
    wait_for(lambda: len(ring_events(b, "A")) == 2, 20, what="B to get A's events")
    for m in (a, b):
        assert "s3cret" not in m.server.output() and "s3cret" not in m.server.get(API).text


def test_an_engine_that_accepts_connections_but_fails_every_read_is_retried_with_backoff(ngxsim_cluster, ngxsim_redis,
                                                                                         stream):
    import time

    # a real engine whose reads fail right after a connect succeeds: the stream's key holds a
    # string (WRONGTYPE). (Redis only: the backoff is the relay's, the same for every engine.)
    ngxsim_redis.client().set(stream, "not a stream")
    [a] = ngxsim_cluster(ngxsim_redis.url).start(CONF, count=1, workers=1, stream=stream, placeholders=placeholders())
    first = wait_for(lambda: a.cluster_view(API).get("engine_errors"), 20, what="the first failed read")
    time.sleep(3.0)  # a bounded window: with the backoff (50 ms doubling to 2 s) a handful of tries
    errors = a.cluster_view(API)["engine_errors"] - first
    assert 1 <= errors <= 15, errors  # without it: a reconnect every few ms, hundreds in the window
    assert len(error_lines(a, "unreachable")) == 1
    ngxsim_redis.client().delete(stream)  # the engine works again: the relay reads on
    a.wait_connected(API, timeout=20)
    assert publish(a, 1) == [1]


def burst_conf() -> str:
    """CONF with a location that publishes ``?n=`` events on ``?channel=`` in one request."""
    conf = CONF.replace("load_module ngxsim_test_recorder;", "load_module ngxsim_test_recorder;\nload_module ngxsim_test_burst;")
    return conf.replace("location /dump { recorder_dump; }",
                        "location /dump { recorder_dump; }\n        location /burst { test_publish_burst; }")


def test_the_relay_runs_in_a_process_of_its_own_below_the_workers_and_catches_up_after_bursts(
        ngxsim_cluster, engine, stream):
    # nginx's cache manager is a process of its own: so is the relay, started by the worker holding
    # its lease, at nice 10 below it; a request's burst in any worker shares no GIL with it
    conf = burst_conf()
    a, b = ngxsim_cluster(engine.url).start(conf, count=2, workers=[2, 2], stream=stream, placeholders=placeholders(ring=16384))
    for member in (a, b):
        member.wait_connected(API)
    relay, holder = relay_process(a), relay_worker(a)
    workers = a.server.worker_pids()
    assert relay not in workers and holder in workers
    assert parent_of(relay) == holder
    assert os.getpriority(os.PRIO_PROCESS, relay) == os.getpriority(os.PRIO_PROCESS, holder) + 10
    answers = a.server.each_worker("/burst?n=4000&channel=c")  # both workers busy at once, the holder among them
    assert holder in {r.json()["pid"] for r in answers.values()}
    wait_for(lambda: b.cluster_view(API)["relayed_in"] >= 8000, 60, what="B to relay in both bursts")
    # A's view is written after B may have read the last batch (the relay writes its view after
    # the batch's append returned): wait for it too
    view = wait_for(lambda: (v := a.cluster_view(API))["relayed_out"] >= 8000 and v, 20, what="A's view of both bursts")
    assert view["gaps"] == 0 and b.cluster_view(API)["gaps"] == 0
    assert view["relay_pid"] == relay  # the same process all along


def parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat", "rb") as fh:
        stat = fh.read()
    return int(stat[stat.rfind(b")") + 2:].split()[1])


def test_a_burst_on_a_channel_that_stays_home_is_scanned_and_not_relayed(ngxsim_cluster, engine, stream):
    conf = burst_conf()
    [a] = ngxsim_cluster(engine.url).start(conf, count=1, workers=[2], stream=stream, placeholders=placeholders(ring=16384))
    a.wait_connected(API)
    a.server.each_worker("/burst?n=4000&channel=local.only")  # not bridged (channels=c)
    wait_for(lambda: a.cluster_view(API)["relayed_generation"] >= 8000, 30, what="the relay to scan both bursts")
    view = a.cluster_view(API)
    assert view["relayed_out"] == 0, view


def test_a_steady_stream_of_publishes_crosses_in_appends_2ms_apart_and_a_lone_event_at_once(ngxsim_cluster,
                                                                                            ngxsim_redis, stream):
    # each append wakes the relay (and, through the engine, its reader) anew beside the requests:
    # a batch taken less than COALESCE after the previous one waits out the rest, so a steady
    # stream goes in appends ~2 ms apart, not one per event; counted as Redis MULTI blocks (one
    # per append). Redis only: NATS shows no batch boundary.
    a, b = start(ngxsim_cluster(ngxsim_redis.url), stream, count=2, workers=(2, 2))
    client = ngxsim_redis.client()

    def appends():
        return int(client.info("commandstats").get("cmdstat_multi", {}).get("calls", 0))

    ring = a.server.zone_events("bus")
    try:
        before, began = appends(), time.monotonic()
        for i in range(300):  # one every ~0.5 ms: each alone in an engine round trip otherwise
            ring.publish("t", f"s{i}", channel="c")
            time.sleep(0.0005)
        wait_for(lambda: b.cluster_view(API)["relayed_in"] >= 300, 30, what="B to relay the stream in")
        took, count = time.monotonic() - began, appends() - before
    finally:
        ring.close()
    assert count <= took / 0.002 + 3, (count, took)
    lone = appends()
    assert a.server.post(API, json={"type": "t", "payload": "one"}).status_code == 201  # (API's channel: c)
    wait_for(lambda: b.cluster_view(API)["relayed_in"] >= 301, 20, what="the lone event")
    assert appends() - lone == 1


def test_a_record_that_names_its_predecessor_says_exactly_what_of_its_origin_never_came(ngxsim_cluster, engine,
                                                                                        stream):
    # an origin's generations jump over its events on channels that stay there: a record whose
    # predecessor came is no gap however far it jumps; one whose predecessor did not is a gap of
    # exactly what lies between (the engine lost acknowledged entries, or they came after it)
    [b] = start(ngxsim_cluster(engine.url), stream, count=1, workers=(2,), main=REPLAY)
    append_records(engine, stream, [("Z", 1, "one", 0), ("Z", 7, "seven", 1), ("Z", 12, "twelve", 9),
                                    ("Z", 13, "thirteen", 12)])
    recs = wait_all_workers(b, lambda lines: len(remote_events(lines, "Z")) >= 4, "Z's events")
    for pid, lines in recs.items():
        mine = [line for line in lines if line.startswith("G ") or (line.startswith("E ") and "from Z" in line)]
        assert [line.split()[0] for line in mine] == ["E", "E", "G", "E", "E"], (pid, lines)
        assert mine[2] == "G 8 9 from Z", (pid, lines)  # before "twelve", naming 8..9 only
    assert b.cluster_view(API)["gaps"] == 1


def test_each_relayed_record_names_the_one_its_instance_sent_before(ngxsim_cluster, engine, stream):
    from ngxsim_plugins.cluster.engines import engine_class

    a, b = start(ngxsim_cluster(engine.url), stream, count=2, workers=(2, 2))
    for channel_path, payload in (("/ev", "x0"), ("/local", "stays"), ("/ev", "x1"), ("/local", "stays"), ("/ev", "x2")):
        assert a.server.post(channel_path, json={"type": "t", "payload": payload}).status_code == 201
    wait_for(lambda: b.cluster_view(API)["relayed_in"] >= 3, 20, what="B to relay A's 3 events in")
    reader = engine_class(engine.url)(engine.url, stream, retention=1000)
    reader.connect()
    try:
        got = [e.record for e in reader.read(reader.beginning, block=1.0, limit=10).entries if e.record.origin == "A"]
    finally:
        reader.close()
    assert [r.payload for r in got] == ["x0", "x1", "x2"]
    # the generations jump over the events that stayed on A; each names the one before it
    assert got[1].origin_generation - got[0].origin_generation == 2
    assert [r.previous for r in got[1:]] == [got[0].origin_generation, got[1].origin_generation]
    assert b.cluster_view(API)["gaps"] == 0
