"""Building an upstream's next snapshot: from the config's ``server`` lines, the state file, the
API's add/change/delete, or a refresh source. Each builder checks the whole new peer list before
anything is activated; a ``ValueError`` (400), ``LookupError`` (404) or ``KeyError`` (409)
activates nothing."""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass

from ngxsim import parse_time

from .conf import ServerSpec, parse_address, parse_server

FIELDS = ("server", "weight", "max_fails", "fail_timeout", "backup", "down", "drain")
FIRST_ID = 0  # NGINX Plus numbers an upstream's peers from 0
_ID_COMMENT = re.compile(r"\bid=(\d{1,9})\b")
_NEXT_ID = re.compile(r"#\s*ngxsim:\s*next_id=(\d{1,9})\s*$")


class SavedPeers(list):
    """The state file's peers (``StatePeer`` items) and the next id it recorded (None: not
    recorded), so an id a deleted peer had is not given to another after a restart."""

    next_id: int | None = None


@dataclass(frozen=True)
class StatePeer:
    """One line of the state file: the peer, its drain mode and the id it had (kept across
    restarts, so a script's ``PATCH /servers/3`` keeps meaning the same peer)."""

    spec: ServerSpec
    drain: bool = False
    id: int | None = None


class Conflict(Exception):
    """The change conflicts with what is there (409)."""


def peer_json(spec: ServerSpec, peer_id: int, slot: int, drain: bool = False) -> dict:
    return {"id": peer_id, "slot": slot, **spec.params(), "drain": drain}


def spec_of(item: dict) -> ServerSpec:
    host, port = parse_address(item["server"])
    return ServerSpec(host, port, item["weight"], item["max_fails"], float(item["fail_timeout"]), item["backup"], item["down"])


def from_specs(specs: list[ServerSpec], current: dict | None, slots: int, checking_new: bool = False,
               saved: list[StatePeer] | None = None) -> dict:
    """A snapshot of ``specs``; a peer whose server and parameters are unchanged keeps its id,
    slot and drain state (so a refresh that changes nothing elsewhere keeps its counters). A
    peer new to the zone takes its id and drain mode from ``saved`` (the state file) when it is
    there, so ids and drains survive a restart."""
    old = {(p["server"]): p for p in (current or {"peers": []})["peers"]}
    given = {s.spec.server: s for s in saved or ()}
    taken = {p["id"] for p in old.values()}
    recorded = getattr(saved, "next_id", None)
    next_id = max([(current or {}).get("next_id", FIRST_ID), *(s.id + 1 for s in given.values() if s.id is not None),
                   *([recorded] if recorded is not None else [])])
    used = set()
    peers = []
    seen = set()
    for spec in specs:
        if spec.server in seen:
            raise Conflict(f'server "{spec.server}" is listed twice')
        seen.add(spec.server)
        before = old.get(spec.server)
        if before is not None:
            peers.append({**peer_json(spec, before["id"], before["slot"], before.get("drain", False))})
            used.add(before["slot"])
        else:
            peers.append(None)
    for i, spec in enumerate(specs):
        if peers[i] is None:
            slot = _free_slot(used, slots)
            used.add(slot)
            keep = given.get(spec.server)
            if keep is not None and keep.id is not None and keep.id not in taken:
                peer_id = keep.id
            else:
                peer_id = next_id
                next_id += 1
            taken.add(peer_id)
            peers[i] = peer_json(spec, peer_id, slot, keep.drain if keep is not None else False)
            if checking_new:
                peers[i]["checking"] = True
    return {"peers": peers, "next_id": next_id}


def _free_slot(used: set[int], slots: int) -> int:
    for slot in range(slots):
        if slot not in used:
            return slot
    raise ValueError(f"the upstream's zone has room for {slots} peers: give it a larger zone")


def _clean(peers: list[dict]) -> list[dict]:
    return [{k: v for k, v in p.items() if k != "checking"} for p in peers]


# -- the API's changes ---------------------------------------------------------------------------


