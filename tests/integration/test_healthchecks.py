"""healthchecks under gunicorn -w 4 with real backends whose /health the tests flip: routing
follows the probes in every worker, one event per flip, one prober for the instance that another
worker replaces when it is killed, and the status page in a real browser."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter

import pytest

from browser import BrowserError, Chromium, chromium_path
from ngxsim.testing import Backend, start_server, stop_all, wait_for

STATUS = "/api/health"
INTERVAL = 0.3

CONF = """
load_module worker_events;
load_module upstreams;
load_module healthchecks;
http {
    worker_events_zone bus;
    match ok {
        status 200-399;
        header Content-Type ~ json;
        body ~ "\\"status\\": *\\"up\\"";
    }
    upstream backend {
        zone backend 256k;
        %(servers)s
    }
    server {
        listen 127.0.0.1:{port};
        add_header X-Upstream-Addr $upstream_addr always;
        location / {
            proxy_pass http://backend;
            health_check %(check)s;
        }
        location /api/health { health_check_status; }
        location /api/upstreams { upstreams_api; }
        location /internal/worker-events {
            worker_events_api;
            worker_events_zone bus;
            worker_events_channel ops;
        }
    }
}
"""
CHECK = "interval=300ms fails=2 passes=2 uri=/health timeout=250ms match=ok"


def conf(backends, check=CHECK) -> str:
    return CONF % {"servers": "\n        ".join(f"server {b.address};" for b in backends), "check": check}


def status(server) -> dict:
    return server.get(STATUS).json()["upstreams"]["backend"]


def peer_status(server, backend) -> dict:
    return next(p for p in status(server)["peers"] if p["server"] == backend.address)


def served_by(responses) -> Counter:
    return Counter(r.headers.get("X-Upstream-Addr", "") for r in responses)


def pids(responses) -> set[int]:
    return {r.worker_pid for r in responses}


class Scene:
    """A server and its backends, and the healthchecks events since ``mark``."""

    def __init__(self, server, backends, mark: int = 0):
        self.server, self.backends, self.mark = server, backends, mark

    def events(self, type_=None) -> list[dict]:
        """The healthchecks events after the mark, oldest first, payloads parsed."""
        return [dict(json.loads(e["payload"]), type=e["type"])
                for e in self.server.events().read(since=self.mark, channel="healthchecks", type=type_)]

    def transitions(self, backend) -> list[dict]:
        return [e for e in self.events("peer_transition") if e["server"] == backend.address]

    def wait_transition(self, backend, count: int) -> list[dict]:
        """Wait until ``backend`` has ``count`` peer_transition events; returns them all."""
        self.server.events().expect_at_least(count, type="peer_transition", channel="healthchecks",
                                             payload={"server": backend.address}, since=self.mark)
        return self.transitions(backend)

    def wait_service(self, to: str) -> dict:
        self.server.events().expect(1, type="service_transition", channel="healthchecks", payload={"to": to},
                                    since=self.mark)
        return next(e for e in self.events("service_transition") if e["to"] == to)

    def wait_checks(self, backend, more: int) -> dict:
        """Wait until ``backend`` was probed ``more`` times more than now; its status then."""
        base = peer_status(self.server, backend)["checks"]
        return wait_for(lambda: (p := peer_status(self.server, backend))["checks"] >= base + more and p,
                        timeout=more * INTERVAL + 10, what=f"{more} more probes of {backend.name}")

    def spray(self, count=40) -> list:
        """``count`` requests through the proxy, every worker serving some."""
        return self.server.spray("/", count)


def first_round(server, count: int) -> None:
    """The prober has looked at every peer once: what the status says is the instance's state."""
    wait_for(lambda: len([p for p in status(server)["peers"] if p["checks"]]) == count, 15,
             what="the first round of probes")


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One server for the tests of the CHECK config (each start costs seconds on 2 cores): the
    ``scene`` fixture hands it over with every peer healthy again."""
    backends = [Backend(f"b{i}").start() for i in range(2)]
    server = start_server(tmp_path_factory.mktemp("healthchecks"), conf(backends), workers=4, ready_path=STATUS)
    try:
        first_round(server, 2)
        assert Scene(server, backends).events() == [], "nothing is published at start"
    except BaseException:
        stop_all([server, *backends])
        raise
    yield server, backends
    stop_all([server, *backends])


@pytest.fixture
def scene(shared) -> Scene:
    server, backends = shared
    for backend in backends:
        backend.forget("/health")
        backend.set_healthy(True)
    wait_for(lambda: status(server)["service"] == "up" and
             {p["state"] for p in status(server)["peers"]} == {"healthy"}, 15, what="every peer healthy")
    for backend in backends:
        backend.reset()
    return Scene(server, backends, server.events().newest())


def test_a_flip_stops_traffic_from_every_worker_and_is_published_once(scene):
    server, (a, b) = scene.server, scene.backends
    b.set_healthy(False)
    (down,) = scene.wait_transition(b, 1)
    peer_id = down["peer"]
    assert down == {"type": "peer_transition", "upstream": "backend", "peer": peer_id, "server": b.address,
                    "from": "healthy", "to": "unhealthy", "fails": 2, "passes": 0}
    # every worker has delivered the event before it answers (drained at request start): none
    # sends b anything any more
    b.reset()
    responses = scene.spray()
    assert {r.status_code for r in responses} == {200}
    assert pids(responses) == set(server.worker_pids()), "every worker served some"
    assert served_by(responses) == Counter({a.address: len(responses)})
    assert b.requests_for("/") == []
    api = server.get(f"/api/upstreams/backend/servers/{peer_id}").json()
    assert api["state"] == "unhealthy" and api["health"]["healthy"] is False and api["health"]["fails"] >= 2

    # more failed probes while unhealthy flip nothing: still exactly one event for the flip
    peer = scene.wait_checks(b, 3)
    assert peer["state"] == "unhealthy" and peer["consecutive_fails"] >= 5
    assert peer["last_failure"] == "status 503" and peer["last_status"] == 503
    assert len(scene.transitions(b)) == 1

    b.set_healthy(True)
    up = scene.wait_transition(b, 2)[1]
    assert (up["from"], up["to"], up["fails"], up["passes"]) == ("unhealthy", "healthy", 0, 2)
    b.reset()
    responses = scene.spray()
    assert b.worker_pids("/") == pids(responses) == set(server.worker_pids()), "every worker routes to b again"
    scene.wait_checks(b, 3)
    assert len(scene.transitions(b)) == 2
    assert scene.events("service_transition") == [], "a stayed healthy: the service never flipped"
    assert server.get(f"/api/upstreams/backend/servers/{peer_id}").json()["health"]["healthy"] is True


def test_the_service_goes_down_with_its_last_peer_and_answers_502_without_trying(scene):
    server, (a, b) = scene.server, scene.backends
    a.set_healthy(False)
    b.set_healthy(False)
    down = scene.wait_service("down")
    assert down == {"type": "service_transition", "upstream": "backend", "from": "up", "to": "down",
                    "healthy": 0, "peers": 2}
    scene.wait_transition(a, 1)
    scene.wait_transition(b, 1)
    a.reset()
    b.reset()
    responses = scene.spray()
    assert {r.status_code for r in responses} == {502}
    assert pids(responses) == set(server.worker_pids())
    assert a.requests_for("/") == b.requests_for("/") == [], "no peer was tried"
    assert status(server)["service"] == "down"

    a.set_healthy(True)
    up = scene.wait_service("up")
    assert (up["from"], up["to"], up["healthy"], up["peers"]) == ("down", "up", 1, 2)
    responses = scene.spray()
    assert {r.status_code for r in responses} == {200} and served_by(responses) == Counter({a.address: 40})
    # the service event follows the peer event that caused it, in the ring's order
    kinds = [(e["type"], e.get("server"), e["to"]) for e in scene.events()]
    assert kinds[-2:] == [("peer_transition", a.address, "healthy"), ("service_transition", None, "up")]
    scene.wait_checks(b, 2)
    assert len(scene.events("service_transition")) == 2


def test_one_prober_for_the_instance_and_another_worker_takes_over_when_it_is_killed(scene):
    server, (a, b) = scene.server, scene.backends
    first = status(server)["prober"]
    prober, runs = first["pid"], first["runs"]
    assert prober in server.worker_pids()
    a.reset()
    b.reset()
    wait_for(lambda: status(server)["prober"]["runs"] >= runs + 6, 15, what="six rounds")
    done = status(server)["prober"]["runs"] - runs
    for backend in (a, b):
        probes = backend.requests_for("/health")
        # one probe per peer per round for the whole instance (4 workers would make 4 per round)
        assert done - 1 <= len(probes) <= done + 1, (backend.name, len(probes), done)
        assert backend.worker_pids("/health") == {prober}

    # b goes unhealthy, then its prober dies: the successor goes on from the zone's counts (a
    # fresh start would see b healthy again and publish a second flip after two failures)
    b.set_healthy(False)
    scene.wait_transition(b, 1)
    before = peer_status(server, b)
    os.kill(prober, signal.SIGKILL)
    wait_for(lambda: {r.worker_pid for r in b.requests_for("/health")} - {prober}, 10,
             what="probes from another worker")
    successor = status(server)["prober"]["pid"]
    assert successor != prober and successor in server.worker_pids()
    after = scene.wait_checks(b, 3)
    assert after["state"] == "unhealthy" and after["transitions"] == before["transitions"]
    assert after["checks"] >= before["checks"] + 3
    assert after["consecutive_fails"] >= before["consecutive_fails"] + 3
    assert len(scene.transitions(b)) == 1
    assert a.worker_pids("/health") - {prober} == {successor}
    # the respawned worker routes by the health in the zone too
    server.wait_workers(4, timeout=20)
    b.reset()
    responses = scene.spray()
    assert pids(responses) == set(server.worker_pids()) and b.requests_for("/") == []


def test_under_mandatory_peers_take_no_traffic_until_their_probes_pass(ngxsim_server, ngxsim_backend):
    a, b, c = (ngxsim_backend(name=f"m{i}") for i in range(3))
    # a long timeout holds a first probe in flight while the test looks at its peer
    b.respond("/health", delay=30)    # b, configured from the start, waits as NGINX Plus's would
    server = ngxsim_server(conf([a, b], "interval=500ms fails=1 passes=2 uri=/health timeout=2s mandatory"),
                           workers=4, ready_path=STATUS)
    scene = Scene(server, [a, b, c])
    wait_for(lambda: peer_status(server, a)["state"] == "healthy" and b.requests_for("/health"), 10,
             what="a's first probe passed, b's in flight")
    assert peer_status(server, b)["state"] == "checking"
    assert [p["state"] for p in server.get("/api/upstreams/backend").json()["peers"]] == ["up", "checking"]
    responses = scene.spray()
    assert b.requests_for("/") == [] and set(served_by(responses)) == {a.address}
    b.forget("/health")
    first = scene.wait_transition(b, 1)[0]
    assert (first["from"], first["to"]) == ("checking", "unhealthy")  # its first probe timed out
    scene.wait_transition(b, 2)
    first_round(server, 2)

    c.respond("/health", delay=30)   # c's first probe hangs until the timeout: c stays "checking"
    added = server.post("/api/upstreams/backend/servers", json={"server": c.address})
    assert added.status_code == 201, added.text
    c_id = added.json()["id"]
    wait_for(lambda: c.requests_for("/health"), 10, what="c's first probe")
    assert server.get(f"/api/upstreams/backend/servers/{c_id}").json()["state"] == "checking"
    assert peer_status(server, c)["state"] == "checking"
    responses = scene.spray()
    assert c.requests_for("/") == [] and set(served_by(responses)) == {a.address, b.address}

    c.forget("/health")               # from now on c answers its probes healthy
    first, = scene.wait_transition(c, 1)
    assert (first["from"], first["to"], first["fails"]) == ("checking", "unhealthy", 1)
    assert c.requests_for("/") == []
    second = scene.wait_transition(c, 2)[1]
    assert (second["from"], second["to"], second["passes"]) == ("unhealthy", "healthy", 2)
    c.reset()
    scene.spray()
    assert c.worker_pids("/") == set(server.worker_pids())
    assert scene.events("service_transition") == []


def test_a_config_error_names_file_and_line(tmp_path, ngxsim_backend):
    path = tmp_path / "bad.conf"
    path.write_text(conf([ngxsim_backend()], "interval=1s fails=0").replace("{port}", "1"))
    run = subprocess.run([sys.executable, "-m", "ngxsim.cli", "-t", "-c", str(path)], capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 1
    line = path.read_text().splitlines().index("            health_check interval=1s fails=0;") + 1
    assert (f'ngxsim: [emerg] invalid value "fails=0" in "health_check" directive: a number from 1 to 1000000 '
            f'is required in {path}:{line}') in run.stderr


# -- the status page ------------------------------------------------------------------------------


@pytest.fixture
def browser(tmp_path):
    """start() -> a headless Chromium (closed at teardown); skips the rest of the test when the
    machine has none."""
    started = []

    def start():
        if chromium_path() is None:
            pytest.skip("chromium is not installed (Debian: apt-get install chromium): the status page was "
                        "not tested in a browser")
        started.append(Chromium.start(tmp_path / "chromium-profile"))
        return started[-1]

    yield start
    for chromium in started:
        chromium.close()


ROW = "document.querySelector('tr.peer[data-server=\"%s\"]')"
BG = "getComputedStyle(%s.querySelector('td')).backgroundColor"
GREEN, RED = "rgb(205, 236, 207)", "rgb(246, 196, 196)"


def check_negotiation(server, a) -> None:
    """JSON for programs, HTML for browsers (Accept or ?format=), 400 for another format."""
    doc = server.get(STATUS).json()
    up = doc["upstreams"]["backend"]
    assert up["check"] == {"interval": 0.3, "fails": 2, "passes": 2, "uri": "/health", "port": None,
                           "timeout": 0.25, "match": "ok", "mandatory": False, "scope": "instance"}
    assert up["service"] == "up" and up["prober"]["pid"] in server.worker_pids()
    peer = peer_status(server, a)
    assert peer["state"] == "healthy" and peer["last_status"] == 200 and peer["last_failure"] is None
    assert peer["last_probe_msec"] <= doc["now_msec"] and 0 < peer["last_duration"] < 0.25
    html = server.get(STATUS, headers={"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"})
    assert html.headers["Content-Type"].startswith("text/html") and html.headers["Vary"] == "Accept"
    assert html.text.count('<tr class="peer healthy"') == 2
    assert server.get(STATUS + "?format=html").headers["Content-Type"].startswith("text/html")
    assert server.get(STATUS + "?format=json", headers={"Accept": "text/html"}).json()["module"] == "healthchecks"
    bad = server.get(STATUS + "?format=xml")
    assert bad.status_code == 400 and bad.json()["message"] == 'parameter "format" must be "json" or "html", not "xml"'
    assert server.post(STATUS).status_code == 405


def test_the_status_page_negotiates_and_in_a_real_browser_follows_a_flip_by_itself(scene, browser):
    server, (a, b) = scene.server, scene.backends
    check_negotiation(server, a)
    page = browser().open(server.url(STATUS))    # the browser's own Accept header asks for HTML
    assert page.evaluate("document.contentType") == "text/html"
    assert page.evaluate("document.querySelectorAll('tr.peer').length") == 2
    assert page.evaluate("document.querySelector('span.service').textContent") == "up"
    for backend in (a, b):
        row = ROW % backend.address
        assert page.evaluate(f"{row}.dataset.state") == "healthy"
        assert page.evaluate(BG % row) == GREEN
    # the time since the last transition ticks by itself
    since = f"{ROW % b.address}.querySelector('td.since').textContent"
    before = page.evaluate(since)
    assert before.endswith("s")
    page.wait_for(f"{since} !== {json.dumps(before)}", timeout=5)

    b.set_healthy(False)
    scene.wait_transition(b, 1)
    # no reload: the page refreshes itself in place
    try:
        page.wait_for(f"{ROW % b.address}.dataset.state === 'unhealthy'", timeout=10)
    except BrowserError:
        raise AssertionError(page.evaluate("document.body.outerHTML")) from None
    assert page.evaluate(BG % (ROW % b.address)) == RED
    assert page.evaluate(BG % (ROW % a.address)) == GREEN
    assert page.evaluate(f"{ROW % b.address}.querySelector('td.failure').textContent") == "status 503"
    assert page.evaluate("Number(document.body.dataset.refreshed)") >= 1
    assert page.evaluate("location.search") == ""   # the same page, never navigated
