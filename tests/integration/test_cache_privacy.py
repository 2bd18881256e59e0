"""No private answer crosses clients: every storage rule, decided from the headers as the origin
sent them, through gunicorn -w 4 and a real origin whose page is per user (it answers the
request's ``Cookie``). Alice asks first; then Bob's requests, spread over every worker, must each
get Bob's page from the origin — never Alice's from a cache level.

One server for the whole module (a cache path per location, a path per rule), so each rule is
its own test without a server start each."""

from __future__ import annotations

import pytest

from ngxsim.testing import Backend, start_server, stop_all

CONF = """
load_module worker_events;
load_module upstreams;
load_module cache_purge;
http {
    upstream origin { zone origin 256k; server {backend}; }
    worker_events_zone bus;
    proxy_cache_path {tmp}/cache keys_zone=pages:1m inactive=10m;
    server {
        listen 127.0.0.1:{port};
        location /rule/ {
            proxy_pass http://origin;
            proxy_cache pages;
            proxy_cache_valid 200 10m;
            add_header X-Cache-Status $upstream_cache_status always;
        }
        location /ignoring/ {
            proxy_pass http://origin;
            proxy_cache pages;
            proxy_cache_valid 200 10m;
            proxy_ignore_headers Set-Cookie X-Accel-Expires;
            add_header X-Cache-Status $upstream_cache_status always;
        }
        location /ready { return 200 "ready"; }
    }
}
"""
WORKERS = 4
PAST = "Thu, 01 Jan 1970 00:00:00 GMT"

# (test id, the origin's header lines for the per-user page): each must keep it out of every level
PRIVATE = [
    ("x-accel-expires-0", [("Cache-Control", "max-age=600"), ("X-Accel-Expires", "0")]),
    ("x-accel-expires-0-first", [("X-Accel-Expires", "0"), ("Cache-Control", "public, max-age=600")]),
    ("x-accel-expires-at-past", [("X-Accel-Expires", "@1000000000")]),
    ("cache-control-private", [("Cache-Control", "private, max-age=600")]),
    ("cache-control-private-upper", [("Cache-Control", "PRIVATE")]),
    ("cache-control-no-cache", [("Cache-Control", "no-cache")]),
    ("cache-control-no-store", [("Cache-Control", "max-age=600, no-store")]),
    ("cache-control-second-line-private", [("Cache-Control", "max-age=600"), ("Cache-Control", "private")]),
    ("max-age-0", [("Cache-Control", "max-age=0")]),
    ("max-age-non-ascii-digit", [("Cache-Control", "max-age=\u00b2")]),
    ("s-maxage-quoted", [("Cache-Control", 's-maxage="600"')]),
    ("set-cookie", [("Set-Cookie", "session=alice-secret"), ("Cache-Control", "max-age=600")]),
    ("set-cookie-with-x-accel-expires", [("X-Accel-Expires", "600"), ("Set-Cookie", "session=alice-secret")]),
    ("expires-past", [("Expires", PAST)]),
    ("expires-invalid", [("Expires", "not a date")]),
    ("vary-star", [("Vary", "*"), ("Cache-Control", "max-age=600")]),
]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    backend = Backend("origin").start()
    server = None
    try:
        server = start_server(tmp_path_factory.mktemp("privacy"), CONF, workers=WORKERS, ready_path="/ready",
                              placeholders={"backend": backend.address})
        yield server, backend
    finally:
        stop_all([s for s in (server, backend) if s is not None])


def per_user(request) -> str:
    return f"page of {request.headers.get('Cookie', 'nobody')}"


def alice_then_bob(server, backend, path, headers):
    """Alice's request, then 3 rounds of Bob's over every worker: Bob's answers."""
    backend.respond(path, body=per_user, headers=headers)
    alice = server.get(path, headers={"Cookie": "user=alice"})
    assert (alice.status_code, alice.content) == (200, b"page of user=alice")
    before = len(backend.requests_for(path))
    bob = server.spray(path, 3 * WORKERS, headers={"Cookie": "user=bob"})
    assert len({r.worker_pid for r in bob}) == WORKERS  # every worker was asked
    return alice, bob, len(backend.requests_for(path)) - before


@pytest.mark.parametrize("rule, headers", PRIVATE, ids=[rule for rule, _ in PRIVATE])
def test_a_private_answer_never_reaches_another_client(site, rule, headers):
    server, backend = site
    alice, bob, fetched = alice_then_bob(server, backend, f"/rule/{rule}", headers)
    assert alice.headers["X-Cache-Status"] == "MISS"
    crossed = [(r.worker_pid, r.headers["X-Cache-Status"]) for r in bob if r.content != b"page of user=bob"]
    assert not crossed, f"{rule}: Bob got Alice's page from {crossed}"
    assert {r.headers["X-Cache-Status"] for r in bob} == {"MISS"}
    assert fetched == len(bob)  # each went to the origin
    assert "X-Accel-Expires" not in alice.headers  # hidden from the client, obeyed by the cache


def test_vary_cookie_stores_a_page_per_cookie(site):
    """Vary: Cookie: stored per variant, as nginx: Bob's page is fetched once, then his own copy
    answers on every worker; Alice's never reaches him."""
    server, backend = site
    alice, bob, fetched = alice_then_bob(server, backend, "/rule/vary-cookie",
                                         [("Vary", "Cookie"), ("Cache-Control", "max-age=600")])
    assert [r.content for r in bob] == [b"page of user=bob"] * len(bob)
    assert fetched == 1 and sorted(r.headers["X-Cache-Status"] for r in bob)[0] == "HIT"


def test_the_same_page_without_those_headers_is_shared_as_nginx_shares_it(site):
    """The control: the key has no cookie in it, so a cacheable page does reach Bob (a HIT on every
    worker) — what the tests above would see if a rule were not applied."""
    server, backend = site
    alice, bob, fetched = alice_then_bob(server, backend, "/rule/cacheable", [("Cache-Control", "max-age=600")])
    assert {(r.headers["X-Cache-Status"], r.content) for r in bob} == {("HIT", b"page of user=alice")}
    assert fetched == 0


def test_a_positive_x_accel_expires_is_obeyed_and_hidden(site):
    server, backend = site
    alice, bob, fetched = alice_then_bob(server, backend, "/rule/accel-60",
                                         [("Cache-Control", "private"), ("X-Accel-Expires", "60")])
    assert {r.headers["X-Cache-Status"] for r in bob} == {"HIT"} and fetched == 0  # nginx: it outranks private
    assert "X-Accel-Expires" not in alice.headers and all("X-Accel-Expires" not in r.headers for r in bob)


def test_proxy_ignore_headers_leaves_those_lines_out(site):
    server, backend = site
    _, bob, fetched = alice_then_bob(server, backend, "/ignoring/cookie", [("Set-Cookie", "a=b")])
    assert {r.headers["X-Cache-Status"] for r in bob} == {"HIT"} and fetched == 0
    # X-Accel-Expires ignored: Cache-Control decides, and it says private
    _, bob, fetched = alice_then_bob(server, backend, "/ignoring/private",
                                     [("X-Accel-Expires", "60"), ("Cache-Control", "private")])
    assert {(r.headers["X-Cache-Status"], r.content) for r in bob} == {("MISS", b"page of user=bob")}
    assert fetched == len(bob)


def test_no_traceback_in_the_log(site):
    server, _ = site
    assert "Traceback" not in server.output()
