"""Test module: ``test_on_request;`` answers what ``ngxsim.serving_request()`` says on the
request's thread, and what ``CALL()`` (set by the test) returned or raised there."""

import json

from werkzeug.wrappers import Response

from ngxsim import LOCATION, Directive, hookimpl, serving_request

CALL = None  # a test sets it: called on the request's thread, its outcome answered


@hookimpl
def ngxsim_directives(register):
    register(Directive("test_on_request", (LOCATION,), 0, inherit=False))


@hookimpl
def ngxsim_content_handler(location, config):
    if location.get("test_on_request") is None:
        return None

    def handler(ctx):
        answer = {"serving": serving_request()}
        if CALL is not None:
            try:
                answer["returned"] = repr(CALL())
            except Exception as exc:  # the outcome is the answer
                answer["raised"] = f"{type(exc).__name__}: {exc}"
        return Response(json.dumps(answer), content_type="application/json")

    return handler


@hookimpl
def ngxsim_header_filter(location, config):
    if location.get("test_on_request") is None:
        return None

    def boom(ctx, response):
        if ctx.request.args.get("boom"):
            raise RuntimeError("a filter outside any guard")

    return boom
