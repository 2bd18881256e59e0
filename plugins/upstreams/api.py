"""The upstreams API: NGINX Plus's ``/api/N/http/upstreams`` (a section of the core's ``api``
location) and the ``upstreams_api`` location, the same code mounted at its own path:

    GET    /                      every upstream            GET  /NAME            one
    GET    /NAME/servers          its peers                 GET  /NAME/servers/ID one peer
    POST   /NAME/servers          add a peer (JSON)         PATCH /NAME/servers/ID change one
    DELETE /NAME/servers/ID       remove one

Every accepted change becomes a new snapshot of the upstream, checked whole before it is
activated, written to the ``state`` file when there is one, and announced on the bus
(``snapshot_activated``; ``peer_draining`` and later ``peer_drained`` for a drain).
"""

from __future__ import annotations

import time

from ngxsim import ApiAnswer, ApiError, ApiRequest, ApiSection, check_key, iso_time, json_response

from . import snapshots, sync
from .conf import _time_text
from .state import initial_health, state
from .zone import HEALTH_CHECKING, HEALTH_DOWN, HEALTH_NONE

MAX_BODY = 4096
# the NGINX Plus error code of a cluster-wide change refused by the sync service, by its status
_CLUSTER_CODES = {400: "UpstreamConfFormatError", 404: "UpstreamServerNotFound",
                  409: "UpstreamServerAlreadyExists", 500: "StateFileError"}


