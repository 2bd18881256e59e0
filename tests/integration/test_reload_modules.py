"""Every first-party and example module survives ``ngxsim -c``'s reloads and a worker respawn
after them: a rejected reload, then a respawn; an accepted one, then a respawn; a rejected one
followed by an accepted one, then a respawn. After each step the server answers and every worker
— the respawned one included — runs the module: upstreams proxies and applies API changes from
another worker, cache_purge purges in every worker, the ring delivers to every worker, the
health prober runs, the examples answer and react to each other's events.

One server per module, shared by its three sequences (each sequence starts from whatever the
last one left: a module must survive any order). Issue 19: a rejected reload rebound
``ngxsim_plugins.upstreams.state`` to the submodule, and the next respawn took the server down.
"""

from __future__ import annotations

import itertools
import signal
from pathlib import Path

import pytest

from ngxsim.testing import Backend, start_server, stop_all, wait_for

ROOT = Path(__file__).resolve().parents[2]
WORKERS = 3
READY = "/events"
EVENTS = f"location = {READY} {{ worker_events_api; worker_events_zone bus; worker_events_channel ops; }}"
# appended to the config: every module is imported anew before the loader reaches it
BROKEN = "\nthis_directive_does_not_exist;\n"
_unique = itertools.count(1)


class Scene:
    """A module's server: its config, its backends, and ``check`` — the module works in every
    worker (raises AssertionError when not)."""

    backends: tuple[str, ...] = ()
    pythonpath: tuple[Path, ...] = ()
    conf = ""
    failed = False  # a sequence failed on this server: the next one gets a new server

    def __init__(self, server, backends: dict[str, Backend]):
        self.server, self.backends = server, backends

    def check(self) -> None:
        raise NotImplementedError


class WorkerEvents(Scene):
    conf = f"""
load_module worker_events;
load_module ngxsim_test_recorder;
recorder_channels ops;
http {{
    worker_events_zone bus;
    server {{
        listen 127.0.0.1:{{port}};
        {EVENTS}
        location = /record {{ recorder_dump; }}
    }}
}}
"""

    def check(self):
        events = self.server.events()
        payload = f"p{next(_unique)}"
        generation = events.publish("ping", payload)["generation"]
        events.wait_delivered(generation)
        line = f"E {generation} ops ping {payload}"
        for pid, r in self.server.each_worker("/record").items():
            assert line in r.json()["record"], f"worker {pid} did not deliver {line!r}: {r.json()['record'][-5:]}"


def _two_peers(module: str, check: str, api: str) -> str:
    """A config proxying to the upstream ``backend`` of peers a and b, with ``module`` loaded."""
    return f"""
load_module worker_events;
load_module upstreams;
{module}
http {{
    worker_events_zone bus;
    upstream backend {{ zone backend 256k; server {{a}}; server {{b}}; }}
    server {{
        listen 127.0.0.1:{{port}};
        location / {{ proxy_pass http://backend; {check} }}
        {api}
        {EVENTS}
    }}
}}
"""


def _only_b_answers(server) -> None:
    answers = [r for _ in range(2) for r in server.each_worker("/who").values()]
    assert {(r.status_code, r.text) for r in answers} == {(200, "b")}


class Upstreams(Scene):
    backends = ("a", "b")
    conf = _two_peers("", "", "location /api/upstreams { upstreams_api; upstreams_api_key changeme; }")

    def _down(self, peer: dict, down: bool) -> None:
        r = self.server.request("PATCH", f"/api/upstreams/backend/servers/{peer['id']}", params={"key": "changeme"},
                                json={"down": down})
        assert r.status_code == 200, r.text

    def check(self):
        a, b = self.backends["a"], self.backends["b"]
        for backend in (a, b):
            backend.respond("/who", body=backend.name)
        # every worker proxies (round robin over a and b)
        bodies = {r.text for _ in range(2) for r in self.server.each_worker("/who").values()}
        assert bodies == {"a", "b"}, bodies
        # an API change made through one worker reaches every worker through the ring
        peer = next(p for p in self.server.get("/api/upstreams/backend").json()["peers"] if p["server"] == a.address)
        self._down(peer, True)
        try:
            _only_b_answers(self.server)
        finally:
            self._down(peer, False)


