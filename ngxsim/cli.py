"""The ``ngxsim`` command.

    ngxsim [-c FILE]                 serve (gunicorn hosted, settings from the config)
    ngxsim -t [-c FILE]              test the config like ``nginx -t``
    ngxsim modules [-c FILE]         installed modules; what the config loads and declares
    ngxsim events tail -c FILE|URL   follow an event ring through its long-poll API
    ngxsim new-module NAME [--dir D] write the package of a new module (docs/authoring.md)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

from . import __version__
from .core.conf.errors import ConfigError
from .core.modules import installed_modules
from .core.process import CONF_ENV, load


def _conf_name(path: str | None) -> str:
    return path or os.environ.get(CONF_ENV) or "<embedded default.conf>"


def test_config(path: str | None) -> int:
    name = _conf_name(path)
    try:
        config = load(path)
    except ConfigError as exc:
        print(f"ngxsim: [emerg] {exc}", file=sys.stderr)
        print(f"ngxsim: configuration file {name} test failed", file=sys.stderr)
        return 1
    for warning in config.warnings:
        print(f"ngxsim: [warn] {warning}", file=sys.stderr)
    print(f"ngxsim: the configuration file {name} syntax is ok", file=sys.stderr)
    print(f"ngxsim: configuration file {name} test is successful", file=sys.stderr)
    return 0


def list_modules(path: str | None) -> int:
    print("installed (entry point group \"ngxsim\"):")
    for name, target in installed_modules():
        print(f"  {name:20} {target}")
    try:
        config = load(path)
    except ConfigError as exc:
        print(f"ngxsim: [emerg] {exc}", file=sys.stderr)
        return 1
    print(f"loaded by {config.path}:")
    owners: dict[str, list[str]] = {}
    for directive, owner in config.table.owners():
        owners.setdefault(owner, []).append(directive)
    for name, plugin in config.modules:
        hooks = sorted(caller.name for caller in config.pm.get_hookcallers(plugin) or [])
        print(f"  {name:20} {getattr(plugin, '__name__', repr(plugin))}")
        print(f"    directives: {', '.join(sorted(owners.get(name, []))) or '-'}")
        print(f"    hooks:      {', '.join(hooks) or '-'}")
    for spec in config.zones:
        print(f"zone {spec.name}: {spec.size} bytes, owner {spec.owner}")
    return 0


# ------------------------------------------------------------------------------------------
# events tail
# ------------------------------------------------------------------------------------------


def _api_url(target: str) -> str:
    if target.startswith(("http://", "https://")):
        return target
    config = load(target)
    for loc in config.blocks("location"):
        if loc.get("worker_events_api"):
            if loc.value.modifier not in ("", "=", "^~"):
                continue
            listen = loc.parent["listen"][0]
            host = "127.0.0.1" if listen.host in ("*", "0.0.0.0") else listen.host
            host = f"[{host}]" if ":" in host else host
            return f"http://{host}:{listen.port}{loc.value.path}"
    raise SystemExit(f"ngxsim: {target} has no worker_events_api location with a plain path")


def _get(url: str, params: dict, timeout: float) -> dict:
    query = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
    with urllib.request.urlopen(f"{url}?{query}", timeout=timeout) as resp:
        return json.load(resp)


def tail(target: str, channel: str | None, since: int | None, count: int | None, as_json: bool,
         wait: float = 25.0) -> int:
    """Print events as they are published; ``count`` stops after that many."""
    url = _api_url(target)
    printed = 0
    retry = 0.2
    while count is None or printed < count:
        try:
            if since is None:
                since = _get(url, {"limit": 0}, 10)["newest_generation"]
            state = _get(url, {"since": since, "wait": wait, "channel": channel}, wait + 10)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            print(f"ngxsim: {url}: {exc}; retrying", file=sys.stderr, flush=True)
            time.sleep(retry)
            retry = min(retry * 2, 5.0)
            continue
        retry = 0.2
        if state.get("missed"):
            print(f"ngxsim: missed {state['missed']} event(s) overwritten before they were read", file=sys.stderr, flush=True)
            since = max(since, state["oldest_generation"] - 1)  # say it once, not on every poll
        if since > state["newest_generation"]:
            print("ngxsim: the ring restarted (newest generation went back); following from its start", file=sys.stderr, flush=True)
            since = 0
            continue
        for event in state["events"]:
            if as_json:
                print(json.dumps(event, separators=(",", ":")), flush=True)
            else:
                print(f'{event["generation"]} {event["channel"]} {event["type"]} {event["payload"]}', flush=True)
            since = event["generation"]
            printed += 1
            if count is not None and printed >= count:
                break
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ngxsim", description="nginx's module system in Python, served by gunicorn")
    parser.add_argument("-c", dest="conf", metavar="FILE", help=f"configuration file (default: ${CONF_ENV}, else the embedded default)")
    parser.add_argument("-t", dest="test", action="store_true", help="test the configuration and exit")
    parser.add_argument("-v", "--version", action="version", version=f"ngxsim {__version__}")
    sub = parser.add_subparsers(dest="command")
    mods = sub.add_parser("modules", help="list installed modules and what a config loads")
    mods.add_argument("-c", dest="conf", metavar="FILE")
    events = sub.add_parser("events", help="work with worker_events rings")
    events_sub = events.add_subparsers(dest="events_command", required=True)
    t = events_sub.add_parser("tail", help="print events as they are published (long-poll, no polling loop)")
    t.add_argument("-c", dest="target", metavar="FILE|URL", required=True,
                   help="a config (its first worker_events_api location) or the API's URL")
    t.add_argument("--channel", help="only this channel")
    t.add_argument("--since", type=int, help="start after this generation (default: from now on)")
    t.add_argument("--count", type=int, help="exit after this many events")
    t.add_argument("--json", action="store_true", help="one JSON object per line")
    new = sub.add_parser("new-module", help="write the package of a new third-party module (docs/authoring.md)")
    new.add_argument("name", help="the module's name: a lower-case identifier (load_module NAME;)")
    new.add_argument("--dir", default=".", help="where to write its folder ngxsim-NAME (default: here)")
    args = parser.parse_args(argv)

    if args.command == "modules":
        return list_modules(args.conf)
    if args.command == "new-module":
        from .newmodule import run

        return run(args.name, args.dir)
    if args.command == "events":
        try:
            return tail(args.target, args.channel, args.since, args.count, args.json)
        except KeyboardInterrupt:
            return 0
        except ConfigError as exc:
            print(f"ngxsim: [emerg] {exc}", file=sys.stderr)
            return 1
    if args.test:
        return test_config(args.conf)
    from .core.gunicorn_app import serve

    return serve(args.conf)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
