"""The relay's durable state file: survives a round trip, a torn write never replaces it, and a
corrupt one is kept aside (for a person) while the relay starts afresh."""

from __future__ import annotations

import json

from ngxsim_plugins.cluster.state import RelayState, state_path


def test_round_trip_and_a_missing_file_is_a_first_start(tmp_path):
    path = state_path(str(tmp_path), "bus", "prod")
    fresh = RelayState.load(path)
    assert (fresh.ring_birth, fresh.relayed, fresh.cursor, fresh.seen) == (0, 0, None, {})
    fresh.ring_birth, fresh.relayed, fresh.cursor, fresh.seen = 17, 42, "1-0#3", {"A": 9}
    fresh.save()
    again = RelayState.load(path)
    assert (again.ring_birth, again.relayed, again.cursor, again.seen) == (17, 42, "1-0#3", {"A": 9})
    assert [p.name for p in tmp_path.iterdir()] == ["cluster.bus.prod.json"]  # no temporary file left


def test_a_corrupt_file_is_set_aside_and_the_relay_starts_afresh(tmp_path):
    path = state_path(str(tmp_path), "bus", "prod")
    with open(path, "w") as fh:
        fh.write('{"relayed": 4')  # torn by hand (a write-then-rename never leaves this)
    state = RelayState.load(path)
    assert (state.relayed, state.cursor) == (0, None)
    assert (tmp_path / "cluster.bus.prod.json.bad").read_text() == '{"relayed": 4'
    state.save()
    assert json.loads(open(path).read())["relayed"] == 0


def test_the_last_acknowledged_entry_survives_a_round_trip_and_an_older_file_has_none(tmp_path):
    path = state_path(str(tmp_path), "bus", "prod")
    state = RelayState.load(path)
    assert state.acked is None
    state.acked = ("812@1796619036158123", 1796618000000912)
    state.save()
    assert RelayState.load(path).acked == ("812@1796619036158123", 1796618000000912)
    with open(path, "w") as fh:
        json.dump({"ring_birth": 1, "relayed": 2, "cursor": "3", "seen": {}}, fh)  # written before it was kept
    assert RelayState.load(path).acked is None
