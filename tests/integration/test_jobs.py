"""Instance-wide periodic jobs under gunicorn -w 4: one runner per interval, taken over when
its worker dies or hangs."""

from __future__ import annotations

import os
import signal
import time

import pytest

from ngxsim.testing import wait_for

CONF = """
load_module ngxsim_test_phases;
test_job {interval};
{extra}
http {
    server {
        listen 127.0.0.1:{port};
        location /jobs { test_jobs_status; }
    }
}
"""


def ticks(folder):
    path = folder / "ticks.log"
    if not path.exists():
        return []
    return [(int(p), float(t)) for p, t in (line.split() for line in path.read_text().splitlines())]


@pytest.fixture
def start(ngxsim_server, tmp_path):
    def run(interval="200ms", extra="", **kw):
        text = CONF.replace("{interval}", interval).replace("{extra}", extra)
        return ngxsim_server(text, workers=4, extra_env={"NGXSIM_TEST_RECORD_DIR": str(tmp_path)}, **kw)

    return run


@pytest.mark.ngxsim_modes("gunicorn", "ngxsim")
def test_one_worker_runs_the_job_once_per_interval(start, tmp_path):
    server = start()
    wait_for(lambda: len(ticks(tmp_path)) >= 11, 15, what="11 runs")
    runs = ticks(tmp_path)
    # one holder for the whole instance, not one run per worker per interval. (Under load a
    # worker still starting can miss its renewal past the lease, 2 intervals: another then takes
    # the job over, as from a hung holder; once under the full suite's load. So: holders one
    # after the other, never back and forth, and at most one such hand-over)
    holders = [pid for i, (pid, _) in enumerate(runs) if i == 0 or runs[i - 1][0] != pid]
    assert len(holders) == len(set(holders)) <= 2, runs
    gaps = [b - a for (_, a), (_, b) in zip(runs, runs[1:])]
    # never two runs for one due time: those would start within milliseconds of each other. (A
    # run that starts late, its worker still busy starting, is closer to the next one by as much:
    # 66 ms once under the full suite's load, so the gap alone cannot say more)
    assert all(g > 0.03 for g in gaps), gaps
    assert len(runs) - 1 <= (runs[-1][1] - runs[0][1]) / 0.2 + 1, runs  # one run per due time
    status = server.get("/jobs").json()["jobs"]
    assert status[0]["name"] == "test.tick" and status[0]["holder_pid"] == runs[-1][0]
    assert status[0]["runs"] >= len(runs)


def test_a_killed_holder_is_replaced_within_two_intervals(start, tmp_path):
    server = start(interval="300ms")
    wait_for(lambda: len(ticks(tmp_path)) >= 2, 15, what="the first runs")
    holder = ticks(tmp_path)[-1][0]
    os.kill(holder, signal.SIGKILL)
    killed_at = ticks(tmp_path)[-1][1]
    new = wait_for(lambda: [t for t in ticks(tmp_path) if t[0] != holder], 10, what="another worker to run the job")
    # the successor looks at least once an interval: the schedule slips by < 2 intervals
    assert new[0][1] - killed_at < 2 * 0.3 + 0.25, (killed_at, new[0])
    wait_for(lambda: len([t for t in ticks(tmp_path) if t[0] != holder]) >= 3, 10, what="runs to go on")
    assert holder not in server.worker_pids()


def test_a_hung_holder_loses_the_job_when_its_lease_runs_out(start, tmp_path):
    # each run lasts 2 s: longer than the 2 x 300 ms lease, so the holder looks hung
    start(interval="300ms", extra="test_job_sleep 2s;")
    wait_for(lambda: ticks(tmp_path), 15, what="the first run")
    first = ticks(tmp_path)[0]
    second = wait_for(lambda: ticks(tmp_path)[1:], 10, what="a second run")[0]
    assert second[0] != first[0], "the hung holder kept the job"
    assert 0.3 < second[1] - first[1] < 1.2, (first, second)


