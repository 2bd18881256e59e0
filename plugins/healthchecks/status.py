"""``health_check_status``: every checked upstream and peer as JSON, or as a page for people.

JSON by default; HTML for a browser (``Accept: text/html`` preferred over JSON) or with
``?format=html`` (``?format=json`` forces JSON). The page has one row per peer coloured by its
state, the time since its last transition (ticking), and refreshes itself in place every
``refresh`` (from the shortest check interval, 1 s..10 s) by fetching itself again; without
JavaScript a ``<meta refresh>`` reloads it. Every worker answers from the zone, so every answer
is the instance's state, whichever worker probes.
"""

from __future__ import annotations

from html import escape

from werkzeug.wrappers import Response

from ngxsim import Methods, json_response, wants_html
from ngxsim import format_age as age  # the page's script formats ages the same way

from .checker import NAME, process_state
from .conf import CLUSTER
from .machine import now_msec

def snapshot(runtime, checks) -> dict:
    """The status document: per upstream its check, service, prober and peers."""
    upstreams = {}
    if checks:
        store = process_state(runtime).store
        jobs = {job["name"]: job for job in (runtime.jobs.status() if runtime.jobs else [])}
        for name, uc in checks.items():
            section = store.section(name)
            with section.lock():
                service, transitions, since = section.service()
                tracked = section.tracked()
                role = section.role()
            job = jobs.get(uc.job_name, {})
            upstreams[name] = {
                "check": uc.check.as_json(),
                "service": service,
                "service_transitions": transitions,
                "service_since_msec": since or None,
                "prober": {"pid": job.get("holder_pid"), "runs": job.get("runs", 0),
                           "last_run_msec": job.get("last_run_msec") or None,
                           "last_duration": job.get("last_duration")},
                **({"cluster": {"role": role}} if uc.check.scope == CLUSTER else {}),
                "peers": [_peer(t) for t in sorted(tracked, key=lambda t: t.peer_id)],
            }
    return {"module": NAME, "now_msec": now_msec(), "upstreams": upstreams}


def _peer(t) -> dict:
    h = t.health
    return {
        "id": t.peer_id, "server": t.server, "state": h.state, "down": t.down,
        "consecutive_fails": h.fails, "consecutive_passes": h.passes,
        "checks": h.checks, "failed_checks": h.failed_checks, "transitions": h.transitions,
        "since_msec": h.since_msec,
        "last_probe_msec": h.last_probe_msec or None,
        "last_duration": round(h.last_duration, 6) if h.checks else None,
        "last_status": h.last_status or None,
        "last_failure": h.last_reason or None,
    }


class StatusPage:
    """The content handler of a ``health_check_status`` location."""

    def __init__(self, config):
        self.checks = config.stash[NAME].checks
        intervals = [uc.check.interval for uc in self.checks.values()]
        self.refresh = min(max(min(intervals, default=5.0), 1.0), 10.0)
        self.handle = Methods(GET=self.get, HEAD=self.get)

    def get(self, ctx):
        doc = snapshot(ctx.runtime, self.checks)
        headers = {"Cache-Control": "no-store", "Vary": "Accept"}
        if wants_html(ctx):
            return Response(render_html(doc, self.refresh), status=200, headers=headers,
                            content_type="text/html; charset=utf-8")
        return json_response(doc, headers=headers)


# -- the page -----------------------------------------------------------------------------------


def _ms(seconds: float | None) -> str:
    return "" if seconds is None else f"{seconds * 1000:.1f} ms"


def _check_line(check: dict) -> str:
    port = f" port {check['port']}" if check["port"] else ""
    match = f", match {check['match']}" if check["match"] else ", 2xx/3xx"
    mandatory = ", mandatory" if check["mandatory"] else ""
    return (f"GET {check['uri']}{port} every {check['interval']:g}s, timeout {check['timeout'] * 1000:g}ms{match}; "
            f"unhealthy after {check['fails']} failure(s), healthy after {check['passes']} pass(es){mandatory}")


def _row(peer: dict, now: int) -> str:
    state = peer["state"]
    classes = f"peer {state}" + (" down" if peer["down"] else "")
    last = "never" if peer["last_probe_msec"] is None else f"{age(now - peer['last_probe_msec'])} ago"
    cells = [
        f'<td class="server">{escape(peer["server"])}</td>',
        f'<td class="state">{state}{" (down)" if peer["down"] else ""}</td>',
        f'<td class="since" data-since-msec="{peer["since_msec"]}">{age(now - peer["since_msec"])}</td>',
        f'<td class="last-probe" data-since-msec="{peer["last_probe_msec"]}">{last}</td>'
        if peer["last_probe_msec"] else f'<td class="last-probe">{last}</td>',
        f'<td class="status">{peer["last_status"] or ""}</td>',
        f'<td class="duration">{_ms(peer["last_duration"])}</td>',
        f'<td class="counts">{peer["consecutive_fails"]} / {peer["consecutive_passes"]}</td>',
        f'<td class="checks">{peer["checks"]} ({peer["failed_checks"]})</td>',
        f'<td class="transitions">{peer["transitions"]}</td>',
        f'<td class="failure">{escape(peer["last_failure"] or "")}</td>',
    ]
    return f'<tr class="{classes}" data-server="{escape(peer["server"])}" data-state="{state}">{"".join(cells)}</tr>'


