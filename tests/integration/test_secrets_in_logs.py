"""No secret query argument in any log: ngxsim's access log, gunicorn's access log and error log."""

from __future__ import annotations

import http.client

import pytest

from ngxsim.testing import raw_request, wait_for

CONF = """
load_module worker_events;
worker_processes 2;
error_log stderr info;
http {
    server {
        listen 127.0.0.1:{port};
        access_log {log};
        location /api {
            worker_events_api;
            worker_events_zone bus;
            worker_events_channel c;
            worker_events_publish_key s3cret-good;
        }
    }
}
"""


def _requests(server) -> None:
    """A publish with the right key (encoded name), a wrong guess, and a malformed request line."""
    for target in ("/api?%6bey=s3cret-good", "/api?key=s3cret-guess&x=1"):
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        try:
            conn.request("POST", target, body=b'{"type": "t"}', headers={"Content-Type": "application/json"})
            conn.getresponse().read()
        finally:
            conn.close()
    assert raw_request(server.port, b"GET /api?key=s3cret-malformed\r\n\r\n").status == 400


@pytest.mark.ngxsim_modes
def test_no_log_holds_a_secret(ngxsim_server, ngxsim_mode, tmp_path):
    ngx_log, gunicorn_log = tmp_path / "access.log", tmp_path / "gunicorn-access.log"
    env = {}
    mode = ngxsim_mode
    if mode == "gunicorn":  # what the docs tell a plain gunicorn user to pass
        env["GUNICORN_CMD_ARGS"] = f"--logger-class ngxsim.glogging.Logger --access-logfile {gunicorn_log}"
    server = ngxsim_server(CONF.replace("{log}", str(ngx_log)), workers=2, extra_env=env)
    _requests(server)
    wait_for(lambda: "Invalid request from" in server.output(), 10, what="gunicorn to log the malformed request")
    def both_publishes(path):
        """The log once it holds both publishes (two workers: either may write its line last)."""
        text = path.read_text() if path.exists() else ""
        return "x=1" in text and "bey=" in text and text

    logs = {"error log": server.output(),
            "ngxsim access log": wait_for(lambda: both_publishes(ngx_log), 10, what="ngxsim's access log")}
    if mode == "gunicorn":
        logs["gunicorn access log"] = wait_for(lambda: both_publishes(gunicorn_log), 10, what="gunicorn's access log")
    for name, text in logs.items():
        assert "s3cret" not in text, f"{name}:\n{text}"
    assert "Invalid HTTP request line: 'GET /api?key=***'" in logs["error log"]
    assert "?%6bey=*** HTTP/1.1" in logs["ngxsim access log"] and "?key=***&x=1 HTTP/1.1" in logs["ngxsim access log"]
    if mode == "gunicorn":
        assert "%6bey=***" in logs["gunicorn access log"] and "key=***&x=1" in logs["gunicorn access log"]
