"""The upstreams API (shaped after NGINX Plus's ``/api/N/http/upstreams``), relative to the
``upstreams_api`` location:

    GET    /                      every upstream            GET  /NAME            one
    GET    /NAME/servers          its peers                 GET  /NAME/servers/ID one peer
    POST   /NAME/servers          add a peer (JSON)         PATCH /NAME/servers/ID change one
    DELETE /NAME/servers/ID       remove one

Every accepted change becomes a new snapshot of the upstream, checked whole before it is
activated, written to the ``state`` file when there is one, and announced on the bus
(``snapshot_activated``; ``peer_draining`` and later ``peer_drained`` for a drain).
"""

from __future__ import annotations

import re
import time

from ngxsim import ApiError, Methods, check_key, json_response, read_json

from . import snapshots, sync
from .conf import _time_text
from .state import initial_health, state
from .zone import HEALTH_CHECKING, HEALTH_DOWN, HEALTH_NONE

MAX_BODY = 4096
_PATH = re.compile(r"/?|/([^/]+)/?|/([^/]+)/servers/?|/([^/]+)/servers/([^/]+)/?")


class UpstreamsApi:
    def __init__(self, location, conf):
        self.prefix = location.value.path.rstrip("/")
        self.key = location.get("upstreams_api_key")
        self.conf = conf
        self.dispatch = Methods(GET=self.get, HEAD=self.get, POST=self.post, PATCH=self.patch, DELETE=self.delete)

    def __call__(self, ctx):
        return self.dispatch(ctx)

    # -- paths -----------------------------------------------------------------------------------

    def _route(self, ctx) -> tuple[str | None, bool, int | None]:
        """(upstream name or None for all, servers collection?, peer id or None)."""
        rest = ctx.uri[len(self.prefix):] if ctx.uri.startswith(self.prefix) else None
        m = _PATH.fullmatch(rest or "")
        if rest is None or m is None:
            raise ApiError(404, f"no such API path {ctx.uri}")
        name = m.group(1) or m.group(2) or m.group(3)
        servers = bool(m.group(2) or m.group(3))
        peer_id = None
        if m.group(4) is not None:
            if not (m.group(4).isascii() and m.group(4).isdigit()) or len(m.group(4)) > 18:  # int("²") raises
                raise ApiError(404, f'peer id must be a number, not "{m.group(4)}"')
            peer_id = int(m.group(4))
        if name is not None and name not in self.conf.upstreams:
            raise ApiError(404, f'upstream "{name}" not found')
        return name, servers, peer_id

    # -- reading ---------------------------------------------------------------------------------

    def get(self, ctx):
        name, servers, peer_id = self._route(ctx)
        st = state(ctx.runtime)
        if name is None:
            return json_response({n: self._upstream(st, n) for n in self.conf.upstreams})
        up = self._upstream(st, name)
        if peer_id is not None:
            return json_response(self._find(up["peers"], peer_id))
        return json_response(up["peers"] if servers else up)

    def _upstream(self, st, name: str) -> dict:
        zone = st.zone(name)
        data = zone.read_snapshot() or {"version": 0, "peers": []}
        active = st.active(name)
        up = self.conf.upstreams[name]
        peers = [self._peer(zone, p, active[p["slot"]]) for p in data["peers"]]
        if not self.conf.cluster:
            return {"name": name, "version": data["version"], "zone": up.zone, "peers": peers}
        me = sync.instance_of(st.runtime.config, self.conf.bus)
        for peer, p in zip(peers, data["peers"]):
            if peer["drain"]:  # each host's drain: its own in-flight requests
                peer["drain_hosts"] = st.drain_hosts(name, peer["id"], me, active[p["slot"]])
        return {"name": name, "version": data["version"], "revision": data.get("revision"),
                "cluster": "apart" if data.get("apart") else "joined", "unsynced": len(data.get("unsynced") or ()),
                "zone": up.zone, "peers": peers}

    @staticmethod
    def _peer(zone, p: dict, active: int) -> dict:
        c = zone.counters(p["slot"])
        unavail = bool(p["max_fails"]) and c.fails >= p["max_fails"] and time.monotonic() - c.checked <= p["fail_timeout"]
        if p["down"]:
            state_ = "down"
        elif p.get("drain"):
            state_ = "draining"
        elif c.health == HEALTH_CHECKING:
            state_ = "checking"
        elif c.health == HEALTH_DOWN:
            state_ = "unhealthy"
        elif unavail:
            state_ = "unavail"
        else:
            state_ = "up"
        health = None if c.health == HEALTH_NONE else {
            "healthy": c.health not in (HEALTH_DOWN, HEALTH_CHECKING), "fails": c.health_fails, "passes": c.health_passes}
        return {"id": p["id"], "server": p["server"], "weight": p["weight"], "max_fails": p["max_fails"],
                "fail_timeout": _time_text(p["fail_timeout"]), "backup": p["backup"], "down": p["down"],
                "drain": p.get("drain", False), "state": state_, "active": active, "requests": c.requests,
                "fails": c.fails_total, "health": health}

    @staticmethod
    def _find(peers: list[dict], peer_id: int) -> dict:
        for p in peers:
            if p["id"] == peer_id:
                return p
        raise ApiError(404, f"peer {peer_id} not found")

    # -- writing ---------------------------------------------------------------------------------

    def _write_target(self, ctx, want_peer: bool) -> str:
        check_key(ctx, self.key, action="changing an upstream")
        name, servers, peer_id = self._route(ctx)
        if name is None or not servers or (peer_id is None) == want_peer:
            method = ctx.environ["REQUEST_METHOD"]
            where = "/NAME/servers/ID" if want_peer else "/NAME/servers"
            raise ApiError(405, f"method {method} is allowed on {self.prefix}{where} only",
                           headers={"Allow": "GET, HEAD, PATCH, DELETE" if want_peer else "GET, HEAD, POST"})
        return name

    def post(self, ctx):
        name = self._write_target(ctx, want_peer=False)
        fields = self._fields(ctx, adding=True)
        if self.conf.cluster:
            return self._cluster_change(ctx, name, "add", None, fields)
        st = state(ctx.runtime)
        zone = st.zone(name)
        checking = initial_health(self.conf, name) == HEALTH_CHECKING
        new = self._apply(st, name, lambda cur: snapshots.add_peer(cur, fields, zone.layout.slots, checking))
        peer = new[1]
        return json_response(self._peer(zone, peer, 0), 201)

    def patch(self, ctx):
        name = self._write_target(ctx, want_peer=True)
        peer_id = self._route(ctx)[2]
        fields = self._fields(ctx, adding=False)
        if self.conf.cluster:
            return self._cluster_change(ctx, name, "change", peer_id, fields)
        st = state(ctx.runtime)
        zone = st.zone(name)
        holder = {}

        def change(cur):
            snap, peer, before = snapshots.change_peer(cur, peer_id, fields)
            holder["before"] = before
            return snap, peer

        _, peer = self._apply(st, name, change)
        before = holder["before"]
        if peer.get("drain") and not before.get("drain"):
            zone.clear_drained_flag(peer["slot"])
            st.publish("peer_draining", {"upstream": name, "peer": peer["id"], "server": peer["server"]})
            st.check_drained(name)
        return json_response(self._peer(zone, peer, st.active(name)[peer["slot"]]))

    def delete(self, ctx):
        name = self._write_target(ctx, want_peer=True)
        peer_id = self._route(ctx)[2]
        if self.conf.cluster:
            return self._cluster_change(ctx, name, "delete", peer_id, {})
        st = state(ctx.runtime)
        self._apply(st, name, lambda cur: snapshots.delete_peer(cur, peer_id))
        return json_response(self._upstream(st, name)["peers"])

    def _cluster_change(self, ctx, name: str, op: str, peer_id: int | None, fields: dict):
        """Cluster-wide: the change goes to this instance's sync service (which alone talks to the
        engine) as a ``change_requested`` event; the answer waits for its outcome at most
        ``APPLY_BOUND``, else ``202`` with the change's id (it is applied later, or was lost with
        a sync service that died: the caller checks ``GET`` and retries)."""
        st = state(ctx.runtime)
        change = {"id": sync.new_change_id(), "upstream": name, "op": op, "peer": peer_id,
                  "fields": {k: (v if k != "fail_timeout" else float(v)) for k, v in fields.items()}}
        waiting = st.waiters.register(change["id"])
        try:
            sync.publish_change(ctx.runtime, change)
        except ValueError:
            st.waiters.wait(change["id"], waiting, 0)
            raise ApiError(413, "the change is too large to be sent to the cluster (512 bytes of JSON)") from None
        result = st.waiters.wait(change["id"], waiting, sync.APPLY_BOUND)
        if result is None:
            return json_response({"change": change["id"], "status": "pending",
                                  "message": "the change is queued for the cluster and not applied yet"}, 202)
        if result["status"] >= 400:
            raise ApiError(result["status"], result.get("error", "the change was not made"))
        st.reload(name)
        up = self._upstream(st, name)
        if op == "delete":
            return json_response(up["peers"])
        return json_response(self._find(up["peers"], result["peer"]), result["status"])

    def _fields(self, ctx, adding: bool) -> dict:
        body = read_json(ctx, MAX_BODY)
        try:
            return snapshots.checked_fields(body, adding)
        except ValueError as exc:
            raise ApiError(400, str(exc)) from None

    def _apply(self, st, name: str, change):
        """Make and activate the next snapshot, or raise the API error that says why not."""
        up = self.conf.upstreams[name]

        def guarded(cur):
            result = change(cur or {"peers": [], "next_id": 1})
            if up.state:
                snapshots.write_state(up.state, result[0]["peers"])
            return result

        try:
            new, extra = st.zone(name).update(guarded)
        except LookupError as exc:
            raise ApiError(404, str(exc)) from None
        except snapshots.Conflict as exc:
            raise ApiError(409, str(exc)) from None
        except (ValueError, OverflowError) as exc:
            raise ApiError(400, str(exc)) from None
        except OSError as exc:
            raise ApiError(500, f'the change was not made: cannot write the state file "{up.state}": {exc.strerror}') from None
        st.publish("snapshot_activated", {"upstream": name, "version": new["version"]})
        st.reload(name)  # this worker routes by it at once; the others when they deliver the event
        return new, extra
