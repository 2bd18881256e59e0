"""``stub_status;``: nginx's basic status page (``ngx_http_stub_status_module``), in its exact
text, so its readers (the Prometheus exporter's plain mode, monitoring scripts) parse it::

    Active connections: 2 
    server accepts handled requests
     12 12 31 
    Reading: 0 Writing: 1 Waiting: 1 

The counts are the instance's — every worker's connections, from the core's worker table
(``ngxsim/core/workers.py``), counted by ngxsim's gunicorn worker classes — whichever worker
answers.
"""

from __future__ import annotations

from werkzeug.wrappers import Response

from .api import worker_table
from .jsonapi import Methods


def stub_status(ctx) -> Response:
    c = worker_table(ctx.runtime).connections()
    text = (f"Active connections: {c['active']} \n"
            "server accepts handled requests\n"
            f" {c['accepted']} {c['handled']} {c['requests']} \n"
            f"Reading: {c['reading']} Writing: {c['writing']} Waiting: {c['waiting']} \n")
    # nginx: text/plain, never cached
    return Response(text, status=200, content_type="text/plain", headers={"Cache-Control": "no-cache"})


handler = Methods(GET=stub_status, HEAD=stub_status)
