"""The cluster document of an upstream (snapshots.py): API changes applied to it give every host
the same peers and ids; each host keeps its own slots when it routes by a new revision."""

from __future__ import annotations

import pytest

from ngxsim_plugins.upstreams import snapshots


def doc(*servers, next_id=None):
    peers = [{"id": i, "server": s, "weight": 1, "max_fails": 1, "fail_timeout": 10.0, "backup": False,
              "down": False, "drain": False} for i, s in enumerate(servers, 1)]
    return {"peers": peers, "next_id": next_id or len(servers) + 1}


def test_add_takes_the_documents_next_id_on_every_host():
    start = doc("127.0.0.1:1", "127.0.0.1:2", next_id=7)
    a, peer_a = snapshots.apply_command(start, {"op": "add", "fields": {"server": "127.0.0.1:3", "weight": 2}})
    b, peer_b = snapshots.apply_command(start, {"op": "add", "fields": {"server": "127.0.0.1:3", "weight": 2}})
    assert peer_a["id"] == peer_b["id"] == 7 and a == b
    assert a["next_id"] == 8 and "slot" not in peer_a and all("slot" not in p for p in a["peers"])


def test_change_and_delete_and_their_errors():
    start = doc("127.0.0.1:1", "127.0.0.1:2")
    new, peer = snapshots.apply_command(start, {"op": "change", "peer": 2, "fields": {"drain": True, "weight": 5}})
    assert peer["drain"] is True and peer["weight"] == 5 and new["peers"][0] == start["peers"][0]
    new, gone = snapshots.apply_command(new, {"op": "delete", "peer": 1, "fields": {}})
    assert gone["id"] == 1 and [p["id"] for p in new["peers"]] == [2]
    with pytest.raises(LookupError):
        snapshots.apply_command(new, {"op": "change", "peer": 1, "fields": {"down": True}})
    with pytest.raises(snapshots.Conflict):
        snapshots.apply_command(new, {"op": "add", "fields": {"server": "127.0.0.1:2"}})
    with pytest.raises(ValueError):
        snapshots.apply_command(new, {"op": "change", "peer": 2, "fields": {"weight": 0}})


def test_adopt_keeps_this_hosts_slots_by_id_and_gives_new_ids_free_slots():
    # this host's zone: peer 1 in slot 5, peer 2 in slot 0 (its own history)
    mine = {"peers": [{**doc("127.0.0.1:1")["peers"][0], "slot": 5},
                      {**doc("127.0.0.1:1", "127.0.0.1:2")["peers"][1], "slot": 0}], "next_id": 3}
    cluster = doc("127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3")
    cluster["peers"][1]["drain"] = True
    new = snapshots.adopt(mine, cluster, slots=8)
    assert [(p["id"], p["slot"]) for p in new["peers"]] == [(1, 5), (2, 0), (3, 1)]
    assert new["peers"][1]["drain"] is True and new["next_id"] == 4
    # the same id naming another server (a host that changed it alone) is a new peer: not its slot
    other = doc("127.0.0.1:9")
    assert snapshots.adopt(mine, other, slots=8)["peers"][0]["slot"] == 0
    assert snapshots.document(new) == cluster


def test_adopt_refuses_more_peers_than_the_zone_holds():
    with pytest.raises(ValueError, match="room for 2 peers"):
        snapshots.adopt(None, doc("127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"), slots=2)


CONF = """load_module worker_events;
load_module upstreams;
load_module cluster;
http {
    worker_events_zone bus;
    cluster_bridge bus redis://127.0.0.1:6379/0 channels=%s state=%s;
    upstream backend {
        server 127.0.0.1:9001;
        %s
    }
    server {
        listen 127.0.0.1:8081;
        location / { proxy_pass http://backend; }
    }
}
"""


def load(tmp_path, channels="upstreams", extra=""):
    from ngxsim.core.conf.loader import load_configuration

    return load_configuration("/p/c.conf", text=CONF % (channels, tmp_path, extra))


def test_the_upstreams_are_cluster_wide_when_their_channel_is_bridged_whatever_the_module_order(tmp_path):
    config = load(tmp_path)
    assert config.stash["upstreams"].cluster is True
    assert "upstreams.sync" in {spec.name for spec in config.jobs if spec.service}
    assert load(tmp_path, channels="*").stash["upstreams"].cluster is True
    other = load(tmp_path, channels="app.config")
    assert other.stash["upstreams"].cluster is False and "upstreams.sync" not in {spec.name for spec in other.jobs}


def test_upstream_refresh_is_refused_with_cluster_wide_peers(tmp_path):
    from ngxsim import ConfigError

    source = tmp_path / "servers.json"
    source.write_text("[]")
    with pytest.raises(ConfigError) as err:
        load(tmp_path, extra=f"upstream_refresh file={source};")
    assert str(err.value).startswith('"upstream_refresh" cannot be used while the "upstreams" channel of event zone '
                                     '"bus" is bridged')
    assert str(err.value).endswith("in /p/c.conf:9")
    assert load(tmp_path, channels="app.config", extra=f"upstream_refresh file={source};")


def test_the_document_numbers_peers_from_0_as_the_api_does():
    # an upstream with no snapshot yet, and one whose snapshot has no next_id: the cluster's first
    # add is peer 0, as on a single host (NGINX Plus's numbering), not 1
    empty = snapshots.document(None)
    assert empty["next_id"] == snapshots.FIRST_ID == 0
    new, peer = snapshots.apply_command(empty, {"op": "add", "fields": {"server": "127.0.0.1:1"}})
    assert peer["id"] == 0 and new["next_id"] == 1
    assert snapshots.adopt(None, {"peers": []}, slots=4)["next_id"] == 0
    bare, peer = snapshots.apply_command({"peers": []}, {"op": "add", "fields": {"server": "127.0.0.1:2"}})
    assert peer["id"] == 0
