"""The core under real gunicorn: workers, zones across workers and respawns, ngxsim -c, reload."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from ngxsim.testing import ServerStartError, instance_files, wait_for

ZONE_CONF = """
load_module ngxsim_test_zone;
worker_processes 3;
http {
    test_zone scratch 64k;
    server {
        listen 127.0.0.1:{port};
        add_header X-Worker-Pid $pid always;
        location / { return 200 "hello from $pid"; }
        location /zone { test_zone_rw; }
    }
}
"""


@pytest.mark.parametrize("preload", [False, True], ids=["no-preload", "preload"])
def test_a_zone_written_by_one_worker_is_read_by_every_other_and_by_a_respawned_one(ngxsim_server, preload):
    server = ngxsim_server(ZONE_CONF, workers=4, preload=preload)
    assert len(server.worker_pids()) == 4
    writer = server.post("/zone", data=b"written-once")
    assert writer.status_code == 200
    readers = server.each_worker("/zone")
    assert len(readers) == 4
    for pid, r in readers.items():
        assert r.json()["data"] == "written-once", pid
    assert writer.json()["pid"] == writer.worker_pid

    replacement = server.kill_worker(server.worker_pids()[0])
    got = server.each_worker("/zone")
    assert replacement in got and got[replacement].json()["data"] == "written-once"
    assert len(instance_files(server.tag)) == 2  # the zone and the janitor's marker, nothing more


@pytest.mark.parametrize("preload", [False, True], ids=["no-preload", "preload"])
def test_a_worker_freezes_what_it_set_up_so_full_collections_walk_only_what_came_after(ngxsim_server, preload):
    # a full collection of a worker's whole heap paused it for 36-88 ms every few seconds
    # (bench_cluster); frozen, the heap it loaded is out of the collector's walk
    server = ngxsim_server("""
load_module ngxsim_test_gc;
http {
    server {
        listen 127.0.0.1:{port};
        location /gc { test_gc_report; }
    }
}
""", workers=2, preload=preload)
    answers = server.each_worker("/gc")
    assert len(answers) == 2
    for pid, r in answers.items():
        doc = r.json()
        assert doc["frozen"] > doc["tracked"] > 0, (pid, doc)


def test_ngxsim_c_runs_worker_processes_from_the_config_and_stops_on_sigterm(ngxsim_server):
    server = ngxsim_server(ZONE_CONF, workers=3, mode="ngxsim")
    assert len(server.worker_pids()) == 3
    r = server.get("/")
    assert r.status_code == 200 and r.text == f"hello from {r.worker_pid}" == f"hello from {r.headers['X-Worker-Pid']}"
    tag = server.tag
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(20) == 0
    wait_for(lambda: not instance_files(tag), 10, what="zone files removed")


def test_sighup_keeps_a_zone_of_unchanged_size_recreates_a_resized_one_and_rejects_a_bad_config(ngxsim_server):
    server = ngxsim_server(ZONE_CONF, workers=3, mode="ngxsim")
    server.post("/zone", data=b"survives")
    old = set(server.worker_pids())

    def reload_and_wait():
        before = set(server.worker_pids())
        server.proc.send_signal(signal.SIGHUP)
        return server.wait_workers(3, exclude=before, timeout=30)

    # same name and size: contents kept
    server.conf.write_text(server.conf.read_text().replace('return 200 "hello', 'return 200 "reloaded'))
    new = reload_and_wait()
    assert not set(new) & old
    wait_for(lambda: set(server.worker_pids()) == set(new), 20, what="old workers to exit")
    assert server.get("/").text.startswith("reloaded")
    assert all(r.json()["data"] == "survives" for r in server.each_worker("/zone").values())

    # a bad config: rejected, the running one keeps serving with the same workers
    good = server.conf.read_text()
    server.conf.write_text(good + "\nbogus_directive;\n")
    serving = server.worker_pids()
    server.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "reload rejected" in server.output(), 20, what="the reload to be rejected")
    assert 'unknown directive "bogus_directive"' in server.output()
    assert server.worker_pids() == serving
    assert server.get("/").text.startswith("reloaded")
    assert server.get("/zone").json()["data"] == "survives"

    # another size: created afresh
    server.conf.write_text(good.replace("scratch 64k", "scratch 128k"))
    reload_and_wait()
    wait_for(lambda: all(r.json()["data"] == "" for r in server.each_worker("/zone").values()), 20,
             what="every worker to see the new, empty zone")
    assert len(instance_files(server.tag)) == 2


def test_workers_auto_and_listen_from_the_config(ngxsim_server):
    server = ngxsim_server(ZONE_CONF.replace("worker_processes 3", "worker_processes auto"),
                            workers=os.cpu_count(), mode="ngxsim")
    assert len(server.worker_pids()) == os.cpu_count()


def test_two_servers_never_share_a_zone(ngxsim_server):
    a = ngxsim_server(ZONE_CONF, workers=2)
    b = ngxsim_server(ZONE_CONF, workers=2)
    a.post("/zone", data=b"only-in-a")
    assert b.get("/zone").json()["data"] == ""
    assert a.tag != b.tag


def test_server_name_choice_under_gunicorn(ngxsim_server):
    server = ngxsim_server("""
