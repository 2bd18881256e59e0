"""The proxy under backend faults and clients that leave, with nginx as the reference (issue 19).

One server (ngxsim's own worker class, one worker with THREADS threads) and one misbehaving raw
backend (tests/integration/faulty_backend.py: the path chooses the fault) serve every case. For
each fault: the status nginx gives (never a 500 it would not give), a truncated answer where nginx
cuts the connection, exactly nginx's one error line, no traceback in the server's output (gunicorn's
error log and ngxsim's error log both go there), and no thread or backend connection left behind.
"""

from __future__ import annotations

import os
import re
import socket
import threading

import pytest

from faulty_backend import BODY, PART, FaultyBackend
from ngxsim.testing import Backend, start_server, wait_for

THREADS = 4
READ_TIMEOUT = 1  # proxy_read_timeout, seconds
CONF = """
load_module worker_events;
load_module upstreams;
load_module cache_purge;
http {
    worker_events_zone faultbus;
    proxy_cache_path {tmp}/cache keys_zone=faultcache:1m;
    upstream pair {
        server {backend};
        server {good};
    }
    server {
        listen 127.0.0.1:{port};
        server_name faults.test;
        location = /plain { return 200 "plain\\n"; }
        location / { proxy_pass http://{backend}; proxy_read_timeout %ds; }
        location /cached/ {
            proxy_pass http://{backend}/;
            proxy_read_timeout %ds;
            proxy_cache faultcache;
            proxy_cache_valid 200 10m;
            add_header X-Cache-Status $upstream_cache_status always;
        }
        location /retry/ {
            proxy_pass http://pair/;
            proxy_next_upstream error timeout invalid_header;
            add_header X-Upstream-Status $upstream_status always;
        }
        location /patient/ { proxy_pass http://{backend}/; proxy_read_timeout 60s; }
        location /logged/ { proxy_pass http://{backend}/; proxy_read_timeout 60s; access_log {tmp}/access.log; }
    }
}
""" % (READ_TIMEOUT, READ_TIMEOUT)


@pytest.fixture(scope="module")
def backend():
    faulty = FaultyBackend(stall=30)
    yield faulty
    faulty.stop()


@pytest.fixture(scope="module")
def good():
    """A backend that behaves, beside the faulty one in upstream ``pair``."""
    with Backend(name="good") as ordinary:
        yield ordinary


@pytest.fixture(scope="module")
def server(tmp_path_factory, backend, good):
    srv = start_server(tmp_path_factory.mktemp("faults"), CONF, workers=1, worker_class="ngxsim.worker.Worker",
                       extra_env={"GUNICORN_CMD_ARGS": f"--threads {THREADS}"}, ready_path="/plain",
                       placeholders={"backend": backend.address, "good": good.address})
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def baseline(server, backend):
    """The worker's thread count once its pool has all its threads (THREADS stalled answers at
    once make it start them all)."""
    pid = worker(server)
    clients = [_send(server, "/body-stall") for _ in range(THREADS)]
    for sock in clients:
        _read_all(sock)
    wait_for(lambda: backend_connections(pid, backend.port) == 0, 10, what="the warm-up's backend connections to end")
    return threads(pid)


# -- what the worker holds ---------------------------------------------------------------------------


def worker(server) -> int:
    (pid,) = server.worker_pids()
    return pid


def threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    return inodes


# /proc/net/tcp's state numbers (include/net/tcp_states.h)
TCP_STATES = {"01": "ESTABLISHED", "02": "SYN_SENT", "03": "SYN_RECV", "04": "FIN_WAIT1", "05": "FIN_WAIT2",
              "06": "TIME_WAIT", "07": "CLOSE", "08": "CLOSE_WAIT", "09": "LAST_ACK", "0A": "LISTEN", "0B": "CLOSING"}


def backend_connection_states(pid: int, port: int) -> list[str]:
    """The TCP state of each connection the process holds to 127.0.0.1:``port`` (listening
    sockets aside): ESTABLISHED while the proxy still reads it, CLOSE_WAIT once the backend
    closed it and the proxy has not."""
    inodes = _socket_inodes(pid)
    found = []
    with open(f"/proc/{pid}/net/tcp") as fh:
        for line in fh.readlines()[1:]:
            fields = line.split()
            remote, state, inode = fields[2], fields[3], fields[9]
            if inode in inodes and state != "0A" and int(remote.split(":")[1], 16) == port:
                found.append(TCP_STATES.get(state, state))
    return found


def backend_connections(pid: int, port: int) -> int:
    """TCP connections the process holds to 127.0.0.1:``port`` (any state but listening)."""
    return len(backend_connection_states(pid, port))


