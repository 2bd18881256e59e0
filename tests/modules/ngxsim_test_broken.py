"""A test module that exists but fails to import."""

import ngxsim_no_such_dependency  # noqa: F401