worker_processes 2;
http {
    server { listen 127.0.0.1:{port}; server_name a.test; return 200 a; }
    server { listen 127.0.0.1:{port} default_server; server_name b.test; return 200 b; }
    server { listen 127.0.0.1:{port}; server_name *.c.test; return 200 c; }
}
""", workers=2, mode="ngxsim")
    assert server.get("/", headers={"Host": "a.test"}).text == "a"
    assert server.get("/", headers={"Host": "x.c.test:123"}).text == "c"
    assert server.get("/", headers={"Host": "unknown"}).text == "b"


def _failed_start(ngxsim_server, conf_text) -> ServerStartError:
    """Start a server that must refuse to start: the plugin raises with its [emerg] lines."""
    with pytest.raises(ServerStartError) as failed:
        ngxsim_server(conf_text, workers=2)
    assert failed.value.server.proc.returncode != 0
    return failed.value


@pytest.mark.ngxsim_modes()
def test_a_config_error_stops_the_server_with_nginx_wording(ngxsim_server):
    failed = _failed_start(ngxsim_server, "http {\n  server {\n    listen 127.0.0.1:{port};\n    nope;\n  }\n}\n")
    emerg = f'[emerg] unknown directive "nope" in {failed.server.conf}:4'
    assert any(emerg in line for line in failed.emerg) and emerg in str(failed).splitlines()[1]


@pytest.mark.ngxsim_modes()
def test_a_module_mistake_stops_the_server_with_the_line_of_ngxsim_t(ngxsim_server):
    """Plain gunicorn and ngxsim -c print what ``ngxsim -t`` prints for a hookimpl asking for
    an argument its hook does not pass: pluggy's validation error, without its traceback."""
    failed = _failed_start(ngxsim_server, "load_module ngxsim_test_argname;\n"
                                          "http {\n server {\n  listen 127.0.0.1:{port};\n }\n}\n")
    emerg = (f'ngxsim: [emerg] module "ngxsim_test_argname": hook "ngxsim_postconfiguration" asks for argument "conf", '
             f'which the hook does not pass; name them from (config) in {failed.server.conf}:1')
    output = failed.server.output()
    assert emerg in output.splitlines() and "Traceback" not in output and "PluginValidationError" not in output


