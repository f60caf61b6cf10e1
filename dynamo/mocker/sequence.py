"""One request as the simulator sees it: its tokens, its KV progress and its output sink."""

from __future__ import annotations

import asyncio
import enum
from dataclasses import dataclass, field

from dynamo.llm.protocol import DisaggregatedParams, FinishReason, TokenLogprob
from dynamo.mocker.tokens import hash_tokens


class SeqState(enum.Enum):
    NEW = "new"  # created, not yet handed to the scheduler
    TRANSFERRING = "transferring"  # decode side: waiting for the simulated KV transfer
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


def chained_block_hash(parent: int | None, block_tokens: list[int]) -> int:
    """Hash of one full KV block: its tokens chained with the parent block's hash (stable across
    processes, so a router or another worker computes the same value)."""
    prefix = b"root" if parent is None else parent.to_bytes(8, "little")
    return hash_tokens(block_tokens, prefix)


def block_hashes(token_ids: list[int], block_size: int) -> list[int]:
    """Hashes of every full block of `token_ids`."""
    out: list[int] = []
    parent: int | None = None
    for start in range(0, len(token_ids) - block_size + 1, block_size):
        parent = chained_block_hash(parent, token_ids[start:start + block_size])
        out.append(parent)
    return out


@dataclass
class OutputSink:
    """Tokens produced since the consumer last looked, plus a wake-up; one per request."""

    tokens: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    event: asyncio.Event = field(default_factory=asyncio.Event)
    finish_reason: FinishReason | None = None
    error: str | None = None
    disaggregated_params: DisaggregatedParams | None = None


@dataclass(eq=False)
class Sequence:
    request_id: str
    prompt_len: int
    tokens: list[int]  # prompt + output so far
    seed: int  # per-request token seed
    max_tokens: int  # total output tokens allowed (includes tokens a prefill worker produced)
    min_tokens: int
    stop_token_ids: frozenset[int]
    ignore_eos: bool
    logprobs: int | None
    block_size: int
    sink: OutputSink = field(default_factory=OutputSink)
    state: SeqState = SeqState.NEW
    num_computed: int = 0  # tokens whose KV is in this sequence's blocks
    blocks: list[int] = field(default_factory=list)  # KV block ids, in token order
    num_committed_blocks: int = 0  # leading full blocks already offered to the prefix cache
    remote_kv_tokens: int = 0  # leading tokens whose KV arrives from a prefill worker on admission
    cached_tokens: int | None = None  # prompt tokens found in the cache at first admission
    num_preemptions: int = 0
    # a structured-output request: its whole output, decided up front (the constrained value's
    # token ids, then EOS when the model has one); None: sampled as usual (tokens.py)
    forced: list[int] | None = None
    _hashes: list[int] = field(default_factory=list)

    @property
    def num_output(self) -> int:
        return len(self.tokens) - self.prompt_len

    @property
    def output_ids(self) -> list[int]:
        return self.tokens[self.prompt_len:]

    def block_hash(self, index: int) -> int:
        """Hash of full block `index` (computed lazily and kept: tokens never change once written)."""
        while len(self._hashes) <= index:
            i = len(self._hashes)
            parent = self._hashes[i - 1] if i else None
            bs = self.block_size
            self._hashes.append(chained_block_hash(parent, self.tokens[i * bs:(i + 1) * bs]))
        return self._hashes[index]

    def prompt_block_hashes(self) -> list[int]:
        return [self.block_hash(i) for i in range(self.prompt_len // self.block_size)]