# -- a raw client -------------------------------------------------------------------------------------


def _send(server, path: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: faults.test\r\nConnection: close\r\n\r\n".encode())
    return sock


def _read_all(sock: socket.socket) -> bytes:
    data = b""
    with sock:
        while True:
            try:
                part = sock.recv(65536)
            except ConnectionResetError:
                break
            if not part:
                break
            data += part
    return data


class Answer:
    def __init__(self, raw: bytes):
        head, _, self.raw_body = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split()[1])
        self.headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}

    @property
    def chunked(self) -> bool:
        return self.headers.get("transfer-encoding", "").lower() == "chunked"

    @property
    def body(self) -> bytes:
        """The body as the client decodes it (the chunks it got, without their framing)."""
        if not self.chunked:
            return self.raw_body
        out, rest = b"", self.raw_body
        while b"\r\n" in rest:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line, 16)
            if size == 0:
                break
            out, rest = out + rest[:size], rest[size + 2:]
        return out

    @property
    def complete(self) -> bool:
        """Did the answer end as its framing says (all of Content-Length, or the last chunk)?"""
        if self.chunked:
            return self.raw_body.endswith(b"0\r\n\r\n")
        return len(self.raw_body) == int(self.headers["content-length"])


def get(server, path: str) -> Answer:
    return Answer(_read_all(_send(server, path)))


class Log:
    """The server's output from now on."""

    def __init__(self, server):
        self.server = server
        self.start = len(server.output())

    def new(self) -> str:
        return self.server.output()[self.start:]

    def error_lines(self) -> list[str]:
        return [line for line in self.new().splitlines() if "[ERROR]" in line or "[error]" in line]


def settle(server, backend, baseline, log: Log | None = None) -> None:
    """Wait (bounded) until the worker holds no backend connection and no more threads than at
    the baseline: nothing left behind. A connection left says its TCP state and (``log``) what
    the server wrote meanwhile, to tell a proxy still waiting on it from one that lost it."""
    pid = worker(server)
    try:
        wait_for(lambda: backend_connections(pid, backend.port) == 0, 10,
                 what=f"worker {pid} to close its connections to the backend")
    except AssertionError as exc:
        told = log.new() if log is not None else server.output()[-4000:]
        raise AssertionError(f"{exc}: still {backend_connection_states(pid, backend.port)}; the server wrote:\n"
                             f"{told}") from None
    wait_for(lambda: threads(pid) <= baseline, 10, what=f"worker {pid} to be back to {baseline} threads")


def context(server, backend, path: str) -> str:
    return (f', client: 127.0.0.1, server: faults.test, request: "GET {path} HTTP/1.1", '
            f'upstream: "http://{backend.address}{path}", host: "faults.test"')


def check_one_line(log: Log, message: str, server, backend, path: str) -> None:
    """Exactly one error line, nginx's, and no traceback."""
    new = log.new()
    assert "Traceback" not in new, new
    errors = log.error_lines()
    assert len(errors) == 1, errors
    assert errors[0].endswith(message + context(server, backend, path)), errors[0]


# -- the body fails after the header went out: what was sent, then the connection is cut --------------


BODY_FAULTS = [
    ("/body-reset", "readv() failed (104: Connection reset by peer) while reading upstream", PART),
    ("/head-only-reset", "readv() failed (104: Connection reset by peer) while reading upstream", b""),
    ("/body-close", "upstream prematurely closed connection while reading upstream", PART),
    ("/body-stall", "upstream timed out (110: Connection timed out) while reading upstream", PART),
    ("/chunked-stall", "upstream timed out (110: Connection timed out) while reading upstream", PART),
    ("/chunked-invalid", "upstream sent invalid chunked response while reading upstream", PART),
    ("/chunked-truncated", "upstream prematurely closed connection while reading upstream", PART),
    ("/chunked-mid-chunk", "upstream prematurely closed connection while reading upstream", b""),
]


@pytest.mark.parametrize("path,message,received", BODY_FAULTS, ids=[p for p, _, _ in BODY_FAULTS])
def test_a_body_that_fails_is_cut_short_with_one_nginx_line(server, backend, baseline, path, message, received):
    log = Log(server)
    answer = get(server, path)
    # nginx: the status and headers as the backend sent them, what arrived, then the connection
    # closes: a short Content-Length or no last chunk, never an answer that looks complete
    assert answer.status == 200
    assert answer.body == received and not answer.complete
    settle(server, backend, baseline)
    check_one_line(log, message, server, backend, path)