@pytest.mark.ngxsim_modes()
def test_a_module_slip_is_the_warn_line_of_ngxsim_t_at_start_and_the_server_serves(ngxsim_server):
    server = ngxsim_server("load_module ngxsim_test_unmarked;\n"
                           "http {\n server {\n  listen 127.0.0.1:{port};\n  return 200 ok;\n }\n}\n", workers=2)
    warn = (f'ngxsim: [warn] module "ngxsim_test_unmarked": function "ngxsim_postconfiguration" is named like a hook '
            f'but is not marked @ngxsim.hookimpl, so it is never called: add @hookimpl above it in {server.conf}:1')
    assert server.get("/").text == "ok"
    assert server.output().splitlines().count(warn) == 1  # once per instance, not once per worker


def _ngxsim_t(path):
    return subprocess.run([sys.executable, "-m", "ngxsim.cli", "-t", "-c", str(path)], capture_output=True, text=True,
                          timeout=60)


def test_ngxsim_t(tmp_path):
    good = tmp_path / "good.conf"
    good.write_text("load_module worker_events;\nhttp { server { listen 127.0.0.1:1; } }\n")
    run = _ngxsim_t(good)
    assert run.returncode == 0
    assert f"ngxsim: the configuration file {good} syntax is ok" in run.stderr
    assert f"ngxsim: configuration file {good} test is successful" in run.stderr
    bad = tmp_path / "bad.conf"
    bad.write_text("http {\n  server {\n    listen 1 2 3;\n  }\n}\n")
    run = _ngxsim_t(bad)
    assert run.returncode == 1
    assert f'ngxsim: [emerg] invalid parameter "2" in {bad}:3' in run.stderr  # nginx's wording
    assert f"configuration file {bad} test failed" in run.stderr
    api = tmp_path / "api.conf"  # a module's own check runs under -t too
    api.write_text("load_module worker_events;\nhttp {\n server {\n  location /e {\n   worker_events_api;\n"
                   "   worker_events_zone bus;\n  }\n }\n}\n")
    run = _ngxsim_t(api)
    assert run.returncode == 1
    assert f'"worker_events_api" requires "worker_events_channel" in {api}:5' in run.stderr


def test_ngxsim_with_no_config_serves_the_embedded_default(tmp_path):
    """The README's first command: `ngxsim` alone serves the default config on 127.0.0.1:8080."""
    import socket

    from ngxsim.testing import Server

    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", 8080))
        except OSError:
            pytest.skip("127.0.0.1:8080 is taken on this machine")
    env = {k: v for k, v in os.environ.items() if k != "NGXSIM_CONF"}
    log = tmp_path / "default.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "ngxsim.cli"], env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    server = Server(proc, 8080, tmp_path / "none", 2, log, env, mode="ngxsim")
    try:
        server.wait_ready("/", 20)
        r = server.get("/")
        assert r.status_code == 200 and "ngxsim is running" in r.text and int(r.headers["X-Worker-Pid"]) == r.worker_pid
        r = server.post("/internal/worker-events", json={"type": "hello"})
        assert r.status_code == 201 and r.json()["channel"] == "default"
    finally:
        server.stop()


@pytest.mark.ngxsim_modes()
def test_a_zone_that_cannot_be_had_stops_the_server_with_a_clear_message(ngxsim_server, request, monkeypatch):
    # a shm folder of its own: what the refused start leaves there is all of it (issue 19: its
    # other zones' files stayed); the ring's zone is made before the huge one fails
    shm = Path(tempfile.mkdtemp(prefix="ngxsim-test-shm-", dir="/dev/shm"))  # tmpfs, as /dev/shm itself
    request.addfinalizer(lambda: shutil.rmtree(shm))
    monkeypatch.setenv("NGXSIM_SHM_DIR", str(shm))
    size_g = os.statvfs("/dev/shm").f_blocks * os.statvfs("/dev/shm").f_frsize // (1 << 30) + 2
    failed = _failed_start(ngxsim_server, f"load_module worker_events;\nload_module ngxsim_test_zone;\nhttp {{\n"
                           f" worker_events_zone bus;\n test_zone huge {size_g}g;\n"
                           "  server { listen 127.0.0.1:{port}; }\n}\n")
    assert any("ngxsim: [emerg] cannot reserve" in line and "No space left on device" in line for line in failed.emerg)
    wait_for(lambda: not os.listdir(shm), 10, what=f"the refused start's files to go: {os.listdir(shm)}")


