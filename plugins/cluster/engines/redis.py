"""Redis Streams: one stream (a key) per cluster.

- append: ``XADD stream MAXLEN ~ retention * o ORIGIN g GEN c CHANNEL t TYPE p PAYLOAD ts MS``,
  every record of a batch in one pipeline (one round trip);
- read: ``XREAD BLOCK ms COUNT n STREAMS stream cursor`` (the server answers as soon as an entry
  arrives: a push, no polling), on a connection of its own whose socket timeout outlasts the
  block;
- loss: Redis 7's ``XINFO STREAM`` has ``max-deleted-entry-id``: when it is past the cursor, an
  entry after the cursor was trimmed before it was read (this stream is only ever trimmed, never
  XDEL'd). Asked in the same pipeline as the XREAD, before it. A stream that vanished (the
  engine restarted without persistence, ``FLUSHALL``) while the cursor pointed into it counts
  as a loss of unknown size.
"""

from __future__ import annotations

from typing import Sequence
from urllib.parse import urlsplit

import redis
from redis import exceptions as rx

from ..engine import Batch, Engine, EngineError, Entry, Record, redact_url

_FIELDS = (b"o", b"g", b"c", b"t", b"p", b"ts")


def _id(value: bytes | str) -> tuple[int, int]:
    text = value.decode() if isinstance(value, bytes) else value
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


class RedisEngine(Engine):
    schemes = ("redis", "rediss")

    def __init__(self, url, stream, *, retention, password=None, timeout=2.0):
        super().__init__(url, stream, retention=retention, password=password, timeout=timeout)
        self._client: redis.Redis | None = None
        self._reader: redis.Redis | None = None

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
        return redis.Redis.from_url(self.url, password=self.password, socket_timeout=socket_timeout,
                                    socket_connect_timeout=self.timeout, decode_responses=False,
                                    retry_on_timeout=False)

    def _fail(self, what: str, exc: Exception) -> EngineError:
        reason = str(exc).replace(self.url, self.describe()) or type(exc).__name__
        return EngineError(f"{self.describe()}: {what}: {reason}")

    def connect(self) -> None:
        self.close()
        try:
            self._client = self._make(self.timeout)
            self._client.ping()
        except rx.RedisError as exc:
            self.close()
            raise self._fail("connect", exc) from None

    def _reader_for(self, block: float) -> redis.Redis:
        if self._reader is None:
            self._reader = self._make(block + self.timeout)
        return self._reader

    def append(self, records: Sequence[Record]) -> list[str]:
        if self._client is None:
            raise EngineError(f"{self.describe()}: not connected")
        if not records:
            return []
        pipe = self._client.pipeline(transaction=False)
        for r in records:
            pipe.xadd(self.stream, {b"o": r.origin, b"g": r.origin_generation, b"c": r.channel, b"t": r.type,
                                    b"p": r.payload, b"ts": r.timestamp_msec},
                      maxlen=self.retention, approximate=True)
        try:
            ids = pipe.execute()
        except rx.RedisError as exc:
            raise self._fail("XADD", exc) from None
        return [i.decode() for i in ids]

    def newest(self) -> str | None:
        if self._client is None:
            raise EngineError(f"{self.describe()}: not connected")
        try:
            last = self._client.xrevrange(self.stream, count=1)
        except rx.RedisError as exc:
            raise self._fail("XREVRANGE", exc) from None
        return last[0][0].decode() if last else None

    def read(self, cursor: str | None, *, block: float, limit: int = 512) -> Batch:
        if self._client is None:
            raise EngineError(f"{self.describe()}: not connected")
        if cursor is None:  # from now on: the newest entry's id is where we are
            cursor = self.newest() or "0-0"
        reader = self._reader_for(block)
        pipe = reader.pipeline(transaction=False)
        pipe.xinfo_stream(self.stream)
        pipe.xread({self.stream: cursor}, count=limit, block=max(int(block * 1000), 1))
        try:
            info, answer = pipe.execute(raise_on_error=False)
        except rx.RedisError as exc:
            self._drop_reader()
            raise self._fail("XREAD", exc) from None
        if isinstance(answer, Exception):
            self._drop_reader()
            raise self._fail("XREAD", answer)
        lost, lost_count = False, None
        if isinstance(info, Exception):
            if "no such key" not in str(info).lower():
                raise self._fail("XINFO STREAM", info)
            lost = _id(cursor) > (0, 0)  # the stream is gone while we had read into it
        else:
            deleted = info.get("max-deleted-entry-id") or b"0-0"
            lost = _id(deleted) > _id(cursor)  # how many: Redis keeps no count of that
        entries = []
        for _, items in answer or ():
            for position, fields in items:
                try:
                    record = Record(fields[b"o"].decode(), int(fields[b"g"]), fields[b"c"].decode(),
                                    fields[b"t"].decode(), fields[b"p"].decode(), int(fields[b"ts"]))
                except (KeyError, ValueError, UnicodeDecodeError):
                    continue  # not one of ours (another writer on this key): skip it
                entries.append(Entry(position.decode(), record))
        if lost and not entries and not isinstance(info, Exception):
            # move past what was lost, so that the next read does not report it again
            cursor = (info.get("max-deleted-entry-id") or b"0-0").decode()
        elif lost and not entries:
            cursor = "0-0"
        return Batch(entries, entries[-1].position if entries else cursor, lost, lost_count)

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


__all__ = ["RedisEngine", "redact_url"]
