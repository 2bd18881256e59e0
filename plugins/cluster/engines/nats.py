"""The NATS JetStream engine: one JetStream stream per cluster, appended with acknowledged
publishes, read with an ordered push consumer.

URL: ``nats://host:port[,host2:port2,...][?replicas=N]`` (or ``tls://`` for TLS; every server
of one URL uses the same scheme; ``nats://a:1,nats://b:2`` is accepted as well). The client
connects to one of the listed servers and, when that one goes away, to another (nats-py's own
reconnect across the list), so a 3-node cluster has no single point of failure.

- Credentials: a user in the URL (``nats://relay@host:4222``) is sent with ``password`` (the
  credentials file of the config) as user/password; without a user, ``password`` is sent as the
  server's token. A password written in the URL is used only when no file gives one. No message
  of this engine ever names the password.
- ``replicas``: the stream's replica count when this engine creates it (default 1; 3 on a
  3-node cluster: a node lost costs a leader election, nothing acknowledged). An existing stream
  is used as it is (never reset, its retention and replicas untouched).
- The stream: JetStream names allow ``[A-Za-z0-9_-]``; ``stream`` is kept when it fits, else
  its other characters become ``_`` and an 8-hex-digit hash of the original is appended (two
  configured names never share a stream). Subject ``ngxsim.<name>``; ``max_msgs=retention``,
  discard old, file storage.
- A record is one compact JSON array in the message's data,
  ``[origin, origin_generation, channel, type, timestamp_msec, payload]`` (UTF-8, non-ASCII
  kept as is): one parse per entry, no escaping rules to follow (NATS header values are ASCII
  lines; channel, type and payload are any text). One header, ``Nats-Msg-Id:
  origin|generation|timestamp``, makes JetStream drop a re-append of the same record within its
  duplicate window (2 minutes): an append that timed out after the server stored it and is
  appended again after a reconnect is stored once. So ``append`` itself sends an unanswered
  publish again (a quarter of ``timeout`` per attempt, within the call's bound): a stream
  leader that steps down (a node stopped for maintenance) costs a pause, not an error. The
  timestamp keeps an instance whose generations restart (a new ring) from colliding with its
  previous life. A batch is sent pipelined (one write), each record after the first with
  ``Nats-Expected-Last-Msg-Id`` naming its predecessor, so the server stores none ahead of an
  earlier one it did not store, and only its first and last record ask for an acknowledgement
  (the chain makes the last one stored say the whole batch was, in one run of sequences);
  what is refused that way (a record of another instance came in between), a repeat or an
  unanswered batch is sent one at a time, each acknowledged.
- Positions are stream sequences as decimal strings. A jump between the position asked for and
  the first sequence delivered is a gap (retention removed them): ``lost_count`` is exact. A
  position past the stream's last sequence means the stream was recreated: reading restarts
  at its first entry, ``lost`` with ``lost_count`` None. A read that got nothing asks for the
  stream's state (so a server that stopped answering is an EngineError, and a stream deleted
  and made again under a live consumer is found and said the same way). A batch never spans a gap: entries
  after a jump come in the next read, with the jump reported there.

- The key-value store: a JetStream key-value bucket per stream, ``<name>_kv`` (the stream's
  name as above, then hashed the same way when too long), history 1, file storage, the
  stream's replicas, made on the first kv call (an existing bucket is used as it is). A key
  that is a valid KV key (dot-separated tokens of ``[A-Za-z0-9_-]``) is used as it is; any
  other is ``=`` and its UTF-8 in hex (no two keys share an entry). Revisions are the
  bucket's sequences; ``kv_put`` is ``create`` (revision 0) or ``update(last=revision)``, a
  wrong last sequence is ``Conflict``.

nats-py is asyncio-only; the engine owns one event loop in a daemon thread and calls into it,
every call bounded by ``timeout``: ``connect`` by one to reach a server and one to find or
create the stream, ``read`` by ``block`` plus one to set up its consumer and one to hear the
server when nothing came. One engine serves one caller thread at a time (the relay uses one
engine per direction). A read of the consumer it already has does not enter the loop: the
consumer's callback (on the loop) appends each message to an inbox (a deque) and sets a
``threading.Event``; ``read`` takes them in the caller's thread, waiting on that event. One
wake-up per batch and no coroutine, task or future per read (each cost CPU in the relaying
worker and a second thread hand-off per entry); the loop is entered only to subscribe, and to
ask the server for the stream's state when nothing came within ``block``.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import datetime
import hashlib
import json
import os
import re
import ssl
import threading
import time
from typing import Sequence
from urllib.parse import parse_qsl, urlsplit

import nats
import nats.errors
import nats.js.errors
from nats.js import api

from ..engine import Batch, Conflict, Engine, EngineError, Entry, Reconnected, Record, check_kv, redact_url

_SCHEMES = ("nats", "tls")
_NAME_CHARS = re.compile(r"[^A-Za-z0-9_-]")
_NAME_MAX = 64
_MAX_REPLICAS = 5
_QUEUE_SIZE = 4096  # entries buffered ahead of read(); a full inbox holds back flow control
_RECONNECT_WAIT = 0.25  # seconds between two attempts at the same server (nats-py's default: 2)
_HEARTBEAT = 2.0  # the ordered consumer's idle heartbeat: two missed ones recreate it
_ATTEMPT = 0.25  # of timeout: one publish attempt's share of the call's bound
_RETRY_PAUSE = 0.05
_NO_ANSWER = (nats.errors.TimeoutError, nats.errors.NoRespondersError, nats.js.errors.NoStreamResponseError,
              nats.js.errors.ServiceUnavailableError)
_STREAM_IN_USE = 10058  # JetStream's err_code: stream name already in use (another config)
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
# a reader whose last entry the stream lost reads again from the first entry stored later than
# it less this (entries read twice are dropped by the relay's watermarks; the margin covers a
# server clock stepped back across its restart)
_CLOCK_MARGIN_US = 1_000_000
_KV_PLAIN = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*")


def stream_name(stream: str) -> str:
    """The JetStream stream name for the configured ``stream``."""
    clean = _NAME_CHARS.sub("_", stream)
    if clean == stream and 0 < len(clean) <= _NAME_MAX:
        return clean
    digest = hashlib.sha1(stream.encode()).hexdigest()[:8]
    return f"{clean[:_NAME_MAX - 9]}_{digest}"


def kv_key(key: str) -> str:
    """The KV bucket key for the contract's ``key``: itself when it is a plain KV key, else
    ``=`` and its UTF-8 in hex (a plain key never starts with ``=``: no two keys meet)."""
    return key if _KV_PLAIN.fullmatch(key) else "=" + key.encode().hex()


def parse_url(url: str) -> tuple[list[str], dict]:
    """(the server URLs for nats-py, credentials and options) or ValueError naming what is wrong."""
    base, _, query = url.partition("?")
    scheme, sep, rest = base.partition("://")
    if not sep or scheme not in _SCHEMES:
        raise ValueError(f"the scheme must be one of {', '.join(s + '://' for s in _SCHEMES)}")
    options = {"replicas": 1, "user": None, "password": None}
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key != "replicas":
            raise ValueError(f'unknown parameter "{key}" (known: replicas)')
        if not value.isdigit() or not 1 <= int(value) <= _MAX_REPLICAS:
            raise ValueError(f'"replicas" must be a number from 1 to {_MAX_REPLICAS}')
        options["replicas"] = int(value)
    servers = []
    for one in rest.split(","):
        one = one.strip()
        if "://" not in one:
            one = f"{scheme}://{one}"
        parts = urlsplit(one)
        if parts.scheme != scheme:
            raise ValueError("every server of one URL must use the same scheme")
        try:
            port = parts.port
        except ValueError:
            raise ValueError(f'invalid port in "{redact_url(one)}"') from None
        if not parts.hostname:
            raise ValueError(f'no host in "{redact_url(one)}"')
        if parts.path not in ("", "/"):
            raise ValueError(f'unexpected path "{parts.path}" (the stream is configured on its own)')
        if parts.username:
            if options["user"] not in (None, parts.username):
                raise ValueError("the servers of one URL name different users")
            options["user"] = parts.username
            options["password"] = parts.password
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        servers.append(f"{scheme}://{host}:{port or 4222}")
    return servers, options


# made once: json.dumps/loads with options (or bytes) set up an encoder or sniff the encoding
# at each call, ~1.3 and ~3 us of the relaying worker's CPU per record
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
_DECODER = json.JSONDecoder()


def encode(record: Record) -> bytes:
    fields = [record.origin, record.origin_generation, record.channel, record.type, record.timestamp_msec,
              record.payload]
    if record.previous:
        fields.append(record.previous)
    return _ENCODER.encode(fields).encode()


def decode(data: bytes) -> Record | None:
    """The record in an entry's data, or None when it is not one (something else published on
    the stream's subject). Six fields, or seven with its predecessor's generation."""
    try:
        fields = _DECODER.decode(data.decode())
        origin, generation, channel, type_, timestamp, payload, *rest = fields
    except (ValueError, TypeError):
        return None
    previous = rest[0] if len(rest) == 1 else 0
    if not (isinstance(origin, str) and isinstance(generation, int) and isinstance(channel, str)
            and isinstance(type_, str) and isinstance(timestamp, int) and isinstance(payload, str)
            and isinstance(previous, int) and len(rest) <= 1):
        return None
    return Record(origin, generation, channel, type_, payload, timestamp, previous)


def stream_sequence(msg) -> int:
    """A consumer's message's stream sequence, read from its reply subject
    (``$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<time>.<pending>``, or
    with a domain and an account hash after ``ACK`` and a token more at the end): nats-py's
    ``msg.metadata`` builds three objects and a datetime per message (most of the relay's CPU
    per entry, and the relaying worker's GIL); anything else goes to it."""
    tokens = (msg.reply or "").split(".")
    if len(tokens) == 9 and tokens[0] == "$JS" and tokens[1] == "ACK":
        return int(tokens[5])
    if len(tokens) >= 11 and tokens[0] == "$JS" and tokens[1] == "ACK":
        return int(tokens[7])
    return msg.metadata.sequence.stream


def stream_time_us(msg) -> int:
    """A consumer's message's stored time (µs since the epoch), from its reply subject as
    ``stream_sequence`` reads it (the token before the pending count)."""
    tokens = (msg.reply or "").split(".")
    if len(tokens) == 9 and tokens[0] == "$JS" and tokens[1] == "ACK":
        return int(tokens[7]) // 1000
    if len(tokens) >= 11 and tokens[0] == "$JS" and tokens[1] == "ACK":
        return int(tokens[9]) // 1000
    return _micros(msg.metadata.timestamp)


def _micros(when) -> int:
    return (when - _EPOCH) // datetime.timedelta(microseconds=1)


def _drop_queued_publishes(nc) -> None:
    """At a disconnect: the publishes nats-py queued and had not written yet, which it would send
    to the server it reconnects to before the relay could check what that server lost (see
    ``pending_size=0``). Dropped unacknowledged (the relay sends them again after its check);
    any other command stays. nats-py keeps them in ``_pending`` (2.x): without it, nothing to do."""
    pending = getattr(nc, "_pending", None)
    if not isinstance(pending, list) or not pending:
        return
    kept = [cmd for cmd in pending if not bytes(cmd).startswith((b"PUB ", b"HPUB "))]
    if len(kept) != len(pending):
        nc._pending = kept
        nc._pending_data_size = sum(len(cmd) for cmd in kept)


def msg_id(record: Record) -> str:
    return f"{record.origin}|{record.origin_generation}|{record.timestamp_msec}"


class NatsEngine(Engine):
    """JetStream through nats-py, behind the contract's synchronous calls."""

    schemes = _SCHEMES
    tls_schemes = ("tls",)
    beginning = "0"  # the sequence before the first

    def __init__(self, url: str, stream: str, *, retention: int, password: str | None = None,
                 timeout: float = 2.0, tls=None):
        super().__init__(url, stream, retention=retention, password=password, timeout=timeout, tls=tls)
        self.name = stream_name(stream)
        self.subject = f"ngxsim.{self.name}"
        self.skipped = 0  # entries on the subject that were not records (skipped, counted)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._nc = None
        self._js = None
        self._kv = None
        self.kv_bucket = stream_name(f"{self.name}_kv")
        # (sequence, stored time in µs) of the last entry a read moved past, kept across close()
        # and connect() and written in the cursor (``SEQ@MICROS``): a reader resuming after it
        # finds out whether the stream still holds that entry or lost it
        self._mark: tuple[int, int] | None = None
        self._reset_reader()

    @classmethod
    def is_position(cls, position: str) -> bool:
        seq, at, stored = position.partition("@")
        return seq.isdigit() and seq.isascii() and (not at or (stored.isdigit() and stored.isascii()))

    @classmethod
    def position_of(cls, cursor: str) -> str:
        return cursor.partition("@")[0]

    @classmethod
    def check_url(cls, url: str) -> str | None:
        try:
            parse_url(url)
        except ValueError as exc:
            return str(exc)
        return None

    # -- the loop thread ----------------------------------------------------------------------

    def _start_loop(self) -> None:
        if self._loop is not None:
            return
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name=f"nats engine {self.name}", daemon=True)
        thread.start()
        self._loop, self._thread = loop, thread

    def _stop_loop(self) -> None:
        loop, thread = self._loop, self._thread
        self._loop = self._thread = None
        if loop is None:
            return

        async def cancel_all():
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks, timeout=1.0) if tasks else None

        try:
            asyncio.run_coroutine_threadsafe(cancel_all(), loop).result(2.0)
        except Exception:  # noqa: BLE001 - close never raises
            pass
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5.0)
        if not thread.is_alive():
            loop.close()

    def _run(self, coro, what: str, bound: float | None = None):
        """Run ``coro`` on the engine's loop for at most ``bound`` seconds; any failure becomes
        an EngineError saying ``what`` failed and why, in words."""
        bound = self.timeout if bound is None else bound
        if self._loop is None:
            coro.close()
            raise EngineError(f"{self.describe()}: {what}: not connected")
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(bound + 0.5)  # the coroutine bounds itself; this is the backstop
        except concurrent.futures.TimeoutError:
            if not future.done():  # (the coroutine's own asyncio.TimeoutError is the same class)
                future.cancel()
                raise EngineError(f"{self.describe()}: {what}: no answer within {bound:g}s") from None
            exc = future.exception()
        except EngineError:
            raise
        except Exception as caught:  # noqa: BLE001 - every failure becomes the contract's error
            exc = caught
        if isinstance(exc, EngineError):
            raise exc
        raise EngineError(f"{self.describe()}: {what}: {self._words(exc)}") from None

    def _words(self, exc: BaseException) -> str:
        """Why ``exc`` happened, fit for the error log: no library repr, no password."""
        text = self.tls_hint(self._why(exc))
        for secret in {self.password, self._url_password()} - {None, ""}:
            text = text.replace(secret, "***")
        return text

    @staticmethod
    def _refused(exc: BaseException) -> bool:
        return isinstance(exc, nats.errors.AuthorizationError) or "authorization" in str(exc).lower()

    def _why(self, exc: BaseException) -> str:
        if self._refused(exc):
            return "authentication failed (authorization violation): check the user and the credentials file"
        if isinstance(exc, (nats.errors.NoRespondersError, nats.js.errors.NoStreamResponseError,
                            nats.js.errors.ServiceUnavailableError)):
            return "no JetStream answer (JetStream not enabled on the server, or no stream leader yet)"
        if isinstance(exc, nats.js.errors.APIError):
            return f"JetStream refused it: {exc.description or 'error'} (code {exc.code}, err_code {exc.err_code})"
        if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
            return f"timed out after {self.timeout:g}s"
        if isinstance(exc, nats.errors.ConnectionClosedError):
            return "the connection is closed"
        if isinstance(exc, ssl.SSLCertVerificationError):  # the engine's certificate, not trusted or not its name
            return f"TLS failed: certificate verify failed: {exc.verify_message} (check tls_ca=)"
        if isinstance(exc, ssl.SSLError):
            return f"TLS failed: {exc.reason or exc.strerror or 'handshake error'}"
        if isinstance(exc, OSError):
            return (os.strerror(exc.errno) if exc.errno else exc.strerror or "connection failed").lower()
        if isinstance(exc, nats.errors.Error):
            text = str(exc)
            return text[len("nats: "):] if text.startswith("nats: ") else text
        return type(exc).__name__

    def _url_password(self) -> str | None:
        try:
            return parse_url(self.url)[1]["password"]
        except ValueError:
            return None

    # -- connect / close ----------------------------------------------------------------------

    def connect(self) -> None:
        try:
            servers, options = parse_url(self.url)
        except ValueError as exc:
            raise EngineError(f"{self.describe()}: invalid URL: {exc}") from None
        self.close()
        self._start_loop()
        try:
            self._run(self._connect(servers, options), "cannot connect")
            self._run(self._ensure_stream(options["replicas"]), f"stream {self.name}")
        except EngineError:
            self.close()
            raise

    async def _connect(self, servers: list[str], options: dict) -> None:
        extra = {}
        password = self.password if self.password is not None else options["password"]
        if options["user"] is not None:
            extra = {"user": options["user"], "password": password or ""}
        elif password:
            extra = {"token": password}
        if self.tls is not None:  # read at each connect: renewed certificates are used
            extra["tls"] = self.tls.context()
        last_error: list[BaseException] = []
        refused = asyncio.get_running_loop().create_future()
        self._connected = asyncio.Event()

        async def on_error(exc):
            last_error.append(exc)
            if self._refused(exc) and not refused.done():
                refused.set_result(exc)  # a wrong password stays wrong: say so now

        async def on_disconnect():
            self._connected.clear()
            _drop_queued_publishes(nc)

        async def on_reconnect():
            self._connected.set()
            self._reconnects += 1

        nc = nats.NATS()
        attempt = asyncio.ensure_future(nc.connect(
            servers, name=f"ngxsim cluster {self.name}", connect_timeout=self.timeout,
            allow_reconnect=True, max_reconnect_attempts=-1, reconnect_time_wait=_RECONNECT_WAIT,
            # nothing published while reconnecting is kept for the server it reconnects to: that
            # one may have lost acknowledged entries (a restart), which the relay sends again
            # first; a publish kept meanwhile would be stored ahead of them (and the others'
            # watermarks would then drop them): it fails instead, and is sent after the check
            pending_size=0,
            error_cb=on_error, disconnected_cb=on_disconnect, reconnected_cb=on_reconnect, **extra))
        done, _ = await asyncio.wait({attempt, refused}, timeout=self.timeout,
                                     return_when=asyncio.FIRST_COMPLETED)
        if attempt not in done or attempt.exception() is not None:
            attempt.cancel()
            await asyncio.gather(attempt, return_exceptions=True)
            await self._close_client(nc)
            if attempt.done() and not attempt.cancelled() and attempt.exception() is not None:
                raise attempt.exception()
            if refused.done():
                raise refused.result()
            if last_error:  # a refused password may show as a reset connection once: say why
                raise next((e for e in last_error if self._refused(e)), last_error[-1])
            raise asyncio.TimeoutError
        self._nc = nc
        self._connected.set()
        self._js = nc.jetstream(timeout=self.timeout)

    async def _ensure_stream(self, replicas: int) -> None:
        await asyncio.wait_for(self._find_or_create_stream(replicas), self.timeout)

    async def _find_or_create_stream(self, replicas: int) -> None:
        try:
            info = await self._js.stream_info(self.name)
        except nats.js.errors.NotFoundError:
            config = api.StreamConfig(name=self.name, subjects=[self.subject], max_msgs=self.retention,
                                      discard=api.DiscardPolicy.OLD, storage=api.StorageType.FILE,
                                      num_replicas=replicas)
            try:
                info = await self._js.add_stream(config)
            except nats.js.errors.BadRequestError as exc:
                if exc.err_code != _STREAM_IN_USE:
                    raise
                info = await self._js.stream_info(self.name)  # another instance made it first
        if self.subject not in (info.config.subjects or []):
            raise EngineError(f"{self.describe()}: stream {self.name} exists with subjects "
                              f"{info.config.subjects} and not {self.subject}")

    def close(self) -> None:
        nc = self._nc
        self._nc = self._js = self._kv = None
        if nc is not None and self._loop is not None:
            try:
                asyncio.run_coroutine_threadsafe(self._close_client(nc), self._loop).result(self.timeout + 0.5)
            except Exception:  # noqa: BLE001 - close never raises
                pass
        self._stop_loop()
        self._reset_reader()

    async def _close_client(self, nc) -> None:
        try:
            await asyncio.wait_for(nc.close(), self.timeout)
        except Exception:  # noqa: BLE001 - closing a broken connection may fail; it is gone either way
            pass

    # -- append / newest ----------------------------------------------------------------------

    def append(self, records: Sequence[Record]) -> list[str]:
        if not records:
            return []
        return self._run(self._append(list(records)), f"append to stream {self.name}")

    async def _append(self, records: list[Record]) -> list[str]:
        # pipelined first (_pipelined); what it did not get acknowledged, one at a time, each
        # acknowledged before the next is sent: a failure stops the batch there, so a retry
        # never stores a later record before an earlier one
        deadline = time.monotonic() + self.timeout
        self._same_connection()
        positions = await self._pipelined(records, deadline) if len(records) > 1 else []
        for record in records[len(positions):]:
            ack = await self._publish(record, deadline)
            positions.append(str(ack.seq))
        self._same_connection()  # (acknowledged across a reconnect: checked and sent again, stored once)
        return positions

    async def _pipelined(self, records: list[Record], deadline: float) -> list[str]:
        """Send every record at once (one write, not one round trip each), each after the first
        with ``Nats-Expected-Last-Msg-Id``: its predecessor's id. JetStream stores a record only
        right after its predecessor, so nothing is ever stored ahead of an earlier record that
        was not; a record of another instance in between (or a predecessor lost) makes the
        server refuse the rest. Only the first and the last record ask for an acknowledgement:
        the last one stored means each before it was stored right before its successor, down to
        the first, so a first newly stored at S and a last at S + n - 1 make the batch
        S..S + n - 1 (one acknowledgement per batch and not per record: each is a message the
        server sends and nats-py parses on its loop's thread, in the relaying worker). Anything
        else (a refusal, a repeat of an earlier append, no answer) gives the head known for
        sure, and ``_append`` sends the rest one at a time, each acknowledged (a repeat with its
        stored sequence: the positions stay exact). Returns the positions of that head."""
        await self._wait_connected()
        self._same_connection()
        acked: list[asyncio.Future] = []
        previous, last = None, len(records) - 1
        try:
            for i, record in enumerate(records):
                headers = {api.Header.MSG_ID: msg_id(record)}
                if previous is not None:
                    headers[api.Header.EXPECTED_LAST_MSG_ID] = previous
                previous = headers[api.Header.MSG_ID]
                if i == 0 or i == last:
                    acked.append(await self._js.publish_async(self.subject, encode(record), headers=headers))
                else:
                    await self._nc.publish(self.subject, encode(record), headers=headers)
            await asyncio.wait(acked, timeout=max(0.0, min(deadline - time.monotonic(), self.timeout * _ATTEMPT)))
        except nats.errors.Error:
            pass  # (what was sent and acknowledged counts; the rest goes one at a time)
        acks = []
        for future in acked:
            ok = future.done() and not future.cancelled() and future.exception() is None
            acks.append(future.result() if ok else None)  # (exception() retrieved: a refusal is expected)
            future.cancel()  # unanswered: forgotten
        if not acks or acks[0] is None:
            return []
        head = acks[0]
        tail = acks[1] if len(acks) == 2 else None
        if tail is not None and not head.duplicate and not tail.duplicate and tail.seq - head.seq == last:
            return [str(head.seq + i) for i in range(len(records))]
        return [str(head.seq)]

    async def _publish(self, record: Record, deadline: float):
        """One acknowledged publish, sent again (same Nats-Msg-Id: stored once) when an attempt
        gets no answer, until ``deadline``: a stream leader that stepped down or died takes the
        unanswered attempt with it, and its successor answers the next one."""
        data, headers = encode(record), {api.Header.MSG_ID: msg_id(record)}
        while True:
            await self._wait_connected()
            self._same_connection()
            left = deadline - time.monotonic()
            if left <= 0:
                raise asyncio.TimeoutError
            try:
                return await self._js.publish(self.subject, data, timeout=min(left, self.timeout * _ATTEMPT),
                                              headers=headers)
            except _NO_ANSWER:
                if deadline - time.monotonic() <= _RETRY_PAUSE:
                    raise
                await asyncio.sleep(_RETRY_PAUSE)  # no leader yet: give the election a moment

    async def _wait_connected(self) -> None:
        """Wait (within the call's bound) while the client reconnects to another server, rather
        than buffer a publish nobody may ever receive."""
        if self._nc is None:
            raise nats.errors.ConnectionClosedError
        if not self._connected.is_set():
            try:
                await asyncio.wait_for(self._connected.wait(), self.timeout)
            except asyncio.TimeoutError:
                raise EngineError(f"{self.describe()}: disconnected, no server answered within "
                                  f"{self.timeout:g}s") from None

    def epoch(self) -> int:
        self._appending_epoch = self._reconnects
        return self._reconnects

    def _same_connection(self) -> None:
        """Append nothing on a connection made anew since the caller's last ``epoch()`` (the
        contract): the server may have lost what was acknowledged before."""
        if self._reconnects != self._appending_epoch:
            raise Reconnected(f"{self.describe()}: append: reconnected to the server since the last check "
                              f"(it may have restarted without acknowledged entries)")

    def record_at(self, position: str) -> Record | None:
        if not self.is_position(position):
            raise EngineError(f"{self.describe()}: {position!r} is not a position of this engine")
        msg = self._run(self._message(int(position.partition("@")[0])), f"stream {self.name} get")
        return None if msg is None else decode(msg.data or b"")

    async def _message(self, seq: int):
        """The stream's message at ``seq``, None when it holds none there."""
        await self._wait_connected()
        if seq < 1:
            return None
        try:
            return await self._js.get_msg(self.name, seq=seq)
        except nats.js.errors.NotFoundError:
            return None

    def newest(self) -> str | None:
        return self._run(self._newest(), f"stream {self.name} info")

    async def _newest(self) -> str | None:
        await self._wait_connected()
        state = (await self._js.stream_info(self.name)).state
        return str(state.last_seq) if state.messages else None

    # -- key-value store -------------------------------------------------------------------------

    def kv_get(self, key: str) -> tuple[str | None, int]:
        check_kv(key)
        return self._run(self._kv_get(kv_key(key)), f"kv get from bucket {self.kv_bucket}")

    def kv_put(self, key: str, value: str, *, revision: int) -> int:
        check_kv(key, value, revision)
        return self._run(self._kv_put(key, value.encode(), revision), f"kv put to bucket {self.kv_bucket}")

    async def _bucket(self):
        await self._wait_connected()
        if self._kv is None:
            try:
                self._kv = await self._js.key_value(self.kv_bucket)
            except nats.js.errors.BucketNotFoundError:
                replicas = parse_url(self.url)[1]["replicas"]
                config = api.KeyValueConfig(bucket=self.kv_bucket, history=1, storage=api.StorageType.FILE,
                                            replicas=replicas)
                try:
                    self._kv = await self._js.create_key_value(config)
                except nats.js.errors.BadRequestError as exc:
                    if exc.err_code != _STREAM_IN_USE:
                        raise
                    self._kv = await self._js.key_value(self.kv_bucket)  # another instance made it first
        return self._kv

    async def _kv_get(self, key: str) -> tuple[str | None, int]:
        kv = await self._bucket()
        try:
            entry = await kv.get(key)
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
            return None, 0
        return (entry.value or b"").decode(), entry.revision

    async def _kv_put(self, key: str, data: bytes, revision: int) -> int:
        kv = await self._bucket()
        try:
            if revision == 0:
                return await kv.create(kv_key(key), data)
            return await kv.update(kv_key(key), data, last=revision)
        except nats.js.errors.KeyWrongLastSequenceError:
            now = await self._kv_get(kv_key(key))
            raise Conflict(f"{self.describe()}: key {key!r} is at revision {now[1]}, not {revision}") from None

    # -- read -----------------------------------------------------------------------------------

    def _reset_reader(self) -> None:
        self._sub = None
        self._inbox: collections.deque = collections.deque()  # filled by the consumer's callback
        self._arrived = threading.Event()  # set when the callback appended to the inbox
        self._space: asyncio.Event | None = None  # set (on the loop) when a full inbox has room
        self._held = None          # a message after a jump, kept for the next read
        self._last: int | None = None  # the last sequence handed out (or the cursor it started at)
        self._given: str | None = None  # the cursor the last batch returned
        self._pending_lost: tuple[int | None] | None = None  # a loss found at subscribe time
        self._created = None  # the stream's creation time when the consumer was made
        self._reconnects = 0
        self._sub_reconnects = 0
        self._appending_epoch = 0

    def read(self, cursor: str | None, *, block: float, limit: int = 512, skip_origin: str | None = None) -> Batch:
        if cursor is not None and not self.is_position(cursor):
            raise EngineError(f"{self.describe()}: read: {cursor!r} is not a position of this engine "
                              f"(a stream sequence)")
        what = f"read stream {self.name}"
        if not self._reading_on(cursor):  # (the common case, the same consumer, stays off the loop)
            self._run(self._ready_to_read(cursor), what)
        entries: list[Entry] = []
        lost, lost_count = False, None
        if self._pending_lost is not None:
            lost, (lost_count,) = True, self._pending_lost
            self._pending_lost = None
        inbox, arrived = self._inbox, self._arrived
        # (a record's data starts with its origin: encode's JSON array)
        skip = None if skip_origin is None else json.dumps([skip_origin], ensure_ascii=False)[:-1].encode() + b","
        deadline = time.monotonic() + max(0.0, block)
        limit = max(1, limit)
        moved = None
        while len(entries) < limit:
            if self._sub_reconnects != self._reconnects:
                break  # (what came after a reconnect waits for the new consumer: _ready_to_read)
            msg = self._held
            self._held = None
            if msg is None:
                if inbox:
                    msg = inbox.popleft()
                elif entries:
                    break
                else:
                    arrived.clear()  # (then look again: an append before the clear is seen now)
                    if not inbox and not arrived.wait(max(0.0, deadline - time.monotonic())):
                        # nothing came: the server must answer, and the stream must still be
                        # the one this consumer reads
                        if self._run(self._recreated_under_us(), what):
                            lost, lost_count = True, None
                        break
                    continue
            seq = stream_sequence(msg)
            if self._last is not None and seq <= self._last:
                continue  # delivered again (the consumer was recreated): already handed out
            if self._last is not None and seq > self._last + 1:
                if entries:
                    self._held = msg  # the jump goes with the next batch
                    break
                lost, lost_count = True, (lost_count or 0) + seq - self._last - 1
            self._last, moved = seq, msg
            if skip is not None and msg.data.startswith(skip):
                continue  # the caller's own: skipped unparsed
            record = decode(msg.data)
            if record is None:
                self.skipped += 1
                continue
            entries.append(Entry(str(seq), record))
        if moved is not None:
            self._mark = (self._last, stream_time_us(moved))
        space = self._space
        if space is not None and not space.is_set() and len(inbox) < _QUEUE_SIZE // 2:
            self._loop.call_soon_threadsafe(space.set)  # the callback waits for room: go on
        if self._last is not None:  # (past the last entry, and any of the caller's own after it)
            mark = self._mark
            position = f"{self._last}@{mark[1]}" if mark is not None and mark[0] == self._last else str(self._last)
        else:
            position = cursor
        self._given = position
        return Batch(entries, position, lost, lost_count)

    async def _recreated_under_us(self) -> bool:
        """Was the stream deleted and made again since this consumer started (its sequences
        begin anew: the consumer would wait for a sequence the new stream reaches only later,
        and hand out what comes after as if nothing was missed)? Then a new consumer at its
        start. Raises when the server does not answer or the stream is gone."""
        info = await self._js.stream_info(self.name)
        if self._last is None or (info.created == self._created and info.state.last_seq >= self._last):
            return False
        await self._subscribe(str(self._last), None, remade=info.created != self._created)
        lost, self._pending_lost = self._pending_lost is not None, None  # said by this read
        return lost

    def _reading_on(self, cursor: str | None) -> bool:
        """Is the consumer ready for a read after ``cursor`` (connected, the same consumer, the
        caller continuing where the last batch ended)?"""
        return (self._sub is not None and cursor == self._given and self._sub_reconnects == self._reconnects
                and self._nc is not None and self._connected.is_set())

    async def _ready_to_read(self, cursor: str | None) -> None:
        """Keep the consumer while the caller continues where the last batch ended; else (or
        after a reconnect, which loses it) a new one, resuming after what was handed out."""
        await self._wait_connected()
        if self._sub is None or cursor != self._given or self._sub_reconnects != self._reconnects:
            start = self._last + 1 if (self._sub is not None and cursor == self._given
                                       and self._last is not None) else None
            await self._subscribe(cursor, start)

    async def _subscribe(self, cursor: str | None, resume: int | None, remade: bool = False) -> None:
        """A new ordered consumer: after ``cursor`` (``resume``: at that sequence, where the
        previous consumer stopped), or for new entries only (cursor None). ``remade``: the
        stream was deleted and made again (also found here: its creation time changed since
        the last consumer), so the position means nothing in it: from its first entry."""
        await self._unsubscribe()
        self._held = None
        self._pending_lost = None
        inbox, arrived, space = collections.deque(), self._arrived, asyncio.Event()
        space.set()

        async def deliver(msg):
            inbox.append(msg)
            if not arrived.is_set():  # (read clears it before it looks at the inbox: one set per wait)
                arrived.set()
            while len(inbox) >= _QUEUE_SIZE and self._inbox is inbox:
                space.clear()  # full: wait for read to take some; flow control holds the server back
                await space.wait()

        info = await self._js.stream_info(self.name)
        state = info.state
        remade = remade or (self._created is not None and info.created != self._created)
        self._created = info.created
        if resume is not None:
            start = resume
        elif cursor is None:
            start = None
        else:
            start = int(cursor.partition("@")[0]) + 1
        mark = self._mark
        if cursor is not None and "@" in cursor and resume is None:  # (the caller's, from its state)
            mark = (start - 1, int(cursor.partition("@")[2]))
        if start is None:  # from now on: after the newest entry, a position the caller can keep
            start = state.last_seq + 1
        elif (not remade and mark is not None and mark[0] == start - 1 and mark[0] >= state.first_seq
              and not await self._holds(mark, state)):
            # the stream no longer holds the last entry read (the server restarted without entries
            # it had acknowledged, and may have stored others since under the same sequences):
            # what came after it is found by time; what this reader had not read of the lost ones
            # is unknown (their origins append again what they still hold)
            self._pending_lost = (None,)
            start = await self._first_stored_after(mark[1] - _CLOCK_MARGIN_US, state)
        elif remade or start > state.last_seq + 1:
            # made again (past its end: the same); what the position pointed at is unknown
            self._pending_lost = (None,)
            start = max(1, state.first_seq)  # an empty new stream says first_seq 0
        elif state.first_seq > start:
            self._pending_lost = (state.first_seq - start,)
            start = state.first_seq
        self._last = start - 1
        if mark is not None and mark[0] == self._last:
            self._mark = mark
        elif self._last >= max(1, state.first_seq):
            found = await self._message(self._last)  # (what to check the next resume against)
            self._mark = None if found is None else (self._last, _micros(found.time))
        else:
            self._mark = None
        sub = await self._js.subscribe(self.subject, stream=self.name, cb=deliver, ordered_consumer=True,
                                       idle_heartbeat=_HEARTBEAT, deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
                                       config=api.ConsumerConfig(opt_start_seq=start))
        self._sub, self._inbox, self._space = sub, inbox, space
        self._sub_reconnects = self._reconnects

    async def _holds(self, mark: tuple[int, int], state) -> bool:
        """Does the stream still hold the entry ``mark`` names (its sequence, stored at that time)?"""
        if mark[0] > state.last_seq:
            return False
        found = await self._message(mark[0])
        return found is not None and _micros(found.time) == mark[1]

    async def _first_stored_after(self, micros: int, state) -> int:
        """The first sequence the stream stored after ``micros`` (µs since the epoch), by
        bisection of its stored times; past its end when none. A sequence it does not hold
        counts as later (a reader starts earlier: what it reads twice is dropped)."""
        low, high = max(1, state.first_seq), state.last_seq + 1
        while low < high:
            middle = (low + high) // 2
            found = await self._message(middle)
            if found is not None and _micros(found.time) <= micros:
                low = middle + 1
            else:
                high = middle
        return low

    async def _unsubscribe(self) -> None:
        sub, self._sub = self._sub, None
        self._inbox = collections.deque()
        if self._space is not None:
            self._space.set()  # a callback waiting for room gives up (its inbox is no longer read)
        if sub is not None:
            try:
                await asyncio.wait_for(sub.unsubscribe(), self.timeout)
            except Exception:  # noqa: BLE001 - the old consumer is ephemeral: the server drops it
                pass
