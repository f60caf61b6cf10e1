"""Continuous batching: which sequences compute how many tokens in the next step.

Policy (like vLLM's v1 scheduler): running sequences first (a decode token each, or the next chunk
of a long prefill), then waiting sequences in arrival order while the step's token budget, the
batch size limit and the KV cache allow. A running sequence that cannot get a block preempts the
newest running sequence (recompute: its blocks are freed and it waits at the front of the queue),
so nothing is dropped; a waiting sequence that does not fit simply waits.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from dynamo.mocker.kv_cache import KvCache
from dynamo.mocker.sequence import SeqState, Sequence


@dataclass
class StepPlan:
    """The batch of one step: (sequence, tokens to compute) plus the work the timing model prices."""

    items: list[tuple[Sequence, int]] = field(default_factory=list)
    prefill_tokens: int = 0
    prefill_token_pairs: int = 0  # sum over prefill chunks of new tokens x context length
    decode_seqs: int = 0
    decode_context_tokens: int = 0

    def add(self, seq: Sequence, n: int) -> None:
        self.items.append((seq, n))
        if n == 1 and len(seq.tokens) > seq.prompt_len:
            self.decode_seqs += 1
            self.decode_context_tokens += seq.num_computed + 1
        else:
            self.prefill_tokens += n
            self.prefill_token_pairs += n * (seq.num_computed + n)


@dataclass
class SchedulerCounters:
    steps: int = 0
    preemptions: int = 0
    admission_waits: int = 0  # steps in which the head of the queue did not fit in the KV cache
    prefix_hit_tokens: int = 0


class Scheduler:
    def __init__(self, cache: KvCache, *, max_num_seqs: int, max_num_batched_tokens: int) -> None:
        self.cache = cache
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.counters = SchedulerCounters()

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def add(self, seq: Sequence) -> None:
        seq.state = SeqState.WAITING
        self.waiting.append(seq)

    def remove(self, seq: Sequence) -> None:
        """Take a sequence out (finished or aborted) and release its blocks."""
        if seq.state is SeqState.RUNNING:
            self.running.remove(seq)
        elif seq.state is SeqState.WAITING:
            self.waiting.remove(seq)
        self.cache.free(seq)
        seq.state = SeqState.FINISHED

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.cache.free(seq)
        seq.num_computed = 0
        seq.remote_kv_tokens = 0  # the transferred KV went with the blocks: recompute locally
        seq.num_preemptions += 1
        seq.state = SeqState.WAITING
        self.waiting.appendleft(seq)
        self.counters.preemptions += 1

    def schedule(self) -> StepPlan:
        plan = StepPlan()
        budget = self.max_num_batched_tokens
        preempted = False
        bs = self.cache.block_size
        running = self.running
        i = 0
        while i < len(running) and budget > 0:
            seq = running[i]
            n = min(len(seq.tokens) - seq.num_computed, budget)
            need = (seq.num_computed + n + bs - 1) // bs - len(seq.blocks)
            if need > 0:  # (hot loop: most decode steps need no new block)
                while need > self.cache.num_free and seq.state is SeqState.RUNNING:
                    victim = running[-1]
                    if victim is seq and len(running) == 1:
                        raise RuntimeError(f"request {seq.request_id} alone needs more KV blocks than the "
                                           f"cache has ({self.cache.num_blocks}); the context length check failed")
                    self._preempt(victim)
                    preempted = True
                if seq.state is not SeqState.RUNNING:
                    break  # it preempted itself: it was the newest
                self.cache.allocate(seq, need)
            plan.add(seq, n)
            budget -= n
            i += 1

        # like vLLM, admit nobody in a step that had to preempt: the cache is under pressure
        while (not preempted and self.waiting and budget > 0
               and len(self.running) < self.max_num_seqs):
            seq = self.waiting[0]
            hit = self.cache.match_prefix(seq)
            start = max(len(hit) * self.cache.block_size, seq.remote_kv_tokens)
            n = min(len(seq.tokens) - start, budget)
            need = self.cache.blocks_for(start + n) - len(hit)
            if not self.cache.can_admit(hit, need):
                self.counters.admission_waits += 1
                break
            self.waiting.popleft()
            self.cache.take_hits(seq, hit)
            self.cache.allocate(seq, need)
            seq.num_computed = start
            if seq.cached_tokens is None:
                seq.cached_tokens = min(len(hit) * self.cache.block_size, seq.prompt_len)
                self.counters.prefix_hit_tokens += seq.cached_tokens
            seq.state = SeqState.RUNNING
            self.running.append(seq)
            plan.add(seq, n)
            budget -= n
        if plan.items:
            self.counters.steps += 1
        return plan

    def complete(self, plan: StepPlan) -> list[Sequence]:
        """Record that the step ran; return the sequences whose every token is now computed (each
        gets one new token). Sequences aborted while the step ran are skipped."""
        ready: list[Sequence] = []
        block_size = self.cache.block_size
        running = SeqState.RUNNING
        for seq, n in plan.items:
            if seq.state is not running:
                continue
            seq.num_computed += n
            if seq.num_computed // block_size > seq.num_committed_blocks:  # a block filled up
                self.cache.commit(seq)
            if seq.num_computed == len(seq.tokens):
                ready.append(seq)
        return ready
