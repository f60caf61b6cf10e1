"""The mocker's prefill -> decode handoff: what a prefill worker returns, what a decode worker checks.

Payload (JSON object, carried opaquely by the frontend):
  {"version": 1, "block_size": int, "num_tokens": int (prompt length),
   "prompt_hash": int (64-bit hash of the prompt ids), "block_hashes": [int, ...] (full prompt blocks),
   "mocker_seed": int, "kv_bytes": int (what the transfer moves)}
"""

from __future__ import annotations

from typing import Any

from dynamo.llm.protocol import DisaggregatedParams, InvalidRequest
from dynamo.mocker.tokens import hash_tokens

PAYLOAD_VERSION = 1
ENGINE_NAME = "mocker"


def make_params(*, prompt: list[int], block_hashes: list[int], block_size: int, mocker_seed: int,
                kv_bytes_per_token: int, first_token_ids: list[int]) -> DisaggregatedParams:
    payload = {
        "version": PAYLOAD_VERSION,
        "block_size": block_size,
        "num_tokens": len(prompt),
        "prompt_hash": hash_tokens(prompt),
        "block_hashes": block_hashes,
        "mocker_seed": mocker_seed,
        "kv_bytes": len(prompt) * kv_bytes_per_token,
    }
    return DisaggregatedParams(engine=ENGINE_NAME, payload=payload, first_token_ids=list(first_token_ids))


def validate_params(params: DisaggregatedParams, *, prompt: list[int], expected_block_hashes: list[int],
                    block_size: int, mocker_seed: int, vocab_size: int) -> None:
    """Raise InvalidRequest unless `params` is a mocker prefill result for exactly this prompt."""
    if params.engine != ENGINE_NAME:
        raise InvalidRequest(f"disaggregated_params come from a {params.engine!r} prefill worker; this mocker "
                             f"decode worker only accepts 'mocker' ones: pair it with a mocker prefill worker")
    p: Any = params.payload
    if not isinstance(p, dict):
        raise InvalidRequest("disaggregated_params.payload must be a JSON object made by a mocker prefill worker")
    required = {"version": int, "block_size": int, "num_tokens": int, "prompt_hash": int,
                "block_hashes": list, "mocker_seed": int}
    for key, kind in required.items():
        if not isinstance(p.get(key), kind) or isinstance(p.get(key), bool):
            raise InvalidRequest(f"disaggregated_params.payload.{key} is missing or not a {kind.__name__}; "
                                 f"pass the prefill worker's params through unchanged")
    if p["version"] != PAYLOAD_VERSION:
        raise InvalidRequest(f"disaggregated_params.payload.version {p['version']} is not supported "
                             f"(this worker speaks version {PAYLOAD_VERSION}); run matching mocker versions")
    if p["block_size"] != block_size:
        raise InvalidRequest(f"the prefill worker uses --block-size {p['block_size']}, this decode worker "
                             f"{block_size}; start both with the same block size")
    if p["mocker_seed"] != mocker_seed:
        raise InvalidRequest(f"the prefill worker runs --mocker-seed {p['mocker_seed']}, this decode worker "
                             f"{mocker_seed}; start both with the same seed")
    if p["num_tokens"] != len(prompt) or p["prompt_hash"] != hash_tokens(prompt):
        raise InvalidRequest(f"disaggregated_params were made for another prompt ({p['num_tokens']} tokens; "
                             f"this request has {len(prompt)}): send the decode request with the prompt "
                             f"that was prefilled")
    if p["block_hashes"] != expected_block_hashes:
        raise InvalidRequest("disaggregated_params.payload.block_hashes do not match this prompt's KV blocks")
    # first_token_ids are informational (the decode stream starts with its own first token)
    bad = [t for t in params.first_token_ids if not 0 <= t < vocab_size]
    if bad:
        raise InvalidRequest(f"disaggregated_params.first_token_ids {bad} are outside the vocabulary "
                             f"(0..{vocab_size - 1})")