@pytest.fixture
def busy_port():
    """A loopback port another program listens on."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_a_port_in_use_stops_ngxsim_with_nginx_bind_message(ngxsim_server, busy_port):
    with pytest.raises(ServerStartError) as failed:
        ngxsim_server(f"http {{\n server {{\n  listen 127.0.0.1:{busy_port};\n }}\n}}\n", workers=2, mode="ngxsim")
    out = failed.value.server.output()
    assert f"ngxsim: [emerg] bind() to 127.0.0.1:{busy_port} failed (98: Address already in use)" in failed.value.emerg
    assert "Traceback" not in out and "Connection in use" not in out  # no five retries by gunicorn
    assert not [e for e in os.listdir("/dev/shm") if e.startswith(f"ngxsim.{failed.value.server.master}.")]


def test_a_reload_adding_a_port_in_use_is_rejected_and_the_old_config_serves(ngxsim_server, busy_port):
    conf = "worker_processes 2;\nhttp {\n server {\n  listen 127.0.0.1:{port};\n  return 200 one;\n }\n}\n"
    server = ngxsim_server(conf, mode="ngxsim")
    before = set(server.worker_pids())
    text = server.conf.read_text().replace("return 200 one;", f"return 200 one;\n }}\n server {{\n  listen 127.0.0.1:{busy_port};")
    server.conf.write_text(text)
    server.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "reload rejected" in server.output(), 20, what="the reload to be rejected")
    assert server.logged("emerg", f"bind() to 127.0.0.1:{busy_port} failed (98: Address already in use); reload rejected")
    assert server.get("/").text == "one" and server.proc.poll() is None
    assert "Traceback" not in server.output()
    assert set(server.worker_pids()) == before  # a rejected reload leaves the workers alone


@pytest.mark.ngxsim_modes
def test_a_shared_memory_folder_that_cannot_be_used_stops_the_server_with_an_emerg_line(ngxsim_server, tmp_path):
    missing = tmp_path / "no-such-dir"
    with pytest.raises(ServerStartError) as failed:
        ngxsim_server("load_module worker_events;\nhttp {\n worker_events_zone bus;\n server { listen 127.0.0.1:{port}; }\n}\n",
                      workers=2, extra_env={"NGXSIM_SHM_DIR": str(missing)})
    assert any(f'ngxsim: [emerg] mkdir() "{missing}/ngxsim.' in line and "failed (2: No such file or directory)" in line
               for line in failed.value.emerg), failed.value.emerg
    assert "Traceback" not in failed.value.server.output()



def test_a_worker_respawned_with_a_config_broken_on_disk_says_why_and_the_others_keep_serving(ngxsim_server):
    """Plain gunicorn: each worker loads the config at its start. A replacement that cannot
    load it must not stop the running server (gunicorn halts on a worker's app-load exit code)."""
    server = ngxsim_server("http {\n server {\n  listen 127.0.0.1:{port};\n  return 200 ok;\n }\n}\n", workers=2,
                           mode="gunicorn")
    good = server.conf.read_text()
    server.conf.write_text(good.replace("return 200 ok;", "bogus;"))
    try:
        victim = server.worker_pids()[0]
        os.kill(victim, signal.SIGKILL)
        # a second report means gunicorn respawned again after the first failed replacement:
        # the server went on (an app-load exit code would have halted it)
        wait_for(lambda: server.output().count('unknown directive "bogus"') >= 2, 30, what="a second replacement to report")
        assert server.get("/").text == "ok" and server.proc.poll() is None
        assert "Traceback" not in server.output()
    finally:
        server.conf.write_text(good)  # replacements load again: the stop finds every worker well
    server.wait_workers(2)
