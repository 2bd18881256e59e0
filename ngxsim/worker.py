"""ngxsim's gunicorn worker class: ``gunicorn -k ngxsim.worker.Worker --threads 4 ngxsim.wsgi``.

gunicorn's ``gthread`` worker hands a connection to a thread as soon as it is accepted (or once
its first bytes arrive), and the thread then reads the request with blocking reads: a client
that sends its header or body slowly holds a thread for as long as it likes, and a few of them
starve the worker. It also accepts connections while all its threads are busy, so one worker
can queue many long-polls while the others sit idle.

This worker reads like nginx does. In the worker's event loop, without a thread, it reads:

- the request header, until its empty line, within ``client_header_timeout`` (from the
  connection's start, or from the first byte of a kept-alive connection's next request);
- a body of declared length up to ``PREREAD_MAX`` bytes, with at most
  ``client_body_timeout`` between two reads;

and answers ``408`` (and closes) when a timeout passes. Only a complete request goes to a
thread. A request a handler sets aside (``Delay``, ``Park``: nginx's timer on a delayed request)
gives its thread back: the event loop keeps it on a timer or its waker and resumes it on a pool
thread, where the rest of its phases run and its response is written as usual. A longer or chunked body is read by the thread with ``client_body_timeout`` between two
reads (a ``TimeoutError`` the core answers with 408). The worker accepts new connections only
while one of its threads is free, so the kernel gives them to another worker.

The timeouts come from the config's ``http`` block (nginx's default 60 s); the number of
threads from gunicorn's ``--threads``. ``ngxsim -c`` uses this worker unless ``worker_class``
says otherwise.

Every worker class here (this one, :class:`SyncWorker`, :class:`GThreadWorker`) also answers
like nginx where gunicorn would answer before or after ngxsim:

- the request's header lines go to the core as sent, repeated ones apart
  (``environ["ngxsim.headers"]``: this class gives the names as written, the two others
  gunicorn's upper-cased ones), so ``$http_cookie`` is
  ``a=1; b=2`` and ``$http_x_multi`` the first value, as in nginx 1.22 (WSGI's ``HTTP_NAME``
  has them joined with ``,``);
- a request gunicorn cannot parse (a malformed request line, method, version or header line, a
  request line too long, an HTTP major version above 1) gets nginx's HTML page (400, 414, 505)
  instead of gunicorn's;
- the answer is written by ``ngxsim.writer.ResponseWriter``: gunicorn's framing, but the
  headers gunicorn would drop as hop-by-hop (an upstream's ``Upgrade``, ``Proxy-Authenticate``,
  ...) and a relayed 204's ``Content-Length`` go on as nginx passes them, and an answer the core
  marks HTTP/0.9 (``ngxsim.as_http09``) goes without a status line or header;
- this class only, since it reads the request itself: a request target with raw bytes above
  0x7f (UTF-8 paths, which nginx serves and gunicorn refuses) reaches gunicorn's parser with
  those bytes percent-encoded, and the core sees the target as sent (``RAW_URI``,
  ``QUERY_STRING``), so ``$request_uri`` and ``$args`` are the client's bytes.

gunicorn's own worker classes (``-k sync``, ``-k gthread``) do none of this: there ngxsim keeps
gunicorn's behaviour (docs/configuration.md lists it). Every class here also tells the
served runtime when gunicorn stops the worker (``Runtime.begin_stop``): handlers that wait (a
worker_events long-poll) are woken and answer with what they have, instead of holding the
worker's exit until their deadline. gunicorn's worker signals keep their meaning: ``SIGTERM``
stops gracefully (requests in progress finish), ``SIGQUIT``/``SIGINT`` stop at once.
"""

from __future__ import annotations

import errno
import heapq
import itertools
import re
import selectors
import socket
import threading
import time
from email.utils import formatdate
from functools import partial
from typing import NamedTuple

from gunicorn.http import errors as http_errors
from gunicorn.workers.gthread import TConn, ThreadWorker
from gunicorn.workers.sync import SyncWorker as _GunicornSyncWorker

from .core.http.context import RAW_HEADERS
from .core.http.logs import set_connection
from .core.http.responses import compact_json, error_page
from .core.http.waits import STATE, Parked
from .writer import write_as_nginx

# bodies of a declared length up to this are read in the event loop, larger ones by the thread
PREREAD_MAX = 64 * 1024
# a request head larger than this goes to gunicorn's parser as is (it answers 431/414)
HEAD_MAX = 64 * 1024
DEFAULT_TIMEOUT = 60.0
_HEAD_END = re.compile(rb"\r?\n\r?\n")


