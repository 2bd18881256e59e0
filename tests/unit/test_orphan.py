"""A worker whose master dies gets SIGTERM from the kernel (gunicorn's graceful stop) and
answers 503 to any request it still reads, instead of publishing into zones about to go."""

from __future__ import annotations

import os
import signal

from ngxsim.core.conf.loader import load_configuration
from ngxsim.core.instance import WORKER

from test_shm import _child, _exit_status

CONF = "http {\n server {\n  listen 127.0.0.1:1;\n  location / { return 200 ok; }\n }\n}\n"


def test_an_orphaned_worker_gets_sigterm_and_refuses_requests(shm_leftovers):
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    result_r, result_w = os.pipe()
    master_exit_r, master_exit_w = os.pipe()

    def worker(master: int):
        terms = []
        signal.signal(signal.SIGTERM, lambda *_: terms.append(1))
        from ngxsim.core.process import build_application

        app = build_application(config=load_configuration("/p/a.conf", text=CONF), role=WORKER, master_pid=master)
        client = app.test_client()
        before = client.get("/")
        os.write(ready_w, b"%d" % before.status_code)
        os.read(go_r, 1)  # the master has exited now
        after = client.get("/")
        message = after.get_json()["message"]
        ok = after.status_code == 503 and f"master process {master} is gone" in message and terms == [1]
        os.write(result_w, b"ok" if ok else f"{after.status_code} {message} {terms}".encode())

    def master():
        me = os.getpid()
        _child(lambda: worker(me))
        os.read(master_exit_r, 1)

    master_pid = _child(master)
    assert os.read(ready_r, 16) == b"200"  # served while the master lives
    os.write(master_exit_w, b"x")
    assert _exit_status(master_pid) == 0
    os.write(go_w, b"g")
    assert os.read(result_r, 200) == b"ok"


def test_stale_files_still_open_in_a_process_are_kept_until_it_exits(tmp_path, monkeypatch):
    # a folder of its own: another ngxsim checkout's server starting meanwhile would remove the
    # dead instance's file whatever holds it
    monkeypatch.setenv("NGXSIM_SHM_DIR", str(tmp_path))
    from ngxsim.core.instance import STANDALONE, Instance, process_start_time
    from ngxsim.core.shm import remove_stale_zone_files, zone_path

    dead_pid = _child(lambda: None)
    dead_start = process_start_time(dead_pid) or 1
    assert _exit_status(dead_pid) == 0
    path = zone_path(Instance(dead_pid, dead_start, STANDALONE), "held")
    open(path, "wb").close()
    r, w = os.pipe()

    def hold():  # an orphaned worker of that dead master, still using the file
        fd = os.open(path, os.O_RDONLY)
        os.read(r, 1)
        os.close(fd)

    holder = _child(hold)
    try:
        from ngxsim.testing import wait_for

        wait_for(lambda: any(os.readlink(f"/proc/{holder}/fd/{fd}") == path for fd in os.listdir(f"/proc/{holder}/fd")),
                 10, what="the holder to open the file")
        assert os.path.basename(path) not in remove_stale_zone_files() and os.path.exists(path)
    finally:
        os.write(w, b"x")
        assert _exit_status(holder) == 0
    assert os.path.basename(path) in remove_stale_zone_files() and not os.path.exists(path)


def test_only_holders_of_the_servers_process_group_count(tmp_path, monkeypatch):
    """A test (or any observer) attaching a zone is not one of the server's processes: the
    janitor does not wait for it."""
    from ngxsim.core.instance import STANDALONE, Instance
    from ngxsim.core.shm import zone_file_holders, zone_path
    from ngxsim.testing import wait_for

    monkeypatch.setenv("NGXSIM_SHM_DIR", str(tmp_path))
    instance = Instance(os.getpid(), 1, STANDALONE)
    path = zone_path(instance, "z")
    open(path, "wb").close()
    r, w = os.pipe()

    def hold(own_group: bool):
        if own_group:
            os.setpgid(0, 0)
        fd = os.open(path, os.O_RDONLY)
        os.read(r, 1)
        os.close(fd)

    same, other = _child(lambda: hold(False)), _child(lambda: hold(True))
    try:
        wait_for(lambda: zone_file_holders(instance) == {same, other}, 10, what="both children to open the file")
        assert zone_file_holders(instance, os.getpgid(0)) == {same}
        assert zone_file_holders(instance, other) == {other}
    finally:
        os.write(w, b"xx")
        assert _exit_status(same) == 0 and _exit_status(other) == 0
