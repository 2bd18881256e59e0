"""The prober's bookkeeping in one real process (zones, bus, upstreams, backends on loopback): a
flip is published once even when two probers count results at the same time, upstreams hears
every result, and a result for a peer that left is dropped."""

from __future__ import annotations

import json
import os

import pytest

from ngxsim.core.process import build_application
from ngxsim_plugins.healthchecks.checker import process_state
from ngxsim_plugins.healthchecks.machine import ProbeResult

CONF = """
load_module worker_events;
load_module upstreams;
load_module healthchecks;
http {
    worker_events_zone bus;
    upstream backend { zone backend 64k; server %s; server %s; }
    server {
        listen 127.0.0.1:8080;
        location / { proxy_pass http://backend; health_check interval=1d fails=3 passes=1 uri=/health; }
        location /status { health_check_status; }
        location /api/upstreams { upstreams_api; }
        location /events { worker_events_api; worker_events_zone bus; worker_events_channel ops; }
    }
}
"""
BAD = ProbeResult(False, 0.001, 503, "status 503")
PROBERS, ROUNDS = 4, 200


@pytest.fixture
def app(tmp_path, ngxsim_backend, shm_leftovers):
    a, b = ngxsim_backend(name="a"), ngxsim_backend(name="b")
    conf = tmp_path / "hc.conf"
    conf.write_text(CONF % (a.address, b.address))
    app = build_application(str(conf), role="standalone")
    app.backends = (a, b)
    yield app
    app.runtime.close()


def events(client) -> list[dict]:
    data = client.get("/events?since=0&channel=healthchecks").get_json()
    return [dict(json.loads(e["payload"]), type=e["type"]) for e in data["events"]]


def first_round(client):
    """Wait for the job's first round (it runs at start, then not for a day)."""
    from ngxsim.testing import wait_for

    return wait_for(lambda: (peers := client.get("/status").get_json()["upstreams"]["backend"]["peers"])
                    and all(p["checks"] for p in peers) and peers, 10, what="the first round")


@pytest.fixture
def checked(app):
    """(client, runtime, the upstream's check, its zone section), after the first round."""
    client = app.test_client()
    first_round(client)
    runtime = app.runtime
    section = process_state(runtime).store.section("backend")
    return client, runtime, runtime.config.stash["healthchecks"].checks["backend"], section


def test_probers_in_several_processes_counting_at_once_publish_a_flip_once(app, checked):
    """A hung prober and its successor may count results at the same time: the zone lock makes
    each count whole and the flip is found, and published, once."""
    client, runtime, uc, section = checked
    with section.lock():
        b = next(t for t in section.tracked() if t.server == app.backends[1].address)
    go_r, go_w = os.pipe()
    children = []
    for _ in range(PROBERS):
        pid = os.fork()
        if pid == 0:  # a prober process: wait for the start, count ROUNDS failures, leave
            code = 1
            try:
                os.close(go_w)
                os.read(go_r, 1)
                for _ in range(ROUNDS):
                    uc.record(runtime, section, b, BAD)
                code = 0
            finally:
                os._exit(code)
        children.append(pid)
    os.close(go_r)
    os.write(go_w, b"x" * PROBERS)  # all at once
    os.close(go_w)
    for pid in children:
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    flips = [e for e in events(client) if e["type"] == "peer_transition"]
    assert flips == [{"type": "peer_transition", "upstream": "backend", "peer": b.peer_id, "server": b.server,
                      "from": "healthy", "to": "unhealthy", "fails": 3, "passes": 0}]
    total = PROBERS * ROUNDS
    peer = section.read(b.slot).health
    assert (peer.fails, peer.checks, peer.transitions) == (total, total + 1, 1)  # no count was lost
    # upstreams heard the counts too (the last writer's), not only the flip
    api = client.get(f"/api/upstreams/backend/servers/{b.peer_id}").get_json()
    assert api["state"] == "unhealthy" and api["health"]["healthy"] is False and api["health"]["fails"] >= 3


def test_a_result_for_a_peer_that_left_is_dropped(checked):
    client, runtime, uc, section = checked
    with section.lock():
        gone = section.tracked()[0]
        section.clear(gone.slot)
    for _ in range(3):
        uc.record(runtime, section, gone, BAD)
    assert section.read(gone.slot) is None and events(client) == []
