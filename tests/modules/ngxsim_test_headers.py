"""Test module: ``echo_headers;`` answers the request's header lines as the worker handed them
over (``environ["ngxsim.headers"]``, null when the server gave none) as JSON."""

from ngxsim import FLAG, LOCATION, Directive, hookimpl, json_response


@hookimpl
def ngxsim_directives(register):
    register(Directive("echo_headers", (LOCATION,), 0, type=FLAG, default=False, inherit=False))


@hookimpl
def ngxsim_content_handler(location, config):
    if not location["echo_headers"]:
        return None
    return lambda ctx: json_response({"headers": ctx.environ.get("ngxsim.headers")})
