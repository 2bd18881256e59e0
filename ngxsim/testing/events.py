"""Reading a server's worker_events ring in tests: wait for an event, count events since a point.

Two ways in, one interface:

- :class:`ApiEvents` reads it over HTTP through a ``worker_events_api`` location (what a user
  of the module sees; ``server.events()``);
- :class:`ZoneEvents` attaches the zone in shared memory, like one more worker, through
  worker_events' public ``Ring`` (no HTTP location needed; ``server.zone_events("bus")``).

Events are dicts as the API gives them: ``generation``, ``channel``, ``type``, ``payload``,
``timestamp_msec``. A match names any of ``type``, ``channel`` and ``payload`` — a string
(exact), a dict (those fields of a JSON payload) or a callable on the payload string::

    mark = events.newest()
    server.post("/purge/a")
    events.wait(type="purged", payload={"key": "/a"}, since=mark)
    events.expect(1, type="purged", since=mark)          # exactly one, after waiting for it

A wait that times out says what the ring held instead.
"""

from __future__ import annotations

import json
import time
from typing import Any

SHOWN = 30  # events listed in a failure message (the newest ones)


def matches(event: dict, type: str | None = None, channel: str | None = None, payload: Any = None) -> bool:
    if type is not None and event["type"] != type:
        return False
    if channel is not None and event["channel"] != channel:
        return False
    if payload is None:
        return True
    if callable(payload):
        return bool(payload(event["payload"]))
    if isinstance(payload, dict):
        try:
            data = json.loads(event["payload"])
        except ValueError:
            return False
        return isinstance(data, dict) and all(k in data and data[k] == v for k, v in payload.items())
    return event["payload"] == payload


def describe(type=None, channel=None, payload=None) -> str:
    parts = [f"{k}={v!r}" for k, v in (("type", type), ("channel", channel)) if v is not None]
    if payload is not None:
        parts.append(f"payload~{payload!r}" if isinstance(payload, dict) or callable(payload) else f"payload={payload!r}")
    return "event" + (f" with {', '.join(parts)}" if parts else "")


def format_events(events: list[dict]) -> str:
    shown = events[-SHOWN:]
    lines = [f"  ... {len(events) - len(shown)} older not shown"] if len(events) > len(shown) else []
    lines += [f"  {e['generation']} {e['channel']} {e['type']} {e['payload']}" for e in shown]
    return "\n".join(lines) or "  (nothing)"


class EventsBase:
    """What both readers share; subclasses supply ``read_state``."""

    where = "ring"

    def read_state(self, since: int | None = None, channel: str | None = None) -> dict:
        """``{"events": [...], "newest_generation": N, "oldest_generation": O, "missed": K}``."""
        raise NotImplementedError

    def newest(self) -> int:
        """The newest generation now: the point to count from (``since=``)."""
        return self.read_state(since=None)["newest_generation"]

    def read(self, since: int | None = None, channel: str | None = None, **match) -> list[dict]:
        """The events the ring holds after ``since`` (all with None), oldest first, that match."""
        return [e for e in self.read_state(since, channel)["events"] if matches(e, **match)]

    def wait(self, type: str | None = None, channel: str | None = None, payload: Any = None,
             since: int | None = 0, timeout: float = 10.0, interval: float = 0.02) -> dict:
        """The first event after ``since`` that matches; waits (bounded) for it to be published."""
        return self.expect_at_least(1, type=type, channel=channel, payload=payload, since=since,
                                    timeout=timeout, interval=interval)[0]

    def expect_at_least(self, count: int, type: str | None = None, channel: str | None = None, payload: Any = None,
                        since: int | None = 0, timeout: float = 10.0, interval: float = 0.02) -> list[dict]:
        """Wait until ``count`` or more matching events exist after ``since``; returns them all."""
        deadline = time.monotonic() + timeout
        while True:
            state = self.read_state(since, channel)
            got = [e for e in state["events"] if matches(e, type, channel, payload)]
            if len(got) >= count:
                return got
            if time.monotonic() > deadline:
                raise AssertionError(self._report(f"{len(got)} of {count} {describe(type, channel, payload)}", since,
                                                  timeout, state))
            time.sleep(interval)

    def expect(self, count: int, type: str | None = None, channel: str | None = None, payload: Any = None,
               since: int | None = 0, timeout: float = 10.0) -> list[dict]:
        """Exactly ``count`` matching events after ``since``: waits (bounded) for ``count`` to be
        there, then fails if there are more. ``expect(0, ...)`` checks none is there now."""
        if count:
            self.expect_at_least(count, type, channel, payload, since, timeout)
        state = self.read_state(since, channel)
        got = [e for e in state["events"] if matches(e, type, channel, payload)]
        if len(got) != count:
            raise AssertionError(self._report(f"{len(got)} {describe(type, channel, payload)}, expected exactly {count}",
                                              since, None, state))
        return got

    def _report(self, what: str, since, timeout, state: dict) -> str:
        within = f" within {timeout}s" if timeout is not None else ""
        missed = f", {state['missed']} missed (overwritten)" if state.get("missed") else ""
        return (f"{what} after generation {since or 0}{within} in {self.where}\n"
                f"the ring holds generations {state['oldest_generation']}..{state['newest_generation']}{missed}; "
                f"those after {since or 0}:\n{format_events(state['events'])}")


