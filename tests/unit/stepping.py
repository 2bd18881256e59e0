"""Run a call in a forked child one machine instruction at a time (ptrace's single step) and look
at shared memory between every two instructions: what a lock-free reader could see at any
instant, and what a writer SIGKILLed at any instant leaves behind — deterministically, where a
reader racing a writer only sees a short window with some probability. Imported by the tests
beside it. Skips the test where the kernel does not let a process trace its child."""

from __future__ import annotations

import ctypes
import os
import signal

import pytest

_TRACEME, _SINGLESTEP, _DETACH = 0, 9, 17
_libc = ctypes.CDLL(None, use_errno=True)
_libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
_libc.ptrace.restype = ctypes.c_long
STEP_LIMIT = 3_000_000  # a bound on the instructions of one call (each ~20 us to step)


class Killed(Exception):
    """Raised by ``look`` to SIGKILL the child at that instruction (``each_instruction`` then
    returns the number of instructions it ran)."""


def each_instruction(call, look, before=None, watch=None) -> int:
    """Fork; in the child run ``before()`` (untraced: first uses, lock fds), then ``call()`` one
    instruction at a time. After each instruction, ``look(step)`` runs here: an assertion it
    raises fails the test (the child is killed), ``Killed`` kills the child there (as a SIGKILL
    at that instant would). With ``watch`` (a slice of shared memory that holds everything
    ``look`` reads), ``look`` runs only after the instructions that changed it. Returns how many
    instructions ran (until the child exited or was killed); the child must exit 0 otherwise."""
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(ready_r)
            if before is not None:
                before()
            traced = _libc.ptrace(_TRACEME, 0, None, None) == 0
            os.write(ready_w, b"t" if traced else b"n")
            if traced:
                os.kill(os.getpid(), signal.SIGSTOP)  # the tracer starts stepping from here
                call()
                code = 0
        finally:
            os._exit(code)
    os.close(ready_w)
    try:
        answer = os.read(ready_r, 1)
    finally:
        os.close(ready_r)
    if answer != b"t":
        os.waitpid(pid, 0)
        pytest.skip("ptrace(PTRACE_TRACEME) is not permitted here: no single-stepping a child")
    steps, done = 0, False
    try:
        _, status = os.waitpid(pid, 0)
        assert os.WIFSTOPPED(status), f"the child did not stop: status {status}"
        signal_to_pass = 0
        seen = None
        while steps < STEP_LIMIT:
            if _libc.ptrace(_SINGLESTEP, pid, None, ctypes.c_void_p(signal_to_pass)) != 0:
                raise OSError(ctypes.get_errno(), "ptrace(PTRACE_SINGLESTEP)")
            _, status = os.waitpid(pid, 0)
            if os.WIFEXITED(status) or os.WIFSIGNALED(status):
                done = True
                assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, f"the child failed: status {status}"
                return steps
            stopped_by = os.WSTOPSIG(status)
            signal_to_pass = 0 if stopped_by in (signal.SIGTRAP, signal.SIGSTOP) else stopped_by
            steps += 1
            if watch is not None:
                now = bytes(watch)
                if now == seen:
                    continue
                seen = now
            try:
                look(steps)
            except Killed:
                return steps
        raise AssertionError(f"the call ran more than {STEP_LIMIT} instructions")
    finally:
        if not done:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
