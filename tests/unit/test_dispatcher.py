"""Delivery in one process: order, exactly once, gaps, replay, filters, read-your-publish."""

from __future__ import annotations

import threading
import time

import pytest

import ngxsim_test_recorder as recorder
from ngxsim.core.process import build_application
from ngxsim_plugins.worker_events.state import state

CONF = """
load_module worker_events;
load_module ngxsim_test_raiser;
load_module ngxsim_test_recorder;
{extra}
http {{
    worker_events_zone bus;
    worker_events_ring_size {size};
    server {{
        listen 127.0.0.1:8080;
        location /dump {{ recorder_dump; }}
        location /publish {{ recorder_publish; }}
    }}
}}
"""


@pytest.fixture
def make(tmp_path, shm_leftovers, monkeypatch):
    monkeypatch.delenv("NGXSIM_TEST_RECORD_DIR", raising=False)
    apps = []

    def build(size=64, extra="", start_thread=True):
        recorder.RECORD.clear()
        path = tmp_path / f"d{len(apps)}.conf"
        path.write_text(CONF.format(size=size, extra=extra))
        app = build_application(str(path))
        apps.append(app)
        dispatcher = state(app.runtime).dispatchers["bus"]
        if not start_thread:
            _stop_thread(dispatcher)
        return app, dispatcher

    yield build
    for app in apps:
        app.runtime.close()


def _from_another_worker(app, channel, type, payload):
    """A publish this worker's subscribers do not see until it delivers (runtime.publish here
    would deliver before returning)."""
    return state(app.runtime).rings["bus"].publish_text(channel, type, payload)


def _stop_thread(dispatcher):
    """Silence the dispatcher thread so that only explicit drains deliver."""
    dispatcher.stop_thread()
    assert not dispatcher._thread.is_alive()


def test_read_your_publish_a_request_delivers_what_is_pending_before_its_handler(make):
    app, dispatcher = make(start_thread=False)
    gen = _from_another_worker(app, "c", "purged", "p")
    assert recorder.RECORD == []  # nobody delivered it yet
    record = app.test_client().get("/dump").get_json()["record"]
    assert record == [f"E {gen} c purged p"]


def test_a_handler_sees_its_own_publish_in_the_same_response(make):
    app, _ = make(start_thread=False)  # no thread, no later request: only the publish can deliver
    answer = app.test_client().get("/publish?p=mine").get_json()
    assert answer["record"] == [f"E {answer['generation']} c t mine"]


def test_a_publish_returns_after_this_workers_subscribers_ran_once_in_order(make):
    app, dispatcher = make(size=512)  # the dispatcher thread runs too: nothing may come twice
    for i in range(1, 201):
        assert app.runtime.publish("bus", "c", "t", str(i)) == i
        assert recorder.RECORD[-1] == f"E {i} c t {i}"
    dispatcher.stop_thread()
    dispatcher.drain()
    assert recorder.RECORD == [f"E {i} c t {i}" for i in range(1, 201)]


def test_a_subscriber_that_publishes_gets_its_event_next_not_a_deadlock(make):
    app, _ = make(start_thread=False)
    assert app.runtime.publish("bus", "c", "echo", "x") == 1
    # the subscriber's own publish (generation 2) is delivered by the running delivery, after
    # the call that made it returned, and before the outer publish returned
    assert recorder.RECORD == ["E 1 c echo x", "E 2 c echoed x"]


def test_the_dispatcher_thread_asks_the_kernel_for_prompt_wake_ups(make):
    from test_shm import _requested_slice

    from ngxsim.core.shm import SHORT_SLICE_NS
    from ngxsim.testing import wait_for

    app, dispatcher = make()
    tid = dispatcher._thread.native_id
    wait_for(lambda: _requested_slice(tid) == SHORT_SLICE_NS, 5, what="the dispatcher thread's slice request")


def test_the_dispatcher_thread_delivers_without_any_request(make):
    from ngxsim.testing import wait_for

    app, _ = make()
    app.runtime.publish("bus", "c", "t", "1")
    wait_for(lambda: recorder.RECORD == ["E 1 c t 1"], 5, what="the dispatcher thread to deliver")


