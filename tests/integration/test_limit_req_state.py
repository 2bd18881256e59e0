"""limit_req's state lives in its zone: it holds across workers, survives a killed worker and a
reload that keeps the zone, and a test can read it (the kit's ``attached_zone`` and ``reload``)."""

from __future__ import annotations

import struct

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
