"""The invalidation events on channel ``cache.invalidate`` and what a worker does on each.

| type | payload |
|---|---|
| ``purged`` | ``key:K`` (one key) or ``tag:T`` (one tag) |
| ``purge_batch`` | compact JSON: ``{"keys":[..]}``, ``{"tags":[..]}`` or ``{"prefix":"P"}``; when that is over 512 bytes, it is stored in the shared level of the keys zone and the event says ``{"batch":"ID","count":N,"zone":"Z"}`` |
| ``refreshed`` | ``key:K``: a store replaced a copy some worker may still hold (a ``proxy_cache_bypass`` refresh); a key too long for that: the stored batch's ``{"batch":..}`` |
| ``recreated`` | ``ZONE``: this host made the cache's databases again, empty (removed while running): its workers drop their memory levels; other hosts ignore it |

Every worker (the publishing one included) drops the matching entries from its memory levels;
a payload it cannot read, a batch no longer stored, or a ``Gap`` drops whole memory levels:
never a stale hit, at worst a few shared-level reads.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field

from ngxsim import compact_json

CHANNEL = "cache.invalidate"
PURGED, PURGE_BATCH, REFRESHED, RECREATED = "purged", "purge_batch", "refreshed", "recreated"
PAYLOAD_MAX = 512


@dataclass(frozen=True)
class Invalidation:
    """What to drop: keys, a key prefix, or tags (exactly one is set); or everything."""

    keys: tuple[str, ...] = ()
    prefix: str | None = None
    tags: tuple[str, ...] = ()
    everything: bool = False


@dataclass
class Message:
    """An event to publish: its type and payload, and a batch to store first (id, JSON text)."""

    type: str
    payload: str
    batch: tuple[str, str] | None = field(default=None)


def message(zone: str, inv: Invalidation, refreshed: bool = False) -> Message:
    """The event announcing ``inv`` (purged by the keys zone ``zone``; with ``refreshed``, one
    key stored again over a copy that workers may still hold)."""
    if inv.prefix is None and len(inv.keys) + len(inv.tags) == 1:
        payload = f"key:{inv.keys[0]}" if inv.keys else f"tag:{inv.tags[0]}"
        if len(payload.encode()) <= PAYLOAD_MAX:
            return Message(REFRESHED if refreshed else PURGED, payload)
    if inv.prefix is not None:
        body, count = {"prefix": inv.prefix}, 1
    elif inv.keys:
        body, count = {"keys": list(inv.keys)}, len(inv.keys)
    else:
        body, count = {"tags": list(inv.tags)}, len(inv.tags)
    text = compact_json(body)
    kind = REFRESHED if refreshed else PURGE_BATCH
    if len(text.encode()) <= PAYLOAD_MAX:
        return Message(kind, text)
    batch_id = secrets.token_hex(8)
    return Message(kind, compact_json({"batch": batch_id, "count": count, "zone": zone}), (batch_id, text))


def messages(zone: str, inv: Invalidation, refreshed: bool = False, inline: bool = False) -> list[Message]:
    """The events announcing ``inv``. With ``inline`` (the channel crosses hosts, where a batch
    stored on this host's disk cannot be read), keys or tags too many for one payload go in
    several events that each carry theirs; only one key or tag, or a prefix, too long for a
    payload is still stored as a batch (another host then drops everything it holds)."""
    first = message(zone, inv, refreshed)
    if first.batch is None or not inline or inv.prefix is not None:
        return [first]
    name, items = ("keys", inv.keys) if inv.keys else ("tags", inv.tags)
    out, chunk = [], []
    for item in items:
        if chunk and len(compact_json({name: chunk + [item]}).encode()) > PAYLOAD_MAX:
            out.append(message(zone, Invalidation(**{name: tuple(chunk)}), refreshed))
            chunk = []
        chunk.append(item)
    out.append(message(zone, Invalidation(**{name: tuple(chunk)}), refreshed))
    return out


@dataclass(frozen=True)
class BatchRef:
    zone: str
    id: str


def read(event_type: str, payload: str) -> Invalidation | BatchRef | None:
    """The invalidation an event announces; ``Invalidation(everything=True)`` when the payload
    is not one this module writes (drop all rather than keep something stale); None for a type
    this module does not publish (another publisher's business on the channel)."""
    if event_type not in (PURGED, PURGE_BATCH, REFRESHED, RECREATED):
        return None
    if event_type == RECREATED:
        return Invalidation(everything=True)
    if event_type == PURGED or (event_type == REFRESHED and payload.startswith("key:")):
        kind, colon, value = payload.partition(":")
        if colon and value and kind == "key":
            return Invalidation(keys=(value,))
        if colon and value and kind == "tag":
            return Invalidation(tags=(value,))
        return Invalidation(everything=True)
    try:
        body = json.loads(payload)
    except ValueError:
        return Invalidation(everything=True)
    return parse_body(body) if not _is_batch_ref(body) else BatchRef(body["zone"], body["batch"])


def _is_batch_ref(body) -> bool:
    return isinstance(body, dict) and isinstance(body.get("batch"), str) and isinstance(body.get("zone"), str)


def parse_body(body) -> Invalidation:
    """A stored or inline batch body -> what it invalidates (everything when unreadable)."""
    if isinstance(body, dict) and len(body) == 1:
        (name, value), = body.items()
        if name == "prefix" and isinstance(value, str):
            return Invalidation(prefix=value)
        if name in ("keys", "tags") and isinstance(value, list) and all(isinstance(v, str) for v in value):
            return Invalidation(**{name: tuple(value)})
    return Invalidation(everything=True)