class ApiEvents(EventsBase):
    """A ring read through a ``worker_events_api`` location of ``server``."""

    def __init__(self, server, path: str, key: str | None = None):
        self.server, self.path, self.key = server, path, key
        self.where = f"{server.address}{path}"

    def state(self, **params) -> dict:
        """The API's GET answer (``since``, ``limit``, ``channel`` as query parameters)."""
        r = self.server.get(self.path, params={k: v for k, v in params.items() if v is not None})
        if r.status_code != 200:
            raise AssertionError(f"GET {self.where} answered {r.status_code}: {r.text}")
        return r.json()

    def read_state(self, since=None, channel=None) -> dict:
        """Everything after ``since``: one GET answers at most a page (``worker_events_page_size``),
        so this pages forward with ``since`` until the ring's newest generation, adding up
        ``missed`` (bounded: at most 1000 pages)."""
        if since is None:
            return self.state(channel=channel)
        state = self.state(since=since, channel=channel)
        events, missed = list(state["events"]), state.get("missed", 0)
        for _ in range(1000):
            if not state["events"] or events[-1]["generation"] >= state["newest_generation"]:
                break
            state = self.state(since=events[-1]["generation"], channel=channel)
            events += state["events"]
            missed += state.get("missed", 0)
        return {**state, "events": events, "missed": missed}

    def workers(self) -> list[dict]:
        """The API's per-worker delivery counters."""
        return self.state(limit=0)["workers"]

    def publish(self, type: str, payload: str = "", key: str | None = None) -> dict:
        """POST one event; returns the stored event (with its ``generation``)."""
        key = key or self.key
        r = self.server.post(self.path, json={"type": type, "payload": payload}, params={"key": key} if key else None)
        if r.status_code != 201:
            raise AssertionError(f"POST {self.where} answered {r.status_code}: {r.text}")
        return r.json()

    def wait_delivered(self, generation: int | None = None, timeout: float = 10.0) -> list[dict]:
        """Wait until every live worker where a module listens has delivered ``generation``
        (default: the newest) and the API lists as many workers as the server has."""
        generation = self.newest() if generation is None else generation

        def done():
            workers = self.workers()
            listening = [w for w in workers if w["subscribers"]]
            if len(workers) >= self.server.workers and all(w["delivered_generation"] >= generation for w in listening):
                return workers
            return None

        deadline = time.monotonic() + timeout
        while True:
            workers = done()
            if workers is not None:
                return workers
            if time.monotonic() > deadline:
                raise AssertionError(f"not every worker delivered generation {generation} within {timeout}s; "
                                     f"{self.where} says: {self.workers()}")
            time.sleep(0.02)


class ZoneEvents(EventsBase):
    """A ring read in shared memory: the test process attaches the zone like a worker would.

    Use it as a context manager or call ``close()``; the zone stays the server's."""

    def __init__(self, server, zone: str):
        from ngxsim.core.conf.loader import load_configuration
        from ngxsim.core.instance import Instance, process_start_time
        from ngxsim.core.shm import attach_zone
        from ngxsim_plugins.worker_events import Ring

        config = load_configuration(str(server.conf))
        capacities = config.stash.get("worker_events", {})
        if zone not in capacities:
            raise ValueError(f'the config of {server.address} has no worker_events zone "{zone}": {sorted(capacities)}')
        spec = config.zones[zone]
        instance = Instance(server.master, process_start_time(server.master), "worker")
        self.ring = Ring(attach_zone(instance, zone, spec.size, spec.tag), capacities[zone])
        self.where = f'zone "{zone}" of {server.address}'

    def read_state(self, since=None, channel=None) -> dict:
        scan = self.ring.scan(since=since, channel=channel)
        return {"events": [e.as_json() for e in scan.events], "newest_generation": scan.newest,
                "oldest_generation": scan.oldest, "missed": scan.missed}

    def publish(self, type: str, payload: str = "", channel: str = "default") -> int:
        """Publish straight into the ring (waking every worker); returns the generation."""
        from ngxsim_plugins.worker_events import encode_event

        return self.ring.publish(*encode_event(channel, type, payload))

    def close(self) -> None:
        self.ring.zone.close()

    def __enter__(self) -> ZoneEvents:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