def test_a_thread_started_after_the_dispatcher_stopped_still_drains(make):
    """Thread ids are reused once a thread ends: a request thread that gets the stopped
    dispatcher's id must not pass for it (it would skip its drain as 'already delivering')."""
    app, dispatcher = make()
    old_ident = dispatcher._thread.ident
    _stop_thread(dispatcher)
    idents = []

    def request():
        idents.append(threading.get_ident())
        dispatcher.drain()

    for i in range(1, 4):
        _from_another_worker(app, "c", "t", str(i))
        t = threading.Thread(target=request)
        t.start()
        t.join(10)
        assert recorder.RECORD == [f"E {n} c t {n}" for n in range(1, i + 1)]
    if old_ident not in idents:
        pytest.skip("no thread got the stopped dispatcher's id here (the C library did not reuse it)")


def test_events_arrive_in_order_exactly_once_under_concurrent_drains(make):
    app, dispatcher = make(size=512)  # larger than the burst: no gap is possible
    stop = threading.Event()

    def drainer():
        while not stop.is_set():
            dispatcher.drain()
            time.sleep(0)  # let the publisher have the GIL too

    threads = [threading.Thread(target=drainer, daemon=True) for _ in range(3)]
    for t in threads:
        t.start()
    for i in range(1, 301):
        app.runtime.publish("bus", "c", "t", str(i))
    stop.set()
    for t in threads:
        t.join(10)
    dispatcher.drain()
    assert recorder.RECORD == [f"E {i} c t {i}" for i in range(1, 301)]


def test_falling_behind_by_more_than_the_ring_gives_a_gap_before_the_next_event(make):
    app, dispatcher = make(size=4, start_thread=False)
    for i in range(1, 11):
        _from_another_worker(app, "c", "t", str(i))
    dispatcher.drain()
    assert recorder.RECORD == ["G 1 6", "E 7 c t 7", "E 8 c t 8", "E 9 c t 9", "E 10 c t 10"]
    assert (dispatcher.gaps, dispatcher.lost) == (1, 6)
    [slot] = dispatcher.ring.live_slots()
    assert (slot.gaps, slot.lost, slot.delivered) == (1, 6, 10)


def test_a_slot_that_never_becomes_whole_is_counted_lost_and_delivery_goes_on(make, monkeypatch):
    """A writer killed mid-write below newest (its generation taken again by nobody): after the
    retries the dispatcher reports that one generation as a gap and delivers the rest."""
    import struct

    import ngxsim_plugins.worker_events.dispatcher as dispatcher_mod
    from ngxsim_plugins.worker_events.ring import ENTRIES_OFFSET, ENTRY_SIZE

    monkeypatch.setattr(dispatcher_mod, "_NOT_READY_RETRIES", 3)
    app, dispatcher = make(size=8, start_thread=False)
    for i in range(1, 4):
        _from_another_worker(app, "c", "t", str(i))
    struct.pack_into("<Q", dispatcher.ring.buf, ENTRIES_OFFSET + 1 * ENTRY_SIZE, 2 * 2 - 1)  # 2 in flux for good
    dispatcher.drain()
    assert recorder.RECORD == ["E 1 c t 1", "G 2 2", "E 3 c t 3"]
    assert (dispatcher.gaps, dispatcher.lost, dispatcher.cursor) == (1, 1, 3)


def test_a_raising_subscriber_does_not_stop_the_others_or_later_events(make, caplog):
    app, dispatcher = make(start_thread=False)
    app.runtime.publish("bus", "c", "boom", "")
    app.runtime.publish("bus", "c", "after", "")
    dispatcher.drain()
    assert recorder.RECORD == ["E 1 c boom ", "E 2 c after "]
    assert dispatcher.errors == 1


