"""A module author's mistakes are caught by ``ngxsim -t``, before any server runs: one nginx-style
line naming the module, the hook or directive and the fix, never a traceback (issue #11)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

MODULES = str(Path(__file__).resolve().parents[1] / "modules")


def ngxsim_t(tmp_path, text):
    conf = tmp_path / "m.conf"
    conf.write_text(text)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [MODULES, os.environ.get("PYTHONPATH")])))
    env.pop("NGXSIM_TRACE_HOOKS", None)
    run = subprocess.run([sys.executable, "-m", "ngxsim.cli", "-t", "-c", str(conf)], capture_output=True, text=True,
                         timeout=60, env=env)
    assert "Traceback" not in run.stderr, run.stderr
    return run, str(conf)


EMERGS = {
    "argname": ("load_module ngxsim_test_argname;\n",
                'module "ngxsim_test_argname": hook "ngxsim_postconfiguration" asks for argument "conf", which the '
                'hook does not pass; name them from (config) in {conf}:1'),
    "typo": ("load_module ngxsim_test_typo;\n",
             'module "ngxsim_test_typo": "ngxsim_postconfigration" is marked @hookimpl but is no ngxsim hook; '
             'did you mean "ngxsim_postconfiguration"? in {conf}:1'),
    "context name": ("worker_processes 1;\nload_module ngxsim_test_badcontext;\n",
                     'module "ngxsim_test_badcontext" (ngxsim_directives): directive "t_where" has invalid context(s) '
                     '"Location": use MAIN, HTTP, SERVER, LOCATION (from ngxsim) or the lower-case name a block '
                     'directive opens in {conf}:2'),
    "unknown context": ("load_module ngxsim_test_nocontext;\n",
                        'module "ngxsim_test_nocontext" (ngxsim_directives): directive "t_where" names unknown '
                        'context(s) locaton, which no directive opens; did you mean "location"? in {conf}:1'),
    "default": ("load_module ngxsim_test_baddefault;\n",
                'module "ngxsim_test_baddefault" (ngxsim_directives): directive "t_count" has default "ten", which '
                'is not of its type number: make it a number from 0 to 2147483647, or None in {conf}:1'),
    "no worker_events": ("load_module ngxsim_test_recorder;\n",
                         'module "ngxsim_test_recorder" subscribes to zone "bus", but no loaded module '
                         'publishes events: add "load_module worker_events;" and "worker_events_zone bus;" in {conf}:1'),
    "undeclared zone": ("load_module worker_events;\nload_module ngxsim_test_recorder;\nhttp { worker_events_zone other; }\n",
                        'module "ngxsim_test_recorder" subscribes to zone "bus", which is no event zone (declared: '
                        '"other"), so nothing would be delivered: declare it with "worker_events_zone bus;" or '
                        'use one of those in {conf}:2'),
    "publish without worker_events": ("load_module ngxsim_test_publisher;\nhttp {\n publisher_zone news;\n}\n",
                                      'module "ngxsim_test_publisher" publishes into zone "news", but no loaded module '
                                      'publishes events: add "load_module worker_events;" and "worker_events_zone news;" '
                                      'in {conf}:3'),
    "publish into no event zone": ("load_module ngxsim_test_publisher;\nload_module worker_events;\n"
                                   "http {\n worker_events_zone bus;\n publisher_zone news;\n}\n",
                                   'module "ngxsim_test_publisher" publishes into zone "news", which is no event zone '
                                   '(declared: "bus"), so every publish would fail: declare it with '
                                   '"worker_events_zone news;" or use one of those in {conf}:5'),
    "flag with an argument": ("load_module worker_events;\nhttp {\n server {\n  location /e {\n   worker_events_api on;\n"
                              "   worker_events_zone bus;\n   worker_events_channel c;\n  }\n }\n}\n",
                              'invalid number of arguments in "worker_events_api" directive in {conf}:5'),
}


WARNS = {
    "unmarked": ("load_module ngxsim_test_unmarked;\n",
                 'module "ngxsim_test_unmarked": function "ngxsim_postconfiguration" is named like a hook but is not '
                 'marked @ngxsim.hookimpl, so it is never called: add @hookimpl above it in {conf}:1'),
    "listener without events": ("load_module ngxsim_test_listener;\n",
                                'module "ngxsim_test_listener" listens to events (ngxsim_event) but no loaded module '
                                'publishes any, so it hears none: add "load_module worker_events;" in {conf}:1'),
}



def expected_stderr(level, message, conf):
    if level == "emerg":
        return [f"ngxsim: [emerg] {message}", f"ngxsim: configuration file {conf} test failed"]
    return [f"ngxsim: [warn] {message}", f"ngxsim: the configuration file {conf} syntax is ok",
            f"ngxsim: configuration file {conf} test is successful"]


@pytest.mark.parametrize("level, case", [("emerg", c) for c in EMERGS] + [("warn", c) for c in WARNS])
def test_module_mistake_is_one_line_emerg_or_warn(tmp_path, level, case):
    """An [emerg] fails the test (status 1); a [warn] is a slip the test lets pass (status 0)."""
    text, message = (EMERGS if level == "emerg" else WARNS)[case]
    run, conf = ngxsim_t(tmp_path, text)
    assert run.returncode == (1 if level == "emerg" else 0)
    assert run.stderr.splitlines() == expected_stderr(level, message.format(conf=conf), conf)


def test_a_listener_with_worker_events_loaded_gets_no_warning(tmp_path):
    run, conf = ngxsim_t(tmp_path, "load_module worker_events;\nload_module ngxsim_test_listener;\n")
    assert run.returncode == 0 and "[warn]" not in run.stderr


@pytest.mark.parametrize("kwargs, message", [
    (dict(type="number", default="ten"), 'default "ten", which is not of its type number: make it a number from 0 to 2147483647'),
    (dict(type="number", default=True), "default True, which is not of its type number"),
    (dict(type="number", default=-1), "default -1, which is not of its type number"),
    (dict(type="number", default=5, range=(1, 3)), "make it a number from 1 to 3, or None"),
    (dict(type="size", default="1m"), 'default "1m", which is not of its type size: make it a number from 0 to '
                                      '9223372036854775807 (bytes)'),
    (dict(type="time", default="5s"), 'default "5s", which is not of its type time: make it a number from 0 to '
                                      '2.14748e+09 (seconds)'),
    (dict(type="flag", default="on"), 'default "on", which is not of its type flag: make it True or False'),
    (dict(type="string", default=3), "default 3, which is not of its type string: make it a string"),
    (dict(nargs=(1, None), multiple=True, default="a"), 'default "a", which is not of its type string: make it a list'),
    (dict(nargs=-1), "has invalid nargs -1: use a count"),
    (dict(nargs=(2, 1)), "has invalid nargs (2, 1)"),
    (dict(contexts=()), "has invalid context(s) none"),
    (dict(type="bool"), 'has unknown type "bool": use one of string, size, time, number, flag, args'),
])
def test_a_directive_that_cannot_be_is_refused_when_declared(kwargs, message):
    from ngxsim import Directive

    kwargs = {"contexts": ("http",), **kwargs}
    with pytest.raises(ValueError) as err:
        Directive("t_x", **kwargs)
    assert message in str(err.value)


@pytest.mark.parametrize("kwargs", [
    dict(type="number", default=7), dict(type="size", default=1024), dict(type="time", default=0.5),
    dict(type="time", default=5), dict(type="flag", default=False), dict(type="string", default="x"),
    dict(type="args", nargs=(1, None), default=["a"]), dict(multiple=True, default=[]), dict(default=None),
    dict(type="number", default="anything", parse=int),  # a parse callable's values have a shape of their own
])
def test_defaults_of_the_directive_type_are_accepted(kwargs):
    from ngxsim import Directive

    assert Directive("t_x", ("http",), **kwargs).default == kwargs.get("default")


def test_publishes_is_checked_after_every_module_whatever_the_load_order():
    from ngxsim.core.conf.loader import load_configuration

    # the publisher is loaded (and configured) before worker_events declares the zone
    config = load_configuration("/p/a.conf", text="load_module ngxsim_test_publisher;\nload_module worker_events;\n"
                                                  "http {\n worker_events_zone bus;\n}\n")
    assert config.publications == [("bus", "ngxsim_test_publisher", None)]


def test_a_hookimpl_under_another_name_is_checked_by_its_specname(tmp_path, monkeypatch):
    from ngxsim import ConfigError
    from ngxsim.core.conf.loader import load_configuration

    (tmp_path / "ngxsim_test_specname.py").write_text(
        "from ngxsim import hookimpl\n\n"
        "@hookimpl(specname='ngxsim_postconfiguration')\ndef check(config):\n    check.ran = True\n\n"
        "@hookimpl(specname='ngxsim_init_workr')\ndef start(runtime):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError) as err:
        load_configuration("/p/a.conf", text="load_module ngxsim_test_specname;")
    assert str(err.value) == ('module "ngxsim_test_specname": "ngxsim_init_workr" is marked @hookimpl but is no ngxsim '
                              'hook; did you mean "ngxsim_init_worker"? in /p/a.conf:1')
    sys.modules.pop("ngxsim_test_specname", None)
