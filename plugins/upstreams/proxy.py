"""``proxy_pass``: forward a request to a peer of an upstream (or one address) and stream the
answer back, trying the next peer as ``proxy_next_upstream`` allows.

The request body is read whole first (nginx's ``proxy_request_buffering on``, bounded by
``client_max_body_size``) so that a retry can send it again; the response body streams through.
Connections to backends are kept alive in a per-worker urllib3 pool.
"""

from __future__ import annotations

import logging
import time
from urllib.parse import quote

import urllib3
from http.client import RemoteDisconnected

from urllib3.exceptions import ConnectTimeoutError, HTTPError, NewConnectionError, ProtocolError, ReadTimeoutError
from werkzeug.wrappers import Response

from ngxsim import ApiError, error_context, error_page, keep_status_line, read_body

from .balancer import Peer

log = logging.getLogger("ngxsim")
# RFC 9110 hop-by-hop headers: never forwarded in either direction
HOP_BY_HOP = frozenset(("connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization",
                        "te", "trailer", "trailers", "transfer-encoding", "upgrade"))
# nginx's proxy_hide_header defaults: the front server sends its own Date and Server
HIDDEN = frozenset(("date", "server", "x-pad", "x-accel-expires", "x-accel-redirect", "x-accel-limit-rate",
                    "x-accel-buffering", "x-accel-charset"))
MAX_BUFFERED = 64 * 1024 * 1024  # the request body bound with client_max_body_size 0
NON_IDEMPOTENT = frozenset(("POST", "LOCK", "PATCH"))
_URI_SAFE = "/:@!$&'()*+,;=-._~%"
_STATUS_CONDITIONS = {500: "http_500", 502: "http_502", 503: "http_503", 504: "http_504", 403: "http_403",
                      404: "http_404", 429: "http_429"}
# what nginx counts as a peer failure among the retry conditions (403 and 404 are not)
_FAILURE_CONDITIONS = frozenset(("error", "timeout", "invalid_header", "http_500", "http_502", "http_503", "http_504",
                                 "http_429"))