def test_channel_subscription_filters(make):
    app, dispatcher = make(extra="recorder_channels wanted;", start_thread=False)
    for channel in ("wanted", "other", "wanted"):
        app.runtime.publish("bus", channel, "t", "")
    dispatcher.drain()
    assert recorder.RECORD == ["E 1 wanted t ", "E 3 wanted t "]


def test_a_starting_worker_begins_at_the_newest_generation_unless_a_module_asks_for_replay(make):
    from ngxsim_plugins.worker_events.dispatcher import Dispatcher, collect_subscribers

    app, first = make(start_thread=False)
    for i in range(3):
        _from_another_worker(app, "c", "t", str(i))
    first.drain()
    recorder.RECORD.clear()
    ring = first.ring
    fresh = Dispatcher(app.runtime, ring, collect_subscribers(app.runtime.config))
    _from_another_worker(app, "c", "t", "new")
    fresh.drain()
    assert recorder.RECORD == ["E 4 c t new"]
    fresh.stop()


def test_replay_delivers_what_the_ring_still_holds(make):
    app, first = make(extra="recorder_replay on;", start_thread=False)
    assert recorder.RECORD == []
    for i in range(3):
        app.runtime.publish("bus", "c", "t", str(i))
    first.drain()
    from ngxsim_plugins.worker_events.dispatcher import Dispatcher, collect_subscribers

    recorder.RECORD.clear()
    replaying = Dispatcher(app.runtime, first.ring, collect_subscribers(app.runtime.config))
    replaying.drain()
    assert recorder.RECORD == ["E 1 c t 0", "E 2 c t 1", "E 3 c t 2"]
    replaying.stop()


def test_publish_hook_validates_like_the_api(make):
    app, _ = make(start_thread=False)
    with pytest.raises(ValueError, match='unknown worker_events zone "nope"'):
        app.runtime.publish("nope", "c", "t", "")
    with pytest.raises(ValueError, match='"type" must not be empty'):
        app.runtime.publish("bus", "c", "", "")
    with pytest.raises(ValueError, match='"payload" is 513 bytes'):
        app.runtime.publish("bus", "c", "t", "x" * 513)
    assert state(app.runtime).rings["bus"].newest == 0


def test_publishing_without_worker_events_loaded_says_what_is_missing(tmp_path, shm_leftovers):
    path = tmp_path / "n.conf"
    path.write_text("http { server { listen 127.0.0.1:8080; } }")
    app = build_application(str(path))
    try:
        with pytest.raises(RuntimeError, match="load_module worker_events"):
            app.runtime.publish("bus", "c", "t", "")
    finally:
        app.runtime.close()


def test_a_worker_where_no_module_listens_runs_no_dispatcher_and_is_never_behind(tmp_path, shm_leftovers):
    path = tmp_path / "quiet.conf"
    path.write_text("""
load_module worker_events;
http { server { listen 127.0.0.1:8080;
  location /ev { worker_events_api; worker_events_zone bus; worker_events_channel c; } } }
""")
    app = build_application(str(path))
    try:
        dispatcher = state(app.runtime).dispatchers["bus"]
        assert not dispatcher.active and dispatcher._thread is None
        assert dispatcher.drain not in app.runtime.on_request_start
        client = app.test_client()
        client.post("/ev", json={"type": "t"})
        [worker] = client.get("/ev").get_json()["workers"]
        assert (worker["subscribers"], worker["delivered_generation"], worker["lag"]) == (0, 1, 0)
    finally:
        app.runtime.close()


def test_subscribers_are_counted_in_the_workers_slot(make):
    from ngxsim.testing import wait_for

    app, _ = make()
    app.runtime.publish("bus", "c", "t", "")
    wait_for(lambda: recorder.RECORD, 5, what="delivery")
    [slot] = state(app.runtime).rings["bus"].live_slots()
    assert slot.subscribers == 2  # the raiser and the recorder
    assert slot.delivered == 1 and slot.events == 1


@pytest.mark.parametrize("setting, expected", [("", 0.001), ("worker_events_gil_switch_interval 2ms;", 0.002),
                                               ("worker_events_gil_switch_interval 0;", None)])
