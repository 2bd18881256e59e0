"""``python -m ngxsim.core.janitor PID START``: wait for a master to exit, remove its zones.

Detaches (double fork, new session) so that it outlives the worker that started it and is
nobody's zombie. Waits on a pidfd: the kernel wakes it when the master exits, no polling.
"""

from __future__ import annotations

import os
import select
import sys

from .instance import Instance, alive
from .shm import remove_zone_files


def main(argv: list[str]) -> int:
    pid, start = int(argv[0]), int(argv[1])
    if os.fork() > 0:
        os._exit(0)
    instance = Instance(pid, start, "master")
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        pidfd = None
    if pidfd is not None and alive(pid, start):
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        while not poller.poll(None):
            pass
    remove_zone_files(instance)
    return 0


if __name__ == "__main__":  # pragma: no cover - runs as its own process
    sys.exit(main(sys.argv[1:]))
