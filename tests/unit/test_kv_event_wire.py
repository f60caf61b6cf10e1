"""vLLM's (and SGLang's) ZMQ KV-event encodings, decoded without the engines' classes."""

from __future__ import annotations

import msgspec
import pytest

from dynamo.llm.kv_event_wire import WireError, block_hash_to_u64, decode_batch
from dynamo.llm.protocol import KvEventKind

U64 = 2**64 - 1
BYTES_HASH = bytes(range(32))


def encode(obj: object) -> bytes:
    return msgspec.msgpack.encode(obj)


def test_array_form_with_int_hashes() -> None:  # vLLM before PR #42892, SGLang <= 0.5.9
    batch = [1.5, [["BlockStored", [2**64 - 1, 7], None, [1, 2, 3, 4], 2, None, "GPU"],
                   ["BlockRemoved", [7], "GPU"], ["AllBlocksCleared"]], 0]
    decoded = decode_batch(encode(batch))
    stored, removed, cleared = decoded.events
    assert (stored.kind, stored.block_hashes, stored.parent_hash, stored.token_ids, stored.block_size) == (
        KvEventKind.STORED, [2**64 - 1, 7], None, [1, 2, 3, 4], 2)
    assert (removed.kind, removed.block_hashes, cleared.kind) == (KvEventKind.REMOVED, [7], KvEventKind.CLEARED)


def test_map_form_with_bytes_hashes_and_unknown_fields_and_kinds() -> None:  # vLLM since #42892, SGLang 0.5.23
    batch = [2.0, [{"type": "BlockStored", "block_hashes": [BYTES_HASH], "parent_block_hash": b"\x01" * 8,
                    "token_ids": [9, 9], "block_size": 2, "lora_name": None, "group_idx": 0, "new_field": 1},
                   {"type": "BlockPromoted", "block_hashes": [1]}], 3]
    decoded = decode_batch(encode(batch))
    assert decoded.data_parallel_rank == 3 and decoded.skipped == 1
    [stored] = decoded.events
    assert stored.block_hashes == [int.from_bytes(BYTES_HASH, "big") & U64]
    assert stored.parent_hash == int.from_bytes(b"\x01" * 8, "big")
    assert block_hash_to_u64(BYTES_HASH) == stored.block_hashes[0]


@pytest.mark.parametrize("payload", [b"\xc1garbage", encode("nope"), encode([1.0, "not a list", 0])])
def test_garbage_batches_are_refused(payload: bytes) -> None:
    with pytest.raises(WireError):
        decode_batch(payload)


def test_garbage_events_are_skipped_not_fatal() -> None:
    batch = [0.0, [["BlockStored", ["not-a-hash"], None, [1], 1], 42, {"no": "type"},
                   ["BlockRemoved", [1]]], None]
    decoded = decode_batch(encode(batch))
    assert decoded.skipped == 3 and [e.kind for e in decoded.events] == [KvEventKind.REMOVED]