class UpstreamsSection:
    """``http/upstreams`` of the ``api`` location; the paths of the module's docstring below it."""

    def __init__(self, conf):
        self.conf = conf

    def section(self) -> ApiSection:
        return ApiSection("http/upstreams", self.handle, writes=("POST", "PATCH", "DELETE"))

    def handle(self, req: ApiRequest):
        name, servers, peer_id = self._route(req.parts)
        if req.method in ("GET", "HEAD"):
            return self.get(req, name, servers, peer_id)
        if name is None or not servers or (peer_id is None) != (req.method == "POST"):
            allowed = "GET, HEAD, PATCH, DELETE" if peer_id is not None else "GET, HEAD, POST"
            where = "NAME/servers/ID" if req.method != "POST" else "NAME/servers"
            raise ApiError(405, f"method {req.method} is allowed on {where} only", headers={"Allow": allowed},
                           code="MethodNotSupported")
        if req.method == "POST":
            return self.post(req, name)
        if req.method == "PATCH":
            return self.patch(req, name, peer_id)
        return self.delete(req, name, peer_id)

    # -- paths -----------------------------------------------------------------------------------

    def _route(self, parts: list[str]) -> tuple[str | None, bool, int | None]:
        """(upstream name or None for all, servers collection?, peer id or None)."""
        if len(parts) > 3 or (len(parts) >= 2 and parts[1] != "servers"):
            raise ApiError(404, "path not found", code="PathNotFound")
        name = parts[0] if parts else None
        if name is not None and name not in self.conf.upstreams:
            raise ApiError(404, f'upstream "{name}" not found', code="UpstreamNotFound")
        peer_id = None
        if len(parts) == 3:
            if not (parts[2].isascii() and parts[2].isdigit()) or len(parts[2]) > 18:  # int("²") raises
                raise ApiError(404, f'peer id must be a number, not "{parts[2]}"', code="UpstreamServerNotFound")
            peer_id = int(parts[2])
        return name, len(parts) >= 2, peer_id

    # -- reading ---------------------------------------------------------------------------------

    def get(self, req, name, servers, peer_id):
        st = state(req.runtime)
        if name is None:
            return {n: self.upstream_json(st, n) for n in self.conf.upstreams}
        up = self.upstream_json(st, name)
        if peer_id is not None:
            return self._find(up["peers"], peer_id)
        return up["peers"] if servers else up

    def upstream_json(self, st, name: str) -> dict:
        zone = st.zone(name)
        data = zone.read_snapshot() or {"version": 0, "peers": []}
        active = st.active(name)
        up = self.conf.upstreams[name]
        peers = [self._peer(zone, p, active[p["slot"]], up.max_conns) for p in data["peers"]]
        # NGINX Plus's zombies: peers removed while requests to them still run (their slots'
        # in-flight counts outlive them)
        held = {p["slot"] for p in data["peers"]}
        zombies = sum(1 for slot, n in enumerate(active) if n and slot not in held)
        if not self.conf.cluster:
            return {"name": name, "version": data["version"], "zone": up.zone, "keepalive": st.idle(name),
                    "zombies": zombies, "peers": peers}
        me = sync.instance_of(st.runtime.config, self.conf.bus)
        for peer, p in zip(peers, data["peers"]):
            if peer["drain"]:  # each host's drain: its own in-flight requests
                peer["drain_hosts"] = st.drain_hosts(name, peer["id"], me, active[p["slot"]])
        return {"name": name, "version": data["version"], "revision": data.get("revision"),
                "cluster": "apart" if data.get("apart") else "joined", "unsynced": len(data.get("unsynced") or ()),
                "zone": up.zone, "keepalive": st.idle(name), "zombies": zombies, "peers": peers}

    @staticmethod
    def _peer(zone, p: dict, active: int, max_conns: dict[str, int]) -> dict:
        """A peer as NGINX Plus shows it (``id`` ... ``downtime``, ``selected``, ``max_conns``:
        the config's, by server, as the balancer applies it), with ngxsim's own fields
        (``max_fails``, ``fail_timeout``, ``down``, ``drain``, ``health``)."""
        c, stats = zone.peer_state(p["slot"])  # the health and the downtime of one moment
        now = time.time()
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
        responses = dict(zip(("1xx", "2xx", "3xx", "4xx", "5xx"), stats.responses))
        peer = {"id": p["id"], "server": p["server"], "name": p["server"], "backup": p["backup"], "weight": p["weight"],
                "state": state_, "active": active, "requests": c.requests,
                "responses": {**responses, "total": sum(stats.responses)}, "sent": stats.sent,
                "received": stats.received, "max_conns": max_conns.get(p["server"], 0), "fails": c.fails_total,
                "unavail": stats.unavail,
                "health_checks": {"checks": stats.checks, "fails": stats.check_fails, "unhealthy": stats.unhealthy},
                "downtime": stats.downtime_ms(c.health, now),
                "max_fails": p["max_fails"], "fail_timeout": _time_text(p["fail_timeout"]), "down": p["down"],
                "drain": p.get("drain", False), "health": health}
        peer["responses"]["codes"] = stats.codes
        if stats.header_time is not None:  # NGINX Plus: once the peer answered
            peer["header_time"], peer["response_time"] = stats.header_time, stats.response_time
        if stats.checks:
            peer["health_checks"]["last_passed"] = stats.last_passed
        if stats.selected:
            peer["selected"] = iso_time(stats.selected)
        if stats.downstart(c.health, now):
            peer["downstart"] = iso_time(stats.down_since)
        return peer

    @staticmethod
    def _find(peers: list[dict], peer_id: int) -> dict:
        for p in peers:
            if p["id"] == peer_id:
                return p
        raise ApiError(404, f"peer {peer_id} not found", code="UpstreamServerNotFound")

    # -- writing ---------------------------------------------------------------------------------

    def post(self, req, name: str):
        fields = self._fields(req, adding=True)
        if self.conf.cluster:
            return self._cluster_change(req, name, "add", None, fields)
        st = state(req.runtime)
        zone = st.zone(name)
        checking = initial_health(self.conf, name) == HEALTH_CHECKING
        busy = frozenset(slot for slot, n in enumerate(st.active(name)) if n)  # a held slot is skipped anyway
        new = self._apply(st, name, lambda cur: snapshots.add_peer(cur, fields, zone.layout.slots, checking, busy))
        return ApiAnswer(201, self._peer(zone, new[1], 0, self.conf.upstreams[name].max_conns))

    def patch(self, req, name: str, peer_id: int):
        fields = self._fields(req, adding=False)
        if self.conf.cluster:
            return self._cluster_change(req, name, "change", peer_id, fields)
        st = state(req.runtime)
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
        return self._peer(zone, peer, st.active(name)[peer["slot"]], self.conf.upstreams[name].max_conns)

    def delete(self, req, name: str, peer_id: int):
        if self.conf.cluster:
            return self._cluster_change(req, name, "delete", peer_id, {})
        st = state(req.runtime)
        self._apply(st, name, lambda cur: snapshots.delete_peer(cur, peer_id))
        return self.upstream_json(st, name)["peers"]

    def _cluster_change(self, req, name: str, op: str, peer_id: int | None, fields: dict):
        """Cluster-wide: the change goes to this instance's sync service (which alone talks to the
        engine) as a ``change_requested`` event; the answer waits for its outcome at most
        ``APPLY_BOUND``, else ``202`` with the change's id (it is applied later, or was lost with
        a sync service that died: the caller checks ``GET`` and retries). Both mounts (the
        ``api`` location's ``http/upstreams`` and ``upstreams_api``) come here."""
        st = state(req.runtime)
        change = {"id": sync.new_change_id(), "upstream": name, "op": op, "peer": peer_id,
                  "fields": {k: (v if k != "fail_timeout" else float(v)) for k, v in fields.items()}}
        waiting = st.waiters.register(change["id"])
        try:
            sync.publish_change(req.runtime, change)
        except ValueError:
            st.waiters.wait(change["id"], waiting, 0)
            raise ApiError(413, "the change is too large to be sent to the cluster (512 bytes of JSON)",
                           code="UpstreamConfFormatError") from None
        result = st.waiters.wait(change["id"], waiting, sync.APPLY_BOUND)
        if result is None:
            return ApiAnswer(202, {"change": change["id"], "status": "pending",
                                   "message": "the change is queued for the cluster and not applied yet"})
        if result["status"] >= 400:
            raise ApiError(result["status"], result.get("error", "the change was not made"),
                           code=_CLUSTER_CODES.get(result["status"]))
        st.reload(name)
        up = self.upstream_json(st, name)
        if op == "delete":
            return up["peers"]
        return ApiAnswer(result["status"], self._find(up["peers"], result["peer"]))

    @staticmethod
    def _fields(req, adding: bool) -> dict:
        body = req.json()
        try:
            return snapshots.checked_fields(body, adding)
        except ValueError as exc:
            raise ApiError(400, str(exc), code="UpstreamConfFormatError") from None

    def _apply(self, st, name: str, change):
        """Make and activate the next snapshot, or raise the API error that says why not."""
        up = self.conf.upstreams[name]

        def guarded(cur):
            result = change(cur or {"peers": [], "next_id": snapshots.FIRST_ID})
            if up.state:
                snapshots.write_state(up.state, result[0])
            return result

        try:
            new, extra = st.zone(name).update(guarded)
        except LookupError as exc:
            raise ApiError(404, str(exc), code="UpstreamServerNotFound") from None
        except snapshots.Conflict as exc:
            raise ApiError(409, str(exc), code="UpstreamServerAlreadyExists") from None
        except (ValueError, OverflowError) as exc:
            raise ApiError(400, str(exc), code="UpstreamConfFormatError") from None
        except OSError as exc:
            raise ApiError(500, f'the change was not made: cannot write the state file "{up.state}": {exc.strerror}',
                           code="StateFileError") from None
        st.publish("snapshot_activated", {"upstream": name, "version": new["version"]})
        st.reload(name)  # this worker routes by it at once; the others when they deliver the event
        return new, extra


