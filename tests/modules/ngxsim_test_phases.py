"""Test module: an instance-wide periodic job, a module variable and the request phases.

- ``test_service on;`` (main) declares the service ``test.service`` (lease 0.8 s): it appends
  ``start <pid>`` to ``$NGXSIM_TEST_RECORD_DIR/service.log`` when it starts, ``stop <pid>`` when
  told to stop;
- ``test_service_process on;`` (main) declares ``test.helper`` (lease 0.8 s) run in a process of
  its own at nice 5: it appends ``start <pid> <parent pid> <nice> <test_service_tag>`` to
  ``helper.log`` when it starts and ``stop <pid>`` when told to stop, ``test_service_linger``
  later (a helper still finishing after its worker died); ``test_service_crash on`` makes it
  raise at once instead (a helper that cannot run);
- ``test_job INTERVAL;`` (main) declares the job ``test.tick``: each run appends
  ``<pid> <monotonic time>`` to ``$NGXSIM_TEST_RECORD_DIR/ticks.log``; ``test_job_sleep`` makes
  a run last that long (a hung holder); ``/jobs`` (``test_jobs_status;``) answers
  ``runtime.jobs.status()``.
- ``$test_phase`` is what the pre-content handler recorded in ``ctx.vars``.
- ``test_precontent on;``: a request with ``?short=1`` is answered by the pre-content handler.
- ``test_body_filter on;``: responses get their body upper-cased by a body filter, and an
  ``X-Stash`` header with what the pre-content handler put in ``ctx.stash`` for this request.
"""

from __future__ import annotations

import os
import time

from ngxsim import FLAG, LOCATION, MAIN, TIME, Directive, Variable, hookimpl, json_response
from werkzeug.wrappers import Response


@hookimpl
def ngxsim_directives(register):
    register(Directive("test_job", (MAIN,), 1, type=TIME, default=None))
    register(Directive("test_job_sleep", (MAIN,), 1, type=TIME, default=0))
    register(Directive("test_service", (MAIN,), 1, type=FLAG, default=False))
    register(Directive("test_service_process", (MAIN,), 1, type=FLAG, default=False))
    register(Directive("test_service_tag", (MAIN,), 1, default="-"))
    register(Directive("test_service_linger", (MAIN,), 1, type=TIME, default=0))
    register(Directive("test_service_crash", (MAIN,), 1, type=FLAG, default=False))
    register(Directive("test_jobs_status", (LOCATION,), 0, type=FLAG, default=False, inherit=False))
    register(Directive("test_precontent", (LOCATION,), 1, type=FLAG, default=False))
    register(Directive("test_body_filter", (LOCATION,), 1, type=FLAG, default=False))


@hookimpl
def ngxsim_variables(register):
    register(Variable("test_phase", lambda ctx: ctx.vars.get("test_phase", "")))


def _tick(runtime):
    folder = os.environ["NGXSIM_TEST_RECORD_DIR"]
    with open(os.path.join(folder, "ticks.log"), "a") as fh:
        fh.write(f"{os.getpid()} {time.monotonic():.6f}\n")
    pause = runtime.config.main["test_job_sleep"]
    if pause:
        time.sleep(pause)


def _service(runtime, lease):
    """Writes "start PID" when it starts, "stop PID" when told to stop."""
    folder = os.environ["NGXSIM_TEST_RECORD_DIR"]
    with open(os.path.join(folder, "service.log"), "a") as fh:
        fh.write(f"start {os.getpid()}\n")
    lease.stopping.wait()
    with open(os.path.join(folder, "service.log"), "a") as fh:
        fh.write(f"stop {os.getpid()}\n")


def _helper(runtime, lease):
    main = runtime.config.main
    if main["test_service_crash"]:
        raise RuntimeError("test_service_crash")
    path = os.path.join(os.environ["NGXSIM_TEST_RECORD_DIR"], "helper.log")
    with open(path, "a") as fh:
        fh.write(f"start {os.getpid()} {os.getppid()} {os.getpriority(os.PRIO_PROCESS, 0)} {main['test_service_tag']}\n")
    lease.stopping.wait()
    time.sleep(main["test_service_linger"])
    with open(path, "a") as fh:
        fh.write(f"stop {os.getpid()}\n")


@hookimpl
def ngxsim_postconfiguration(config):
    if config.main["test_service"]:
        config.jobs.declare_service("test.service", _service, owner="ngxsim_test_phases", lease=0.8)
    if config.main["test_service_process"]:
        config.jobs.declare_service("test.helper", _helper, owner="ngxsim_test_phases", lease=0.8, process=True, nice=5)
    interval = config.main["test_job"]
    if interval:
        config.jobs.declare("test.tick", interval, _tick, owner="ngxsim_test_phases",
                            where=config.main.where_of("test_job"))


@hookimpl
def ngxsim_content_handler(location, config):
    if location["test_jobs_status"]:
        return lambda ctx: json_response({"pid": os.getpid(), "jobs": ctx.runtime.jobs.status() if ctx.runtime.jobs else []})
    return None


@hookimpl
def ngxsim_precontent_handler(location, config):
    if not location["test_precontent"]:
        return None

    def precontent(ctx):
        ctx.vars["test_phase"] = "precontent-saw-it"
        ctx.stash["ngxsim_test_phases"] = ctx.uri  # handed to the body filter of this request only
        if ctx.arg("short"):
            return Response("short-circuited", status=200, content_type="text/plain")
        return None

    return precontent


@hookimpl
def ngxsim_body_filter(location, config):
    if not location["test_body_filter"]:
        return None

    def body_filter(ctx, response):
        headers = dict(response.headers)
        headers["X-Stash"] = str(ctx.stash.get("ngxsim_test_phases", "-"))
        return Response(response.get_data().upper(), status=response.status_code, headers=headers)

    return body_filter
