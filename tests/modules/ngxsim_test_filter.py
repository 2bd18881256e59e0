"""Test module: a header filter on locations that say ``test_filter NAME;``."""

from ngxsim import LOCATION, Directive, hookimpl


@hookimpl
def ngxsim_directives(register):
    register(Directive("test_filter", (LOCATION,), 1, inherit=False))


@hookimpl
def ngxsim_header_filter(location, config):
    name = location.get("test_filter")
    if not name:
        return None

    def add(ctx, response):
        response.headers["X-Filtered"] = f"{name} {response.status_code} {response.headers.get('X-Core', '-')}"

    return add