class _Waiting:
    """A connection whose request the event loop is still reading."""

    __slots__ = ("conn", "data", "deadline", "need", "phase")

    def __init__(self, conn: TConn, deadline: float):
        self.conn = conn
        self.data = bytearray()
        self.deadline = deadline
        self.need = 0  # total bytes (head + body) to have before the thread takes over
        self.phase = "header"


class _StopsRuntime:
    """Tell the served runtime that this worker is told to stop (from the signal handler, in
    the main thread): ``Runtime.begin_stop`` marks it and wakes waiting handlers."""

    def _begin_stop(self, fast: bool) -> None:
        runtime = getattr(getattr(self, "wsgi", None), "runtime", None)
        if runtime is not None:
            runtime.begin_stop(fast)

    def handle_exit(self, sig, frame) -> None:  # SIGTERM: graceful
        self._begin_stop(fast=False)
        super().handle_exit(sig, frame)

    def handle_quit(self, sig, frame) -> None:  # SIGQUIT, SIGINT: at once
        self._begin_stop(fast=True)
        super().handle_quit(sig, frame)


# what gunicorn's parser refuses -> nginx's status for it (nginx answers 400 to each of these
# and 414 to a request line longer than its buffers)
_CLIENT_ERRORS = {name: 400 for name in (
    "InvalidRequestLine", "InvalidRequestMethod", "InvalidHTTPVersion", "InvalidHeader", "InvalidHeaderName",
    "ObsoleteFolding", "InvalidChunkSize", "ChunkMissingTerminator", "InvalidChunkExtension", "LimitRequestHeaders")}
_CLIENT_ERRORS["LimitRequestLine"] = 414
_NGINX_STATUS = tuple((getattr(http_errors, name), status) for name, status in _CLIENT_ERRORS.items()
                      if hasattr(http_errors, name))


_MAJOR = re.compile(r"HTTP/([1-9][0-9]*)")


def _nginx_status(exc: Exception) -> int | None:
    """nginx's answer to what gunicorn's parser refused (None: not the client's fault). nginx
    reads the major version digit by digit and answers 505 once it is above 1 (``HTTP/2.0``),
    400 for any other malformed version."""
    if isinstance(exc, http_errors.InvalidHTTPVersion):
        version = getattr(exc, "version", "")  # the text, or gunicorn's (major, minor) once parsed
        if isinstance(version, tuple):
            major = version[0]
        else:
            digits = _MAJOR.match(str(version))
            major = int(digits.group(1)[:3]) if digits else 0
        if major > 1:
            return 505
    return next((code for kind, code in _NGINX_STATUS if isinstance(exc, kind)), None)


