"""A SIGKILLed master: its orphaned workers stop serving at once, and the janitor removes the
zone files only after every process that still has them open exited."""

from __future__ import annotations

import os
import platform
import signal
import socket
import threading

import pytest
import requests

from ngxsim.core.instance import process_start_time
from ngxsim.testing import instance_files, procs, start_server, wait_for

CONF = """
load_module worker_events;
worker_processes 2;
worker_class sync;  # the long-poll runs on the main thread, where the test looks for it
http {
    server {
        listen 127.0.0.1:{port};
        location /api {
            worker_events_api;
            worker_events_zone bus;
            worker_events_channel c;
        }
    }
}
"""
POLL_SECONDS = 4  # how long the orphan keeps serving its last request: far longer than the janitor needs


def _janitor_of(master: int, workers: list[int]) -> int | None:
    """The detached janitor of ``master`` (not its short-lived first fork, a child of the
    master or of a worker)."""
    needle = f"ngxsim.core.janitor\0{master}\0".encode()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                found = needle in fh.read()
            with open(f"/proc/{pid}/stat", "rb") as fh:
                parent = int(fh.read().rpartition(b")")[2].split()[1])
        except OSError:
            continue
        if found and parent not in (master, *workers) and process_start_time(int(pid)):
            return int(pid)
    return None


def _in_futex_wait(pid: int) -> bool:
    """The worker's main thread sleeps on a futex: it is inside the long-poll (sync workers)."""
    try:
        with open(f"/proc/{pid}/wchan") as fh:
            return "futex" in fh.read()
    except OSError:
        return False


def _kill_all(server, workers: list[int]) -> None:
    for pid in [server.master, *workers]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if server.proc.poll() is None:
        server.proc.wait(10)


@pytest.mark.parametrize("mode", ["gunicorn", "ngxsim"])
def test_orphans_stop_serving_and_the_janitor_waits_for_them(tmp_path, mode, monkeypatch):
    # a folder of its own: a server of another ngxsim checkout starting meanwhile on this machine
    # would remove the dead master's files at once (that is its stale-file cleanup's job)
    monkeypatch.setenv("NGXSIM_SHM_DIR", str(tmp_path))
    server = start_server(tmp_path, CONF, workers=2, mode=mode)
    workers = server.worker_pids()
    try:
        tag = server.tag
        janitor = wait_for(lambda: _janitor_of(server.master, workers), 10, what="the janitor")
        newest = server.post("/api", json={"type": "before"}).json()["generation"]
        answer = {}
        poll = threading.Thread(target=lambda: answer.update(r=requests.get(
            server.url(f"/api?since={newest}&wait={POLL_SECONDS}"), timeout=30)))
        poll.start()
        poller = wait_for(lambda: next((w for w in workers if _in_futex_wait(w)), None), 10, what="a worker in the long-poll")

        os.kill(server.master, signal.SIGKILL)
        server.proc.wait(10)
        try:  # what the orphans do with a publish now: refuse it (503) or close; never accept it
            r = requests.post(server.url("/api"), json={"type": "after"}, timeout=30)
            assert r.status_code == 503 and "master process" in r.json()["message"], r.text
        except requests.ConnectionError:
            pass

        wait_for(lambda: not process_start_time(janitor), POLL_SECONDS + 20, what="the janitor to finish")
        assert not process_start_time(poller), "the janitor removed the zone files while a worker still had them open"
        assert not instance_files(tag)
        poll.join(30)
        assert answer["r"].status_code == 200  # the orphan finished the request it had accepted
    finally:
        _kill_all(server, workers)


PUBLISHERS = CONF.replace("http {", "load_module ngxsim_test_recorder;\nhttp {").replace(
    "        location /api {", "        location = /pub { recorder_publish; }\n        location /api {")
# the syscalls a worker blocked in reading a request body is in (read, recvfrom)
_READS = {"x86_64": {"0", "45"}, "aarch64": {"63", "207"}}.get(platform.machine(), set())


def _blocked_reading(pid: int, inode: int) -> bool:
    """Worker ``pid`` sleeps in a read of the connection whose socket is ``inode``: its handler
    runs and waits for the rest of the body (the request start's checks are behind it)."""
    try:
        with open(f"/proc/{pid}/syscall") as fh:
            call = fh.read().split()
        return len(call) > 1 and call[0] in _READS and os.readlink(f"/proc/{pid}/fd/{int(call[1], 16)}") == f"socket:[{inode}]"
    except (OSError, ValueError):
        return False


@pytest.mark.skipif(not _READS, reason="the read syscalls' numbers of this machine are not listed")
@pytest.mark.parametrize("path", ["/api", "/pub?p=late"], ids=["worker_events-api", "runtime-publish"])
def test_a_publish_that_ends_after_the_master_died_is_refused_not_acknowledged(tmp_path, monkeypatch, path):
    # issue 19: requests that had started before the SIGKILL still got 201 for events no worker
    # would deliver. The handler is held in its body read, the master killed and reaped, then
    # the body completed: the answer is a 503 (or a closed connection), never a 201.
    monkeypatch.setenv("NGXSIM_SHM_DIR", str(tmp_path))
    server = start_server(tmp_path, PUBLISHERS, workers=2, mode="ngxsim", ready_path="/api")
    workers, tag = server.worker_pids(), server.tag
    body = b'{"type": "late"}'
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    try:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nConnection: close\r\n"
                     f"Content-Length: {len(body)}\r\n\r\n".encode() + body[:1])
        inode = wait_for(lambda: procs.socket_inode(("127.0.0.1", server.port), sock.getsockname()), 10,
                         what="the server's end of the connection")
        worker = wait_for(lambda: procs.owner(inode, workers), 10, what="a worker to accept")
        wait_for(lambda: _blocked_reading(worker, inode), 10, what=f"worker {worker} to wait for the body")

        os.kill(server.master, signal.SIGKILL)
        server.proc.wait(10)
        sock.sendall(body[1:])
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except ConnectionResetError:
            pass
        if answer:  # a closed connection acknowledges nothing either
            head, _, text = answer.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 503 ") and b"master process" in text, answer
        wait_for(lambda: not instance_files(tag), 30, what="the janitor to remove the zone files")
    finally:
        sock.close()
        _kill_all(server, workers)