class CachePurge(Scene):
    backends = ("origin",)
    conf = f"""
load_module worker_events;
load_module upstreams;
load_module cache_purge;
http {{
    worker_events_zone bus;
    proxy_cache_path {{tmp}}/cache keys_zone=assets:1m inactive=10m max_size=10m;
    upstream backend {{ zone backend 256k; server {{origin}}; }}
    server {{
        listen 127.0.0.1:{{port}};
        location /static/ {{
            proxy_pass http://backend;
            proxy_cache assets;
            proxy_cache_valid 200 10m;
            add_header X-Cache-Status $upstream_cache_status always;
        }}
        location /api/cache {{ cache_purge_api assets; cache_purge_key changeme; }}
        {EVENTS}
    }}
}}
"""

    def check(self):
        origin, path = self.backends["origin"], f"/static/page-{next(_unique)}"
        origin.respond(path, body="v1")
        assert self.server.get(path).headers["X-Cache-Status"] == "MISS"
        answers = self.server.each_worker(path)
        assert {(r.text, r.headers["X-Cache-Status"]) for r in answers.values()} == {("v1", "HIT")}
        origin.respond(path, body="v2")
        r = self.server.post("/api/cache", params={"key": "changeme"}, json={"key": "http://backend" + path})
        assert (r.status_code, r.json()["purged"]) == (200, 1), r.text
        for pid, r in self.server.each_worker(path).items():
            assert r.text == "v2", f"worker {pid} answered {r.text!r} ({r.headers['X-Cache-Status']}) after the purge"


class Healthchecks(Scene):
    backends = ("a", "b")
    conf = _two_peers("load_module healthchecks;", "health_check interval=300ms fails=1 passes=1 uri=/health;",
                      "location /api/health { health_check_status; }")

    def _states(self) -> dict[str, str]:
        peers = self.server.get("/api/health").json()["upstreams"]["backend"]["peers"]
        return {p["server"]: p["state"] for p in peers}

    def _runs(self) -> int:
        return self.server.get("/api/health").json()["upstreams"]["backend"]["prober"]["runs"]

    def check(self):
        a, b = self.backends["a"], self.backends["b"]
        for backend in (a, b):
            backend.respond("/who", body=backend.name)
        runs = self._runs()
        wait_for(lambda: self._runs() > runs, 10, what="the prober to run again")
        # a failing peer is seen by the prober and no worker routes to it any more
        a.set_healthy(False)
        try:
            wait_for(lambda: self._states()[a.address] == "unhealthy", 10, what="a to be found unhealthy")
            _only_b_answers(self.server)
        finally:
            a.set_healthy(True)
        wait_for(lambda: self._states()[a.address] == "healthy", 10, what="a to be healthy again")


class Hello(Scene):
    pythonpath = (ROOT / "examples",)
    conf = f"""
load_module worker_events;
load_module hello_module;
http {{
    worker_events_zone bus;
    server {{
        listen 127.0.0.1:{{port}};
        location /hello {{ hello; hello_greeting "Hi"; }}
        {EVENTS}
    }}
}}
"""

    def check(self):
        name = f"n{next(_unique)}"
        assert self.server.post("/hello", params={"name": name}).status_code == 201
        for pid, r in self.server.each_worker("/hello").items():
            assert r.json()["greeting"] == f"Hi, {name}!", f"worker {pid}: {r.json()}"


class OriginCache(Scene):
    backends = ("origin",)
    pythonpath = (ROOT / "examples" / "origin_cache",)
    conf = f"""
load_module worker_events;
load_module ngxsim_origin_cache;
http {{
    worker_events_zone bus;
    server {{
        listen 127.0.0.1:{{port}};
        location / {{ origin_cache_pass {{origin}}; }}
        location = /purge {{ origin_cache_purge; }}
        {EVENTS}
    }}
}}
"""

    def check(self):
        origin, path = self.backends["origin"], f"/page-{next(_unique)}"
        origin.respond(path, body="v1")
        assert {r.text for r in self.server.each_worker(path).values()} == {"v1"}
        origin.respond(path, body="v2")
        assert self.server.post("/purge", params={"path": path}).status_code == 200
        for pid, r in self.server.each_worker(path).items():
            assert r.text == "v2", f"worker {pid} answered {r.text!r} after the purge"


SCENES = {"worker_events": WorkerEvents, "upstreams": Upstreams, "cache_purge": CachePurge,
          "healthchecks": Healthchecks, "hello_module": Hello, "origin_cache": OriginCache}


def _start(kind: type[Scene], folder: Path, backends: dict[str, Backend]) -> Scene:
    server = start_server(folder, kind.conf, workers=WORKERS, mode="ngxsim", ready_path=READY,
                          pythonpath=[str(p) for p in kind.pythonpath],
                          placeholders={name: b.address for name, b in backends.items()})
    scene = kind(server, backends)
    scene.good = server.conf.read_text()
    return scene


