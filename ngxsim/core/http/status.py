"""``ngxsim_status;``: the instance at a glance, as JSON or as a page (nginx's ``stub_status``).

The document: the instance (master pid, config, version), every worker in the core's worker
table (``ngxsim/core/workers.py``: pid, alive, requests served, last request), every zone the
config declares (name, size, owner), and ``modules``: what each module's ``ngxsim_status``
hook returns (worker_events: its rings' fill, newest generation, dropped events and each
worker's delivery lag). Every worker answers from shared memory, so every answer is the
instance's state whichever worker serves it.

JSON by default; the page for a browser (``Accept: text/html`` preferred) or ``?format=html``.
The page is generic: a dict is a table of its keys, a list of dicts a table with a column per
key, ``*_msec`` times are shown as ages. It reloads itself every few seconds (``<meta
refresh>``: no script).
"""

from __future__ import annotations

import json
import logging
import os
import time
from html import escape

from werkzeug.wrappers import Response

from ..._version import __version__
from ..modules import call_impl
from ..workers import WORKERS_ZONE, WorkerTable
from .jsonapi import Methods, wants_html
from .readable import age, columns, is_rows, show
from .responses import json_response

log = logging.getLogger("ngxsim")
REFRESH = 5  # seconds between the page's reloads


def snapshot(runtime) -> dict:
    config = runtime.config
    table = runtime.stash.get("core.workers")
    if table is None:  # a process that serves without having started as a worker (tests)
        table = runtime.stash["core.workers"] = WorkerTable(runtime.zone(WORKERS_ZONE))
    workers = [w.as_json() for w in table.workers()]
    return {
        "ngxsim": {"version": __version__, "master_pid": runtime.instance.pid, "config": config.path,
                   "answered_by": os.getpid(), "now_msec": int(time.time() * 1000)},
        "workers": workers,
        "zones": [{"name": z.name, "size": z.size, "owner": z.owner} for z in config.zones],
        "modules": module_status(runtime),
    }


def module_status(runtime) -> dict:
    """Each module's ``ngxsim_status`` result, in load order; a failing one shows its error."""
    impls = {impl.plugin_name: impl for impl in runtime.config.pm.hook.ngxsim_status.get_hookimpls()}
    out = {}
    for name in runtime.config.module_names():
        impl = impls.get(name)
        if impl is None:
            continue
        try:
            result = call_impl(impl, runtime=runtime)
            if result is not None:
                json.dumps(result)  # fail here, attributed, rather than in the whole answer
        except Exception as exc:
            log.exception("module %s: ngxsim_status failed", name)
            result = {"error": f"{type(exc).__name__}: {exc}"}
        if result is not None:
            out[name] = result
    return out


class StatusPage:
    """The content handler of an ``ngxsim_status`` location."""

    def __init__(self):
        self.handle = Methods(GET=self.get, HEAD=self.get)

    def get(self, ctx):
        doc = snapshot(ctx.runtime)
        headers = {"Cache-Control": "no-store", "Vary": "Accept"}
        if wants_html(ctx):
            return Response(render_html(doc), status=200, headers=headers, content_type="text/html; charset=utf-8")
        return json_response(doc, headers=headers)


# -- the page -----------------------------------------------------------------------------------


def _html(key: str, value, now: int) -> str:
    if isinstance(value, dict):
        rows = "".join(f'<tr data-key="{escape(k)}"><th>{escape(k)}</th><td>{_html(k, v, now)}</td></tr>'
                       for k, v in value.items())
        return f'<table class="kv">{rows}</table>'
    if is_rows(value):
        cols = columns(value)
        head = "".join(f"<th>{escape(c)}</th>" for c in cols)
        body = "".join("<tr>" + "".join(f'<td class="{escape(c)}">{_html(c, row.get(c), now)}</td>' for c in cols)
                       + "</tr>" for row in value)
        return f'<table class="rows"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'
    if isinstance(value, list):
        return escape(", ".join(show(key, v, now) for v in value)) or "-"
    return escape(show(key, value, now))


def _workers(workers: list[dict], now: int) -> str:
    rows = "".join(
        f'<tr class="worker {"alive" if w["alive"] else "gone"}" data-pid="{w["pid"]}">'
        f'<td class="pid">{w["pid"]}</td><td class="alive">{"yes" if w["alive"] else "no (gone)"}</td>'
        f'<td class="up">{age(now - w["started_msec"])}</td><td class="requests">{w["requests"]}</td>'
        f'<td class="last-request">{show("last_request_msec", w["last_request_msec"], now)}</td></tr>'
        for w in workers) or '<tr><td colspan="5">no worker listed yet</td></tr>'
    return ('<table class="rows" id="workers"><thead><tr><th>pid</th><th>alive</th><th>up for</th>'
            f"<th>requests</th><th>last request</th></tr></thead><tbody>{rows}</tbody></table>")


_STYLE = """
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif;margin:1.5em;color:#1d1d1f;background:#fff}
h1{font-size:1.4em;margin:0 0 .4em}h2{font-size:1.15em;margin:1.2em 0 .4em}
p.instance{color:#555;margin:0 0 1em}
table{border-collapse:collapse}
th,td{padding:.3em .7em;text-align:left;border-bottom:1px solid #ccc;white-space:nowrap;vertical-align:top}
table.rows>thead th{background:#f2f2f2;font-weight:600}
table.kv>tbody>tr>th{font-weight:600;color:#444}
table.kv table{margin:0}
tr.worker.alive td.alive{color:#1e7b34;font-weight:600}
tr.worker.gone td{background:#f6c4c4}
footer{color:#777;margin-top:1.5em;font-size:.9em}
"""


def render_html(doc: dict) -> str:
    inst, now = doc["ngxsim"], doc["ngxsim"]["now_msec"]
    alive = sum(1 for w in doc["workers"] if w["alive"])
    modules = "".join(f'<section class="module" data-module="{escape(name)}"><h2>{escape(name)}</h2>'
                      f"{_html(name, part, now)}</section>" for name, part in doc["modules"].items())
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<meta http-equiv="refresh" content="{REFRESH}"><title>ngxsim status</title>'
        f"<style>{_STYLE}</style></head>"
        f'<body data-now-msec="{now}"><main id="status"><h1>ngxsim status</h1>'
        f'<p class="instance">ngxsim {escape(inst["version"])}, master {inst["master_pid"]}, '
        f'config {escape(inst["config"])}; answered by worker {inst["answered_by"]}</p>'
        f'<h2>Workers <span class="count">({alive} alive)</span></h2>{_workers(doc["workers"], now)}'
        f'<h2>Zones</h2><div id="zones">{_html("zones", doc["zones"], now)}</div>'
        f"{modules}</main>"
        f'<footer>Reloads every {REFRESH}s. <a href="?format=json">JSON</a></footer></body></html>'
    )
