"""The HTTP core through Flask's test client (a standalone instance, no gunicorn)."""

from __future__ import annotations

import os
import re

from ngxsim.core.process import build_application

HEADERS = """
http {
    add_header X-Http http;
    server {
        listen 127.0.0.1:8080;
        add_header X-Server server;
        add_header X-Always yes always;
        location /inherit { return 200 inherit; }
        location /own { add_header X-Own own; return 200 own; }
        location /error { return 404; }
        location /error-always { add_header X-Err err always; add_header X-Not not; return 500; }
        location /redirect { return 302 /elsewhere; }
    }
}
"""


def test_add_header_inheritance_follows_nginx(make_app):
    c = make_app(HEADERS)
    r = c.get("/inherit")
    assert r.headers["X-Server"] == "server" and r.headers["X-Always"] == "yes"
    assert "X-Http" not in r.headers  # the server level has add_header of its own: none from http
    r = c.get("/own")
    assert r.headers["X-Own"] == "own"
    assert "X-Server" not in r.headers and "X-Always" not in r.headers


def test_add_header_without_always_only_on_success_and_redirects(make_app):
    c = make_app(HEADERS)
    r = c.get("/error")
    assert r.status_code == 404
    assert "X-Server" not in r.headers and r.headers["X-Always"] == "yes"
    r = c.get("/error-always")
    assert r.status_code == 500 and r.headers["X-Err"] == "err" and "X-Not" not in r.headers
    r = c.get("/redirect")
    assert r.status_code == 302 and r.headers["Location"] == "http://localhost/elsewhere" and r.headers["X-Server"] == "server"


VARIABLES = r"""
http {
    server {
        listen 127.0.0.1:8080;
        location /vars {
            add_header X-Pid $pid;
            add_header X-Rid $request_id;
            add_header X-Msec $msec;
            return 200 "uri=$uri args=$args a=$arg_a host=$host addr=$remote_addr m=$request_method s=$scheme b=${arg_b}!";
        }
        location /to { return https://$host$uri; }
    }
}
"""


def test_variables_in_return_and_add_header(make_app):
    c = make_app(VARIABLES)
    r = c.get("/vars/x?a=1&b=two", headers={"Host": "Example.test:8080"}, environ_base={"REMOTE_ADDR": "10.1.2.3"})
    assert r.status_code == 200
    assert r.text == "uri=/vars/x args=a=1&b=two a=1 host=example.test addr=10.1.2.3 m=GET s=http b=two!"
    assert r.headers["X-Pid"] == str(os.getpid())
    assert re.fullmatch(r"[0-9a-f]{32}", r.headers["X-Rid"])
    assert re.fullmatch(r"\d+\.\d{3}", r.headers["X-Msec"])
    assert c.get("/vars").headers["X-Rid"] != r.headers["X-Rid"]
    r = c.get("/to/p", headers={"Host": "h.test"})
    assert r.status_code == 302 and r.headers["Location"] == "https://h.test/to/p"


def test_uri_is_normalised_before_matching(make_app):
    c = make_app(VARIABLES)
    assert c.get("/vars//../vars/./y").text.startswith("uri=/vars/y ")


BODY = """
http {
    client_max_body_size 10;
    server {
        listen 127.0.0.1:8080;
        location /small { return 200 ok; }
        location /big { client_max_body_size 1k; return 200 ok; }
    }
}
"""


def test_client_max_body_size(make_app):
    c = make_app(BODY)
    assert c.post("/small", data=b"x" * 10).status_code == 200
    r = c.post("/small", data=b"x" * 11)
    assert r.status_code == 413 and "<title>413 Request Entity Too Large</title>" in r.text
    assert c.post("/big", data=b"x" * 1024).status_code == 200
    assert c.post("/big", data=b"x" * 1025).status_code == 413


def test_unmatched_uri_and_server_return(make_app):
    c = make_app("""
http {
    server { listen 127.0.0.1:8080; location /only { return 204; } }
}""")
    r = c.get("/nothing")
    assert r.status_code == 404 and "<h1>404 Not Found</h1>" in r.text and r.content_type == "text/html"
    assert c.get("/only").status_code == 204
    c2 = make_app("http { server { listen 127.0.0.1:8080; return 503 down; location / { return 200 up; } } }")
    r = c2.get("/")
    assert (r.status_code, r.text) == (503, "down")


