"""The contract between the cluster relay and an engine (Redis Streams, NATS JetStream).

One small, synchronous contract; one module per engine under ``engines/``, each importing its
engine's client (an optional extra: ``pip install 'ngxsim[cluster]'``) only inside that module,
so a single host needs none of them. The relay (one worker per instance, under the instance-wide
lease) is the only caller of the stream's methods, and ``ClusterStore`` (``kv.py``, for
instance-wide jobs and services) the only caller of the key-value store's (``kv_get``,
``kv_put``): requests never reach an engine.

Positions are opaque strings the engine chose (a Redis stream id ``1712345678901-0``, a NATS
stream sequence ``"42"``). The relay stores the last position it read, durably, and hands it
back to ``read``; only the engine compares positions.

Every method may raise ``EngineError`` (the engine is unreachable, timed out, refused the
credentials, ...): the relay then closes the engine, waits (backoff with jitter) and connects
again. An engine never retries forever inside a call: each call is bounded by ``timeout``.
"""

from __future__ import annotations

import ssl
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar, NamedTuple, Sequence


class EngineError(Exception):
    """The engine could not be reached or refused an operation. The message names the engine's
    address (never its credentials) and the reason, in words fit for the error log."""


class Reconnected(EngineError):
    """``append`` wrote nothing: the connection reached the server anew since the caller's last
    ``epoch()`` (see there). Not a failure of the engine: check, call ``epoch()``, append again."""


class Conflict(EngineError):
    """A compare-and-set lost: the key's revision was not the one expected."""


KV_VALUE_MAX = 64 * 1024  # bytes of UTF-8 in one kv value
KV_KEY_MAX = 256          # bytes of UTF-8 in one kv key


def check_kv(key: str, value: str | None = None, revision: int = 0) -> None:
    """ValueError naming what is wrong with a kv call's arguments (the caller's mistake, not the
    engine's: never an EngineError)."""
    if not isinstance(key, str) or not key or len(key.encode()) > KV_KEY_MAX:
        raise ValueError(f"a kv key is a non-empty string of at most {KV_KEY_MAX} bytes of UTF-8, not {key!r:.80}")
    if value is not None:
        if not isinstance(value, str):
            raise ValueError(f"a kv value is a string, not {type(value).__name__}")
        size = len(value.encode())
        if size > KV_VALUE_MAX:
            raise ValueError(f"kv value of key {key!r} is {size} bytes of UTF-8, more than {KV_VALUE_MAX}")
    if not isinstance(revision, int) or isinstance(revision, bool) or revision < 0:
        raise ValueError(f"a kv revision is an integer >= 0, not {revision!r}")


class Record(NamedTuple):
    """One event as it travels between instances."""

    origin: str              # the instance id of the instance that published it
    origin_generation: int   # its generation in the origin's ring
    channel: str
    type: str
    payload: str
    timestamp_msec: int      # when the origin published it
    # the origin generation of the record its origin sent before this one (0: not known, a
    # relay without a past, or a record of an older version): a receiver that last saw an
    # earlier one from that origin knows, exactly, that what lies between never came
    previous: int = 0


class Entry(NamedTuple):
    """One record as the engine holds it."""

    position: str            # the engine's position of this entry (opaque, increasing)
    record: Record


class Batch(NamedTuple):
    """What one ``read`` returned.

    ``lost``: entries after the cursor the caller gave were removed by the engine before this
    read (trimmed by retention, the stream recreated, ...). ``lost_count`` is how many, where the
    engine knows it (else None). ``cursor`` is the position to give the next read: the last
    entry's position, or the given cursor (moved past what was lost) when there were none (an
    engine may add to it what checks that entry: ``Engine.position_of``).
    """

    entries: list[Entry]
    cursor: str | None
    lost: bool = False
    lost_count: int | None = None


@dataclass(frozen=True)
class Tls:
    """The files of a TLS connection to an engine (``rediss://``, ``tls://``): ``ca`` the
    certificates the engine's own is verified against (None: the system's), ``cert`` and ``key``
    this instance's certificate, for an engine that asks clients for one (mutual TLS). The
    engine's name is always checked against its certificate. The files are read at each connect:
    renewed certificates are used from the next reconnect on."""

    ca: str | None = None
    cert: str | None = None
    key: str | None = None

    def context(self) -> ssl.SSLContext:
        """A client context of these files (ssl.SSLError, OSError: a file that cannot be used)."""
        context = ssl.create_default_context(cafile=self.ca)
        if self.cert is not None:
            context.load_cert_chain(self.cert, self.key)
        return context