def checked_fields(body: dict, adding: bool) -> dict:
    """The API body's fields, each checked; ValueError names the first bad one."""
    allowed = set(FIELDS) - ({"drain"} if adding else {"server"})
    unknown = sorted(set(body) - allowed)
    if unknown:
        extra = ' ("server" cannot be changed: delete the peer and add a new one)' if "server" in unknown else ""
        names = ", ".join(_shown(u) for u in unknown)
        raise ValueError(f"unknown field(s) {names}{extra}; allowed: {', '.join(sorted(allowed))}")
    out = {}
    for key, value in body.items():
        if key == "server":
            if not isinstance(value, str):
                raise ValueError('field "server" must be a string "HOST:PORT"')
            out["server"] = ServerSpec(*parse_address(value)).server
        elif key in ("weight", "max_fails"):
            low, high = (1, 1000) if key == "weight" else (0, 1000)
            if type(value) is not int or not low <= value <= high:
                raise ValueError(f'field "{key}" must be an integer from {low} to {high}, not {_shown(value)}')
            out[key] = value
        elif key == "fail_timeout":
            out[key] = _seconds(value)
        else:  # backup, down, drain
            if type(value) is not bool:
                raise ValueError(f'field "{key}" must be true or false, not {_shown(value)}')
            out[key] = value
    if adding and "server" not in out:
        raise ValueError('field "server" is required')
    return out


def _shown(value) -> str:
    """A value in an error message as JSON writes it: nginx's double quotes (``not "3"``)."""
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return f'"{value}"'


def _seconds(value) -> float:
    if type(value) in (int, float) and 0 <= value <= 86400:
        return float(value)
    if isinstance(value, str):
        try:
            seconds = parse_time(value)
        except (ValueError, OverflowError):
            seconds = -1
        if 0 <= seconds <= 86400:
            return seconds
    raise ValueError(f'field "fail_timeout" must be a time such as "10s" or a number of seconds (0 to 1d), '
                     f'not {_shown(value)}')


def add_peer(current: dict, fields: dict, slots: int, checking: bool,
             busy: frozenset[int] = frozenset()) -> tuple[dict, dict]:
    """``busy``: slots with requests in flight though no peer holds them (a removed peer's,
    NGINX Plus's zombies), taken only when no other is free: a new peer does not inherit them."""
    peers = _clean(current["peers"])
    if any(p["server"] == fields["server"] for p in peers):
        raise Conflict(f'server "{fields["server"]}" is already in the upstream')
    defaults = ServerSpec("h", 1).params()
    item = {**defaults, **fields}
    spec = spec_of({**item, "server": fields["server"]})
    used = {p["slot"] for p in peers}
    try:
        slot = _free_slot(used | busy, slots)
    except ValueError:
        slot = _free_slot(used, slots)
    new_peer = peer_json(spec, current.get("next_id", FIRST_ID), slot)
    if checking:
        new_peer["checking"] = True
    return {"peers": peers + [new_peer], "next_id": current.get("next_id", FIRST_ID) + 1}, new_peer


def change_peer(current: dict, peer_id: int, fields: dict) -> tuple[dict, dict, dict]:
    peers = _clean(current["peers"])
    for i, p in enumerate(peers):
        if p["id"] == peer_id:
            before = dict(p)
            peers[i] = {**p, **fields}
            return {"peers": peers, "next_id": current.get("next_id", FIRST_ID)}, peers[i], before
    raise LookupError(f"no peer with id {peer_id}")


def delete_peer(current: dict, peer_id: int) -> tuple[dict, dict]:
    peers = _clean(current["peers"])
    for p in peers:
        if p["id"] == peer_id:
            return {"peers": [q for q in peers if q["id"] != peer_id], "next_id": current.get("next_id", FIRST_ID)}, p
    raise LookupError(f"no peer with id {peer_id}")


# -- the refresh source and the state file ---------------------------------------------------------


def specs_from_json(data) -> list[ServerSpec]:
    """A refresh source: a JSON list of servers with the API's fields (``drain`` excepted)."""
    if isinstance(data, dict) and "servers" in data:
        data = data["servers"]
    if not isinstance(data, list):
        raise ValueError("a JSON list of servers is expected")
    specs = []
    for i, item in enumerate(data):
        if not isinstance(item, dict):
            raise ValueError(f"entry {i} is not a JSON object")
        try:
            fields = checked_fields(item, adding=True)
        except ValueError as exc:
            raise ValueError(f"entry {i}: {exc}") from None
        specs.append(spec_of({**ServerSpec("h", 1).params(), **fields}))
    return specs


