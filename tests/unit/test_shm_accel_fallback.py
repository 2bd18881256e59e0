"""An accelerator built from older sources (an editable install not rebuilt after an update)
lacks what newer code calls: the zones take the pure-Python path instead of failing every
request."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap


def _accel_in_a_fresh_process(stale: bool) -> str:
    code = textwrap.dedent(f"""
        import sys, types
        if {stale!r}:
            old = types.ModuleType("ngxsim.core._shm_accel")  # what an older build offers: no add_u64
            old.futex_wait = old.futex_wake = lambda *a: 0
            old.Lock = object
            sys.modules["ngxsim.core._shm_accel"] = old
        from ngxsim.core import shm
        print("pure" if shm.accel is None else "accelerated")
    """)
    env = {k: v for k, v in os.environ.items() if k != "NGXSIM_PURE_PYTHON"}  # (the choice at import, not forced)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_a_stale_accelerator_is_not_used():
    assert _accel_in_a_fresh_process(stale=True) == "pure"


def test_a_current_accelerator_is_used_where_it_was_built():
    try:
        from ngxsim.core import _shm_accel
    except ImportError:  # a machine without a compiler: pure
        _shm_accel = None
    expected = "accelerated" if hasattr(_shm_accel, "add_u64") else "pure"
    assert _accel_in_a_fresh_process(stale=False) == expected
