"""A small, complete ngxsim module to copy from.

It declares directives, answers requests on the locations that ask for it, publishes events
through worker_events and keeps per-worker state up to date from the events every worker
receives. Load it with ``load_module hello_module;`` (with this folder on PYTHONPATH) or give it
an entry point in the ``ngxsim`` group of your own package.

    location /hello {
        hello;                      # this location is served by the module
        hello_greeting "Hi there";  # inherited from server/http when not set here
    }
"""

from __future__ import annotations

import os

import ngxsim
from ngxsim import FLAG, HTTP, LOCATION, SERVER, Directive, Subscription, hookimpl

CHANNEL = "hello"
# per-worker state: the last name greeted anywhere, as this worker heard it
LAST = {"name": None, "generation": 0}


@hookimpl
def ngxsim_directives(register):
    register(Directive("hello", (LOCATION,), 0, type=FLAG, default=False, inherit=False,
                       doc="this location is served by the hello module"))
    register(Directive("hello_greeting", (HTTP, SERVER, LOCATION), 1, default="Hello",
                       doc="the greeting"))
    register(Directive("hello_zone", (HTTP,), 1, default="bus",
                       doc="the worker_events zone greetings are broadcast on"))


@hookimpl
def ngxsim_postconfiguration(config):
    for http in config.blocks(HTTP):
        zone = http["hello_zone"]
        if any(loc["hello"] for loc in config.blocks(LOCATION)):
            # the core checks, once every module is configured, that an event module declares it
            config.publishes(zone, "hello_module", where=http.where_of("hello_zone"))
        config.stash["hello.zone"] = zone


@hookimpl
def ngxsim_content_handler(location, config):
    if not location["hello"]:
        return None
    greeting, zone = location["hello_greeting"], config.stash["hello.zone"]

    def handle(ctx):
        if ctx.environ["REQUEST_METHOD"] == "POST":
            name = ctx.arg("name")
            if not name:
                return ngxsim.json_error(400, 'parameter "name" is required')
            try:
                generation = ctx.runtime.publish(zone, CHANNEL, "greeted", name)
            except ValueError as exc:  # e.g. a name over 512 bytes
                return ngxsim.json_error(400, str(exc))
            return ngxsim.json_response({"published": generation}, 201)
        # read-your-publish: pending events were delivered before this handler ran
        return ngxsim.json_response({"greeting": f"{greeting}, {LAST['name'] or 'nobody'}!",
                                     "pid": os.getpid(), "generation": LAST["generation"]})

    return handle


@hookimpl
def ngxsim_event_subscriptions(config):
    return Subscription(config.stash["hello.zone"], channels=(CHANNEL,), replay=True)


@hookimpl
def ngxsim_event(runtime, event):
    if event.type == "greeted":
        LAST.update(name=event.payload, generation=event.generation)


@hookimpl
def ngxsim_event_gap(runtime, gap):
    # we lost events: what we hold may be stale; forget it (a real module would re-read)
    LAST.update(name=None, generation=gap.last)
