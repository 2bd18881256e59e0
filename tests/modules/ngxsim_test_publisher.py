"""A test module that only publishes (no event hooks): ``publisher_zone NAME;`` in http names the
zone, and ``config.publishes`` has the core check it at load."""

from ngxsim import HTTP, Directive, hookimpl


@hookimpl
def ngxsim_directives(register):
    register(Directive("publisher_zone", (HTTP,), 1, default="bus"))


@hookimpl
def ngxsim_postconfiguration(config):
    for http in config.blocks(HTTP):
        config.publishes(http["publisher_zone"], "ngxsim_test_publisher", where=http.where_of("publisher_zone"))