def test_access_log_combined_format_masks_secrets(make_app, tmp_path):
    log = tmp_path / "access.log"
    c = make_app(f"""
load_module worker_events;
http {{
    server {{
        listen 127.0.0.1:8080;
        access_log {log};
        location /ev {{
            worker_events_api;
            worker_events_zone t;
            worker_events_channel c;
            worker_events_publish_key s3cret;
        }}
        location /quiet {{ access_log off; return 200; }}
    }}
}}""")
    c.post("/ev?key=s3cret&x=1", json={"type": "t"}, headers={"User-Agent": "ua/1", "Referer": "http://r/"},
           environ_base={"REMOTE_ADDR": "127.0.0.9"})
    c.get("/quiet")
    lines = log.read_text().splitlines()
    assert len(lines) == 1
    assert re.fullmatch(
        r'127\.0\.0\.9 - - \[\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4}\] "POST /ev\?key=\*\*\*&x=1 HTTP/1\.1" 201 \d+ "http://r/" "ua/1"',
        lines[0],
    ), lines[0]
    assert "s3cret" not in log.read_text()


def test_default_config_serves_something_useful(monkeypatch, shm_leftovers):
    monkeypatch.delenv("NGXSIM_CONF", raising=False)
    app = build_application()
    try:
        c = app.test_client()
        assert "ngxsim is running" in c.get("/").text
        assert c.post("/internal/worker-events", json={"type": "hello"}).status_code == 201
        assert c.get("/internal/worker-events").get_json()["newest_generation"] == 1
    finally:
        app.runtime.close()


def test_module_header_filters_run_after_add_header_on_their_locations(make_app):
    c = make_app("""
load_module ngxsim_test_filter;
http {
    server {
        listen 127.0.0.1:8080;
        location /f { add_header X-Core core; test_filter one; return 200 x; }
        location /plain { return 200 y; }
    }
}""")
    assert c.get("/f").headers["X-Filtered"] == "one 200 core"
    assert "X-Filtered" not in c.get("/plain").headers


def test_trace_env_writes_every_hook_call(tmp_path, monkeypatch, capfd):
    from ngxsim.core.conf.loader import load_configuration

    monkeypatch.setenv("NGXSIM_TRACE_HOOKS", "1")
    load_configuration("/p/t.conf", text="load_module worker_events;")
    err = capfd.readouterr().err
    assert "ngxsim_postconfiguration" in err and "ngxsim_content_handler" not in err  # no locations


def test_ngxsim_modules_lists_installed_and_loaded_modules(tmp_path):
    import subprocess
    import sys

    conf = tmp_path / "m.conf"
    conf.write_text("load_module worker_events;\nhttp { worker_events_zone bus; }\n")
    out = subprocess.run([sys.executable, "-m", "ngxsim.cli", "modules", "-c", str(conf)], capture_output=True,
                         text=True, timeout=60).stdout
    assert "worker_events        ngxsim_plugins.worker_events" in out
    assert "worker_events_api" in out and "ngxsim_publish" in out
    assert "zone bus:" in out


ON_REQUEST = """
load_module ngxsim_test_onrequest;
http {
    server {
        listen 127.0.0.1:8080;
        location /on { test_on_request; }
    }
}
"""


def test_serving_request_is_true_only_on_a_request_thread(make_app):
    import ngxsim
    import ngxsim_test_onrequest

    c = make_app(ON_REQUEST)
    assert c.get("/on").get_json() == {"serving": True}
    assert ngxsim.serving_request() is False  # this thread, between requests
    ngxsim_test_onrequest.CALL = ngxsim.serving_request
    try:
        assert c.get("/on").get_json() == {"serving": True, "returned": "True"}
    finally:
        ngxsim_test_onrequest.CALL = None
    assert ngxsim.serving_request() is False


def test_an_error_outside_a_handler_gets_nginx_500_page_not_flask_one(make_app):
    c = make_app(ON_REQUEST)
    r = c.get("/on?boom=1")
    assert r.status_code == 500
    assert b"<center><h1>500 Internal Server Error</h1></center>" in r.data and b"<hr><center>ngxsim</center>" in r.data
    assert c.get("/on").status_code == 200  # the next request is served as usual
