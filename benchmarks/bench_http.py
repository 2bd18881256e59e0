"""HTTP throughput of the worker_events API under ``gunicorn -w 4`` (sync workers), next to a
bare Flask app returning the same JSON on the same gunicorn settings, in the same run.

    python benchmarks/bench_http.py [--seconds S] [--rounds R]

Load comes from ``wrk`` (Debian package ``wrk``) on loopback; without it the script says so and
stops. Rounds alternate between the servers; the table shows medians. Goal: >= 85%.

Three servers: the bare Flask baseline (json.dumps of the same structure per GET; POST parses
the body and answers a 201 event, storing nothing), ngxsim with only worker_events loaded (no
module listens, so a publish wakes nobody), and ngxsim with a no-op subscriber module in every
worker (each publish wakes all 4 dispatchers: the price of the broadcast itself).
"""

from __future__ import annotations

import json
import sys
import tempfile
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import median, table, throughput_args, wrk  # noqa: E402

from ngxsim.testing import start_server  # noqa: E402

CONF = """
load_module worker_events;
{subscriber}
worker_processes 4;
http {
    server {
        listen 127.0.0.1:{port};
        location /internal/worker-events {
            worker_events_api;
            worker_events_zone bus;
            worker_events_channel bench;
            worker_events_ring_size 1024;
        }
    }
}
"""
POST_LUA = """
wrk.method = "POST"
wrk.body = '{"type": "purged", "payload": "tag:assets"}'
wrk.headers["Content-Type"] = "application/json"
"""


def SERVERS(bare, ngx, sub):
    return (("bare Flask", bare), ("ngxsim", ngx), ("ngxsim + subscriber in each worker", sub))


def main() -> None:
    args = throughput_args(__doc__)
    if args is None:
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        lua = folder / "post.lua"
        lua.write_text(POST_LUA)
        ngx = start_server(folder, CONF.replace("{subscriber}", ""), workers=4)
        bare = sub = None
        try:
            for i in range(200):
                req = urllib.request.Request(ngx.url("/internal/worker-events"), method="POST",
                                             data=json.dumps({"type": "purged", "payload": f"tag:{i}"}).encode(),
                                             headers={"Content-Type": "application/json"})
                urllib.request.urlopen(req, timeout=10).close()
            get_path = "/internal/worker-events?limit=100"
            body = json.load(urllib.request.urlopen(ngx.url(get_path), timeout=10))
            assert len(body["events"]) == 100
            (folder / "body.json").write_text(json.dumps(body))
            bare = start_server(folder, "", workers=4, app="bare_flask_app:app", pythonpath=[HERE],
                                extra_env={"BARE_BODY": str(folder / "body.json")}, ready_path=get_path)
            same = urllib.request.urlopen(bare.url(get_path), timeout=10).read()
            assert json.loads(same) == body, "the baseline must answer the same JSON"
            sub = start_server(folder, CONF.replace("{subscriber}", "load_module ngxsim_bench_noop;"), workers=4,
                               pythonpath=[HERE])
            for i in range(200):
                req = urllib.request.Request(sub.url("/internal/worker-events"), method="POST",
                                             data=json.dumps({"type": "purged", "payload": f"tag:{i}"}).encode(),
                                             headers={"Content-Type": "application/json"})
                urllib.request.urlopen(req, timeout=10).close()
            results: dict[tuple[str, str], list[float]] = {}
            for _ in range(args.rounds):
                for name, server in SERVERS(bare, ngx, sub):
                    results.setdefault((name, "GET ?limit=100"), []).append(wrk(server.url(get_path), args.seconds))
                    results.setdefault((name, "POST"), []).append(wrk(server.url("/internal/worker-events"), args.seconds, str(lua)))
        finally:
            for server in (ngx, bare, sub):
                if server is not None:
                    server.stop()
    rows = []
    for what in ("GET ?limit=100", "POST"):
        base = median(results[("bare Flask", what)])
        for name, _ in SERVERS(None, None, None):
            rps = median(results[(name, what)])
            rows.append([what, name, f"{rps:,.0f}", f"{rps / base:.0%}"])
    print(table(f"HTTP req/s, gunicorn -w 4 sync, wrk -t2 -c8, {args.seconds:g}s x {args.rounds} rounds (medians)",
                ["request", "server", "req/s", "vs bare"], rows))
    print("goal: ngxsim >= 85% of bare Flask")


if __name__ == "__main__":
    main()
