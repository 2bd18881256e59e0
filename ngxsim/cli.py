"""The ``ngxsim`` command.

    ngxsim [-c FILE] [-g DIRECTIVES] serve (gunicorn hosted, settings from the config)
    ngxsim --listen ADDRESS          serve the embedded default config on ADDRESS
    ngxsim -t [-c FILE]              test the config like ``nginx -t``
    ngxsim modules [-c FILE]         installed modules; what the config loads and declares
    ngxsim events tail [-c FILE|URL] follow an event ring through its long-poll API
    ngxsim status [-c FILE|URL]      the instance at a glance: workers, zones, rings, modules
    ngxsim new-module NAME [--dir D] write the package of a new module (docs/authoring.md)
"""

from __future__ import annotations

import argparse
import sys

from . import __version__
from .core.conf.errors import ConfigError
from .core.modules import installed_modules
from .core.process import CONF_ENV, config_name, load, set_command_line


def test_config(path: str | None) -> int:
    name = config_name(path)
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ngxsim", description="nginx's module system in Python, served by gunicorn")
    parser.add_argument("-c", dest="conf", metavar="FILE", help=f"configuration file (default: ${CONF_ENV}, else the embedded default)")
    parser.add_argument("-t", dest="test", action="store_true", help="test the configuration and exit")
    parser.add_argument("-g", dest="params", metavar="DIRECTIVES",
                        help='main-context directives, as nginx -g (e.g. -g "worker_processes 4;")')
    parser.add_argument("--listen", metavar="ADDRESS", help="serve the embedded default config on ADDRESS "
                        "(a loopback address: 127.0.0.1:9000, [::1]:9000)")
    parser.add_argument("-v", "--version", action="version", version=f"ngxsim {__version__}")
    sub = parser.add_subparsers(dest="command")
    mods = sub.add_parser("modules", help="list installed modules and what a config loads")
    mods.add_argument("-c", dest="conf", metavar="FILE")
    events = sub.add_parser("events", help="work with worker_events rings")
    events_sub = events.add_subparsers(dest="events_command", required=True)
    t = events_sub.add_parser("tail", help="print events as they are published (long-poll, no polling loop)")
    t.add_argument("-c", dest="target", metavar="FILE|URL",
                   help=f"a config (its first worker_events_api location; default: ${CONF_ENV}, else the "
                        "embedded default) or the API's URL")
    t.add_argument("--channel", help="only this channel")
    t.add_argument("--since", type=int, help="start after this generation (default: from now on; 0: the whole ring)")
    t.add_argument("--count", type=int, help="exit after this many events")
    t.add_argument("--json", action="store_true", help="one JSON object per line")
    st = sub.add_parser("status", help="the instance at a glance: workers, zones, event rings, modules")
    st.add_argument("-c", dest="target", metavar="FILE|URL",
                    help=f"a config (its first ngxsim_status location; default: ${CONF_ENV}, else the embedded "
                         "default) or the status URL")
    st.add_argument("--json", action="store_true", help="the status document as JSON")
    new = sub.add_parser("new-module", help="write the package of a new third-party module (docs/authoring.md)")
    new.add_argument("name", help="the module's name: a lower-case identifier (load_module NAME;)")
    new.add_argument("--dir", default=".", help="where to write its folder ngxsim-NAME (default: here)")
    args = parser.parse_args(argv)
    set_command_line(args.params, args.listen)

    if args.command == "modules":
        return list_modules(args.conf)
    if args.command == "new-module":
        from .newmodule import run

        return run(args.name, args.dir)
    if args.command == "events":
        from .cli_events import tail

        try:
            return tail(args.target or args.conf, args.channel, args.since, args.count, args.json)
        except KeyboardInterrupt:
            return 0
        except ConfigError as exc:
            print(f"ngxsim: [emerg] {exc}", file=sys.stderr)
            return 1
    if args.command == "status":
        from .cli_status import status

        try:
            return status(args.target or args.conf, args.json)
        except ConfigError as exc:
            print(f"ngxsim: [emerg] {exc}", file=sys.stderr)
            return 1
    if args.test:
        return test_config(args.conf)
    from .core.gunicorn_app import serve

    return serve(args.conf)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
