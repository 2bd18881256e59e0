"""How ngxsim's worker classes write an answer: gunicorn's ``Response``, less what nginx does
not do to the headers an answer carries.

gunicorn's ``Response.process_headers`` drops every header of its hop-by-hop list from a WSGI
answer, and ``start_response`` the ``Content-Length`` of a 204 (RFC 9110). nginx's proxy
relays an origin's ``Upgrade``, ``Proxy-Authenticate``, ``Trailer``, ... and a 204's
``Content-Length`` as they came; only the connection's own framing (``Connection``,
``Keep-Alive``, ``Transfer-Encoding``) is nginx's (and gunicorn's) to write. :class:`ResponseWriter`
keeps gunicorn's framing — ``Connection`` from the request and the answer (with its websocket
``Upgrade``), chunked or by length, its own ``Server`` and ``Date`` — and passes the rest as the
app set it. It also writes an HTTP/0.9 answer (no status line, no header: the body, then the
connection closes) when the core asks for one through ``environ["ngxsim.http09"]``
(:func:`ngxsim.as_http09`: nginx relays an origin's answer without a status line so).

gunicorn's workers make the ``Response`` in ``gunicorn.http.wsgi.create`` and have no override
point for its class; what they do hand over is the WSGI app (the worker's ``wsgi``) and the
response's bound ``start_response``. ngxsim's worker classes wrap the app
(``ngxsim.worker._WithRawRequest``), and that wrapper makes the response a
:class:`ResponseWriter` (:func:`write_as_nginx`) before the app starts it, by setting its
class, as Werkzeug's ``Response.force_type`` does: one object of one request, in ngxsim's
worker processes only; no module of gunicorn is changed. Its cost: about 2 us of CPU per
answer (in-process, gunicorn's ``Response`` 5.0 us, this one 6.8 us to make and start with five
headers), about 1% of a ``return 200`` served by a sync worker.
"""

from __future__ import annotations

from gunicorn import util
from gunicorn.http.wsgi import Response

from .core.http.context import HTTP09

# gunicorn's hop-by-hop headers that are its to write: the connection's framing, and its own
# Server and Date (nginx's proxy hides an origin's Date and Server too)
WRITTEN_BY_SERVER = frozenset(("connection", "keep-alive", "transfer-encoding", "server", "date"))
# the other ones on gunicorn's list (Upgrade, Proxy-Authenticate, Trailers, TE, ...): nginx
# passes them, so they go as the app set them
PASSED = frozenset(util.hop_headers) - WRITTEN_BY_SERVER


class ResponseWriter(Response):
    """gunicorn's ``Response`` that passes the headers nginx passes (see the module docstring).
    Made from a gunicorn ``Response`` by :func:`write_as_nginx`: no state of its own beyond
    the class attribute defaults below."""

    http09 = False

    def process_headers(self, headers):
        """gunicorn's (every name and value checked, ``Content-Length`` and websocket's
        ``Connection: upgrade`` noted), then the answer's headers in the app's order but
        those gunicorn writes itself, when one gunicorn would have dropped is there."""
        before = len(self.headers)
        super().process_headers(headers)
        for name, _ in headers:  # (a loop: cheaper than any() for every answer)
            if name.lower() in PASSED:
                self.headers[before:] = [(name, value.strip(" \t")) for name, value in headers
                                         if name.lower() not in WRITTEN_BY_SERVER]
                break

    @staticmethod
    def _response_forbids_content_length(status):
        """A 1xx has no ``Content-Length``; a 204 keeps the one the app set (nginx passes an
        upstream's; its own 204 has none: the core sets none)."""
        return status is not None and 100 <= status < 200

    # -- HTTP/0.9 ------------------------------------------------------------------------------

    def as_http09(self) -> None:
        """``environ["ngxsim.http09"]``: write this answer's body alone (before
        ``start_response``), and close the connection after it."""
        self.http09 = True
        self.force_close()

    def is_chunked(self):
        return not self.http09 and super().is_chunked()

    def send_headers(self):
        if self.http09:
            self.headers_sent = True  # no status line, no header
            return
        super().send_headers()


def write_as_nginx(environ: dict, start_response):
    """The ``start_response`` to hand the app: when the server's is gunicorn's HTTP/1
    ``Response``'s, that response made a :class:`ResponseWriter` (it has not started yet), and
    the HTTP/0.9 callable put in ``environ``; else the server's own, as it is (gunicorn's
    HTTP/2 response, a test client's)."""
    response = getattr(start_response, "__self__", None)
    if type(response) is not Response:
        return start_response
    response.__class__ = ResponseWriter
    environ[HTTP09] = response.as_http09
    return response.start_response