class UpstreamsApi:
    """The ``upstreams_api`` location: ``UpstreamsSection`` mounted at the location's path, with
    its key (``upstreams_api_key``) and the module's JSON errors (``{"status", "error",
    "message"}``)."""

    def __init__(self, location, conf):
        self.prefix = location.value.path.rstrip("/")
        self.key = location.get("upstreams_api_key")
        self.section = UpstreamsSection(conf)

    def __call__(self, ctx):
        method = ctx.environ["REQUEST_METHOD"]
        if method not in ("GET", "HEAD", "POST", "PATCH", "DELETE"):
            raise ApiError(405, f"method {method} is not allowed here; use GET, HEAD, POST, PATCH, DELETE",
                           headers={"Allow": "GET, HEAD, POST, PATCH, DELETE"})
        rest = ctx.uri[len(self.prefix):] if ctx.uri.startswith(self.prefix) else None
        if rest is None or (rest and not rest.startswith("/")) or "//" in rest:
            raise ApiError(404, f"no such API path {ctx.uri}")
        if method not in ("GET", "HEAD"):
            check_key(ctx, self.key, action="changing an upstream")
        parts = [p for p in rest.split("/") if p]
        try:
            result = self.section.handle(ApiRequest(ctx, method, parts, MAX_BODY))
        except ApiError as exc:
            if exc.code == "PathNotFound":
                raise ApiError(404, f"no such API path {ctx.uri}") from None
            raise
        if isinstance(result, ApiAnswer):
            return json_response(result.body, result.status)
        return json_response(result)
