"""The JSON API of a ``worker_events_api`` location.

GET/HEAD inspect the ring (filters ``channel``, ``since``, ``limit``; long-poll with ``wait``),
POST publishes on the location's channel. Every error is a JSON body naming the problem, and
an invalid request publishes nothing.
"""

from __future__ import annotations

import hmac
import json
import math
import time

from werkzeug.wrappers import Response

from ngxsim import Event, json_error, json_response
from ngxsim.core.http.responses import compact_json

from .ring import CHANNEL_MAX, encode_event
from .state import state

MAX_BODY = 4096
MAX_WAIT = 30.0
ALLOW = "GET, HEAD, POST"
_FIELDS = frozenset(("type", "payload"))


class WorkerEventsApi:
    """The content handler of one API location."""

    def __init__(self, location, config):
        self.zone = location["worker_events_zone"][0]
        self.channel = location["worker_events_channel"]
        self.key = location.get("worker_events_publish_key")
        self.key_bytes = self.key.encode() if self.key else None

    def handle(self, ctx):
        method = ctx.environ["REQUEST_METHOD"]
        if method in ("GET", "HEAD"):
            return self.inspect(ctx)
        if method == "POST":
            return self.publish(ctx)
        return json_error(405, f"method {method} is not allowed here; use {ALLOW}", headers={"Allow": ALLOW})

    # -- GET ----------------------------------------------------------------------------------

    def inspect(self, ctx):
        args = ctx.args
        try:
            since = _nonneg_int(args, "since")
            limit = _nonneg_int(args, "limit")
            wait = _wait(args)
        except ValueError as exc:
            return json_error(400, str(exc))
        if wait is not None and since is None:
            return json_error(400, 'parameter "wait" needs "since" (the generation to wait beyond)')
        channel = args["channel"][0] if "channel" in args else None
        if channel is not None and len(channel.encode()) > CHANNEL_MAX:
            return json_error(400, f'parameter "channel" is longer than {CHANNEL_MAX} bytes')
        ring = state(ctx.runtime).rings[self.zone]
        texts, _, _, missed = ring.json_scan(since, limit, channel)
        if wait and not texts:
            texts, missed = self._long_poll(ring, since, limit, channel, wait)
        newest, dropped, last_publish = ring.control()
        head = {
            "module": "worker_events",
            "zone": self.zone,
            "channel": self.channel,
            "capacity": ring.capacity,
            "oldest_generation": ring.oldest_for(newest),
            "newest_generation": newest,
            "dropped_events": dropped,
            "last_publish_msec": last_publish,
        }
        if since is not None:
            head["missed"] = missed
        workers = [
            {
                "pid": s.pid,
                "subscribers": s.subscribers,
                # a worker where no module listens has nothing to deliver: never behind
                "delivered_generation": s.delivered if s.subscribers else newest,
                "lag": max(0, newest - s.delivered) if s.subscribers else 0,
                "gaps": s.gaps,
                "lost_events": s.lost,
                "events_delivered": s.events,
                "wakeups": s.wakeups,
                "last_delivery_msec": s.last_delivery_msec,
            }
            for s in ring.live_slots()
        ]
        # the events are JSON texts already (made once per process): splice them in
        body = "".join((compact_json(head)[:-1], ',"events":[', ",".join(texts), '],"workers":', compact_json(workers), "}"))
        return Response(body, status=200, content_type="application/json")

    @staticmethod
    def _long_poll(ring, since, limit, channel, wait):
        """Block on the zone's doorbell (no polling) until an event newer than ``since`` (in
        ``channel``, if given) exists, or the deadline passes."""
        bell = ring.zone.doorbell
        deadline = time.monotonic() + wait
        while True:
            seen = bell.value
            texts, _, _, missed = ring.json_scan(since, limit, channel)
            left = deadline - time.monotonic()
            if texts or left <= 0:
                return texts, missed
            bell.wait(seen, left)

    # -- POST ---------------------------------------------------------------------------------

    def publish(self, ctx):
        if self.key_bytes is not None:
            given = ctx.args.get("key")
            if not given:
                return json_error(403, 'publishing needs the "key" query parameter')
            if not hmac.compare_digest(given[0].encode(), self.key_bytes):
                return json_error(403, 'wrong "key"')
        req = ctx.request
        mimetype = (req.mimetype or "").lower()
        if mimetype != "application/json":
            return json_error(415, f'Content-Type must be application/json, not "{req.content_type or ""}"')
        length = req.content_length
        if length is not None and length > MAX_BODY:
            return json_error(413, f"body of {length} bytes is larger than {MAX_BODY}")
        raw = req.stream.read(MAX_BODY + 1)
        if len(raw) > MAX_BODY:
            return json_error(413, f"body is larger than {MAX_BODY} bytes")
        try:
            body = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
        except (UnicodeDecodeError, ValueError) as exc:
            return json_error(400, f"body is not valid JSON: {exc}")
        if not isinstance(body, dict):
            return json_error(400, "body must be a JSON object")
        unknown = sorted(set(body) - _FIELDS)
        if unknown:
            hint = ' (the channel comes from the endpoint)' if "channel" in unknown else ""
            return json_error(400, f"unknown field(s) {', '.join(map(json.dumps, unknown))}{hint}")
        if "type" not in body:
            return json_error(400, 'field "type" is required')
        event_type, payload = body["type"], body.get("payload", "")
        try:
            ch, ty, pl = encode_event(self.channel, event_type, payload)
        except ValueError as exc:
            return json_error(400, str(exc))
        ring = state(ctx.runtime).rings[self.zone]
        timestamp = int(time.time() * 1000)
        gen = ring.publish(ch, ty, pl, timestamp)
        return json_response(Event(gen, self.zone, self.channel, event_type, payload, timestamp).as_json(), 201)


def _nonneg_int(args, name):
    if name not in args:
        return None
    text = args[name][0]
    if not text.isascii() or not text.isdigit():
        raise ValueError(f'parameter "{name}" must be a non-negative integer, not "{text}"')
    return int(text)


def _wait(args):
    if "wait" not in args:
        return None
    text = args["wait"][0]
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not text.isascii() or not (0 <= value <= MAX_WAIT):
        raise ValueError(f'parameter "wait" must be a number of seconds from 0 to {MAX_WAIT:g}, not "{text}"')
    return value


def _reject_constant(name):
    raise ValueError(f"{name} is not JSON")
