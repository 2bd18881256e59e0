"""Redis Streams: one stream (a key) per cluster.

- append: ``XADD stream MAXLEN ~ retention * o ORIGIN g GEN c CHANNEL t TYPE p PAYLOAD ts MS``,
  every record of a batch in one pipeline (one round trip, in MULTI with an ``XINFO STREAM``
  that numbers the batch). The commands are written in RESP here and the answers read raw
  (``_exchange``): redis-py's generic packing and reply parsing cost ~25 µs of the relaying
  worker's CPU (and GIL) per record, more than the request that published it;
- read: ``XREAD BLOCK ms COUNT n STREAMS stream cursor`` (the server answers as soon as an entry
  arrives: a push, no polling), on a connection of its own whose socket timeout outlasts the
  block, answers read raw as well; entries of ``skip_origin`` are counted past, never parsed;
- loss: a position is ``ID#N``, N the entry's number in the stream (the N-th ever added).
  Redis 7's ``XINFO STREAM`` (asked in the same pipeline as the XREAD, just before it) gives
  ``entries-added`` and ``length``; the stream is only ever trimmed from its head, so its first
  entry is number ``entries-added - length + 1``. When that is past the cursor's N + 1, entries
  after the cursor were trimmed unread: exactly that many. (``max-deleted-entry-id`` would not
  do: trimming does not move it, only XDEL does.) A stream that vanished (the engine restarted
  without its data, ``FLUSHALL``) while the cursor pointed into it is a loss of unknown size.
- key-value store: one hash per key, ``{STREAM}:kv:KEY`` with fields ``v`` (the value) and ``r``
  (its revision, 1 for the first write). The ``{STREAM}`` hash tag keeps a stream's keys in one
  slot of a Redis Cluster. ``kv_put`` is one Lua script (atomic: compare the revision, write,
  return the new one); the data lives as long as Redis keeps its own (append-only file).
"""

from __future__ import annotations

import re
from typing import Sequence
from urllib.parse import urlsplit

import redis
from redis import exceptions as rx

from ..engine import Batch, Conflict, Engine, EngineError, Entry, Reconnected, Record, check_kv, redact_url

_POSITION = re.compile(r"\d+-\d+(#\d+)?")
_FIELDS = (b"o", b"g", b"c", b"t", b"p", b"ts")
_PREVIOUS = b"pv"  # the record's predecessor's generation: an eighth field pair, when known


def _bulk(value: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value), value)


def _command(*args: bytes) -> bytes:
    """One command in RESP (what redis-py would send, without its per-argument machinery)."""
    return b"*%d\r\n%s" % (len(args), b"".join(_bulk(a) for a in args))


def _flat(info) -> dict:
    """A raw ``XINFO STREAM`` answer (name, value, name, value, ...; a map in RESP3) as a dict
    of bytes keys."""
    return info if isinstance(info, dict) else dict(zip(info[::2], info[1::2]))


# KEYS[1]: the entry; ARGV: value, expected revision. {1, new revision} or {0, current revision}
_CAS = """
local current = tonumber(redis.call('HGET', KEYS[1], 'r') or '0')
if current ~= tonumber(ARGV[2]) then return {0, current} end
redis.call('HSET', KEYS[1], 'v', ARGV[1], 'r', current + 1)
return {1, current + 1}
"""


def _position(entry_id: bytes | str, number: int | None) -> str:
    """A position: the entry's id and, after ``#``, its number in the stream (1 for the first
    entry ever added): what tells a trimmed gap from no gap, and how many were lost."""
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return text if number is None else f"{text}#{number}"


def _id(entry_id: bytes | str) -> tuple[int, int]:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def _parse(position: str) -> tuple[str, int | None]:
    entry_id, sep, number = position.partition("#")
    return entry_id, (int(number) if sep and number.isdigit() else (0 if entry_id == "0-0" else None))


def _record(fields: list) -> Record | None:
    """The record in an entry's fields, None when it is not one of ours."""
    try:
        names = fields[::2]
        if tuple(names[:6]) == _FIELDS and (len(names) == 6 or names[6:] == [_PREVIOUS]):  # (as append writes them)
            o, g, c, t, p, ts, *pv = fields[1::2]
        else:
            named = dict(zip(names, fields[1::2]))
            o, g, c, t, p, ts = (named[f] for f in _FIELDS)
            pv = [named[_PREVIOUS]] if _PREVIOUS in named else []
        return Record(o.decode(), int(g), c.decode(), t.decode(), p.decode(), int(ts), int(pv[0]) if pv else 0)
    except (KeyError, ValueError, UnicodeDecodeError):
        return None


