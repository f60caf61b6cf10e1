"""The KV-event wire format vLLM publishes on ZMQ (and SGLang, which copied it), decoded without
either engine's classes, in every encoding they have used.

A message is (topic, 8-byte big-endian sequence number, msgpack payload); the payload is a batch
`[timestamp, events, data_parallel_rank]` (or the same as a map). Each event is a tagged struct:
- array form (vLLM before its PR #42892, SGLang <= 0.5.9): `["BlockStored", block_hashes,
  parent_block_hash, token_ids, block_size, lora_id, ...]`, `["BlockRemoved", block_hashes, ...]`,
  `["AllBlocksCleared"]`;
- map form (vLLM since, SGLang 0.5.23): `{"type": "BlockStored", "block_hashes": [...], ...}`.
Block hashes are ints or bytes (vLLM's `VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES`); bytes become their
low 64 bits read big-endian, as vLLM's own int conversion does, so both settings give one value.
Fields a version adds are ignored; an event kind we do not know is skipped (counted by the caller).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dynamo.llm.protocol import KvEvent, KvEventKind

_U64 = (1 << 64) - 1
# array-form field order after the tag (vllm/distributed/kv_events.py, array_like=True)
_STORED_FIELDS = ("block_hashes", "parent_block_hash", "token_ids", "block_size")
_REMOVED_FIELDS = ("block_hashes",)


class WireError(ValueError):
    """A payload that is not a KV-event batch."""


@dataclass
class DecodedBatch:
    events: list[KvEvent]
    data_parallel_rank: int
    skipped: int  # events of a kind (or shape) this decoder does not know


def block_hash_to_u64(block_hash: bytes | int) -> int:
    if isinstance(block_hash, (bytes, bytearray)):
        return int.from_bytes(block_hash, "big") & _U64
    if isinstance(block_hash, bool) or not isinstance(block_hash, int):
        raise WireError(f"a block hash must be an int or bytes, got {type(block_hash).__name__}")
    return block_hash & _U64


def _fields(raw: Any) -> tuple[str, Mapping[str, Any]] | None:
    """(tag, fields) of one event in either form; None if it has neither shape."""
    if isinstance(raw, Mapping):
        tag = raw.get("type")
        return (tag, raw) if isinstance(tag, str) else None
    if isinstance(raw, Sequence) and not isinstance(raw, (str, bytes)) and raw and isinstance(raw[0], str):
        tag, values = raw[0], raw[1:]
        names = _STORED_FIELDS if tag == "BlockStored" else _REMOVED_FIELDS if tag == "BlockRemoved" else ()
        return tag, dict(zip(names, values))
    return None


def decode_event(raw: Any) -> KvEvent | None:
    """One event as our KvEvent; None for a kind a router does not track."""
    parsed = _fields(raw)
    if parsed is None:
        raise WireError(f"not a KV event: {raw!r:.80}")
    tag, f = parsed
    if tag == "BlockStored":
        parent = f.get("parent_block_hash")
        tokens = f.get("token_ids") or []
        if not isinstance(tokens, Sequence) or not all(isinstance(t, int) for t in tokens):
            raise WireError("BlockStored.token_ids must be a list of token ids")
        return KvEvent(kind=KvEventKind.STORED,
                       block_hashes=[block_hash_to_u64(h) for h in f.get("block_hashes") or []],
                       parent_hash=None if parent is None else block_hash_to_u64(parent),
                       token_ids=list(tokens), block_size=int(f.get("block_size") or 0))
    if tag == "BlockRemoved":
        return KvEvent(kind=KvEventKind.REMOVED,
                       block_hashes=[block_hash_to_u64(h) for h in f.get("block_hashes") or []])
    if tag == "AllBlocksCleared":
        return KvEvent(kind=KvEventKind.CLEARED)
    return None


def decode_batch(payload: bytes) -> DecodedBatch:
    """A msgpack KV-event batch (array or map form) as our KvEvents."""
    import msgspec  # vLLM's and SGLang's own dependency: only their adapters decode this format

    try:
        raw = msgspec.msgpack.decode(payload)
    except msgspec.DecodeError as exc:
        raise WireError(f"not msgpack: {exc}") from None
    if isinstance(raw, Mapping):
        events_raw, rank = raw.get("events"), raw.get("data_parallel_rank")
    elif isinstance(raw, list) and len(raw) >= 2:
        events_raw, rank = raw[1], (raw[2] if len(raw) > 2 else None)
    else:
        raise WireError("a KV-event batch is [timestamp, events, data_parallel_rank]")
    if not isinstance(events_raw, list):
        raise WireError("the batch's events must be a list")
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int)):
        raise WireError(f"the batch's data_parallel_rank must be an int, got {rank!r:.40}")
    events: list[KvEvent] = []
    skipped = 0
    for item in events_raw:
        try:
            event = decode_event(item)
        except (WireError, TypeError, ValueError):
            event = None
        if event is None:
            skipped += 1
        else:
            events.append(event)
    return DecodedBatch(events, rank or 0, skipped)