def test_complete_answers_still_pass_whole(server, backend, baseline):
    log = Log(server)
    for path in ("/ok", "/ok-chunked"):
        answer = get(server, path)
        assert (answer.status, answer.body, answer.complete) == (200, BODY, True)
    settle(server, backend, baseline)
    assert log.error_lines() == [] and "Traceback" not in log.new()


def test_a_truncated_body_is_never_cached(server, backend, baseline):
    """The cache keeps a copy of what the proxy streams: a body that failed must not be kept as
    if it were whole (a chunked one has no length to check it against)."""
    first, second = get(server, "/cached/ok-chunked"), get(server, "/cached/ok-chunked")
    assert (first.headers["x-cache-status"], second.headers["x-cache-status"]) == ("MISS", "HIT")  # it does cache
    for path in ("/cached/chunked-truncated", "/cached/body-close"):
        first, second = get(server, path), get(server, path)
        assert [a.headers["x-cache-status"] for a in (first, second)] == ["MISS", "MISS"]
        assert not second.complete and second.body == PART
    settle(server, backend, baseline)


def test_content_length_with_chunked_is_passed_without_the_length(server, backend, baseline):
    """nginx 1.22 (the differential's reference) drops the Content-Length of a chunked answer
    and passes the body; current nginx refuses it (``... at the same time``)."""
    log = Log(server)
    answer = get(server, "/cl-and-chunked")
    assert (answer.status, answer.body, answer.complete) == (200, BODY, True)
    assert "content-length" not in answer.headers
    settle(server, backend, baseline)
    assert log.error_lines() == [] and "Traceback" not in log.new()


def test_a_header_line_without_a_colon_is_an_empty_header(server, backend, baseline):
    """nginx reads a bare ``X-No-Colon`` line as that header with an empty value, and reads the
    lines after it (the Content-Length: the body ends there, the connection stays usable)."""
    log = Log(server)
    answer = get(server, "/header-token")
    assert (answer.status, answer.body, answer.complete) == (200, BODY, True)
    assert answer.headers.get("x-no-colon") == "" and answer.headers.get("content-length") == "100"
    settle(server, backend, baseline)
    assert log.error_lines() == [] and "Traceback" not in log.new()


# -- an invalid header: 502, as proxy_next_upstream's invalid_header ---------------------------------


HEADER_FAULTS = [
    ("/cl-letters", 'upstream sent invalid "Content-Length" header: "Content-Length: abc"'),
    ("/cl-arabic", 'upstream sent invalid "Content-Length" header: "Content-Length: ١٢"'),
    ("/cl-negative", 'upstream sent invalid "Content-Length" header: "Content-Length: -1"'),
    ("/header-space", r'upstream sent invalid header: "Bad\x20..."'),
    ("/header-reset", "recv() failed (104: Connection reset by peer)"),
    # the close comes before the header's end: inside the status line, a header line, or
    # before the blank line (nginx's parser waits for the line's end and meets the close)
    ("/status-close", "upstream prematurely closed connection"),
    ("/header-close", "upstream prematurely closed connection"),
    ("/blank-close", "upstream prematurely closed connection"),
]


@pytest.mark.parametrize("path,message", HEADER_FAULTS, ids=[p for p, _ in HEADER_FAULTS])
def test_an_invalid_header_is_a_502_with_one_nginx_line(server, backend, baseline, path, message):
    log = Log(server)
    answer = get(server, path)
    assert answer.status == 502 and b"502 Bad Gateway" in answer.body and answer.complete
    settle(server, backend, baseline)
    check_one_line(log, message + " while reading response header from upstream", server, backend, path)


def test_an_invalid_header_is_proxy_next_upstreams_invalid_header(server, backend, good, baseline):
    """With ``invalid_header`` among the conditions the next peer answers (and the faulty one
    counts a failure, so the next request does not try it)."""
    log = Log(server)
    answers = [get(server, "/retry/cl-letters") for _ in range(2)]
    assert [(a.status, a.body) for a in answers] == [(200, b"good /cl-letters\n")] * 2
    assert sorted(a.headers["x-upstream-status"] for a in answers) == ["200", "502, 200"]
    settle(server, backend, baseline)
    assert len(log.error_lines()) == 1 and "Traceback" not in log.new()


# -- clients that leave --------------------------------------------------------------------------------


