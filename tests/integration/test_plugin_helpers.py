"""The plugin's worker and event helpers against a real server (ngxsim_server)."""

from __future__ import annotations

import pytest

CONF = """
load_module worker_events;
http {
    server {
        listen 127.0.0.1:{port};
        location = / { return 200 "pid $pid"; }
        location = /events { worker_events_api; worker_events_zone bus; worker_events_channel c; }
    }
}
"""


@pytest.mark.parametrize("worker_class", ["sync", "gthread"])
def test_each_worker_runs_the_handler_once_on_every_worker_and_spray_reaches_all(ngxsim_server, worker_class):
    server = ngxsim_server(CONF, workers=3, worker_class=worker_class)
    answers = server.each_worker("/")
    assert sorted(answers) == server.worker_pids() and len(answers) == 3
    for pid, r in answers.items():
        assert r.worker_pid == pid and r.text == f"pid {pid}"  # the kernel's answer agrees with $pid

    events = server.events()
    mark = events.newest()
    published = server.each_worker("/events", method="POST", json={"type": "once"})
    assert {r.status_code for r in published.values()} == {201}
    # a gthread worker takes several connections: the extra ones were closed before their request ended
    events.expect(3, type="once", since=mark)

    sprayed = server.spray("/", 7)
    assert len(sprayed) == 7 and {r.worker_pid for r in sprayed} == set(server.worker_pids())
    assert all(r.text == f"pid {r.worker_pid}" for r in sprayed)


def test_kill_worker_returns_a_replacement_that_serves(ngxsim_server):
    server = ngxsim_server(CONF, workers=2)
    before = server.worker_pids()
    replacement = server.kill_worker(before[0])
    assert replacement not in before and sorted([before[1], replacement]) == server.worker_pids()
    assert server.each_worker("/")[replacement].text == f"pid {replacement}"
    with pytest.raises(ValueError, match="is not a live worker"):
        server.kill_worker(before[0])


def test_event_helpers_over_the_api_and_in_the_zone(ngxsim_server):
    server = ngxsim_server(CONF, workers=2)
    api = server.events()
    assert api.path == "/events" and api.newest() == 0
    api.publish("t", '{"n":1,"x":"a"}')
    api.publish("t", '{"n":2}')
    api.publish("u", "plain")
    assert [e["generation"] for e in api.read(type="t")] == [1, 2]
    assert api.wait(payload={"n": 2})["generation"] == 2
    assert api.wait(type="u", payload="plain", since=2)["generation"] == 3
    assert api.wait(payload=lambda p: p.startswith("pl"))["type"] == "u"
    with pytest.raises(AssertionError) as more:
        api.expect(1, type="t")
    assert "2 event with type='t', expected exactly 1 after generation 0" in str(more.value)
    assert "\n  1 c t {\"n\":1,\"x\":\"a\"}\n  2 c t {\"n\":2}\n  3 c u plain" in str(more.value)
    api.expect(1, type="t", since=1)
    api.expect(0, type="t", since=2)

    with server.zone_events("bus") as zone:
        assert zone.read() == api.read()
        generation = zone.publish("direct", "from-the-test", channel="c")
    assert generation == 4 and api.wait(type="direct", since=3)["payload"] == "from-the-test"
    workers = api.wait_delivered(4)
    assert sorted(w["pid"] for w in workers) == server.worker_pids()
    with pytest.raises(ValueError, match='no worker_events zone "nope"'):
        server.zone_events("nope")


def test_reading_the_ring_through_the_api_pages_past_the_page_size(ngxsim_server):
    server = ngxsim_server(CONF.replace("worker_events_channel c;", "worker_events_channel c; worker_events_page_size 2;"),
                           workers=1)
    api = server.events()
    for i in range(5):
        api.publish("t", str(i))
    assert len(server.get("/events?since=0").json()["events"]) == 2  # one GET: one page
    assert [e["payload"] for e in api.read(since=0)] == ["0", "1", "2", "3", "4"]
    api.expect(5, type="t")
