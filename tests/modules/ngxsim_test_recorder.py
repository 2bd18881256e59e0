"""Test module: records every event and gap its worker is given.

Each worker appends lines to ``$NGXSIM_TEST_RECORD_DIR/<pid>.log`` (``E gen channel type
payload`` / ``G first last``, each followed by `` from ORIGIN#ORIGIN_GENERATION`` / `` from ORIGIN``
for what another instance of a cluster published) and keeps them in memory; ``recorder_dump;`` makes a location
answer with this worker's record; ``recorder_publish;`` makes a location read the request's body, publish ``?p=`` (type
``t``, channel ``c``) and answer with the record right after. An event of type ``echo`` makes
the subscriber publish one of type ``echoed`` (a subscriber that publishes). ``recorder_replay on;`` asks a starting worker to replay
what the ring holds; ``recorder_channels a b;`` narrows the subscription; ``recorder_once on;``
asks for one worker of the instance per event (``Subscription(once=True)``).
"""

from __future__ import annotations

import os

from ngxsim import FLAG, LOCATION, MAIN, Directive, Subscription, hookimpl, json_response

RECORD: list[str] = []


@hookimpl
def ngxsim_directives(register):
    register(Directive("recorder_zone", (MAIN,), 1, default="bus"))
    register(Directive("recorder_replay", (MAIN,), 1, type=FLAG, default=False))
    register(Directive("recorder_once", (MAIN,), 1, type=FLAG, default=False))
    register(Directive("recorder_channels", (MAIN,), (1, None), parse=list, default=None))
    register(Directive("recorder_dump", (LOCATION,), 0, type=FLAG, default=False, inherit=False))
    register(Directive("recorder_publish", (LOCATION,), 0, type=FLAG, default=False, inherit=False))


@hookimpl
def ngxsim_event_subscriptions(config):
    main = config.main
    return Subscription(main["recorder_zone"], main["recorder_channels"], replay=main["recorder_replay"],
                        once=main["recorder_once"])


def _record(line: str) -> None:
    RECORD.append(line)
    folder = os.environ.get("NGXSIM_TEST_RECORD_DIR")
    if folder:
        with open(os.path.join(folder, f"{os.getpid()}.log"), "a", encoding="utf-8") as fh:
            fh.write(line + "\n")


@hookimpl
def ngxsim_event(runtime, event):
    origin = "" if event.origin is None else f" from {event.origin}#{event.origin_generation}"
    _record(f"E {event.generation} {event.channel} {event.type} {event.payload}{origin}")
    if event.type == "echo":
        runtime.publish(event.zone, event.channel, "echoed", event.payload)


@hookimpl
def ngxsim_event_gap(runtime, gap):
    _record(f"G {gap.first} {gap.last}" + ("" if gap.origin is None else f" from {gap.origin}"))


@hookimpl
def ngxsim_content_handler(location, config):
    if location["recorder_dump"]:
        return lambda ctx: json_response({"pid": os.getpid(), "record": list(RECORD)})
    if location["recorder_publish"]:
        def publish(ctx):
            ctx.request.get_data()  # a body, if sent, is read first (a test pauses it there)
            gen = ctx.runtime.publish(config.main["recorder_zone"], "c", "t", ctx.arg("p") or "")
            return json_response({"generation": gen, "record": list(RECORD)})

        return publish
    return None