class Target:
    """One peer or one fixed address a try goes to."""

    __slots__ = ("peer", "host", "port", "server")

    def __init__(self, peer: Peer | None, host: str, port: int):
        self.peer, self.host, self.port = peer, host, port
        self.server = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class ProxyHandler:
    """The content handler of one ``proxy_pass`` location."""

    def __init__(self, location, upstreams_state, settings):
        self.state = upstreams_state  # callable(runtime) -> this process's upstreams State
        self.spec = settings.proxy_pass
        self.prefix = settings.prefix
        self.headers = settings.set_headers
        self.next_upstream = settings.next_upstream
        self.timeout = urllib3.Timeout(connect=settings.connect_timeout, read=settings.read_timeout)

    # -- the request ---------------------------------------------------------------------------

    def __call__(self, ctx):
        state = self.state(ctx.runtime)
        env = ctx.environ
        method = env["REQUEST_METHOD"]
        ctx.vars["proxy_host"] = self.spec.host
        ctx.vars["proxy_port"] = str(self.spec.port)
        try:
            body = read_body(ctx, ctx.location["client_max_body_size"] or MAX_BUFFERED) if _has_body(env) else b""
        except ApiError as exc:
            return error_page(exc.status)
        url = self._uri(ctx)
        headers = self._headers(ctx, len(body) if body or _has_body(env) else None)
        # what a try sends (NGINX Plus's "sent"): the request line, the header and the body
        sent_bytes = len(method) + len(url) + 12 + sum(len(k) + len(v) + 4 for k, v in headers.items()) + 2 + len(body)
        snapshot = state.snapshot(self.spec.upstream) if self.spec.upstream else None
        if snapshot is not None and snapshot.all_unhealthy():
            return self._no_live_upstreams(ctx)
        tried: set[int] = set()
        addrs, statuses, times = [], [], []
        last_failure = None
        last_response = None
        retry_ok = "off" not in self.next_upstream
        while True:
            now = time.monotonic()
            if snapshot is not None:
                peer = snapshot.pick(state.zone(self.spec.upstream), tried, now)
                if peer is None:
                    break
                tried.add(peer.id)
                target = Target(peer, peer.host, peer.port)
            else:
                if tried:
                    break
                tried.add(0)
                target = Target(None, *self.spec.address)
            if last_response is not None:
                _discard(last_response)
                last_response = None
            addrs.append(target.server)
            began = time.monotonic()
            state.begin(self.spec.upstream, target)
            sent = False
            try:
                resp = self._send(state, target, method, url, body, headers)
            except (ConnectTimeoutError, NewConnectionError) as exc:
                # urllib3's NewConnectionError (refused, unreachable) is a ConnectTimeoutError too
                condition = "error" if isinstance(exc, NewConnectionError) else "timeout"
                _log_failure(ctx, target, url, "connect()", exc)
            except ReadTimeoutError as exc:
                condition, sent = "timeout", True
                _log_failure(ctx, target, url, "upstream timed out", exc)
            except (HTTPError, OSError) as exc:
                condition, sent = "error", True
                _log_failure(ctx, target, url, "upstream failed", exc)
            else:
                elapsed = time.monotonic() - began
                statuses.append(str(resp.status))
                times.append(f"{elapsed:.3f}")
                condition = _STATUS_CONDITIONS.get(resp.status)
                if condition is None or condition not in self.next_upstream:
                    return self._respond(ctx, state, target, resp, addrs, statuses, times, method, sent=sent_bytes)
                # a status proxy_next_upstream retries: remember it, count a failure, go on
                state.end(self.spec.upstream, target, failed=condition in _FAILURE_CONDITIONS, snapshot=snapshot,
                          status=resp.status, sent=sent_bytes)
                last_response, last_failure = resp, condition
                if not (retry_ok and (method not in NON_IDEMPOTENT or "non_idempotent" in self.next_upstream)):
                    break
                continue
            statuses.append("504" if condition == "timeout" else "502")
            times.append(f"{time.monotonic() - began:.3f}")
            refused = condition == "error" and not sent  # nothing reached the peer
            state.end(self.spec.upstream, target, failed=True, snapshot=snapshot, sent=0 if refused else sent_bytes)
            last_failure = condition
            may_resend = not sent or method not in NON_IDEMPOTENT or "non_idempotent" in self.next_upstream
            if not (retry_ok and condition in self.next_upstream and may_resend):
                break
        self._record(ctx, addrs, statuses, times)
        if last_response is not None:  # every peer answered a retried status: send the last one on
            return self._respond(ctx, state, None, last_response, addrs, statuses, times, method, counted=True)
        if not addrs:
            return self._no_live_upstreams(ctx)
        return error_page(504 if last_failure == "timeout" else 502)

    def _no_live_upstreams(self, ctx):
        """No peer of the group can be tried: nginx's 502, its error line, and ``$upstream_addr``
        naming the group."""
        ctx.vars["upstream_addr"] = self.spec.upstream or ""
        ctx.vars["upstream_status"] = ""
        log.error("no live upstreams while connecting to upstream%s",
                  error_context(ctx, f"http://{self.spec.upstream}{self._uri(ctx)}"))
        return error_page(502)

    def _send(self, state, target, method, url, body, headers):
        """One try on one peer. A kept-alive connection the backend closed while it sat idle in
        the pool fails before any answer (the backend saw nothing, or an idempotent request may be
        sent again): that is the pool's race, not the peer's failure, so it is retried on a new
        connection, at most twice, without counting against the peer."""
        pool = state.pools.connection_from_host(target.host, target.port, scheme="http")
        for attempt in range(3):
            try:
                return pool.urlopen(method, url, body=body or None, headers=headers, retries=False, redirect=False,
                                    assert_same_host=False, preload_content=False, decode_content=False,
                                    timeout=self.timeout, release_conn=False)
            except ProtocolError as exc:
                stale = isinstance(exc.__context__ or (exc.args[1] if len(exc.args) > 1 else None),
                                   (RemoteDisconnected, ConnectionResetError, BrokenPipeError))
                if not stale or attempt == 2 or (method in NON_IDEMPOTENT and "non_idempotent" not in self.next_upstream):
                    raise
        raise AssertionError("unreachable")

    def _uri(self, ctx) -> str:
        """nginx's rule: with a URI part in proxy_pass, the matched location prefix of the
        (normalised) URI is replaced by it; without one, the request URI goes as the client sent it."""
        query = ctx.environ.get("QUERY_STRING", "")
        if self.spec.uri is None:
            return ctx.request_uri
        rest = ctx.uri[len(self.prefix):] if ctx.uri.startswith(self.prefix) else ctx.uri
        path = quote(self.spec.uri + rest, safe=_URI_SAFE)
        return path + ("?" + query if query else "")

    def _headers(self, ctx, length: int | None) -> dict:
        env = ctx.environ
        connection_tokens = {t.strip().lower() for t in env.get("HTTP_CONNECTION", "").split(",")}
        out: dict[str, str] = {}
        for key, value in env.items():
            if key.startswith("HTTP_"):
                name = key[5:].replace("_", "-").title()
                low = name.lower()
                if low in HOP_BY_HOP or low in connection_tokens or low in ("host", "content-length"):
                    continue
                out[name] = value
        if env.get("CONTENT_TYPE"):
            out["Content-Type"] = env["CONTENT_TYPE"]
        out["Host"] = self.spec.host
        for header in self.headers:
            value = header.value.render(ctx)
            for existing in [k for k in out if k.lower() == header.name.lower()]:
                del out[existing]
            if value:  # nginx: an empty value removes the header
                out[header.name] = value
        if length is not None:
            out["Content-Length"] = str(length)
        return out

    @staticmethod
    def _record(ctx, addrs, statuses, times) -> None:
        ctx.vars["upstream_addr"] = ", ".join(addrs)
        ctx.vars["upstream_status"] = ", ".join(statuses)
        ctx.vars["upstream_response_time"] = ", ".join(times)

    # -- the response --------------------------------------------------------------------------

    def _respond(self, ctx, state, target, resp, addrs, statuses, times, method, counted=False, sent=0):
        self._record(ctx, addrs, statuses, times)
        ctx.upstream_headers = list(resp.headers.iteritems())  # as sent: a cache decides from these
        headers = []
        connection_tokens = {t.strip().lower() for t in resp.headers.get("Connection", "").split(",")}
        for name, value in resp.headers.iteritems():
            low = name.lower()
            if low in HOP_BY_HOP or low in HIDDEN or low in connection_tokens:
                continue
            headers.append((name, value))
        upstream = self.spec.upstream
        snapshot = state.snapshot(upstream) if upstream else None

        head = len(resp.reason or "") + 15 + sum(len(k) + len(v) + 4 for k, v in resp.headers.iteritems()) + 2

        def finished() -> None:
            if not counted:
                state.end(upstream, target, failed=False, success=True, snapshot=snapshot, status=resp.status, sent=sent,
                          received=head + stream.received)

        stream = _Body(resp, method != "HEAD", finished)
        # not direct_passthrough: werkzeug then closes the response (and its on-close callbacks:
        # the access log line) when the server closes the body
        response = keep_status_line(Response(stream, status=resp.status, headers=headers),
                                    f"{resp.status} {resp.reason or ''}".rstrip())  # nginx passes it on
        if not any(name.lower() == "content-type" for name, _ in headers):
            del response.headers["Content-Type"]  # the backend sent none: add none
        return response