def nginx_page(status: int) -> bytes:
    """nginx's whole answer for a request it refuses before any location: its HTML page, and
    the connection closes."""
    page = error_page(status)
    body = page.get_data()
    head = (f"HTTP/1.1 {page.status}\r\nDate: {formatdate(usegmt=True)}\r\nContent-Type: text/html\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
    return head.encode("latin-1") + body


class _WithRawRequest:
    """The served WSGI app, with the request gunicorn parsed (set by the worker per thread)
    handed over in the environ: the header lines as sent and, when the worker rewrote it, the
    request target as sent; its answer written by ngxsim.writer's ``ResponseWriter``."""

    def __init__(self, app, current: threading.local):
        self.app = app
        self.current = current

    def __call__(self, environ, start_response):
        req = getattr(self.current, "req", None)
        if req is not None:
            lines = getattr(self.current, "lines", None)
            environ[RAW_HEADERS] = list(req.headers) if lines is None else lines
            raw_target = getattr(self.current, "raw_target", None)
            if raw_target is not None:
                environ["RAW_URI"] = raw_target
                environ["QUERY_STRING"] = raw_target.partition("?")[2]
        return self.app(environ, write_as_nginx(environ, start_response))

    def __getattr__(self, name):  # the runtime, and whatever else gunicorn or ngxsim reads
        return getattr(self.app, name)


class _NginxRequests:
    """What the three worker classes share: the raw request to the core, nginx's pages for
    what gunicorn's parser refuses (see the module docstring)."""

    def load_wsgi(self) -> None:
        super().load_wsgi()
        self._current = threading.local()
        self.wsgi = _WithRawRequest(self.wsgi, self._current)

    def _serving(self, req, serve, raw_target: str | None = None, lines: list | None = None):
        """Serve ``req`` with what the worker knows of it as sent: the target when it had to
        be rewritten for gunicorn, the header lines with their names as written (else the
        app gets gunicorn's list, names upper-cased)."""
        current = self._current
        current.req, current.raw_target, current.lines = req, raw_target, lines
        try:
            return serve()
        finally:
            current.req = current.raw_target = current.lines = None

    def handle_error(self, req, client, addr, exc) -> None:
        status = _nginx_status(exc)
        if status is None:
            super().handle_error(req, client, addr, exc)
            return
        self.log.warning("Invalid request from ip=%s: %s", (addr or ("",))[0], exc)
        try:
            client.sendall(nginx_page(status))
        except OSError:
            self.log.debug("Failed to send error message.")



class _CountsConnections:
    """nginx's connection counters (``stub_status``): each client connection's state —
    ``reading`` its request, ``writing`` the answer (the handler runs), ``waiting`` kept alive
    between requests — counted into the core's worker table (``ngxsim/core/workers.py``), shared by
    every worker. The connection's number is nginx's ``*CID`` of the error-log lines written while
    it is served."""

    _no_table = object()
    _table_found = _no_table  # the worker table, looked up once the app is loaded

    def _table(self):
        table = self._table_found
        if table is self._no_table:
            runtime = getattr(getattr(self, "wsgi", None), "runtime", None)
            if runtime is None:
                return None  # not loaded yet: ask again
            table = self._table_found = runtime.stash.get("core.workers")
        return table

    def _conn_move(self, conn, new: str | None) -> None:
        table = self._table()
        if table is None:
            return
        conns = self.__dict__.setdefault("_conn_states", {})
        key = id(conn)
        old = conns.get(key)
        if old is None:
            if new is None:
                return
            conns[key] = [conn, None, table.accepted()]
            old = conns[key]
        if old[1] != new or new is None:
            table.move(old[1], new)
        if new is None:
            del conns[key]
        else:
            old[1] = new

    def _conn_number(self, conn) -> int | None:
        entry = self.__dict__.get("_conn_states", {}).get(id(conn))
        return entry[2] if entry else None

    def _conn_sweep(self) -> None:
        """Connections gunicorn closed on its own (an idle kept-alive one): count them closed."""
        kept = {id(c) for c in (*getattr(self, "keepalived_conns", ()), *getattr(self, "pending_conns", ()))}
        for key, (conn, state, _) in list(self.__dict__.get("_conn_states", {}).items()):
            if state == "waiting" and key not in kept:
                self._conn_move(conn, None)


class _CountsThreadConnections(_CountsConnections):
    """The counting of the thread workers (``Worker``, ``GThreadWorker``)."""

    def enqueue_req(self, conn) -> None:
        self._conn_move(conn, "writing")
        super().enqueue_req(conn)

    def finish_request(self, conn, fs) -> None:
        try:
            super().finish_request(conn, fs)
        finally:
            if conn in self.keepalived_conns or conn in getattr(self, "pending_conns", ()):
                self._conn_move(conn, "waiting")
            elif conn.sock.fileno() == -1:
                self._conn_move(conn, None)
            # else: enqueued again at once (a pipelined request): still writing

    def murder_pending(self, *args, **kw) -> None:
        super().murder_pending(*args, **kw)
        self._conn_sweep()

    def murder_keepalived(self, *args, **kw) -> None:
        super().murder_keepalived(*args, **kw)
        self._conn_sweep()

    def handle_request(self, req, conn):
        set_connection(self._conn_number(conn))
        try:
            return super().handle_request(req, conn)
        finally:
            set_connection(None)


class SyncWorker(_NginxRequests, _StopsRuntime, _CountsConnections, _GunicornSyncWorker):
    """gunicorn's ``sync`` worker that wakes a waiting handler when it is stopped.

    gunicorn's sync worker exits from the signal handler on ``SIGQUIT``: the request being
    served (in the same, main thread) would end without an answer. Here a request in progress
    is let finish — the woken long-poll answers at once — and the worker exits after it."""

    _in_request = False

    def handle(self, listener, client, addr) -> None:
        self._in_request = True
        self._conn_move(client, "writing")  # read and answered in this one call
        set_connection(self._conn_number(client))
        try:
            super().handle(listener, client, addr)
        finally:
            self._in_request = False
            set_connection(None)
            self._conn_move(client, None)

    def handle_request(self, listener, req, client, addr):
        return self._serving(req, lambda: super(SyncWorker, self).handle_request(listener, req, client, addr))

    def handle_quit(self, sig, frame) -> None:
        if not self._in_request:
            super().handle_quit(sig, frame)
            return
        self._begin_stop(fast=True)
        self.alive = False  # the run loop ends once this request is answered
        self.cfg.worker_int(self)


class GThreadWorker(_NginxRequests, _StopsRuntime, _CountsThreadConnections, ThreadWorker):
    """gunicorn's ``gthread`` worker that wakes waiting handlers when it is stopped."""

    def handle_request(self, req, conn):
        return self._serving(req, lambda: super(GThreadWorker, self).handle_request(req, conn))

class _Replay:
    """A connection's parser that gives a parked request once more (then the parser is back):
    gunicorn's ``handle`` then serves the resumed request with all its error handling."""

    def __init__(self, conn: TConn, req):
        self._conn, self._req, self._parser = conn, req, conn.parser

    def __next__(self):
        self._conn.parser = self._parser
        return self._req

    def __getattr__(self, name):
        return getattr(self._parser, name)


class _ParkedRequest:
    """A request set aside by a handler: its connection, gunicorn's request and the continuation."""

    __slots__ = ("conn", "parked", "done", "watched")

    def __init__(self, conn: TConn, parked: Parked):
        self.conn, self.parked, self.done, self.watched = conn, parked, False, False


class Worker(_NginxRequests, _StopsRuntime, _CountsThreadConnections, ThreadWorker):
    """gthread with nginx's reading discipline (see the module docstring)."""

    def init_process(self) -> None:
        self.in_pool = 0  # connections handed to the thread pool and not finished
        self.waiting: dict[int, _Waiting] = {}
        self._timeouts: tuple[float, float] | None = None
        self.timers: list[tuple[float, int, _ParkedRequest]] = []  # parked requests' deadlines (a heap)
        self._timer_seq = itertools.count()
        super().init_process()

    # -- requests that wait without a thread --------------------------------------------------

    def handle(self, conn):
        """In a pool thread: serve the connection's request; a handler's wait parks it."""
        STATE.can_park = True
        try:
            return super().handle(conn)
        except Parked as parked:
            return parked
        finally:
            STATE.can_park = False
            STATE.resume = None

    def _resume_in_thread(self, entry: _ParkedRequest):
        STATE.resume = entry.parked.resume
        entry.conn.parser = _Replay(entry.conn, entry.parked.req)
        return self.handle(entry.conn)

    def _park(self, conn: TConn, parked: Parked) -> None:
        """In the event loop: keep the request until its delay passes or its waker is woken."""
        entry = _ParkedRequest(conn, parked)
        wait = parked.wait
        if wait.seconds is not None:
            heapq.heappush(self.timers, (time.monotonic() + wait.seconds, next(self._timer_seq), entry))
        if wait.waker is not None:
            wait.waker.on_wake(lambda: self.method_queue.defer(self._resume, entry))
        if not self.cfg.is_ssl:  # nginx's ngx_http_test_reading: a client that hangs up ends the wait
            self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._parked_readable, entry))
            entry.watched = True

    def _parked_readable(self, entry: _ParkedRequest, sock) -> None:
        """The client of a parked request closed its end (resume it now: the core answers 499
        without running the rest of the request) or sent bytes ahead (a pipelined request: the
        client is there, stop watching)."""
        try:
            gone = not sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # reset
            gone = True
        self._unwatch(entry)
        if gone:
            self._resume(entry)

    def _unwatch(self, entry: _ParkedRequest) -> None:
        if entry.watched:
            entry.watched = False
            try:
                self.poller.unregister(entry.conn.sock)
            except (KeyError, ValueError, OSError):
                pass

    def _resume(self, entry: _ParkedRequest) -> None:
        if entry.done:  # woken and timed out: resumed once
            return
        entry.done = True
        self._unwatch(entry)  # the thread reads and writes the socket from now on
        self.in_pool += 1
        if self.in_pool >= self.cfg.threads:
            self.set_accept_enabled(False)
        fs = self.tpool.submit(self._resume_in_thread, entry)
        fs.add_done_callback(lambda fut: self.method_queue.defer(self.finish_request, entry.conn, fut))

    def wait_for_and_dispatch_events(self, timeout):
        """gunicorn's wait, no longer than until the next parked request's deadline; then
        resume the requests whose delay passed."""
        if self.timers:
            timeout = min(timeout, max(0.0, self.timers[0][0] - time.monotonic()))
        super().wait_for_and_dispatch_events(timeout)
        now = time.monotonic()
        while self.timers and self.timers[0][0] <= now:
            self._resume(heapq.heappop(self.timers)[2])

    # -- timeouts from the config -------------------------------------------------------------

    @property
    def timeouts(self) -> tuple[float, float]:
        """(client_header_timeout, client_body_timeout) of the served config."""
        if self._timeouts is None:
            header = body = DEFAULT_TIMEOUT
            runtime = getattr(self.wsgi, "runtime", None)
            http = runtime.config.blocks("http") if runtime is not None else []
            if http:
                header = http[0].get("client_header_timeout") or DEFAULT_TIMEOUT
                body = http[0].get("client_body_timeout") or DEFAULT_TIMEOUT
            self._timeouts = (header, body)
        return self._timeouts

    # -- accepting: only while a thread is free -----------------------------------------------

    def set_accept_enabled(self, enabled: bool) -> None:
        super().set_accept_enabled(enabled and self.in_pool < self.cfg.threads)

    def enqueue_req(self, conn) -> None:
        self.in_pool += 1
        if self.in_pool >= self.cfg.threads:
            self.set_accept_enabled(False)  # let the other workers take the next connections
        super().enqueue_req(conn)

    def finish_request(self, conn, fs) -> None:
        self.in_pool -= 1
        result = None if fs.cancelled() or fs.exception() is not None else fs.result()
        if isinstance(result, Parked):
            self._park(conn, result)
            return
        super().finish_request(conn, fs)

    def accept(self, listener) -> None:
        try:
            sock, addr = listener.accept()
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        self.nr_conns += 1
        conn = TConn(self.cfg, sock, addr, listener.getsockname())  # non-blocking
        if self.cfg.is_ssl:  # TLS is read by the thread (gunicorn's own path)
            sock.setblocking(True)
            self.enqueue_req(conn)
            return
        self._read_request(conn)

    # -- reading a request in the event loop --------------------------------------------------

    def on_client_socket_readable(self, conn, client) -> None:
        """A kept-alive connection has its next request coming: read it here too."""
        self.poller.unregister(client)
        self.keepalived_conns.remove(conn)
        self._read_request(conn)

    def _read_request(self, conn: TConn) -> None:
        self._conn_move(conn, "reading")
        conn.sock.setblocking(False)
        waiting = _Waiting(conn, time.monotonic() + self.timeouts[0])
        self.waiting[id(conn)] = waiting
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_readable, waiting))

    def _on_readable(self, waiting: _Waiting, _sock) -> None:
        try:
            data = waiting.conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:  # the client went away before its request was complete
            self._drop(waiting)
            return
        waiting.data += data
        if waiting.phase == "header":
            end = _HEAD_END.search(waiting.data, max(0, len(waiting.data) - len(data) - 3))
            if end is None:
                if len(waiting.data) > HEAD_MAX:
                    self._hand_over(waiting)
                return
            length = _preread_length(bytes(waiting.data[: end.start()]))
            if length is None or len(waiting.data) >= end.end() + length:
                self._hand_over(waiting)
                return
            waiting.phase, waiting.need = "body", end.end() + length
        elif len(waiting.data) >= waiting.need:
            self._hand_over(waiting)
            return
        if waiting.phase == "body":  # nginx: the body timeout runs between two reads
            waiting.deadline = time.monotonic() + self.timeouts[1]

    def _hand_over(self, waiting: _Waiting) -> None:
        """The request is complete (or too large to buffer): a thread serves it."""
        conn = waiting.conn
        self._forget(waiting)
        conn.sock.setblocking(True)
        conn.init()
        data, conn.ngxsim_head = _read_head(bytes(waiting.data))
        conn.parser.unreader.unread(data)
        conn.data_ready = True
        self.enqueue_req(conn)

    def _forget(self, waiting: _Waiting) -> None:
        del self.waiting[id(waiting.conn)]
        try:
            self.poller.unregister(waiting.conn.sock)
        except (KeyError, ValueError, OSError):
            pass

    def _drop(self, waiting: _Waiting, answer: bytes = b"") -> None:
        self._forget(waiting)
        self._conn_move(waiting.conn, None)
        self.nr_conns -= 1
        if answer:
            try:
                waiting.conn.sock.send(answer)
            except OSError:
                pass
        waiting.conn.close()

    def murder_pending(self) -> None:
        """Also answer 408 to the requests whose header or body did not arrive in time (the
        run loop calls this at least once a second)."""
        super().murder_pending()
        now = time.monotonic()
        for waiting in [w for w in self.waiting.values() if w.deadline <= now]:
            self._drop(waiting, _timeout_answer(waiting.phase, self.timeouts))

    def handle_request(self, req, conn):
        """In the thread: reads of a body not read yet wait at most client_body_timeout each."""
        conn.sock.settimeout(self.timeouts[1])
        # the head as sent, if this is the request _hand_over read (not a next, pipelined one
        # that gunicorn read from the same buffer)
        sent, conn.ngxsim_head = getattr(conn, "ngxsim_head", None), None
        raw_target = lines = None
        if sent is not None and req.uri == sent.parsed_target:
            raw_target = sent.target if sent.target != sent.parsed_target else None
            lines = sent.lines_like(req.headers)
        try:
            return self._serving(req, lambda: super(Worker, self).handle_request(req, conn), raw_target, lines)
        except Parked as parked:
            parked.req = req  # what the resumed request is served as
            raise
        finally:
            conn.sock.settimeout(None)