def test_a_worker_with_listeners_sets_the_gil_switch_interval(tmp_path, shm_leftovers, monkeypatch, setting, expected):
    import sys

    before = sys.getswitchinterval()
    monkeypatch.setattr(sys, "setswitchinterval", lambda value: calls.append(value))
    calls = []
    path = tmp_path / "gil.conf"
    path.write_text(f"load_module worker_events;\nload_module ngxsim_test_recorder;\n"
                    f"http {{ worker_events_zone bus; {setting} server {{ listen 127.0.0.1:8080; }} }}")
    app = build_application(str(path))
    try:
        assert calls == ([] if expected is None else [expected])
    finally:
        app.runtime.close()
    assert sys.getswitchinterval() == before


def test_error_log_gets_a_failing_subscriber_with_its_generation(tmp_path, shm_leftovers):
    log_path = tmp_path / "error.log"
    path = tmp_path / "e.conf"
    path.write_text(f"load_module worker_events;\nload_module ngxsim_test_raiser;\nerror_log {log_path} warn;\n"
                    "http { worker_events_zone bus; server { listen 127.0.0.1:8080; } }")
    app = build_application(str(path))
    try:
        dispatcher = state(app.runtime).dispatchers["bus"]
        _stop_thread(dispatcher)
        app.runtime.publish("bus", "c", "boom", "")
        dispatcher.drain()
        text = log_path.read_text()
        assert "[error]" in text and "module ngxsim_test_raiser failed on generation 1 of zone bus" in text
        assert "RuntimeError: boom at generation 1" in text
    finally:
        app.runtime.close()
        from ngxsim.core.http.logs import setup_error_log

        setup_error_log(("stderr", "error"))  # give the process's logger back


def test_a_remote_event_is_delivered_with_its_origin_and_a_remote_gap_as_a_gap(make):
    from ngxsim_plugins.worker_events import publish_remote, publish_remote_gap

    app, dispatcher = make(start_thread=False)
    gen = publish_remote(app.runtime, "bus", "c", "purged", "p", origin="host-b", origin_generation=41,
                         timestamp_msec=1_700_000_000_000)
    gap = publish_remote_gap(app.runtime, "bus", origin="host-b", first=42, last=44)
    local = app.runtime.publish("bus", "c", "t", "mine")
    assert recorder.RECORD == [f"E {gen} c purged p from host-b#41", "G 42 44 from host-b", f"E {local} c t mine"]
    assert gap == gen + 1 and dispatcher.cursor == local
    with pytest.raises(ValueError):
        publish_remote(app.runtime, "bus", "c", "t", "", origin="", origin_generation=1, timestamp_msec=1)


def test_a_bridge_s_counted_waiter_waits_without_the_lock_publishers_take(make):
    # the relay waits again and again: counted once (events_waiter), each wait takes no zone
    # lock. An uncounted wait counts itself under the lock every publish takes, so a waiter
    # that lost its CPU there held the publishers up
    import threading

    from ngxsim_plugins.worker_events import events_waiter, wait_for_events

    app, _ = make(start_thread=False)
    newest = app.runtime.publish("bus", "c", "t", "x")
    zone = state(app.runtime).rings["bus"].zone
    got = {}

    def wait(registered):
        got[registered] = wait_for_events(app.runtime, "bus", newest, 0.05, registered=registered)

    with events_waiter(app.runtime, "bus"):
        with zone.lock():  # a publisher holds the lock
            counted = threading.Thread(target=wait, args=(True,))
            counted.start()
            counted.join(5)
            assert not counted.is_alive() and got[True] == newest  # it timed out waiting, lock or not
            uncounted = threading.Thread(target=wait, args=(False,))
            uncounted.start()
            uncounted.join(0.5)
            assert uncounted.is_alive()  # it waits for the lock first
        uncounted.join(5)
    assert got[False] == newest
    later = _from_another_worker(app, "c", "t", "y")
    with events_waiter(app.runtime, "bus"):
        assert wait_for_events(app.runtime, "bus", newest, 5, registered=True) == later
