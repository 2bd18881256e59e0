"""``ngxsim events tail``: follow a worker_events ring through its long-poll API.

It says on stderr what it follows (URL, zone, channel filter, from which generation) and then
prints each event as it is published. A server that is down, restarting or answering 5xx is
waited for (said once per failure streak, retried with backoff); an answer that will not change
(404, 401/403, a page that is not the API) ends it with exit status 1 and the reason.
"""

from __future__ import annotations

import json
import sys
import time

from .cli_http import NotThere, Transient, get_json, location_url

_API_FIELDS = ("module", "newest_generation", "oldest_generation", "events")
RETRY_FIRST, RETRY_MAX = 0.2, 5.0


def check_api(doc: object) -> str | None:
    """None if ``doc`` is a worker_events API answer, else what it is instead."""
    if not isinstance(doc, dict):
        return "the answer is JSON but not an object: not the worker_events API"
    missing = [f for f in _API_FIELDS if f not in doc]
    if missing or doc.get("module") != "worker_events":
        return (f"the answer is JSON without the worker_events API's fields ({', '.join(missing) or 'module'}): "
                "not a worker_events_api location")
    return None


def _say(message: str) -> None:
    print(f"ngxsim: {message}", file=sys.stderr, flush=True)


class Follower:
    """One GET after another, waiting out transient failures and giving up on final ones."""

    def __init__(self, url: str):
        self.url = url
        self.retry = RETRY_FIRST
        self.failing = ""

    def get(self, params: dict, timeout: float) -> dict:
        while True:
            try:
                doc = get_json(self.url, params, timeout, check_api)
            except Transient as exc:
                if str(exc) != self.failing:  # once per kind of failure, not on every retry
                    _say(f"{self.url}: {exc}; retrying until it answers")
                    self.failing = str(exc)
                time.sleep(exc.retry_after or self.retry)
                self.retry = min(self.retry * 2, RETRY_MAX)
                continue
            if self.failing:
                _say(f"{self.url} answers again")
                self.failing = ""
            self.retry = RETRY_FIRST
            return doc


def tail(target: str | None, channel: str | None, since: int | None, count: int | None, as_json: bool,
         wait: float = 25.0) -> int:
    """Print events as they are published; ``count`` stops after that many."""
    try:
        url = location_url(target, "worker_events_api")
    except NotThere as exc:
        _say(str(exc))
        return 1
    try:
        follow = Follower(url)
        head = follow.get({"limit": 0}, 10)
        if since is None:
            since = head["newest_generation"]
            where = f"after generation {since}, the newest (--since 0 for the whole ring)"
        else:
            held = f"the ring holds {head['oldest_generation']}..{head['newest_generation']}"
            where = f"from the start ({held})" if since == 0 else f"after generation {since} ({held})"
        _say(f"following {url} (zone {head.get('zone', '?')}, channel: {channel or 'any'}) {where}")
        return _follow(follow, channel, since, count, as_json, wait)
    except NotThere as exc:
        _say(f"{url}: {exc}")
        return 1


def _follow(follow: Follower, channel, since: int, count, as_json: bool, wait: float) -> int:
    printed = 0
    while count is None or printed < count:
        state = follow.get({"since": since, "wait": wait, "channel": channel}, wait + 10)
        if state.get("missed"):
            _say(f"missed {state['missed']} event(s) overwritten before they were read")
            since = max(since, state["oldest_generation"] - 1)  # say it once, not on every poll
        if since > state["newest_generation"]:
            _say("the ring restarted (newest generation went back); following from its start")
            since = 0
            continue
        for event in state["events"]:
            if as_json:
                print(json.dumps(event, separators=(",", ":")), flush=True)
            else:
                origin = f' (from {event["origin"]})' if event.get("origin") else ""  # relayed from another instance
                print(f'{event["generation"]} {event["channel"]} {event["type"]} {event["payload"]}{origin}', flush=True)
            since = event["generation"]
            printed += 1
            if count is not None and printed >= count:
                break
    return 0