_HIGH_BYTE = re.compile("[\x80-\xff]")  # in latin-1 text: the bytes above 0x7f
_HEAD_END_TEXT = re.compile(r"\r?\n\r?\n")


class _SentHead(NamedTuple):
    """A request head as the client sent it (latin-1 text)."""

    target: str
    parsed_target: str                # what gunicorn's parser got (high bytes percent-encoded)
    lines: list[tuple[str, str]]      # header lines, names as written, values stripped

    def lines_like(self, parsed: list[tuple[str, str]]) -> list[tuple[str, str]] | None:
        """The lines gunicorn kept (it drops names with ``_``, as nginx ignores them), with
        the names as written; None when they do not pair up with gunicorn's one for one."""
        kept = [(k, v) for k, v in self.lines if "_" not in k]
        if len(kept) != len(parsed) or any(k.upper() != pk or v != pv for (k, v), (pk, pv) in zip(kept, parsed)):
            return None
        return kept


def _read_head(data: bytes) -> tuple[bytes, _SentHead | None]:
    """The bytes for gunicorn's parser (a target's bytes above 0x7f percent-encoded: nginx
    serves raw UTF-8, gunicorn refuses it) and the head as sent; None when it does not read
    as a request line and header lines (gunicorn's parser then says what is wrong)."""
    text = data.decode("latin-1")  # one decode: every byte stays itself
    end = _HEAD_END_TEXT.search(text)
    lines = (text[: end.start()] if end else text).split("\n")
    first = lines[0]
    parts = first.removesuffix("\r").split(" ", 2)
    if len(parts) != 3:
        return data, None
    target = parts[1]
    if _HIGH_BYTE.search(target):
        target = _HIGH_BYTE.sub(lambda m: "%%%02X" % ord(m[0]), target)
        rewritten = " ".join((parts[0], target, parts[2])) + ("\r" if first.endswith("\r") else "")
        data = (rewritten + text[len(first):]).encode("latin-1")
    headers = []
    for line in lines[1:]:
        name, colon, value = line.removesuffix("\r").partition(":")
        if not colon:
            return data, None
        headers.append((name, value.strip(" \t")))
    return data, _SentHead(parts[1], target, headers)


def _preread_length(head: bytes) -> int | None:
    """How many body bytes to read before a thread takes the request: its Content-Length if it
    has one (up to PREREAD_MAX); None when the thread must read it (chunked, Expect: 100-continue
    waits for our go-ahead, too large, malformed: gunicorn's parser then says what is wrong)."""
    length = None
    for line in head.split(b"\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name in (b"transfer-encoding", b"expect"):
            return None
        if name == b"content-length":
            value = value.strip()
            if length is not None or not value.isdigit() or len(value) > 9:
                return None
            length = int(value)
    if length is None or length > PREREAD_MAX:
        return None
    return length


def _timeout_answer(phase: str, timeouts: tuple[float, float]) -> bytes:
    which, seconds = ("client_header_timeout", timeouts[0]) if phase == "header" else ("client_body_timeout", timeouts[1])
    body = compact_json({"status": 408, "error": "Request Timeout",
                         "message": f"the request {phase} did not arrive within {which} ({seconds:g}s)"}).encode()
    return (b"HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\nConnection: close\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
