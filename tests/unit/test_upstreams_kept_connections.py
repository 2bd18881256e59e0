"""The per-worker idle connections of an upstream with ``keepalive`` (plugins/upstreams/
connections.py): at most N kept, the oldest closed first; none reused after
``keepalive_requests`` requests, ``keepalive_time`` or ``keepalive_timeout`` idle; one the peer
closed is never handed out."""

from __future__ import annotations

import socket

import pytest

from ngxsim_plugins.upstreams.connections import KeptConnections, Link


@pytest.fixture
def pairs():
    made: list[socket.socket] = []

    def pair(port: int = 1) -> tuple[Link, socket.socket]:
        ours, theirs = socket.socketpair()
        made.extend((ours, theirs))
        return Link(ours, "127.0.0.1", port), theirs

    yield pair
    for s in made:
        s.close()


def test_at_most_n_idle_the_oldest_closed_first(pairs):
    kept = KeptConnections()
    links = [pairs()[0] for _ in range(3)]
    for link in links:
        kept.keep("up", link, limit=2, requests=100, lifetime=3600)
    assert links[0].sock.fileno() == -1  # closed for a newer one
    assert kept.take("up", "127.0.0.1", 1, timeout=60) is links[2]  # the most recent first
    assert kept.take("up", "127.0.0.1", 1, timeout=60) is links[1]
    assert kept.take("up", "127.0.0.1", 1, timeout=60) is None


def test_only_a_connection_to_the_same_peer(pairs):
    kept = KeptConnections()
    link, _ = pairs(port=2)
    kept.keep("up", link, limit=4, requests=100, lifetime=3600)
    assert kept.take("up", "127.0.0.1", 1, timeout=60) is None
    assert kept.take("other", "127.0.0.1", 2, timeout=60) is None
    assert kept.take("up", "127.0.0.1", 2, timeout=60) is link


def test_keepalive_requests_and_time_close_instead_of_keeping(pairs):
    kept = KeptConnections()
    used, _ = pairs()
    used.requests = 2
    kept.keep("up", used, limit=4, requests=2, lifetime=3600)
    old, _ = pairs()
    old.born -= 11
    kept.keep("up", old, limit=4, requests=100, lifetime=10)
    assert used.sock.fileno() == -1 and old.sock.fileno() == -1
    assert kept.take("up", "127.0.0.1", 1, timeout=60) is None


def test_idle_too_long_or_closed_by_the_peer_is_not_handed_out(pairs):
    kept = KeptConnections()
    idle, _ = pairs()
    closed, peer = pairs()
    kept.keep("up", idle, limit=4, requests=100, lifetime=3600)
    kept.keep("up", closed, limit=4, requests=100, lifetime=3600)
    idle.idle_since -= 61
    peer.close()  # the peer's close: readable at our end
    assert kept.take("up", "127.0.0.1", 1, timeout=60) is None
    assert idle.sock.fileno() == -1 and closed.sock.fileno() == -1
