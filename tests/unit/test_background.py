"""The core's background work (ngxsim.run_in_background, docs/hooks.md "Background work"): the
cap per worker, failures in the error log, a clean stop; and a background subrequest under
Flask's test client (proxy_cache_background_update, with a real loopback backend)."""

from __future__ import annotations

import io
import logging
import threading

import pytest
from werkzeug.test import EnvironBuilder
from werkzeug.wrappers import Request

from ngxsim import ALERT, ApiError, BackgroundWork, read_body, subrequest
from ngxsim.core.http.context import RequestContext
from ngxsim.testing import Backend


def _blocked(work: BackgroundWork, count: int, release: threading.Event) -> list[threading.Event]:
    started = []
    for i in range(count):
        began = threading.Event()
        started.append(began)

        def fn(began=began):
            began.set()
            release.wait(30)

        assert work.submit(f"piece {i}", fn)
    for began in started:
        assert began.wait(10)
    return started


def test_past_the_limit_work_is_refused_until_a_piece_ends():
    work = BackgroundWork(limit=3)
    release = threading.Event()
    _blocked(work, 3, release)
    assert work.submit("one too many", lambda: None) is False
    assert (work.started, work.refused, len(work.running)) == (3, 1, 3)
    release.set()
    assert work.wait_idle(10)
    ran = threading.Event()
    assert work.submit("after", ran.set) and ran.wait(10)


def test_a_failure_is_in_the_error_log_with_its_traceback(caplog):
    work = BackgroundWork()

    def broken():
        raise RuntimeError("the origin said no")

    with caplog.at_level(logging.ERROR, logger="ngxsim"):
        assert work.submit("refresh /x", broken)
        assert work.wait_idle(10)
    assert work.failed == 1
    record = next(r for r in caplog.records if 'background work "refresh /x" failed' in r.getMessage())
    assert record.exc_info is not None and "the origin said no" in str(record.exc_info[1])


def test_stop_waits_for_what_runs_and_starts_nothing_new(caplog):
    work = BackgroundWork()
    release = threading.Event()
    done = threading.Event()

    def piece():
        release.wait(30)
        done.set()

    assert work.submit("slow", piece)
    stopper = threading.Thread(target=work.stop, kwargs={"timeout": 30})
    stopper.start()
    wait_stopped = threading.Event()
    while not wait_stopped.wait(0.01):  # stop() has refused new work once submit says no
        if not work.submit("late", lambda: None):
            wait_stopped.set()
    assert not done.is_set() and stopper.is_alive()  # still waiting for the slow piece
    release.set()
    stopper.join(30)
    assert done.is_set() and not stopper.is_alive()
    assert "abandoned" not in caplog.text


def test_stop_names_what_it_abandons(caplog):
    work = BackgroundWork()
    release = threading.Event()
    _blocked(work, 1, release)
    with caplog.at_level(logging.CRITICAL, logger="ngxsim"):
        work.stop(timeout=0.05)
    release.set()
    alerts = [r for r in caplog.records if r.levelno == ALERT]  # the error log's [alert]
    assert [r.getMessage() for r in alerts] == [
        'the worker exits with 1 background work(s) still running, abandoned: "piece 0"']


CONF = """
load_module worker_events;
load_module upstreams;
load_module cache_purge;
http {
    worker_events_zone bus;
    proxy_cache_path %s keys_zone=tc:1m;
    server {
        listen 127.0.0.1:8080;
        add_header X-Cache $upstream_cache_status always;
        location / {
            proxy_pass http://%s;
            proxy_cache tc;
            proxy_cache_use_stale updating;
            proxy_cache_background_update on;
        }
    }
}
"""


def test_a_background_refresh_under_the_test_client(make_app, tmp_path):
    """Flask's test client has no worker class: the worker's background work starts with the
    first request, and the refresh runs beside the requests all the same."""
    with Backend(name="tc") as backend:
        client = make_app(CONF % (tmp_path / "cache", backend.address))
        backend.respond("/t", body="v1", headers={"Cache-Control": "max-age=1"})
        assert client.get("/t").headers["X-Cache"] == "MISS"
        runtime = client.application.runtime
        import time

        time.sleep(2.1)  # max-age=1 in nginx's whole seconds
        backend.respond("/t", body="v2", headers={"Cache-Control": "max-age=3600"})
        r = client.get("/t")
        assert (r.headers["X-Cache"], r.text) == ("STALE", "v1")
        assert runtime.background.wait_idle(10) and runtime.background.started == 1
        r = client.get("/t")
        assert (r.headers["X-Cache"], r.text) == ("HIT", "v2")


def _posted(body: bytes, **headers) -> RequestContext:
    environ = EnvironBuilder(path="/p", method="POST", data=body, headers=headers).get_environ()
    return RequestContext(environ, Request(environ), None)


def test_the_body_is_read_once_and_a_subrequest_carries_it():
    """nginx's subrequest shares its parent's request body (a proxy_cache_methods POST
    refreshed in the background is sent with it): read_body keeps what it read, subrequest
    hands it on as a Content-Length body."""
    ctx = _posted(b"hello", **{"Content-Type": "text/plain"})
    assert read_body(ctx, 100) == b"hello"
    assert read_body(ctx, 100) == b"hello"  # the stream is spent: the same bytes again
    sub = subrequest(ctx)
    assert (sub.environ["CONTENT_LENGTH"], sub.environ["wsgi.input"].read(), read_body(sub, 100)) == \
        ("5", b"hello", b"hello")
    assert sub.environ["CONTENT_TYPE"] == "text/plain"


def test_a_subrequest_of_a_body_not_read_has_none():
    sub = subrequest(_posted(b"hello"))
    assert ("CONTENT_LENGTH" not in sub.environ, sub.body, sub.environ["wsgi.input"].read()) == (True, None, b"")


def test_a_body_that_cannot_be_read_fails_the_same_on_every_read():
    """A chunked body found too large after part of it was read: a second read does not take
    the rest for the body."""
    environ = EnvironBuilder(path="/p", method="POST", input_stream=io.BytesIO(b"0123456789"),
                             headers={"Transfer-Encoding": "chunked"}).get_environ()
    environ["wsgi.input_terminated"] = True  # as gunicorn says of a chunked body it decodes
    ctx = RequestContext(environ, Request(environ), None)
    for _ in range(2):
        with pytest.raises(ApiError) as failed:
            read_body(ctx, 5)
        assert failed.value.status == 413