@pytest.fixture(scope="module", params=list(SCENES))
def shared(request, tmp_path_factory):
    """One running ``ngxsim -c`` server per module (and its backends), shared by its sequences."""
    kind = SCENES[request.param]
    backends = {name: Backend(name).start() for name in kind.backends}
    held: list[Scene] = []
    try:
        held.append(_start(kind, tmp_path_factory.mktemp(request.param), backends))
        yield kind, backends, held
    finally:
        stop_all([*(s.server for s in held), *backends.values()])


@pytest.fixture
def scene(shared, tmp_path):
    """The module's shared server, working in every worker; a fresh one when an earlier sequence
    failed on it (so each sequence passes or fails on its own)."""
    kind, backends, held = shared
    if held[-1].failed:
        held[-1].server.stop()  # at once when it is dead, else it must still stop cleanly
        held.append(_start(kind, tmp_path, backends))
    current = held[-1]
    current.failed = True  # until the sequence has passed (the test's last line says so)
    current.check()
    return current


def _reject(scene) -> None:
    server, pids = scene.server, scene.server.worker_pids()
    before = server.output().count("reload rejected")
    server.conf.write_text(scene.good + BROKEN)
    server.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: server.output().count("reload rejected") > before, 20, what="the reload to be rejected")
    server.conf.write_text(scene.good)
    assert f'unknown directive "this_directive_does_not_exist" in {server.conf}:' in server.output()
    assert server.worker_pids() == pids  # the running workers stay


def _accept(scene) -> None:
    server, pids = scene.server, scene.server.worker_pids()
    before = server.output().count("reload of")
    server.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: server.output().count("reload of") > before, 20, what="the reload to be accepted")
    new = server.wait_workers(WORKERS, exclude=set(pids))
    wait_for(lambda: server.worker_pids() == sorted(new), 20, what="the old workers to exit")


def _respawn(scene) -> None:
    replacement = scene.server.kill_worker(path=READY)
    assert replacement in scene.server.worker_pids()
    assert "Worker failed to boot" not in scene.server.output()


SEQUENCES = {
    "rejected-respawn": (_reject, _respawn),
    "accepted-respawn": (_accept, _respawn),
    "rejected-accepted-respawn": (_reject, _accept, _respawn),
}


@pytest.mark.parametrize("sequence", list(SEQUENCES))
def test_a_module_survives_reloads_and_a_respawn_after_them(scene, sequence):
    for step in SEQUENCES[sequence]:
        step(scene)
        scene.check()  # the server answers, every worker (a respawned one too) runs the module
    assert not [line for line in scene.server.severe_lines() if "reload rejected" not in line], \
        scene.server.tail(60)
    scene.failed = False


FAILING_LATER = """
load_module ngxsim_test_fail_init;
load_module worker_events;
load_module upstreams;
http {{
    worker_events_zone bus;
    upstream backend {{ zone backend 256k; server {{peer}}; }}
    server {{
        listen 127.0.0.1:{{port}};
        location / {{ proxy_pass http://backend; }}
        {EVENTS}
    }}
}}
""".format(EVENTS=EVENTS)


def test_a_reload_rejected_after_a_module_ran_leaves_a_kept_zone_as_the_running_config_has_it(
        ngxsim_server, ngxsim_backend):
    a, b = ngxsim_backend(name="a"), ngxsim_backend(name="b")
    for backend in (a, b):
        backend.respond("/who", body=backend.name)
    server = ngxsim_server(FAILING_LATER, workers=WORKERS, mode="ngxsim", ready_path=READY,
                           placeholders={"peer": a.address})
    good = server.conf.read_text()
    # upstreams' init_master runs before the test module's (pluggy calls the last loaded first),
    # which then fails the reload
    server.conf.write_text(good.replace(a.address, b.address) + "\nfail_init_master on;\n")
    server.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "reload rejected" in server.output(), 20, what="the reload to be rejected")
    assert "RuntimeError('fail_init_master is on')" in server.output()
    server.conf.write_text(good)
    server.kill_worker(path=READY)
    answers = [r.text for _ in range(2) for r in server.each_worker("/who").values()]
    assert set(answers) == {"a"}, answers  # the running config's peer, in every worker

    # accepted: the kept zone is rebuilt from the new server line (ngxsim_reload_accepted)
    pids = server.worker_pids()
    server.conf.write_text(good.replace(a.address, b.address))
    server.proc.send_signal(signal.SIGHUP)
    new = server.wait_workers(WORKERS, exclude=set(pids))
    wait_for(lambda: server.worker_pids() == sorted(new), 20, what="the old workers to exit")
    assert {r.text for _ in range(2) for r in server.each_worker("/who").values()} == {"b"}
