"""A test module that declares directives of real nginx it does not implement (``Unsupported``),
one of them also implemented (``listen`` by the core, ``frob_both`` by this module): the real
declarations win."""

from ngxsim import HTTP, LOCATION, Directive, Unsupported, hookimpl


@hookimpl
def ngxsim_directives(register):
    register(Unsupported("frob_anywhere", "use frob_other instead"))
    register(Unsupported("frob_in_location", "move it", contexts=(LOCATION,)))
    register(Unsupported("listen", "never shown: the core implements listen"))
    register(Unsupported("frob_both", "never shown: declared below"))
    register(Directive("frob_both", (LOCATION,), 1))
    # a real directive in one context, advice in another (nginx's keepalive_timeout: the
    # upstream module's and the http core's)
    register(Directive("frob_split", (LOCATION,), 1))
    register(Unsupported("frob_split", "the http-level one is not here", contexts=(HTTP,)))