def test_runs_start_an_interval_apart_however_long_each_lasts(start, tmp_path):
    # each run lasts 200 ms of a 300 ms interval: the next one is due 300 ms after this one began,
    # not 300 ms after it ended (which would space them 500 ms apart)
    start(interval="300ms", extra="test_job_sleep 200ms;")
    wait_for(lambda: len(ticks(tmp_path)) >= 6, 15, what="six runs")
    runs = ticks(tmp_path)
    gaps = sorted(b - a for (_, a), (_, b) in zip(runs, runs[1:]))
    assert gaps[len(gaps) // 2] < 0.4, gaps


SERVICE_CONF = """
load_module ngxsim_test_phases;
test_service on;
http {
    server {
        listen 127.0.0.1:{port};
        location /jobs { test_jobs_status; }
    }
}
"""


def service_log(folder):
    path = folder / "service.log"
    return [(what, int(pid)) for what, pid in (line.split() for line in path.read_text().splitlines())] \
        if path.exists() else []


def test_a_service_runs_in_one_worker_and_moves_when_that_worker_is_killed(ngxsim_server, tmp_path):
    server = ngxsim_server(SERVICE_CONF, workers=3, extra_env={"NGXSIM_TEST_RECORD_DIR": str(tmp_path)})
    [(_, holder)] = wait_for(lambda: service_log(tmp_path), 15, what="the service to start")
    server.each_worker("/jobs")  # every worker is up and has looked at the lease
    status = server.get("/jobs").json()["jobs"][0]
    assert (status["name"], status["holder_pid"], status["runs"]) == ("test.service", holder, 1)
    assert service_log(tmp_path) == [("start", holder)]  # one instance-wide, not one per worker
    os.kill(holder, signal.SIGKILL)
    log = wait_for(lambda: service_log(tmp_path)[1:], 10, what="another worker to take the service over")
    assert log[0][0] == "start" and log[0][1] != holder and len(log) == 1
    server.stop()
    assert ("stop", log[0][1]) in service_log(tmp_path)  # told to stop when its worker stops


HELPER_CONF = """
load_module ngxsim_test_phases;
test_service_process on;
test_service_tag first;
{extra}
http {
    server {
        listen 127.0.0.1:{port};
        location /jobs { test_jobs_status; }
    }
}
"""


def helper_log(folder):
    """(what, pid, parent pid, nice, tag) per line of helper.log ("stop" lines: pid only)."""
    path = folder / "helper.log"
    lines = [line.split() for line in path.read_text().splitlines()] if path.exists() else []
    return [(w[0], int(w[1]), *((int(w[2]), int(w[3]), w[4]) if w[0] == "start" else ())) for w in lines]


def helper_server(ngxsim_server, tmp_path, extra="", workers=2):
    return ngxsim_server(HELPER_CONF.replace("{extra}", extra), workers=workers,
                         extra_env={"NGXSIM_TEST_RECORD_DIR": str(tmp_path)})


def test_a_process_service_runs_in_a_process_of_its_own_below_the_workers_and_comes_back_when_killed(
        ngxsim_server, tmp_path):
    server = helper_server(ngxsim_server, tmp_path)
    [(_, pid, parent, nice, tag)] = wait_for(lambda: helper_log(tmp_path), 15, what="the helper to start")
    workers = server.worker_pids()
    assert pid not in workers and parent in workers  # none of a worker's GIL, started by one of them
    assert server.get("/jobs").json()["jobs"][0]["holder_pid"] == parent  # the lease stays the worker's
    assert nice == os.getpriority(os.PRIO_PROCESS, parent) + 5
    assert tag == "first"
    # the file changes on disk (no reload): the helper started again serves its worker's configuration
    server.conf.write_text(server.conf.read_text().replace("test_service_tag first", "test_service_tag second"))
    os.kill(pid, signal.SIGKILL)
    log = wait_for(lambda: (log := helper_log(tmp_path))[1:] and log, 15, what="the helper to start again")
    assert log[1][0] == "start" and log[1][1] != pid and log[1][2:] == (parent, nice, "first"), log
    wait_for(lambda: server.logged("alert", f"service test.helper process {pid} exited on signal 9"), 10,
             what="the [alert] naming the killed helper")
    server.stop()
    assert ("stop", log[1][1]) in helper_log(tmp_path)  # told to stop when its worker stops
    with pytest.raises(ProcessLookupError):
        os.kill(log[1][1], 0)


def test_a_helper_outliving_its_killed_worker_holds_off_its_successor_until_it_is_done(ngxsim_server, tmp_path):
    # the worker dies; its helper sees its stdin close and takes 2 s to finish; another worker
    # takes the lease at once and starts a helper, which must not run until the old one is done
    server = helper_server(ngxsim_server, tmp_path, extra="test_service_linger 2s;", workers=3)
    [(_, old, parent, _, _)] = wait_for(lambda: helper_log(tmp_path), 15, what="the helper to start")
    os.kill(parent, signal.SIGKILL)
    log = wait_for(lambda: (log := helper_log(tmp_path))[2:] and log, 20, what="a second helper to start")
    assert log[1] == ("stop", old), log  # the old one finished before the new one ran
    assert log[2][0] == "start" and log[2][2] != parent, log
    assert server.logged("warn", "service test.helper: an earlier process of it is still finishing")


def test_a_helper_that_cannot_run_is_started_again_with_growing_pauses_and_said(ngxsim_server, tmp_path):
    server = helper_server(ngxsim_server, tmp_path, extra="test_service_crash on;")
    wait_for(lambda: server.output().count("exited with code 1") >= 3, 20, what="three failed starts")
    starts = server.output().count("start service test.helper process")
    time.sleep(3.0)
    # without the pauses a start every ~0.6 s (an interpreter's start, then the lease's next
    # renewal): 5 in 3 s; with them (2 s after the third failure, then 4 s) at most 2
    assert server.output().count("start service test.helper process") - starts <= 2, server.tail(30)
    assert server.logged("error", "service test.helper (its process) failed")


def test_a_reload_stops_the_old_helper_before_a_new_worker_starts_one_with_the_new_configuration(
        ngxsim_server, tmp_path):
    server = ngxsim_server(HELPER_CONF.replace("{extra}", ""), workers=2, mode="ngxsim",
                           extra_env={"NGXSIM_TEST_RECORD_DIR": str(tmp_path)})
    [(_, old, *_)] = wait_for(lambda: helper_log(tmp_path), 15, what="the helper to start")
    server.reload(server.conf.read_text().replace("test_service_tag first", "test_service_tag second"))
    log = wait_for(lambda: (log := helper_log(tmp_path))[2:] and log, 20, what="the new configuration's helper")
    assert log[1] == ("stop", old), log  # the old one was told, and finished, first
    assert log[2][0] == "start" and log[2][2] in server.worker_pids() and log[2][4] == "second", log
    with pytest.raises(ProcessLookupError):
        os.kill(old, 0)
