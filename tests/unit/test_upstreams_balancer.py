"""The balancer's per-request question before any try: is every live peer reported unhealthy?"""

from __future__ import annotations

from ngxsim_plugins.upstreams.balancer import Peer, Snapshot
from ngxsim_plugins.upstreams.zone import HEALTH_CHECKING, HEALTH_DOWN, HEALTH_UP


def _snapshot(*peers: tuple[bool, int]) -> Snapshot:
    """Peers as (down, health)."""
    made = [Peer(i, i, "127.0.0.1", 8000 + i, 1, 1, 10.0, False, down, False) for i, (down, _) in enumerate(peers)]
    return Snapshot("up", 1, made, health={i: health for i, (_, health) in enumerate(peers)})


def test_all_unhealthy_only_when_every_live_peer_is_down_or_checking():
    assert Snapshot("up", 1, []).all_unhealthy() is False  # no peer: the balancer finds none to try
    assert _snapshot((True, HEALTH_UP), (True, HEALTH_DOWN)).all_unhealthy() is False  # all down by config
    assert _snapshot((False, HEALTH_DOWN), (False, HEALTH_CHECKING), (True, HEALTH_UP)).all_unhealthy() is True
    assert _snapshot((False, HEALTH_DOWN), (False, 0)).all_unhealthy() is False  # one not checked: usable
    assert _snapshot((False, HEALTH_UP), (False, HEALTH_DOWN)).all_unhealthy() is False