def test_clients_that_leave_free_their_thread_and_the_backend_request(server, backend, baseline):
    """As many clients as the worker has threads ask for a trickle (1 byte every 0.3 s, inside
    proxy_read_timeout), read the start of it and leave: the proxy drops each backend request and
    the worker serves others at once (nginx: 0 of 8 still proxied 5 s after the clients left)."""
    pid = worker(server)
    log = Log(server)
    ended_before = len(backend.trickles_ended)
    clients = [_send(server, "/trickle") for _ in range(THREADS)]
    try:
        for sock in clients:
            assert sock.recv(4096).startswith(b"HTTP/1.1 200")
        wait_for(lambda: backend_connections(pid, backend.port) == THREADS, 10, what="every trickle to be proxied")
    finally:
        for sock in clients:
            sock.close()
    # the backend sees each of its connections dropped (its next byte fails), long before it runs out
    ended = wait_for(lambda: backend.trickles_ended[ended_before:] if len(backend.trickles_ended) >= ended_before + THREADS
                     else None, 10, what=f"the {THREADS} trickles to end")
    assert [how for how, _ in ended] == ["dropped by the proxy"] * THREADS, ended
    settle(server, backend, baseline)
    # every thread is free: THREADS ordinary requests at once are all answered
    answers: list[Answer] = []
    workers = [threading.Thread(target=lambda: answers.append(get(server, "/plain"))) for _ in range(THREADS)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join(20)
    assert [a.status for a in answers] == [200] * THREADS
    new = log.new()
    assert "Traceback" not in new and log.error_lines() == [], new


@pytest.mark.parametrize("path", ["/patient/body-stall", "/patient/chunked-stall"])
def test_a_client_that_leaves_while_the_backend_stalls_frees_its_thread_at_once(server, backend, baseline, path):
    """The backend sends part of the body, then nothing, well inside a 60 s proxy_read_timeout:
    the proxy notices the client's close while it waits for the backend (as nginx's event loop
    does), not at its next write, which would only come with the backend's next bytes."""
    pid = worker(server)
    log = Log(server)
    clients = [_send(server, path) for _ in range(2)]
    try:
        for sock in clients:
            answer = b""
            while PART not in answer:
                answer += sock.recv(4096)
        assert backend_connections(pid, backend.port) == 2
    finally:
        for sock in clients:
            sock.close()
    settle(server, backend, baseline)
    assert "Traceback" not in log.new() and log.error_lines() == []


def test_an_access_log_holds_back_no_streamed_answer(server, backend, baseline):
    """With an access log the answer still streams (the log line waits for the end of the body,
    not the body for the log line): the backend's first part reaches the client while the backend
    stalls, and the line logged once the client left counts the bytes it got."""
    access = server.conf.parent / "access.log"
    before = access.read_text() if access.exists() else ""
    log = Log(server)
    sock = _send(server, "/logged/body-stall")
    try:
        answer = b""
        while PART not in answer:  # a body read whole first would come after the 30 s stall: recv times out
            answer += sock.recv(4096)
    finally:
        sock.close()
    settle(server, backend, baseline, log)
    wait_for(lambda: access.exists() and access.read_text() != before, 10, what="the access log line")
    (line,) = access.read_text()[len(before):].splitlines()
    assert '"GET /logged/body-stall HTTP/1.1" 200 10 ' in line, line


def test_a_client_that_leaves_before_the_answer_began_ends_the_backend_request_with_499(server, backend, baseline):
    """The backend sends nothing, well inside a 60 s proxy_read_timeout, and the client leaves:
    the proxy drops the backend request (within its watch interval, 1 s; nginx at once) rather
    than hold a thread on it until the backend answers, and logs the request as nginx does, 499
    and nothing sent."""
    from ngxsim_plugins.upstreams.connections import WATCH

    pid = worker(server)
    access = server.conf.parent / "access.log"
    before = access.read_text() if access.exists() else ""
    log = Log(server)
    sock = _send(server, "/logged/head-stall")
    try:
        wait_for(lambda: backend_connections(pid, backend.port) == 1, 10, what="the request to reach the backend")
    finally:
        sock.close()
    assert WATCH < 10  # settle's bound: the backend itself would stall for 30 s
    settle(server, backend, baseline, log)
    wait_for(lambda: access.exists() and access.read_text() != before, 10, what="the access log line")
    (line,) = access.read_text()[len(before):].splitlines()
    assert '"GET /logged/head-stall HTTP/1.1" 499 0 ' in line, line
    assert "Traceback" not in log.new() and log.error_lines() == []


def test_no_traceback_anywhere_in_the_server_log(server, backend, baseline):
    """Last: the whole output of the suite's server (gunicorn's log and ngxsim's) has none."""
    output = server.output()
    assert "Traceback" not in output and "Error handling request" not in output, output[-4000:]