class Engine(ABC):
    """One connection to one stream of one engine.

    ``url``: the engine's address as configured (``redis://host:port/db``, ``rediss://...``,
    ``nats://host:port[,nats://host2:port...]``), ``stream``: the stream (Redis key, JetStream
    stream name) shared by one cluster and no other, ``retention``: how many entries the engine
    keeps at least (Redis ``MAXLEN ~``, JetStream ``max_msgs``), ``password``: read from the
    credentials file the config names, or None, ``timeout``: the bound of each call in seconds,
    ``tls``: the TLS files of a ``tls_schemes`` URL (None there: ``Tls()``, the system's CAs).
    """

    schemes: ClassVar[tuple[str, ...]] = ()
    tls_schemes: ClassVar[tuple[str, ...]] = ()  # the schemes whose connections are TLS
    # the position before the stream's first entry: ``read(beginning)`` gives everything the
    # stream holds (what a reader with no stored position starts from)
    beginning: ClassVar[str] = ""

    def __init__(self, url: str, stream: str, *, retention: int, password: str | None = None,
                 timeout: float = 2.0, tls: Tls | None = None):
        self.url = url
        self.stream = stream
        self.retention = retention
        self.password = password
        self.timeout = timeout
        scheme = url.partition("://")[0].lower()
        self.tls = (tls or Tls()) if scheme in self.tls_schemes else None

    @classmethod
    def check_url(cls, url: str) -> str | None:
        """None when ``url`` is one this engine can use, else what is wrong with it (for
        ``ngxsim -t``: no connection is made)."""
        return None

    @classmethod
    def is_position(cls, position: str) -> bool:
        """Is ``position`` one this engine hands out (not another engine's, kept in a state
        folder from before the bridge moved)?"""
        return bool(position)

    @classmethod
    def position_of(cls, cursor: str) -> str:
        """The position of the entry a cursor (``Batch.cursor``) is after: the cursor itself, or,
        for an engine whose cursors also carry what tells it at the next read whether the stream
        still holds that entry (NATS: ``SEQ@MICROS``, the entry's stored time), the position part."""
        return cursor

    @abstractmethod
    def connect(self) -> None:
        """Connect, authenticate and make sure the stream exists (created with ``retention``
        when it does not). Raises EngineError."""

    @abstractmethod
    def append(self, records: Sequence[Record]) -> list[str]:
        """Append ``records`` in order; return their positions. Returns only once the engine has
        acknowledged every one (for JetStream: stored by the stream's replicas)."""

    @abstractmethod
    def read(self, cursor: str | None, *, block: float, limit: int = 512, skip_origin: str | None = None) -> Batch:
        """Entries after ``cursor`` in the engine's order, at most ``limit``, waiting at most
        ``block`` seconds for the first one (a push wait: the call returns when an entry
        arrives, never by polling). ``cursor`` None: only entries appended from now on, and
        the batch's ``cursor`` is a position all the same (where "now" is, ``beginning`` on an
        empty stream), one the caller can store; ``cursor`` ``beginning``: everything the stream
        holds. ``skip_origin``: entries of that origin (the caller's own, which it would drop)
        may be left out of ``entries`` unparsed; the ``cursor`` moves past them all the same."""

    @abstractmethod
    def record_at(self, position: str) -> Record | None:
        """The record the stream holds at ``position`` (one ``append`` returned), or None when it
        holds none there any more (trimmed, or lost: an engine restarted without entries it had
        acknowledged but not yet stored durably, and may since have put another one there)."""

    def epoch(self) -> int:
        """How many times the connection reached the server anew since ``connect`` (a client that
        reconnects by itself). After a new one the server may have restarted and lost
        acknowledged entries, so ``append`` raises Reconnected, writing nothing, once the
        connection is newer than the last ``epoch()`` call: the caller first checks with
        ``record_at`` what it appended before (and appends again what was lost, ahead of
        anything new), then calls ``epoch()``. A caller that never does gets Reconnected at
        each append after a reconnect."""
        return 0

    @abstractmethod
    def newest(self) -> str | None:
        """The position of the newest entry the stream holds (None: empty), for the lag."""

    @abstractmethod
    def kv_get(self, key: str) -> tuple[str | None, int]:
        """The value stored under ``key`` in this cluster's store (one per stream: two clusters on
        one engine stay apart) and its revision; (None, 0) when absent."""

    @abstractmethod
    def kv_put(self, key: str, value: str, *, revision: int) -> int:
        """Store ``value`` (at most 64 KiB of UTF-8) under ``key`` if its revision is still
        ``revision`` (0: only if absent); return the new revision (> revision). Raises Conflict
        when another write came first."""

    @abstractmethod
    def close(self) -> None:
        """Drop the connection; never raises. The engine may be connected again."""

    def tls_hint(self, text: str) -> str:
        """``text`` (why a call failed) with what to check when the engine refused this
        instance's TLS client certificate, or got none: the TLS alert alone names neither."""
        if self.tls is None:
            return text
        low = text.lower()
        if any(alert in low for alert in _CERT_REFUSED):
            if self.tls.cert is None:
                return f"{text} (the engine asks for a client certificate: give tls_cert= and tls_key=)"
            return f"{text} (the engine refused tls_cert={self.tls.cert}: is it signed by a CA the engine trusts?)"
        if self.tls.cert is None and any(cut in low for cut in _CUT):
            # TLS 1.3: the server checks the client's certificate after the handshake, so its
            # alert may be lost to the connection it closes
            return f"{text} (if the engine asks for a client certificate: give tls_cert= and tls_key=)"
        return text

    def describe(self) -> str:
        """The engine's address for logs and the API, without credentials."""
        return redact_url(self.url)


# TLS alerts of a server that wanted a client certificate and got none, or one it does not trust
_CERT_REFUSED = ("alert_bad_certificate", "alert_certificate_required", "alert_unknown_ca", "certificate required")
# a TLS connection the server closed right after the handshake
_CUT = ("eof occurred in violation of protocol", "broken pipe", "connection reset", "unexpected eof")


def redact_url(url: str) -> str:
    """``url`` with any user:password replaced by ``***``."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    parts = []
    for one in rest.split(","):
        cred, at, host = one.rpartition("@")
        parts.append(f"***@{host}" if at else one)
    return f"{scheme}://{','.join(parts)}"
