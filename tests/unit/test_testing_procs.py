"""``ngxsim.testing.procs.stop``: SIGSTOP that returns once the process is stopped, every thread
of it (``kill()`` returns when the signal is queued; the engines' ``pause()`` rely on this)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from ngxsim.testing import procs, wait_for

# four threads that spin (each on a CPU when it has one) and the main one asleep
SPINNERS = """
import threading, time
def spin():
    while True:
        pass
for _ in range(4):
    threading.Thread(target=spin, daemon=True).start()
print("up", flush=True)
time.sleep(60)
"""


@pytest.fixture
def spinning():
    proc = subprocess.Popen([sys.executable, "-c", SPINNERS], stdout=subprocess.PIPE)
    try:
        assert proc.stdout.readline() == b"up\n"
        yield proc.pid
    finally:
        os.kill(proc.pid, signal.SIGCONT)
        proc.kill()
        proc.wait(10)


def _states(pid: int) -> list[str]:
    states = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/stat", "rb") as fh:
            stat = fh.read()
        states.append(stat[stat.rfind(b")") + 2 :].split()[0].decode())
    return states


def test_stop_returns_once_every_thread_is_stopped_and_sigcont_lets_them_run_again(spinning):
    for _ in range(20):
        procs.stop(spinning)
        states = _states(spinning)  # read at once: nothing waited for between
        assert len(states) == 5 and set(states) == {"T"}, states
        assert procs.stopped(spinning)
        os.kill(spinning, signal.SIGCONT)
        wait_for(lambda: not procs.stopped(spinning), 10, 0.001, what="the threads to run again")


def test_stop_of_a_process_that_is_gone_says_so():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(10)
    with pytest.raises(ProcessLookupError):
        procs.stop(proc.pid)
    assert not procs.stopped(proc.pid)
