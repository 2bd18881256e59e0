"""origin_cache under real gunicorn workers, with a real origin on loopback: only the ngxsim
pytest plugin's fixtures (ngxsim_server, ngxsim_backend) and what they return."""

import pytest

CONF = """
load_module worker_events;
load_module ngxsim_origin_cache;
http {
    worker_events_zone bus;
    server {
        listen 127.0.0.1:{port};
        location / { origin_cache_pass {origin}; }
        location = /purge { origin_cache_purge; }
        location = /events { worker_events_api; worker_events_zone bus; worker_events_channel ops; }
    }
}
"""


@pytest.mark.ngxsim_modes()  # plain gunicorn and ngxsim -c
def test_a_purge_through_one_worker_leaves_no_worker_serving_stale_content(ngxsim_server, ngxsim_backend):
    origin = ngxsim_backend()
    origin.respond("/page", body="v1")
    server = ngxsim_server(CONF, workers=3, placeholders={"origin": origin.address}, ready_path="/events")
    assert {r.text for r in server.each_worker("/page").values()} == {"v1"}  # every worker cached v1
    origin.respond("/page", body="v2")
    mark = server.events().newest()
    assert server.post("/purge", params={"path": "/page"}).status_code == 200
    server.events().expect(1, type="purged", payload={"path": "/page"}, since=mark)
    answers = server.each_worker("/page")
    assert {r.text for r in answers.values()} == {"v2"}  # no worker serves stale content
    assert {r.headers["X-Cache"] for r in answers.values()} == {"MISS"}


def test_each_worker_fetches_once_and_a_respawned_worker_starts_cold(ngxsim_server, ngxsim_backend):
    origin = ngxsim_backend()
    server = ngxsim_server(CONF, workers=3, placeholders={"origin": origin.address}, ready_path="/events")
    first = server.each_worker("/a")
    assert {r.headers["X-Cache"] for r in first.values()} == {"MISS"}
    # the origin saw one request from each worker: its records know the sending process
    assert origin.worker_pids("/a") == set(first) == set(server.worker_pids())
    assert {r.headers["X-Cache"] for r in server.each_worker("/a").values()} == {"HIT"}

    replacement = server.kill_worker(path="/events")
    again = server.each_worker("/a")
    assert again[replacement].headers["X-Cache"] == "MISS"
    assert {r.headers["X-Cache"] for pid, r in again.items() if pid != replacement} == {"HIT"}
    assert [r.worker_pid for r in origin.requests_for("/a")][-1] == replacement
    assert len(origin.requests_for("/a")) == 4


def test_a_failing_origin_is_a_502_and_a_bad_purge_publishes_nothing(ngxsim_server, ngxsim_backend):
    origin = ngxsim_backend()
    server = ngxsim_server(CONF, workers=2, placeholders={"origin": origin.address}, ready_path="/events")
    origin.respond("/down", action="close")  # reads the request, answers nothing
    r = server.get("/down")
    assert r.status_code == 502 and origin.address in r.json()["message"]
    origin.respond("/down", status=404, body="gone")
    assert (server.get("/down").status_code, server.get("/down").text) == (404, "gone")  # passed through, uncached
    assert len(origin.requests_for("/down")) == 3

    mark = server.events().newest()
    assert server.get("/purge?path=/down").status_code == 405
    assert server.post("/purge", params={"path": "down"}).status_code == 400
    server.events().expect(0, since=mark)