def _discard(resp) -> None:
    """A response we will not send on: read what is left so its connection can go back to the
    pool (unread bytes would be the next request's answer), or drop the connection."""
    try:
        resp.drain_conn()
        resp.release_conn()
    except Exception:
        resp.close()


def _log_failure(ctx, target, url: str, what: str, exc: Exception) -> None:
    """nginx's error-log line for a failed try (the next peer may still answer)."""
    log.error('%s failed (%s) while proxying to upstream, client: %s, request: "%s %s", upstream: "http://%s%s"',
              what, exc, ctx.environ.get("REMOTE_ADDR", "-"), ctx.environ.get("REQUEST_METHOD", "-"), ctx.request_uri,
              target.server, url)


def _has_body(env) -> bool:
    return bool(env.get("CONTENT_LENGTH")) or env.get("HTTP_TRANSFER_ENCODING", "").lower() == "chunked"


class _Body:
    """The response body as the WSGI server iterates it; ``close()`` (which every WSGI server
    calls, also when the client left early or the body was never read) hands the connection back
    to the pool if the body was read to its end, drops it otherwise, and ends the request's
    accounting exactly once."""

    def __init__(self, resp, send: bool, finished):
        self.resp, self.send, self.finished = resp, send, finished
        self.complete = not send
        self.closed = False
        self.received = 0  # body bytes read from the backend

    def __iter__(self):
        if self.send:
            for chunk in self.resp.stream(65536, decode_content=False):
                self.received += len(chunk)
                yield chunk
        self.complete = True

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            if self.complete:
                self.resp.release_conn()
            else:  # the client went away or the backend stalled: this connection is spoilt
                self.resp.close()
        finally:
            self.finished()
