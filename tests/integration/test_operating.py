"""Operating a server under ``ngxsim -c`` as nginx is operated: reloads that keep the workers
when rejected and pick up module code when accepted, nginx's stop signals with long-polls woken,
what the error log says, and the embedded default served elsewhere without a file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from ngxsim.testing import Server, free_port, instance_files, wait_for

# a module the tests write and rewrite: a per-process counter, its code's version, a slow answer
PROBE = '''
import os, time
from ngxsim import LOCATION, FLAG, Directive, hookimpl, json_response

VERSION = "{version}"
COUNT = 0

@hookimpl
def ngxsim_directives(register):
    register(Directive("probe", (LOCATION,), 0, type=FLAG, default=False, inherit=False))

def _answer(ctx):
    global COUNT
    COUNT += 1
    seconds = float(ctx.arg("sleep") or 0)
    if seconds:
        open(ctx.arg("mark"), "w").close()
        time.sleep(seconds)
    return json_response({{"version": VERSION, "pid": os.getpid(), "count": COUNT}})

@hookimpl
def ngxsim_content_handler(location, config):
    if location["probe"]:
        return _answer
'''

CONF = """
load_module worker_events;
load_module ngxsim_ops_probe;
worker_processes 2;
http {
    server {
        listen 127.0.0.1:{port};
        location = /probe { probe; }
        location = /ev { worker_events_api; worker_events_zone bus; worker_events_channel ops; }
    }
}
"""


def _probe(tmp_path, version: str) -> None:
    (tmp_path / "ngxsim_ops_probe.py").write_text(PROBE.format(version=version))


@pytest.fixture
def probe(tmp_path, monkeypatch):
    """The probe module at v1, importable here (the zone helpers load the config) and in servers."""
    _probe(tmp_path, "v1")
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def _counts(server) -> dict[int, tuple[str, int]]:
    return {pid: (r.json()["version"], r.json()["count"]) for pid, r in server.each_worker("/probe").items()}


def _hup_rejected(server, times: int) -> None:
    server.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: server.output().count("reload rejected") >= times, 20, what=f"reload rejection #{times}")


def test_a_rejected_reload_keeps_the_workers_and_an_accepted_one_runs_the_new_module_code(ngxsim_server, probe, tmp_path):
    server = ngxsim_server(CONF, mode="ngxsim", ready_path="/ev")
    log = server.output()
    assert server.logged("notice", f"listening on 127.0.0.1:{server.port}")
    assert server.logged("notice", "2 worker(s) of class ngxsim (ngxsim.worker.Worker, 4 threads each)")
    assert server.logged("notice", "modules: worker_events (ngxsim_plugins.worker_events), ngxsim_ops_probe (ngxsim_ops_probe)")
    assert server.logged("notice", 'zone "bus" (') and ") created" in log
    pids = server.worker_pids()
    server.each_worker("/probe")
    assert _counts(server) == {pid: ("v1", 2) for pid in pids}

    good = server.conf.read_text()
    server.conf.write_text(good.replace("probe; }", "probe; bogus; }"))
    _hup_rejected(server, 1)
    assert server.logged("emerg", f'unknown directive "bogus" in {server.conf}:8; reload rejected')
    assert server.worker_pids() == pids  # nginx keeps the old workers
    assert _counts(server) == {pid: ("v1", 3) for pid in pids}  # and their state

    server.conf.write_text(good)
    (tmp_path / "ngxsim_ops_probe.py").write_text("this is not python\n")
    _hup_rejected(server, 2)
    assert 'module "ngxsim_ops_probe" failed to import' in server.output()
    assert server.worker_pids() == pids
    assert _counts(server) == {pid: ("v1", 4) for pid in pids}

    # a reload that resizes the ring, then fails on a zone that cannot be had: the running ring's
    # file is left as it was (a process attaching it by name, like this test, sees its events)
    published = server.post("/ev", json={"type": "before"}).json()["generation"]
    (tmp_path / "ngxsim_ops_probe.py").write_text(PROBE.format(version="v1"))
    server.conf.write_text(good.replace("worker_events_channel ops; }", "worker_events_channel ops; "
                                        "worker_events_ring_size 2048; }\n"
                                        "        location = /huge { worker_events_api; worker_events_zone huge 1024g; "
                                        "worker_events_channel ops; }"))
    _hup_rejected(server, 3)
    assert 'cannot reserve' in server.output()
    server.conf.write_text(good)  # the test's zone helper reads the ring's size from the file
    with server.zone_events("bus") as bus:
        assert bus.ring.capacity == 1024 and [e["type"] for e in bus.read(since=published - 1)] == ["before"]
    assert server.worker_pids() == pids
    assert not [f for f in instance_files(server.tag) if "@staged" in f]

    _probe(tmp_path, "v2-edited")
    server.proc.send_signal(signal.SIGHUP)
    new = server.wait_workers(2, exclude=set(pids))
    wait_for(lambda: server.worker_pids() == sorted(new), 20, what="the old workers to exit")
    assert _counts(server) == {pid: ("v2-edited", 1) for pid in new}
    log = server.output()
    assert server.logged("notice", f"reload of {server.conf} accepted") and server.logged("notice", 'zone "bus" (') and ") kept" in log


def _long_poll(server, answers: list) -> threading.Thread:
    since = server.get("/ev", params={"limit": 0}).json()["newest_generation"]
    thread = threading.Thread(target=lambda: answers.append(server.get("/ev", params={"since": since, "wait": 25},
                                                                        timeout=40)))
    thread.start()
    with server.zone_events("bus") as bus:  # it sleeps on the zone's doorbell: counted there
        wait_for(lambda: bus.ring.zone.doorbell._sleepers.value == 1, 10, what="the long-poll to wait")
    return thread


def _stopped(server, tag) -> int:
    code = server.proc.wait(20)
    wait_for(lambda: not instance_files(tag), 10, what="zone files removed")
    return code


@pytest.mark.parametrize("worker_class", ["ngxsim", "sync"])
def test_sigterm_stops_fast_and_a_waiting_long_poll_answers_with_what_it_has(ngxsim_server, probe, worker_class):
    server = ngxsim_server(CONF, mode="ngxsim", worker_class=worker_class, ready_path="/ev")
    answers: list = []
    thread = _long_poll(server, answers)
    tag = server.tag
    server.proc.send_signal(signal.SIGTERM)
    thread.join(30)
    assert answers and answers[0].status_code == 200 and answers[0].json()["events"] == []
    assert _stopped(server, tag) == 0
    assert server.logged("notice", "signal 15 (SIGTERM) received, fast shutdown")


def test_sigquit_stops_gracefully_requests_in_progress_finish(ngxsim_server, probe, tmp_path):
    server = ngxsim_server(CONF, mode="ngxsim", ready_path="/ev")
    answers: list = []
    poll = _long_poll(server, answers)
    mark = tmp_path / "slow-started"
    slow = threading.Thread(target=lambda: answers.append(
        server.get("/probe", params={"sleep": 1.5, "mark": str(mark)}, timeout=30)))
    slow.start()
    wait_for(mark.exists, 10, what="the slow request to start")
    tag = server.tag
    server.proc.send_signal(signal.SIGQUIT)
    poll.join(30)
    slow.join(30)
    assert sorted(r.status_code for r in answers) == [200, 200]
    assert {r.json().get("version") for r in answers} >= {"v1"}  # the slow one finished its answer
    assert _stopped(server, tag) == 0
    assert server.logged("notice", "signal 3 (SIGQUIT) received, graceful shutdown")


def test_sigterm_during_a_graceful_stop_makes_it_fast(ngxsim_server, probe, tmp_path):
    """nginx: TERM (or INT) after QUIT stops at once; gunicorn would ignore TERM then."""
    server = ngxsim_server(CONF, mode="ngxsim", ready_path="/ev")
    mark = tmp_path / "slow-started"
    cut: list = []

    def slow_request():
        try:
            server.get("/probe", params={"sleep": 25, "mark": str(mark)}, timeout=40)
        except OSError as exc:  # http.client's RemoteDisconnected is one: the fast stop cuts it
            cut.append(exc)

    slow = threading.Thread(target=slow_request)
    slow.start()
    wait_for(mark.exists, 10, what="the slow request to start")
    server.proc.send_signal(signal.SIGQUIT)
    wait_for(lambda: "graceful shutdown" in server.output(), 10, what="the graceful stop to begin")
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(15) == 0  # long before the 25 s request (or gunicorn's 30 s graceful limit) ends
    slow.join(10)
    assert cut, "the request in progress was cut by the fast stop"


def test_the_embedded_default_on_another_address_and_worker_count_without_a_file(tmp_path):
    port = free_port()
    env = {k: v for k, v in __import__("os").environ.items() if k != "NGXSIM_CONF"}
    log = tmp_path / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "ngxsim.cli", "-g", "worker_processes 3;",
                                 "--listen", f"127.0.0.1:{port}"], env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    server = Server(proc, port, tmp_path / "none", 3, log, env, mode="ngxsim")
    try:
        server.wait_ready("/", 30)
        assert len(server.worker_pids()) == 3 and "ngxsim is running" in server.get("/").text
    finally:
        server.stop()


@pytest.mark.parametrize("argv, message", [
    (["-g", "worker_processes 2"], 'ngxsim: [emerg] unexpected end of parameter, expecting ";" in command line'),
    (["-g", "listen 80;"], 'ngxsim: [emerg] "listen" directive is not allowed here in command line'),
    (["--listen", "127.0.0.1:8080;"], 'ngxsim: [emerg] invalid "--listen" address "127.0.0.1:8080;" in command line'),
    (["--listen", "9000"], 'ngxsim: [emerg] "--listen 9000" is not a loopback address'),
])
def test_command_line_directives_are_checked_with_nginx_wording(argv, message):
    run = subprocess.run([sys.executable, "-m", "ngxsim.cli", "-t", *argv], capture_output=True, text=True, timeout=60,
                         env={k: v for k, v in __import__("os").environ.items() if k != "NGXSIM_CONF"})
    assert run.returncode == 1 and message in run.stderr


def test_a_directive_given_with_g_and_in_the_file_is_duplicate_in_the_file(tmp_path):
    conf = tmp_path / "a.conf"
    conf.write_text("worker_processes 2;\nhttp { server { listen 127.0.0.1:1; } }\n")
    run = subprocess.run([sys.executable, "-m", "ngxsim.cli", "-t", "-c", str(conf), "-g", "worker_processes 3;"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 1 and f'"worker_processes" directive is duplicate in {conf}:1' in run.stderr


@pytest.mark.parametrize("main, sub, message", [
    # nginx says this one without a place (it checks after parsing): here the line that names it
    ("http {{\n    include sub.conf;\n}}\n", "server {{\n    listen 127.0.0.1:1;\n    return 200 \"a ${{nope}}\";\n}}\n",
     'unknown "nope" variable in {sub}:3'),
    ("http {{\n    server {{\n        listen 127.0.0.1:1;\n        location / {{ add_header X $nope_too always; }}\n"
     "    }}\n}}\n", "", 'unknown "nope_too" variable in {main}:5'),
    ("http {{\n    include {tmp}/missing.conf;\n}}\n", "",
     'open() "{tmp}/missing.conf" failed (2: No such file or directory) in {main}:3'),
    ("http {{\n    include sub.conf;\n}}\n", "\n\ninclude {tmp}/missing.conf;\n",
     'open() "{tmp}/missing.conf" failed (2: No such file or directory) in {sub}:3'),
    ("\n\ninclude {tmp};\n", "", 'open() "{tmp}" failed (21: Is a directory) in {main}:4'),
], ids=["unknown-variable-in-an-included-file", "unknown-variable", "missing-include", "missing-include-nested",
        "include-of-a-directory"])
def test_a_config_error_names_its_file_and_line_in_nginx_wording(tmp_path, main, sub, message):
    paths = {"main": tmp_path / "main.conf", "sub": tmp_path / "sub.conf", "tmp": tmp_path}
    # the main file's first line is a load_module line: its lines are one further down than in "main"
    paths["main"].write_text("load_module worker_events;\n" + main.format(**paths))
    paths["sub"].write_text(sub.format(**paths))
    run = subprocess.run([sys.executable, "-m", "ngxsim.cli", "-t", "-c", str(paths["main"])], capture_output=True,
                         text=True, timeout=60)
    expected = message.format(**paths)
    assert run.returncode == 1 and f"ngxsim: [emerg] {expected}\n" in run.stderr, run.stderr


def test_a_start_refused_by_a_modules_init_master_says_so_and_leaves_nothing(tmp_path, monkeypatch):
    # issue 19: a refused start left its zone file behind; the ring's zone is made before the
    # test module's ngxsim_init_master fails
    shm = tmp_path / "shm"
    shm.mkdir()
    monkeypatch.setenv("NGXSIM_SHM_DIR", str(shm))
    conf = tmp_path / "f.conf"
    conf.write_text(f"load_module ngxsim_test_fail_init;\nload_module worker_events;\nfail_init_master on;\n"
                    f"http {{\n worker_events_zone bus;\n server {{ listen 127.0.0.1:{free_port()}; }}\n}}\n")
    modules = str(Path(__file__).resolve().parents[1] / "modules")
    run = subprocess.run([sys.executable, "-m", "ngxsim.cli", "-c", str(conf)], capture_output=True, text=True,
                         timeout=60, env={**os.environ, "PYTHONPATH": modules})
    assert run.returncode == 1
    assert f"ngxsim: [emerg] loading {conf} failed: RuntimeError('fail_init_master is on')\n" in run.stderr, run.stderr
    assert "Traceback" not in run.stderr
    wait_for(lambda: not os.listdir(shm), 10, what=f"the refused start's files to go: {os.listdir(shm)}")
