"""The ngxsim pytest plugin as a user gets it, checked through pytester.

Not collected by the project's own run (no ``test_`` prefix): tests/integration/test_pytest_plugin.py
copies it into an empty folder and runs it with ``pytest -p pytester`` in a fresh venv where
only ngxsim's wheel (and pytest) were installed — so the fixtures below can only come from the
``pytest11`` entry point, not from a conftest or the source tree.
"""

from __future__ import annotations

import os

EVENTS_CONF = '''
CONF = """
load_module worker_events;
http {
    server {
        listen 127.0.0.1:{port};
        location = /events { worker_events_api; worker_events_zone bus; worker_events_channel c; }
    }
}
"""
'''


def test_the_entry_point_registers_the_fixtures_and_imports_nothing_heavy(pytester):
    pytester.makepyfile(test_light="""
        import sys

        def test_nothing_of_ngxsim_is_imported_at_startup():
            assert "ngxsim" not in sys.modules and "flask" not in sys.modules

        def test_the_fixtures_come_from_the_installed_package(ngxsim_server, ngxsim_backend, ngxsim_mode):
            import ngxsim, pytest_ngxsim
            assert "site-packages" in ngxsim.__file__ and "site-packages" in pytest_ngxsim.__file__
            assert callable(ngxsim_server) and callable(ngxsim_backend) and ngxsim_mode == "gunicorn"
    """)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.stdout.fnmatch_lines(["plugins: *ngxsim-0.1.0*"])
    result.assert_outcomes(passed=2)

    off = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:ngxsim")
    off.stdout.fnmatch_lines(["*fixture 'ngxsim_server' not found*"])
    off.assert_outcomes(passed=1, errors=1)


def test_the_marker_and_the_option_choose_the_hosting_modes_and_nothing_is_left_behind(pytester):
    pytester.makepyfile(test_modes=EVENTS_CONF + """
import pytest


def record(tmp_path, server):
    (tmp_path.parent.parent / f"master-{server.master}").write_text(server.tag)


@pytest.mark.ngxsim_modes("ngxsim")
def test_marked_for_ngxsim_only(ngxsim_server, ngxsim_mode, tmp_path):
    server = ngxsim_server(CONF, workers=2, ready_path="/events")
    record(tmp_path, server)
    assert server.mode == ngxsim_mode == "ngxsim"
    events = server.events()
    mark = events.newest()
    events.publish("hello", '{"n":1,"who":"x"}')
    assert events.wait(type="hello", payload={"n": 1}, since=mark)["generation"] == mark + 1
    assert set(server.each_worker("/events")) == set(server.worker_pids())


def test_unmarked(ngxsim_server, ngxsim_mode, tmp_path):
    server = ngxsim_server(CONF, workers=1, ready_path="/events")
    record(tmp_path, server)
    assert server.mode == ngxsim_mode
""")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-v", "--ngxsim-mode=both")
    result.stdout.fnmatch_lines_random([
        "*test_marked_for_ngxsim_only?mode=ngxsim? PASSED*",
        "*test_unmarked?mode=gunicorn? PASSED*",
        "*test_unmarked?mode=ngxsim? PASSED*",
    ])
    result.assert_outcomes(passed=3)
    masters = [(int(p.name.split("-")[1]), p.read_text()) for p in pytester.path.glob("master-*")]
    assert len(masters) == 3
    for master, tag in masters:
        assert not os.path.exists(f"/proc/{master}") or _zombie_or_other(master, tag)
        assert not [e for e in os.listdir("/dev/shm") if e.startswith(f"ngxsim.{tag}.")]


def _zombie_or_other(pid: int, tag: str) -> bool:
    """The pid is reused by another process (another start time), or not running."""
    with open(f"/proc/{pid}/stat", "rb") as fh:
        stat = fh.read()
    fields = stat[stat.rfind(b")") + 2 :].split()
    return fields[0] in (b"Z", b"X") or f"{pid}.{int(fields[19])}" != tag


def test_failures_read_well(pytester):
    pytester.makepyfile(test_failing=EVENTS_CONF + '''
import urllib.request


def test_a_bad_config(ngxsim_server):
    ngxsim_server("http {\\n  server {\\n    listen 127.0.0.1:{port};\\n    nope;\\n  }\\n}\\n", workers=1)


def test_an_event_that_never_comes(ngxsim_server):
    events = ngxsim_server(CONF, workers=1, ready_path="/events").events()
    events.publish("other", "p1")
    events.wait(type="awaited", timeout=0.5)


def test_an_assertion_after_the_start(ngxsim_server, ngxsim_backend):
    server = ngxsim_server(CONF, workers=1, ready_path="/events")
    backend = ngxsim_backend(name="origin")
    urllib.request.urlopen(backend.url("/seen?x=1"), timeout=10).read()
    assert server.get("/events").status_code == 500
''')
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(failed=3)
    # a server that cannot start: its [emerg] line, with file and line
    result.stdout.fnmatch_lines([
        "*ServerStartError: server 127.0.0.1:* (gunicorn -w 1 ngxsim.wsgi, master *) exited with *",
        '*ngxsim: [[]emerg[]] unknown directive "nope" in *.conf:4',
    ])
    # a wait that timed out: what the ring held instead
    result.stdout.fnmatch_lines([
        "*0 of 1 event with type='awaited' after generation 0 within 0.5s in 127.0.0.1:*/events",
        "*the ring holds generations 1..1; those after 0:",
        "*1 c other p1",
    ])
    # the server's log and the backend's requests in the failed test's report
    result.stdout.fnmatch_lines([
        "*_ test_an_assertion_after_the_start _*",
        "*- ngxsim server 127.0.0.1:* (gunicorn -w 1 ngxsim.wsgi, master *): *server-*.log (last 200 lines) -*",
        "*Booting worker with pid*",
        "*- ngxsim backend <Backend origin 127.0.0.1:* running>: 1 requests (last 30) -*",
        "GET /seen?x=1 from pid * (connection 1)",
    ])