_HEAD = ("<tr><th>peer</th><th>state</th><th>in state for</th><th>last probe</th><th>status</th><th>duration</th>"
         "<th>fails / passes</th><th>checks (failed)</th><th>transitions</th><th>last failure</th></tr>")


def _upstream(name: str, up: dict, now: int) -> str:
    service = up["service"] or "unknown"
    prober = up["prober"]
    who = f"worker {prober['pid']}" if prober["pid"] else "no worker yet"
    rows = "".join(_row(p, now) for p in up["peers"]) or '<tr><td colspan="10">not probed yet</td></tr>'
    return (f'<section class="upstream" data-upstream="{escape(name)}" data-service="{service}">'
            f'<h2>{escape(name)} <span class="service {service}">{service}</span></h2>'
            f'<p class="check">{escape(_check_line(up["check"]))}. Probed by {who}, {prober["runs"]} rounds.</p>'
            f"<table><thead>{_HEAD}</thead><tbody>{rows}</tbody></table></section>")


_STYLE = """
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif;margin:1.5em;color:#1d1d1f;background:#fff}
h1{font-size:1.4em;margin:0 0 .8em}h2{font-size:1.15em;margin:1.2em 0 .3em}
p.check{margin:.2em 0 .6em;color:#555}
table{border-collapse:collapse;min-width:60em}
th,td{padding:.35em .7em;text-align:left;border-bottom:1px solid #ccc;white-space:nowrap}
th{background:#f2f2f2;font-weight:600}
tr.peer.healthy td{background:#cdeccf}
tr.peer.unhealthy td{background:#f6c4c4}
tr.peer.checking td{background:#fbe7a9}
tr.peer.down td{background:#e4e4e4;color:#666}
td.state{font-weight:600}
span.service{font-size:.8em;padding:.1em .5em;border-radius:.6em;color:#fff;background:#888;vertical-align:middle}
span.service.up{background:#1e7b34}span.service.down{background:#b3261e}
#stale{display:none;color:#b3261e;font-weight:600}body.stale #stale{display:inline}
footer{color:#777;margin-top:1.5em;font-size:.9em}
"""

# fetch the page again and swap its content in place; tick the "for"/"last probe" ages every second
_SCRIPT = """
(function () {
  var period = Number(document.body.dataset.refreshMs);
  var offset = Number(document.body.dataset.nowMsec) - Date.now();
  function age(ms) {
    var s = Math.max(Math.floor(ms / 1000), 0), p = function (n) { return (n < 10 ? "0" : "") + n; };
    if (s < 60) return s + "s";
    if (s < 3600) return Math.floor(s / 60) + "m " + p(s % 60) + "s";
    if (s < 86400) return Math.floor(s / 3600) + "h " + p(Math.floor(s % 3600 / 60)) + "m";
    return Math.floor(s / 86400) + "d " + p(Math.floor(s % 86400 / 3600)) + "h";
  }
  function tick() {
    var now = Date.now() + offset;
    document.querySelectorAll("td[data-since-msec]").forEach(function (td) {
      var text = age(now - Number(td.dataset.sinceMsec));
      td.textContent = td.classList.contains("last-probe") ? text + " ago" : text;
    });
  }
  function refresh() {
    fetch(location.pathname + "?format=html", {cache: "no-store"})
      .then(function (r) { if (!r.ok) throw new Error(r.status); return r.text(); })
      .then(function (text) {
        var doc = new DOMParser().parseFromString(text, "text/html");
        var fresh = doc.getElementById("hc");
        document.getElementById("hc").replaceWith(fresh);
        offset = Number(doc.body.dataset.nowMsec) - Date.now();
        document.body.classList.remove("stale");
        document.body.dataset.refreshed = String(Number(document.body.dataset.refreshed || 0) + 1);
        tick();
      })
      .catch(function () { document.body.classList.add("stale"); })
      .then(function () { setTimeout(refresh, period); });
  }
  setInterval(tick, 1000);
  setTimeout(refresh, period);
})();
"""


def render_html(doc: dict, refresh: float) -> str:
    now = doc["now_msec"]
    ups = doc["upstreams"]
    body = "".join(_upstream(name, up, now) for name, up in ups.items()) or "<p>No upstream is health-checked.</p>"
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>Health checks</title><noscript><meta http-equiv=\"refresh\" content=\"{refresh:g}\"></noscript>"
        f"<style>{_STYLE}</style></head>"
        f'<body data-now-msec="{now}" data-refresh-ms="{int(refresh * 1000)}">'
        f'<main id="hc"><h1>Health checks</h1>{body}</main>'
        f'<footer>Refreshes every {refresh:g}s. <span id="stale">The last refresh failed.</span> '
        f'<a href="?format=json">JSON</a></footer>'
        f"<script>{_SCRIPT}</script></body></html>"
    )
