"""The JSON API of a ``worker_events_api`` location.

GET/HEAD inspect the ring (filters ``channel``, ``since``, ``limit``; long-poll with ``wait``),
POST publishes on the location's channel. Every error is a JSON body naming the problem, and
an invalid request publishes nothing.
"""

from __future__ import annotations

import json
import time

from werkzeug.wrappers import Response

from ngxsim import ApiError, Event, Methods, check_key, json_response, query_int, query_seconds, query_str, read_json
from ngxsim import compact_json

from .ring import CHANNEL_MAX, encode_event
from .state import state
from .status import worker_rows

MAX_BODY = 4096
MAX_WAIT = 30.0
_FIELDS = frozenset(("type", "payload"))


class WorkerEventsApi:
    """The content handler of one API location."""

    def __init__(self, location, config):
        self.zone = location["worker_events_zone"][0]
        self.channel = location["worker_events_channel"]
        self.key = location.get("worker_events_publish_key")
        self.limit = location.get("worker_events_long_poll_limit")  # None: auto
        self.page = location["worker_events_page_size"]
        self.handle = Methods(GET=self.inspect, HEAD=self.inspect, POST=self.publish)

    # -- GET ----------------------------------------------------------------------------------

    def inspect(self, ctx):
        since = query_int(ctx, "since")
        limit = query_int(ctx, "limit")
        # GET needs no key, so no answer may cost more than a page: more is paged with since
        limit = self.page if limit is None else min(limit, self.page)
        wait = query_seconds(ctx, "wait", MAX_WAIT)
        if wait is not None and since is None:
            raise ApiError(400, 'parameter "wait" needs "since" (the generation to wait beyond)')
        channel = query_str(ctx, "channel", CHANNEL_MAX)
        st = state(ctx.runtime)
        ring = st.rings[self.zone]
        texts, _, _, missed = ring.json_scan(since, limit, channel)
        if wait and not texts:
            allowed = self.long_poll_limit(ctx.runtime.threads)
            if not st.long_polls.take(allowed):
                raise ApiError(503, f"this worker has {allowed} long-poll(s) waiting already, the most it lets wait so "
                                    "that other requests keep a thread (worker_events_long_poll_limit): retry after "
                                    "Retry-After, or poll without \"wait\"", headers={"Retry-After": "1"})
            try:
                texts, missed = self._long_poll(ring, since, limit, channel, wait, ctx.runtime)
            finally:
                st.long_polls.give()
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
        # "channel" above is where this endpoint publishes; the query's ?channel= filters the events
        head["filter"] = {"channel": channel} if channel is not None else None
        if since is not None:
            head["missed"] = missed
        from . import zone_views  # the views other modules added (the cluster bridge's)

        head.update(zone_views(ctx.runtime, self.zone))
        workers = worker_rows(ring, newest)
        # the events are JSON texts already (made once per process): splice them in
        body = "".join((compact_json(head)[:-1], ',"events":[', ",".join(texts), '],"workers":', compact_json(workers), "}"))
        return Response(body, status=200, content_type="application/json")

    def long_poll_limit(self, threads: int) -> int:
        """Long-polls one worker lets wait at once: the directive's, else all threads but one
        (a sync worker, with one thread, has nothing to keep free: it waits for one)."""
        if self.limit is not None:
            return self.limit
        return threads - 1 if threads > 1 else 1

    @staticmethod
    def _long_poll(ring, since, limit, channel, wait, runtime):
        """Block on the zone's doorbell (no polling) until an event newer than ``since`` (in
        ``channel``, if given) exists, the deadline passes, or the worker is told to stop
        (``ngxsim_worker_stopping`` rings the bell after setting ``runtime.stopping``)."""
        bell = ring.zone.doorbell
        deadline = time.monotonic() + wait
        while True:
            seen = bell.value
            texts, _, _, missed = ring.json_scan(since, limit, channel)
            left = deadline - time.monotonic()
            if texts or left <= 0 or runtime.stopping:
                return texts, missed
            bell.wait(seen, left)

    # -- POST ---------------------------------------------------------------------------------

    def publish(self, ctx):
        check_key(ctx, self.key, action="publishing")
        body = read_json(ctx, MAX_BODY)
        unknown = sorted(set(body) - _FIELDS)
        if unknown:
            hint = ' (the channel comes from the endpoint)' if "channel" in unknown else ""
            raise ApiError(400, f"unknown field(s) {', '.join(map(json.dumps, unknown))}{hint}")
        if "type" not in body:
            raise ApiError(400, 'field "type" is required')
        event_type, payload = body["type"], body.get("payload", "")
        try:
            ch, ty, pl = encode_event(self.channel, event_type, payload)
        except ValueError as exc:
            raise ApiError(400, str(exc)) from None
        ring = state(ctx.runtime).rings[self.zone]
        timestamp = int(time.time() * 1000)
        gen = ring.publish(ch, ty, pl, timestamp)
        ctx.runtime.check_master()  # a 201 only for an event some live worker will deliver (else 503)
        return json_response(Event(gen, self.zone, self.channel, event_type, payload, timestamp).as_json(), 201)

