"""The simulated KV cache: fixed blocks, reference counts, prefix caching with LRU eviction.

A full block is identified by `chained_block_hash` of its tokens and its parent's hash. Blocks of
finished (or preempted) requests keep their hash while unreferenced, so a later request with the
same prefix reuses them; they are evicted least recently freed first when space is needed. Every
hash that enters or leaves the cache is published as a KV event (STORED / REMOVED / CLEARED).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from dynamo.llm.protocol import KvEvent, KvEventKind
from dynamo.mocker.sequence import Sequence


class _Block:
    __slots__ = ("ref_cnt", "hash")

    def __init__(self) -> None:
        self.ref_cnt = 0
        self.hash: int | None = None


class KvCache:
    def __init__(self, num_blocks: int, block_size: int, *, prefix_caching: bool,
                 publish: Callable[[KvEvent], None]) -> None:
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.prefix_caching = prefix_caching
        self._publish = publish
        self._blocks = [_Block() for _ in range(num_blocks)]
        # unreferenced blocks, eviction order first (least recently freed at the front)
        self._free: OrderedDict[int, None] = OrderedDict((i, None) for i in range(num_blocks))
        self._by_hash: dict[int, int] = {}
        self.hits_tokens = 0  # prompt tokens served from the cache, over the engine's life

    # --- accounting -----------------------------------------------------------------------
    @property
    def num_free(self) -> int:
        """Blocks that can be handed out now (empty or cached-but-unreferenced)."""
        return len(self._free)

    @property
    def num_active(self) -> int:
        return self.num_blocks - len(self._free)

    @property
    def num_cached(self) -> int:
        return len(self._by_hash)

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    # --- prefix lookup ---------------------------------------------------------------------
    def match_prefix(self, seq: Sequence) -> list[int]:
        """Block ids of the longest cached prefix of `seq`, leaving at least one token to compute
        (its logits give the next token)."""
        if not self.prefix_caching:
            return []
        hit: list[int] = []
        for i in range((len(seq.tokens) - 1) // self.block_size):
            block_id = self._by_hash.get(seq.block_hash(i))
            if block_id is None:
                break
            hit.append(block_id)
        return hit

    def can_admit(self, hit: list[int], new_blocks: int) -> bool:
        """Enough room for `new_blocks` after taking the hit blocks (free hits leave the free list)."""
        reclaimed = sum(1 for b in hit if self._blocks[b].ref_cnt == 0)
        return self.num_free - reclaimed >= new_blocks

    # --- allocation ------------------------------------------------------------------------
    def take_hits(self, seq: Sequence, hit: list[int]) -> None:
        for block_id in hit:
            block = self._blocks[block_id]
            if block.ref_cnt == 0:
                del self._free[block_id]
            block.ref_cnt += 1
        seq.blocks.extend(hit)
        seq.num_committed_blocks = len(hit)

    def allocate(self, seq: Sequence, num_blocks: int) -> None:
        """Give `seq` num_blocks fresh blocks, evicting cached ones; the caller checked num_free."""
        if num_blocks > len(self._free):
            raise RuntimeError(f"KV cache over-allocated: want {num_blocks} blocks, {len(self._free)} free")
        evicted: list[int] = []
        for _ in range(num_blocks):
            block_id, _ = self._free.popitem(last=False)
            block = self._blocks[block_id]
            if block.hash is not None:
                evicted.append(block.hash)
                del self._by_hash[block.hash]
                block.hash = None
            block.ref_cnt = 1
            seq.blocks.append(block_id)
        if evicted:
            self._publish(KvEvent(KvEventKind.REMOVED, block_hashes=evicted, block_size=self.block_size))

    def free(self, seq: Sequence) -> None:
        """Drop `seq`'s references; tail blocks first so they are evicted before shared prefixes."""
        for block_id in reversed(seq.blocks):
            block = self._blocks[block_id]
            block.ref_cnt -= 1
            if block.ref_cnt == 0:
                if block.hash is None:
                    # an unhashed block holds nothing reusable: hand it out before cached ones
                    self._free[block_id] = None
                    self._free.move_to_end(block_id, last=False)
                else:
                    self._free[block_id] = None
        seq.blocks.clear()
        seq.num_committed_blocks = 0

    def commit(self, seq: Sequence) -> None:
        """Offer `seq`'s newly filled blocks to the prefix cache and publish them as STORED."""
        full = min(seq.num_computed // self.block_size, len(seq.blocks))
        if not self.prefix_caching or full <= seq.num_committed_blocks:
            seq.num_committed_blocks = max(seq.num_committed_blocks, full)
            return
        first = seq.num_committed_blocks
        stored: list[int] = []
        stored_tokens: list[int] = []
        event_parent: int | None = None
        for i in range(first, full):
            h = seq.block_hash(i)
            block = self._blocks[seq.blocks[i]]
            if block.hash is None and h not in self._by_hash:
                block.hash = h
                self._by_hash[h] = seq.blocks[i]
                if not stored:
                    event_parent = seq.block_hash(i - 1) if i else None
                stored.append(h)
                stored_tokens.extend(seq.tokens[i * self.block_size:(i + 1) * self.block_size])
            elif stored:
                # a gap (someone else already cached this block): close this run of blocks
                self._emit_stored(stored, event_parent, stored_tokens)
                stored, stored_tokens = [], []
        if stored:
            self._emit_stored(stored, event_parent, stored_tokens)
        seq.num_committed_blocks = full

    def _emit_stored(self, hashes: list[int], parent: int | None, tokens: list[int]) -> None:
        self._publish(KvEvent(KvEventKind.STORED, block_hashes=hashes, parent_hash=parent,
                              token_ids=tokens, block_size=self.block_size))

    def clear(self) -> int:
        """Forget every cached hash (referenced blocks stay allocated but are no longer shared)."""
        cleared = len(self._by_hash)
        for block_id in self._by_hash.values():
            self._blocks[block_id].hash = None
        self._by_hash.clear()
        self._publish(KvEvent(KvEventKind.CLEARED, block_size=self.block_size))
        return cleared
