"""``python -m ngxsim.core.janitor PID START``: wait for a master to exit, remove its zones.

Detaches (double fork, new session) so that it outlives the worker that started it and is
nobody's zombie. Waits on a pidfd: the kernel wakes it when the master exits, no polling. Then
waits for every process of the master's process group that still has one of the instance's
files open (the workers of a SIGKILLed master stop serving at once, but finish what they are
doing) before removing them; a process outside it (a test attaching a zone) does not count.
"""

from __future__ import annotations

import os
import select
import sys

from .instance import Instance, alive
from .shm import remove_zone_files, zone_file_holders

# how often the holders are looked at again even if none exits (one may close its files and
# live on); a pidfd wakes the janitor at once when one exits
RESCAN_SECONDS = 1.0


def main(argv: list[str]) -> int:
    pid, start = int(argv[0]), int(argv[1])
    if os.fork() > 0:
        os._exit(0)
    instance = Instance(pid, start, "master")
    try:
        pidfd = os.pidfd_open(pid)
        group = os.getpgid(pid)  # the workers' group too; read while the master lives
    except ProcessLookupError:
        pidfd = group = None
    if pidfd is not None and alive(pid, start):
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        while not poller.poll(None):
            pass
        os.close(pidfd)
        _wait_for_holders(instance, group)
    remove_zone_files(instance)
    return 0


def _wait_for_holders(instance: Instance, group: int) -> None:
    """Until no process of the server's process group has one of its files open."""
    while True:
        poller = select.poll()
        fds = []
        for pid in zone_file_holders(instance, group):
            try:
                fds.append(os.pidfd_open(pid))
            except ProcessLookupError:
                continue
            poller.register(fds[-1], select.POLLIN)
        if not fds:
            return
        poller.poll(RESCAN_SECONDS * 1000)
        for fd in fds:
            os.close(fd)


if __name__ == "__main__":  # pragma: no cover - runs as its own process
    sys.exit(main(sys.argv[1:]))
