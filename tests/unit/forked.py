"""Run a function in a forked child and wait for it, bounded (the unit tests of shared memory
across processes): imported by the tests beside it."""

from __future__ import annotations

import os
import signal
import time


def child(fn):
    """Run fn in a forked child; return its pid (exit status 0 on success)."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            fn()
            code = 0
        finally:
            os._exit(code)
    return pid


def exit_status(pid, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.005)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    raise AssertionError(f"child {pid} did not finish")