class RedisEngine(Engine):
    schemes = ("redis", "rediss")
    tls_schemes = ("rediss",)
    beginning = "0-0#0"

    def __init__(self, url, stream, *, retention, password=None, timeout=2.0, tls=None):
        super().__init__(url, stream, retention=retention, password=password, timeout=timeout, tls=tls)
        self._client: redis.Redis | None = None
        self._reader: redis.Redis | None = None
        self._cas = None
        self._given: str | None = None  # the cursor the last read returned
        self._reader_socket = None  # the reader's socket at the last read, and whether it was new
        self._reader_new = False
        self._socket = None  # the writer's socket last seen, and how many were new since connect
        self._epoch = self._appending_epoch = 0

    @classmethod
    def is_position(cls, position: str) -> bool:
        return _POSITION.fullmatch(position) is not None

    @classmethod
    def check_url(cls, url: str) -> str | None:
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            return f"invalid port ({exc})" if "port" in str(exc).lower() else str(exc)
        if parts.scheme not in cls.schemes:
            return f'scheme "{parts.scheme}" is not redis:// or rediss://'
        if not parts.hostname:
            return "no host"
        if port is not None and not 1 <= port <= 65535:
            return f"invalid port {port}"
        db = parts.path.lstrip("/")
        if db and not db.isdigit():
            return f'invalid database "{db}" (a number: redis://host:port/0)'
        if parts.query or parts.fragment:
            return "no query or fragment is allowed (credentials go in password_file=)"
        return None

    def _make(self, socket_timeout: float) -> redis.Redis:
        tls = {}
        if self.tls is not None:  # redis-py checks no host name by default: here it does
            tls = {"ssl_ca_certs": self.tls.ca, "ssl_certfile": self.tls.cert, "ssl_keyfile": self.tls.key,
                   "ssl_cert_reqs": "required", "ssl_check_hostname": True}
        return redis.Redis.from_url(self.url, password=self.password, socket_timeout=socket_timeout,
                                    socket_connect_timeout=self.timeout, decode_responses=False,
                                    retry_on_timeout=False, **tls)

    def _fail(self, what: str, exc: Exception) -> EngineError:
        reason = str(exc).replace(self.url, self.describe()) or type(exc).__name__
        return EngineError(f"{self.describe()}: {what}: {self.tls_hint(reason)}")

    def connect(self) -> None:
        self.close()
        try:
            self._client = self._make(self.timeout)
            self._client.ping()
            self.epoch()  # (the socket of this connect: not a new one)
            self._epoch = self._appending_epoch = 0
        except rx.RedisError as exc:
            self.close()
            raise self._fail("connect", exc) from None

    def _reader_for(self, block: float) -> redis.Redis:
        if self._reader is None:
            self._reader = self._make(block + self.timeout)
        return self._reader

    def _noted(self, conn) -> None:
        """Count a writer connection redis-py made anew (it reconnects by itself when it finds
        its socket closed: the server may have restarted meanwhile)."""
        sock = getattr(conn, "_sock", None)
        if sock is not self._socket:
            self._socket = sock
            self._epoch += 1

    def epoch(self) -> int:
        if self._client is None:
            raise EngineError(f"{self.describe()}: not connected")
        pool = self._client.connection_pool
        try:
            conn = pool.get_connection()  # (a closed socket is found, and made anew, here: no round trip)
        except rx.RedisError as exc:
            raise self._fail("connect", exc) from None
        try:
            self._noted(conn)
        finally:
            pool.release(conn)
        self._appending_epoch = self._epoch
        return self._epoch

    def record_at(self, position: str) -> Record | None:
        if self._client is None:
            raise EngineError(f"{self.describe()}: not connected")
        if not self.is_position(position):
            raise EngineError(f"{self.describe()}: {position!r} is not a position of this engine")
        entry_id = _parse(position)[0].encode()
        (answer,) = self._exchange(self._client, _command(b"XRANGE", self.stream.encode(), entry_id, entry_id),
                                   1, "XRANGE")
        if isinstance(answer, Exception):
            raise self._fail("XRANGE", answer)
        for _, fields in answer or ():
            return _record(fields)
        return None

    def _exchange(self, client: redis.Redis, data: bytes, answers: int, what: str, fresh: bool = True) -> list:
        """Send ``data`` (commands in RESP) on one of ``client``'s connections and read
        ``answers`` raw answers; an error answer is a ResponseError in the list, a connection
        that fails is dropped and an EngineError. ``fresh`` False: refuse (EngineError, nothing
        sent) a connection made anew since the last ``epoch()``."""
        pool = client.connection_pool
        conn = pool.get_connection()
        if client is self._reader:  # (a new socket: redis-py connected again by itself)
            sock = getattr(conn, "_sock", None)
            self._reader_new, self._reader_socket = sock is not self._reader_socket, sock
        elif client is self._client:
            self._noted(conn)
            if not fresh and self._epoch != self._appending_epoch:
                pool.release(conn)
                raise Reconnected(f"{self.describe()}: {what}: reconnected to the server since the last check "
                                  f"(it may have restarted without acknowledged entries)")
        try:
            conn.send_packed_command([data])
            out = []
            for _ in range(answers):
                try:
                    out.append(conn.read_response())
                except rx.ResponseError as exc:  # (that answer was read whole: go on)
                    out.append(exc)
            return out
        except rx.RedisError as exc:
            conn.disconnect()
            raise self._fail(what, exc) from None
        except BaseException:
            conn.disconnect()  # (an answer half read must not be taken for the next one)
            raise
        finally:
            pool.release(conn)

    def append(self, records: Sequence[Record]) -> list[str]:
        if self._client is None:
            raise EngineError(f"{self.describe()}: not connected")
        if not records:
            return []
        # one round trip, in MULTI so that the entries-added read after the batch numbers it
        key = self.stream.encode()
        tail = b"$6\r\nMAXLEN\r\n$1\r\n~\r\n" + _bulk(str(self.retention).encode()) + b"$1\r\n*\r\n"
        head = b"*18\r\n$4\r\nXADD\r\n" + _bulk(key) + tail
        head_previous = b"*20\r\n$4\r\nXADD\r\n" + _bulk(key) + tail
        parts = [_command(b"MULTI")]
        for r in records:
            parts += (head_previous if r.previous else head, b"$1\r\no\r\n", _bulk(r.origin.encode()),
                      b"$1\r\ng\r\n", _bulk(b"%d" % r.origin_generation),
                      b"$1\r\nc\r\n", _bulk(r.channel.encode()), b"$1\r\nt\r\n", _bulk(r.type.encode()),
                      b"$1\r\np\r\n", _bulk(r.payload.encode()), b"$2\r\nts\r\n", _bulk(b"%d" % r.timestamp_msec))
            if r.previous:
                parts += (b"$2\r\npv\r\n", _bulk(b"%d" % r.previous))
        parts += (_command(b"XINFO", b"STREAM", key), _command(b"EXEC"))
        answers = self._exchange(self._client, b"".join(parts), len(records) + 3, "XADD", fresh=False)
        answer = answers[-1]
        for item in [*answers, *(answer if isinstance(answer, list) else ())]:
            if isinstance(item, Exception):
                raise self._fail("XADD", item)
        if not isinstance(answer, list):  # (None: the transaction was aborted)
            raise EngineError(f"{self.describe()}: XADD: the transaction was not run")
        *ids, info = answer
        last = _flat(info)[b"entries-added"]
        return [_position(entry_id, last - len(ids) + 1 + i) for i, entry_id in enumerate(ids)]

    def _info(self, client: redis.Redis) -> dict | None:
        try:
            return client.xinfo_stream(self.stream)
        except rx.ResponseError as exc:
            if "no such key" in str(exc).lower():
                return None
            raise self._fail("XINFO STREAM", exc) from None
        except rx.RedisError as exc:
            raise self._fail("XINFO STREAM", exc) from None

    def newest(self) -> str | None:
        if self._client is None:
            raise EngineError(f"{self.describe()}: not connected")
        info = self._info(self._client)
        return None if info is None else _position(info["last-generated-id"], info["entries-added"])

    def read(self, cursor: str | None, *, block: float, limit: int = 512, skip_origin: str | None = None) -> Batch:
        if self._client is None:
            raise EngineError(f"{self.describe()}: not connected")
        if cursor is None:  # from now on: the newest entry is where we are
            cursor = self.newest() or self.beginning
        last_id, number = _parse(cursor)
        reader = self._reader_for(block)
        key = self.stream.encode()
        data = _command(b"XINFO", b"STREAM", key) + _command(
            b"XREAD", b"COUNT", b"%d" % limit, b"BLOCK", b"%d" % max(int(block * 1000), 1), b"STREAMS", key,
            last_id.encode() if isinstance(last_id, str) else last_id)
        # a cursor this engine did not just give: does the stream still hold its entry? (also
        # asked after a read on a connection made anew: Redis may have restarted meanwhile)
        check = bool(number) and cursor != self._given
        xrange = _command(b"XRANGE", key, last_id.encode(), last_id.encode())
        try:
            held, info, answer = ([None] if not check else []) + self._exchange(
                reader, xrange + data if check else data, 2 + check, "XREAD")
            if bool(number) and not check and self._reader_new:
                check = True
                (held,) = self._exchange(reader, xrange, 1, "XRANGE")
        except EngineError:
            self._drop_reader()
            raise
        if isinstance(answer, Exception):
            self._drop_reader()
            raise self._fail("XREAD", answer)
        lost, lost_count, renumber = False, None, None
        if isinstance(info, Exception):
            if "no such key" not in str(info).lower():
                raise self._fail("XINFO STREAM", info)
            if number:  # the stream is gone while we had read into it (restarted without its data)
                lost, number, last_id = True, 0, "0-0"
        else:
            info = {k.decode(): v for k, v in _flat(info).items()}
            # entries are numbered 1, 2, ... in the order added (entries-added counts them; this
            # stream is only trimmed from its head): the head's number is added - length + 1
            first = info["entries-added"] - info["length"] + 1
            if number is not None and first > number + 1:
                lost, lost_count = True, first - number - 1
                number = first - 1
            elif number is not None and (info["entries-added"] < number or (check and not held and first <= number)):
                # the stream no longer holds what we read last: restarted without entries it had
                # acknowledged (an append-only file fsynced every second, a failover), or a younger
                # stream of the same name. What this reader had not read of what was lost is
                # unknown (their origins append again what they still hold); what came since has
                # later ids (XADD * takes the clock, past the lost ones): read on from the cursor,
                # numbered again once the reader reaches the stream's newest entry
                lost, number = True, None
            if number is None:  # numbered again at the stream's newest entry (at XINFO's time)
                newest = _id(info["last-generated-id"])
                if newest == _id(last_id):
                    number = info["entries-added"]
                else:
                    renumber = (newest, info["entries-added"])
        entries = []
        skip = skip_origin.encode() if skip_origin is not None else None
        for _, items in (answer.items() if isinstance(answer, dict) else answer or ()):
            for position, fields in items:
                if number is not None:
                    number += 1
                elif renumber is not None and _id(position) == renumber[0]:
                    number = renumber[1]
                last_id = position
                if fields[1:2] == [skip] and fields[0] == b"o":
                    continue  # the caller's own: skipped unparsed
                record = _record(fields)
                if record is None:
                    continue  # not one of ours (another writer on this key): skip it
                entries.append(Entry(_position(position, number), record))
        self._given = _position(last_id, number)
        return Batch(entries, self._given, lost, lost_count)



    def _kv_key(self, key: str) -> str:
        return f"{{{self.stream}}}:kv:{key}"

    def kv_get(self, key: str) -> tuple[str | None, int]:
        check_kv(key)
        if self._client is None:
            raise EngineError(f"{self.describe()}: not connected")
        try:
            value, revision = self._client.hmget(self._kv_key(key), [b"v", b"r"])
        except rx.RedisError as exc:
            raise self._fail("HMGET", exc) from None
        if revision is None:
            return None, 0
        return (value or b"").decode(), int(revision)

    def kv_put(self, key: str, value: str, *, revision: int) -> int:
        check_kv(key, value, revision)
        if self._client is None:
            raise EngineError(f"{self.describe()}: not connected")
        if self._cas is None:
            self._cas = self._client.register_script(_CAS)
        try:
            stored, now = self._cas(keys=[self._kv_key(key)], args=[value.encode(), revision])
        except rx.RedisError as exc:
            raise self._fail("kv put", exc) from None
        if not stored:
            raise Conflict(f"{self.describe()}: key {key!r} is at revision {now}, not {revision}")
        return int(now)

    @staticmethod
    def _closed(client: redis.Redis | None) -> None:
        if client is not None:
            try:
                client.close()
            except Exception:
                pass

    def _drop_reader(self) -> None:
        self._closed(self._reader)
        self._reader = None

    def close(self) -> None:
        self._drop_reader()
        self._closed(self._client)
        self._client = None
        self._cas = None


__all__ = ["RedisEngine", "redact_url"]