def read_state(path: str) -> SavedPeers | None:
    """The state file's peers, or None when there is none. Its lines are NGINX Plus's format
    (``server ADDRESS [parameters] [drain];``), each followed by a comment with the peer's id
    (``# id=3``), which NGINX Plus would read as a comment; a first line ``# ngxsim:
    next_id=N`` records the next id to give."""
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read(1 << 20)
    except FileNotFoundError:
        return None
    peers = SavedPeers()
    for number, raw in enumerate(text.splitlines(), 1):
        recorded = _NEXT_ID.match(raw.strip())
        if recorded:
            peers.next_id = int(recorded.group(1))
            continue
        line, _, comment = raw.partition("#")
        line = line.strip()
        if not line:
            continue
        words = line.rstrip(";").split()
        if not line.endswith(";") or not words or words[0] != "server" or len(words) < 2:
            raise ValueError(f"{path}:{number}: expected \"server ADDRESS [parameters];\"")
        drain = "drain" in words[2:]
        try:
            spec = parse_server([w for w in words[1:] if w != "drain"])
        except ValueError as exc:
            raise ValueError(f"{path}:{number}: {exc}") from None
        found = _ID_COMMENT.search(comment)
        peers.append(StatePeer(spec, drain, int(found.group(1)) if found else None))
    return peers


def write_state(path: str, snapshot: dict) -> None:
    """Write the snapshot's peers (and its next id) atomically (a temp file renamed over the old
    one): a crash leaves the old file or the new one, never half of one."""
    lines = [f"# ngxsim: next_id={snapshot.get('next_id', FIRST_ID)}", *map(state_line, snapshot["peers"])]
    folder = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix=".ngxsim-state.", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write("".join(line + "\n" for line in lines))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def state_line(peer: dict) -> str:
    """``server ADDR params [drain]; # id=N``: NGINX Plus's line, the id in a comment."""
    line = spec_of(peer).line()
    if peer.get("drain"):
        line = line[:-1] + " drain;"
    return f"{line} # id={peer['id']}"


# -- the cluster's document ------------------------------------------------------------------------
# Cluster-wide (the bus's ``upstreams`` channel bridged), an upstream's peers are one document in
# the engine's key-value store: {"peers": [peer without "slot"], "next_id": N}. Its revision is
# the cluster's order of changes; each host keeps the slots (its counters) of its own zone.


def document(snapshot: dict | None) -> dict:
    """The cluster document of a zone snapshot: its peers without their (per-host) slots."""
    snapshot = snapshot or {"peers": [], "next_id": FIRST_ID}
    return {"peers": [{k: v for k, v in p.items() if k not in ("slot", "checking")} for p in snapshot["peers"]],
            "next_id": snapshot.get("next_id", FIRST_ID)}


def apply_command(doc: dict, command: dict) -> tuple[dict, dict | None]:
    """One API change (``{"op": "add"|"change"|"delete", "peer": ID, "fields": {...}}``) applied to
    a cluster document: (new document, the peer added or changed, or the one deleted). Raises what
    the API's own builders raise: Conflict (409), LookupError (404), ValueError (400)."""
    # slots are per host: give the document's peers distinct placeholder slots for the builders
    current = {"peers": [{**p, "slot": i} for i, p in enumerate(doc["peers"])],
               "next_id": doc.get("next_id", FIRST_ID)}
    op = command["op"]
    if op == "add":
        fields = checked_fields(command["fields"], adding=True)
        new, peer = add_peer(current, fields, len(current["peers"]) + 1, checking=False)
    elif op == "change":
        new, peer, _ = change_peer(current, command["peer"], checked_fields(command["fields"], adding=False))
    elif op == "delete":
        new, peer = delete_peer(current, command["peer"])
    else:
        raise ValueError(f'unknown change "{op}"')
    return document(new), {k: v for k, v in peer.items() if k != "slot"}


def adopt(current: dict | None, doc: dict, slots: int, checking_new: bool = False) -> dict:
    """The zone snapshot that routes by cluster document ``doc``: the peers and ids of the
    document; a peer this host has already (same id and server) keeps its slot, counters and
    in-flight accounting, a new one takes a free slot."""
    old = {p["id"]: p for p in (current or {"peers": []})["peers"]}
    keep, avoid = {}, set()
    for p in doc["peers"]:
        before = old.get(p["id"])
        if before is not None and before["server"] == p["server"]:
            keep[p["id"]] = before["slot"]
        elif before is not None:
            avoid.add(before["slot"])  # its slot still carries that id: reusing it would keep the counters
    used = set(keep.values()) | avoid
    peers = []
    for p in doc["peers"]:
        slot = keep.get(p["id"])
        peer = {**p, "slot": slot}
        if slot is None:
            peer["slot"] = _free_slot(used, slots)
            used.add(peer["slot"])
            if checking_new:
                peer["checking"] = True
        peers.append(peer)
    return {"peers": peers, "next_id": doc.get("next_id", FIRST_ID)}
