"""``ngxsim status``: what an ``ngxsim_status`` location answers, as a person reads it.

One GET (no retries: a status that cannot be had is the answer), then the instance line, the
workers, the zones and each module's part. Modules' parts are shown generically, the way the
page shows them: a dict as ``key: value`` lines, a list of dicts as a table.
"""

from __future__ import annotations

import json
import sys

from .cli_http import NotThere, Transient, get_json, location_url
from .core.http.readable import age, columns, is_rows, show


def check_status(doc: object) -> str | None:
    if isinstance(doc, dict) and isinstance(doc.get("ngxsim"), dict) and "workers" in doc and "modules" in doc:
        return None
    return "the answer is JSON without the status fields (ngxsim, workers, modules): not an ngxsim_status location"


def status(target: str | None, as_json: bool) -> int:
    try:
        url = location_url(target, "ngxsim_status")
    except NotThere as exc:
        print(f"ngxsim: {exc}", file=sys.stderr)
        return 1
    try:
        doc = get_json(url, {"format": "json"}, 10, check_status)
    except (NotThere, Transient) as exc:
        print(f"ngxsim: {url}: {exc}", file=sys.stderr)
        return 1
    if as_json:
        print(json.dumps(doc, indent=2))
    else:
        sys.stdout.write(render_text(doc, url))
    return 0


def table(rows: list[dict], now: int, indent: str) -> list[str]:
    cols = columns(rows)
    cells = [[show(c, row.get(c), now) if not isinstance(row.get(c), (dict, list)) else json.dumps(row.get(c))
              for c in cols] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(cols)]
    fmt = indent + "  ".join(f"{{:{w}}}" for w in widths)
    return [fmt.format(*cols).rstrip()] + [fmt.format(*r).rstrip() for r in cells]


def section(value: dict, now: int, indent: str) -> list[str]:
    lines: list[str] = []
    for key, item in value.items():
        if isinstance(item, dict):
            lines.append(f"{indent}{key}:")
            lines.extend(section(item, now, indent + "  "))
        elif is_rows(item):
            lines.append(f"{indent}{key}:")
            lines.extend(table(item, now, indent + "  "))
        elif isinstance(item, list):
            lines.append(f"{indent}{key}: {', '.join(show(key, v, now) for v in item) or '-'}")
        else:
            lines.append(f"{indent}{key}: {show(key, item, now)}")
    return lines


def render_text(doc: dict, url: str) -> str:
    inst, now = doc["ngxsim"], doc["ngxsim"]["now_msec"]
    workers = doc["workers"]
    alive = sum(1 for w in workers if w["alive"])
    lines = [f"ngxsim {inst['version']} at {url}: master {inst['master_pid']}, config {inst['config']}",
             f"workers: {alive} alive" + (f", {len(workers) - alive} gone" if len(workers) > alive else "")]
    rows = [{"pid": w["pid"], "alive": w["alive"], "up for": age(now - w["started_msec"]),
             "requests": w["requests"], "last request": show("last_request_msec", w["last_request_msec"], now)}
            for w in workers]
    if rows:
        lines.extend(table(rows, now, "  "))
    lines.append("zones:")
    lines.extend(table(doc["zones"], now, "  ") if doc["zones"] else ["  -"])
    for name, part in doc["modules"].items():
        lines.append(f"{name}:")
        lines.extend(section(part, now, "  ") if isinstance(part, dict) else [f"  {part}"])
    return "\n".join(lines) + "\n"
