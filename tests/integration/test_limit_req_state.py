"""limit_req's state lives in its zone: it holds across workers, survives a killed worker and a
reload that keeps the zone, and a test can read it (the kit's ``attached_zone`` and ``reload``)."""

from __future__ import annotations

import struct
import zlib

import pytest

from ngxsim import SharedTable
from ngxsim.testing import ReloadRejected

CONF = """
load_module limit_req;
worker_processes 3;
http {
    limit_req_zone $binary_remote_addr zone=one:64k rate=1r/m;
    server {
        listen 127.0.0.1:{port};
        location / { limit_req zone=one burst=2 nodelay; limit_req_status {status}; jobs_status_placeholder; }
    }
}
"""
RECORD = struct.Struct("<qqq")  # limit_req's record: excess, last, count
LOCALHOST = bytes([127, 0, 0, 1])  # $binary_remote_addr


def conf(status: int) -> str:
    # the location needs a content handler after the preaccess phase: ngxsim_test_phases' job status
    return ("load_module ngxsim_test_phases;\n" + CONF).replace("{status}", str(status)).replace(
        "jobs_status_placeholder", "test_jobs_status")


def excess(server) -> int:
    with server.attached_zone("one") as zone:
        value = SharedTable(zone, 64, RECORD.size).get(LOCALHOST)
    return RECORD.unpack(value)[0] if value is not None else -1


def test_the_bucket_is_shared_and_survives_a_killed_worker_and_a_reload(ngxsim_server):
    server = ngxsim_server(conf(503), mode="ngxsim", ready_path="/x")  # readiness: 1 request per worker
    assert excess(server) == 2000  # three workers' first requests: 0, 1000, 2000 (no leak at 1r/m)
    assert server.get("/x").status_code == 503  # over the burst, whichever worker answers
    server.kill_worker()
    assert server.get("/x").status_code == 503  # the new worker reads the same bucket
    server.reload(conf(429))  # same zone, same size: kept
    assert server.get("/x").status_code == 429
    assert excess(server) == 2000


def test_a_reload_with_a_bad_config_is_rejected_and_the_state_kept(ngxsim_server):
    server = ngxsim_server(conf(503), mode="ngxsim", ready_path="/x")
    pids = server.worker_pids()
    with pytest.raises(ReloadRejected, match=r'\[emerg\] invalid burst value "burst=0"'):
        server.reload(conf(503).replace("burst=2", "burst=0"))
    assert server.worker_pids() == pids
    assert server.get("/x").status_code == 503


SMALL = """
load_module ngxsim_test_phases;
load_module limit_req;
worker_processes 2;
http {
    limit_req_zone $arg_k zone=small:32k rate=1r/s;
    server {
        listen 127.0.0.1:{port};
        location / { limit_req zone=small burst=5 nodelay; test_jobs_status; }
    }
}
"""


def test_a_record_in_use_is_never_evicted_and_a_full_stripe_refuses_a_new_key(ngxsim_server):
    server = ngxsim_server(SMALL, mode="ngxsim")
    with server.attached_zone("small") as zone:
        table = SharedTable(zone, 64, RECORD.size)
        keys, i = [], 0
        while len(keys) < table.slots + 1:  # keys of stripe 0 (a CRC-32 of the key)
            if zlib.crc32(f"k{i}".encode()) % table.stripes == 0:
                keys.append(f"k{i}")
            i += 1
        *held, extra = keys
        for key in held:  # what requests between lookup and accounting leave: count 1
            table.put(key, RECORD.pack(0, 0, 1))
    assert server.get(f"/x?k={extra}").status_code == 503
    assert server.logged("alert", 'could not allocate node in limit_req zone "small"')
    with server.attached_zone("small") as zone:
        table = SharedTable(zone, 64, RECORD.size)
        assert all(table.get(key) == RECORD.pack(0, 0, 1) for key in held)  # none evicted
        table.put(held[0], RECORD.pack(0, 0, 0))  # that request was accounted: its record may go
    assert server.get(f"/x?k={extra}").status_code == 200
