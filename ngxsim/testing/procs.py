"""Processes and sockets, from /proc and the kernel's sock_diag: who a process's children are,
and which process owns one end of a loopback TCP connection.

A request carries no trustworthy pid of its sender or of the worker that serves it, and a
header would need the module's (or the config's) cooperation. The kernel knows: each TCP socket
has an inode, which appears as ``socket:[INODE]`` among the fds of the process that holds it.
The inode comes from one exact sock_diag netlink lookup (~60 µs; reading /proc/net/tcp instead
costs ~10 ms on a box with a thousand sockets, so it is only the fallback).
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import time
from collections.abc import Iterable

_SOCK_DIAG_BY_FAMILY = 20
_NETLINK_SOCK_DIAG = 4
_NLM_F_REQUEST = 1
_NO_COOKIE = 0xFFFFFFFF


def _stat_fields(pid: int, tid: int | None = None) -> list[bytes] | None:
    try:
        with open(f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat", "rb") as fh:
            stat = fh.read()
    except OSError:
        return None
    # the command name may hold spaces and parentheses: fields start after the last ")"
    return stat[stat.rfind(b")") + 2 :].split()


def alive(pid: int) -> bool:
    """Is ``pid`` a process that runs (not gone, not a zombie)?"""
    fields = _stat_fields(pid)
    return fields is not None and fields[0] not in (b"Z", b"X")


def stopped(pid: int) -> bool:
    """Is every thread of ``pid`` stopped (state ``T``, or ``t`` under a tracer)? False once
    it is gone."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return False
    states = [_stat_fields(pid, int(tid)) for tid in tasks]
    return bool(states) and all(fields is not None and fields[0] in (b"T", b"t") for fields in states)


def stop(pid: int, timeout: float = 10.0) -> None:
    """``SIGSTOP`` ``pid`` and return once every thread of it is stopped. ``kill()`` returns when
    the signal is queued: the process stops later, thread by thread, and meanwhile a thread woken
    by its socket still answers (nats-server, a Go program, answered a request sent right after
    ``kill()`` in 6 of 200 tries here, none after ``stop()``). Raises ``TimeoutError`` if it did not stop within
    ``timeout``, ``ProcessLookupError`` if it is gone."""
    os.kill(pid, signal.SIGSTOP)
    deadline = time.monotonic() + timeout
    while not stopped(pid):
        if not alive(pid):
            raise ProcessLookupError(f"process {pid} exited")
        if time.monotonic() > deadline:
            raise TimeoutError(f"process {pid} did not stop within {timeout:g}s of SIGSTOP")
        time.sleep(0.001)


def children(pid: int) -> list[int]:
    """Live (non-zombie) child processes of ``pid``, sorted."""
    try:
        found = []
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as fh:
                found.extend(int(c) for c in fh.read().split())
    except FileNotFoundError:  # a kernel without CONFIG_PROC_CHILDREN: scan every process
        found = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                fields = _stat_fields(int(entry))
                if fields is not None and int(fields[1]) == pid:
                    found.append(int(entry))
    except OSError:
        return []
    return sorted(c for c in set(found) if alive(c))


def _diag_inode(local: tuple[str, int], remote: tuple[str, int]) -> int | None:
    sockid = struct.pack(">HH16s16s", local[1], remote[1], socket.inet_aton(local[0]).ljust(16, b"\0"),
                         socket.inet_aton(remote[0]).ljust(16, b"\0")) + struct.pack("=III", 0, _NO_COOKIE, _NO_COOKIE)
    # inet_diag_req_v2: family, protocol, extensions, pad, state mask (all states), socket id
    request = struct.pack("=BBBBI", socket.AF_INET, socket.IPPROTO_TCP, 0, 0, 0xFFFFFFFF) + sockid
    header = struct.pack("=IHHII", 16 + len(request), _SOCK_DIAG_BY_FAMILY, _NLM_F_REQUEST, 1, 0)
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, _NETLINK_SOCK_DIAG) as nl:
        nl.settimeout(1.0)
        nl.sendto(header + request, (0, 0))
        data = nl.recv(65536)
    if len(data) < 88 or struct.unpack_from("=H", data, 4)[0] != _SOCK_DIAG_BY_FAMILY:
        return None  # NLMSG_ERROR: no such socket
    # nlmsghdr (16) + inet_diag_msg: 4 bytes, socket id (48), expires, rqueue, wqueue, uid, inode
    return struct.unpack_from("=I", data, 16 + 4 + 48 + 16)[0] or None


def _hex_address(host: str, port: int) -> str:
    return "%08X:%04X" % (struct.unpack("=I", socket.inet_aton(host))[0], port)


def _proc_net_tcp_inode(local: tuple[str, int], remote: tuple[str, int]) -> int | None:
    want_local, want_remote = _hex_address(*local), _hex_address(*remote)
    with open("/proc/net/tcp") as fh:
        next(fh)
        for line in fh:
            f = line.split()
            if f[1] == want_local and f[2] == want_remote:
                return int(f[9]) or None
    return None


def socket_inode(local: tuple[str, int], remote: tuple[str, int]) -> int | None:
    """The inode of the IPv4 TCP socket bound to ``local`` and connected to ``remote``; None
    while no process holds it (still in a listener's accept queue, or already closed)."""
    local, remote = (local[0], local[1]), (remote[0], remote[1])
    try:
        return _diag_inode(local, remote)
    except OSError:  # no sock_diag here (a sandbox without netlink)
        try:
            return _proc_net_tcp_inode(local, remote)
        except OSError:
            return None


def holds(pid: int, inode: int) -> bool:
    """Does process ``pid`` have socket ``inode`` among its fds?"""
    target = f"socket:[{inode}]"
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                return True
        except OSError:
            continue
    return False


def owner(inode: int, candidates: Iterable[int]) -> int | None:
    """The first of ``candidates`` that holds socket ``inode``."""
    return next((pid for pid in candidates if holds(pid, inode)), None)


def _this_tree_then_everyone():
    """This process and its descendants (breadth first), then every other visible process."""
    seen = set()
    todo = [os.getpid()]
    while todo:
        pid = todo.pop(0)
        if pid not in seen:
            seen.add(pid)
            yield pid
            todo.extend(children(pid))
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) not in seen:
            yield int(entry)


def peer_pid(peer: tuple[str, int], local: tuple[str, int]) -> int | None:
    """The pid of the process owning the loopback TCP socket ``peer`` connected to ``local``.

    The processes started by this test process (a server's master and workers) are searched
    first, then every process we may read."""
    inode = socket_inode(peer, local)
    return None if inode is None else owner(inode, _this_tree_then_everyone())
