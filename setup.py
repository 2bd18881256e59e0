"""The project is described in pyproject.toml; this file only adds the optional C accelerator of
the shared-memory hot path (ngxsim/core/_shm_accel.c). ``optional=True``: without a compiler or
Python's headers the build skips it and ngxsim runs its pure-Python path (same semantics)."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("ngxsim.core._shm_accel", ["ngxsim/core/_shm_accel.c"], optional=True,
                             extra_compile_args=["-O2"])])
