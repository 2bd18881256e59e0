"""The disk under proxy_cache_path fails while gunicorn -w 4 serves: a REAL full filesystem (a
1 MiB tmpfs, filled by a file), and the cache folder removed while running.

nginx's behaviour is the reference: the client still gets its answer from the backend, the
failure is one [crit] line (not one traceback per request), a purge says what failed (here JSON,
507 with the path and the errno), and a missing cache path is made again."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import uuid

import pytest

from ngxsim.testing import wait_for

WORKERS = 4
API = "/api/cache?key=k"
CONF = """
load_module worker_events;
load_module upstreams;
load_module cache_purge;
http {
    proxy_cache_path {cache} keys_zone=disk:1m inactive=10m;
    worker_events_zone bus;
    upstream backend { zone backend 256k; server {backend}; }
    server {
        listen 127.0.0.1:{port};
        location /c/ {
            proxy_pass http://backend;
            proxy_cache disk;
            proxy_cache_valid 200 10m;
            proxy_cache_purge PURGE from 127.0.0.1;
            add_header X-Cache-Status $upstream_cache_status always;
        }
        location /api/cache { cache_purge_api disk; cache_purge_key k; }
        location /internal/worker-events { worker_events_api; worker_events_zone bus; worker_events_channel ops; }
    }
}
"""


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs of its own (unmounted at teardown); skipped, saying why, where mounting
    is not allowed."""
    mount = tmp_path / f"disk-{uuid.uuid4().hex[:8]}"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root: the full-disk test needs a real full filesystem")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(mount)],
                          capture_output=True, text=True, timeout=20)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}): no real full filesystem to test on")
    try:
        yield mount
    finally:
        if subprocess.run(["umount", str(mount)], capture_output=True, timeout=20).returncode != 0:
            subprocess.run(["umount", "-l", str(mount)], capture_output=True, timeout=20)


def fill(folder) -> str:
    """Write a file until the filesystem refuses with ENOSPC; returns its path."""
    path = os.path.join(folder, "filler")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC, exc
    finally:
        os.close(fd)
    return path


def start(ngxsim_server, backend, cache):
    return ngxsim_server(CONF, workers=WORKERS, placeholders={"backend": backend.address, "cache": cache},
                         ready_path="/internal/worker-events")


def test_a_full_disk_costs_the_cache_not_the_clients(ngxsim_server, ngxsim_backend, small_disk):
    backend = ngxsim_backend()
    server = start(ngxsim_server, backend, small_disk / "cache")
    assert server.get("/c/kept").headers["X-Cache-Status"] == "MISS"  # stored while there was room
    filler = fill(small_disk)

    # every worker answers from the backend, and stores nothing
    answers = []
    for path in (f"/c/new/{i}" for i in range(3)):
        backend.respond(path, body=path)
        got = server.spray(path, 2 * WORKERS)
        assert {(r.status_code, r.headers["X-Cache-Status"], r.content) for r in got} == {(200, "MISS", path.encode())}
        answers += got
    assert len({r.worker_pid for r in answers}) == WORKERS
    assert len(backend.requests_for("/c/new/0")) == 2 * WORKERS

    # the purge API answers JSON naming the disk and the errno; PURGE answers as ngx_cache_purge
    r = server.post(API, json={"key": "http://backend/c/kept"})
    assert r.status_code == 507 and r.headers["Content-Type"].startswith("application/json"), r.text
    body = r.json()
    assert (body["errno"], body["zone"]) == (errno.ENOSPC, "disk") and body["path"].startswith(str(small_disk))
    assert "No space left on device" in body["message"]
    assert server.request("PURGE", "/c/kept").status_code == 500

    log = server.output()
    assert "Traceback" not in log
    crit = [line for line in server.severe_lines() if "(28: No space left on device" in line]
    assert crit and all("[crit] cache_purge: " in line for line in crit)
    assert len(crit) <= len(answers) // 2  # a bounded rate, not one line per failed store

    # room again: stored, answered from every level, purged
    os.unlink(filler)
    assert server.get("/c/again").headers["X-Cache-Status"] == "MISS"
    assert {r.headers["X-Cache-Status"] for r in server.spray("/c/again", WORKERS)} == {"HIT"}
    assert server.post(API, json={"key": "http://backend/c/kept"}).status_code == 200

    # a server that starts on a full disk serves too (nginx starts, its cache stores nothing)
    server.stop()
    fill(small_disk)
    server = start(ngxsim_server, backend, small_disk / "cache2")
    answers = server.spray("/c/started-full", WORKERS)
    assert {(r.status_code, r.headers["X-Cache-Status"]) for r in answers} == {(200, "MISS")}
    assert "Traceback" not in server.output()
    assert any("(28: No space left on device" in line for line in server.severe_lines())


def test_a_removed_cache_folder_is_made_again_and_no_worker_keeps_what_it_lost(ngxsim_server, ngxsim_backend,
                                                                                  tmp_path):
    backend = ngxsim_backend()
    cache = tmp_path / "cache"
    server = start(ngxsim_server, backend, cache)
    backend.respond("/c/page", body="v1")
    assert server.get("/c/page").headers["X-Cache-Status"] == "MISS"
    assert {r.headers["X-Cache-Status"] for r in server.each_worker("/c/page").values()} == {"HIT"}  # in memory

    # removed at once (rm -rf takes file by file: a worker making the folder again meanwhile would
    # see it removed twice, and rightly say so twice)
    os.rename(cache, tmp_path / "gone")
    shutil.rmtree(tmp_path / "gone")
    backend.respond("/c/page", body="v2")
    probes = iter(range(1000))
    # a worker looks at the files at most every 0.1 s: the first to look after the removal makes them
    wait_for(lambda: server.get(f"/c/probe/{next(probes)}").status_code == 200 and cache.is_dir(), timeout=10,
             interval=0.05, what="a worker to make the cache folder again")
    assert server.get("/c/other").headers["X-Cache-Status"] == "MISS"
    # the memory copies went with the folder: no worker answers v1, and a purge finds the new copy
    answers = server.spray("/c/page", 3 * WORKERS)
    assert {r.content for r in answers} == {b"v2"}
    assert server.post(API, json={"key": "http://backend/c/page"}).json()["purged"] == 1
    assert {r.headers["X-Cache-Status"] for r in server.spray("/c/other", WORKERS)} == {"HIT"}  # stored anew
    lines = [line for line in server.severe_lines() if "were removed while running" in line]
    assert len(lines) == 1 and "[crit]" in lines[0] and str(cache) in lines[0], server.severe_lines()
    assert "Traceback" not in server.output()
