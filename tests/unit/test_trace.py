"""NGXSIM_TRACE_HOOKS=1: one short line per hook call, with pid, hook, modules, duration, arguments."""

from __future__ import annotations

import os
import re

import pytest

LINE = re.compile(r"ngxsim: \[trace\] pid=(\d+) (ngxsim_\w+) \(([\w,]+)\) (\d+\.\d{3})ms( \S.*)?")

CONF = """
load_module worker_events;
load_module ngxsim_test_recorder;
http {
    worker_events_zone bus;
    server {
        listen 127.0.0.1:8080;
        location /dump { recorder_dump; }
    }
}
"""


@pytest.fixture
def traced(monkeypatch, make_app, capfd):
    monkeypatch.setenv("NGXSIM_TRACE_HOOKS", "1")
    client = make_app(CONF)
    capfd.readouterr()  # what loading wrote is checked by its own test
    return client


def lines_of(capfd):
    err = capfd.readouterr().err
    lines = err.splitlines()
    for line in lines:
        assert LINE.fullmatch(line), line
        assert len(line) <= 200, line
    return lines


def test_loading_writes_one_line_per_module_call(monkeypatch, capfd):
    from ngxsim.core.conf.loader import load_configuration

    monkeypatch.setenv("NGXSIM_TRACE_HOOKS", "1")
    config = load_configuration("/p/t.conf", text=CONF)
    lines = lines_of(capfd)
    hooks = [LINE.fullmatch(line).group(2, 3) for line in lines]
    # call_impl's calls, one module each, in load order
    assert hooks[:3] == [("ngxsim_directives", "core"), ("ngxsim_directives", "worker_events"),
                         ("ngxsim_directives", "ngxsim_test_recorder")]
    assert ("ngxsim_postconfiguration", "worker_events") in hooks
    assert all(int(LINE.fullmatch(line).group(1)) == os.getpid() for line in lines)
    # a hook call through pm.hook names every module it ran, and the short argument reprs
    handler = [line for line in lines if " ngxsim_content_handler " in line]
    called = [impl.plugin_name for impl in reversed(config.pm.hook.ngxsim_content_handler.get_hookimpls())]
    assert "ngxsim_test_recorder" in called and "worker_events" in called
    assert len(handler) == 1 and f" ngxsim_content_handler ({','.join(called)}) " in handler[0]
    assert "location=<Block location /p/t.conf:8> config=<Configuration /p/t.conf>" in handler[0]
    # calls that no module implements write nothing
    assert not any(" ngxsim_header_filter " in line for line in lines)


def test_a_publish_and_its_delivery_are_a_line_each_with_result_or_exception(traced, capfd):
    runtime = traced.application.runtime
    assert runtime.publish("bus", "ops", "set", "v" * 500) == 1
    traced.get("/dump")  # the request drains: delivery happened by now
    with pytest.raises(ValueError):
        runtime.publish("nope", "ops", "set", "x")
    lines = lines_of(capfd)
    publish = [line for line in lines if " ngxsim_publish (worker_events) " in line]
    assert len(publish) == 2
    assert f"runtime=<Runtime standalone pid={os.getpid()}> zone='bus' channel='ops' type='set' payload='vvv" in publish[0]
    # a 500-character payload is cut (its repr in its middle, the arguments at the line's end): the
    # result stays whole
    assert len(publish[0]) == 200 and "v…v" in publish[0] and publish[0].endswith("… -> 1")
    assert "zone='nope'" in publish[1] and publish[1].endswith("""raised ValueError('unknown worker_events zone "nope"')""")
    events = [line for line in lines if " ngxsim_event (ngxsim_test_recorder) " in line]
    assert len(events) == 1 and "event=Event(generation=1, " in events[0]
