"""The KV router's index against a brute-force model, under random event sequences.

Each simulated worker has an engine with its own (random) block hashes. The model keeps, per
worker, the set of router hashes of the prefixes the index can know about (recomputed from whole
token prefixes, not chained like the index): a block stored with a known parent (or none), until it
is removed, cleared, or the worker's events are resynced. The index must match it exactly.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from dynamo.frontend.router.hashing import block_hashes
from dynamo.frontend.router.index import KvIndex
from dynamo.llm.protocol import KvEvent, KvEventKind

BS = 4
DOCS = [[random.Random(d).randrange(50) for _ in range(BS * 6)] for d in range(5)]  # shared prompts


def router_hash(tokens: list[int]) -> int:
    return block_hashes(tokens, BS)[-1]


@dataclass
class Engine:
    """A worker's engine: blocks by its own hash, each with its full token prefix."""

    seed: int
    blocks: dict[int, list[int]] = field(default_factory=dict)  # engine hash -> token prefix
    by_prefix: dict[tuple[int, ...], int] = field(default_factory=dict)
    next_event: int = 0

    def engine_hash(self, prefix: list[int]) -> int:
        return random.Random(hash((self.seed, tuple(prefix)))).getrandbits(64)

    def store(self, doc: list[int], n_blocks: int) -> KvEvent | None:
        """Store the first n_blocks of doc (the ones not stored yet, after the stored prefix)."""
        have = 0
        while have < n_blocks and tuple(doc[:(have + 1) * BS]) in self.by_prefix:
            have += 1
        if have == n_blocks:
            return None
        new = list(range(have, n_blocks))
        hashes = []
        for i in new:
            prefix = doc[:(i + 1) * BS]
            h = self.engine_hash(prefix)
            self.blocks[h] = prefix
            self.by_prefix[tuple(prefix)] = h
            hashes.append(h)
        parent = self.by_prefix[tuple(doc[:have * BS])] if have else None
        return KvEvent(KvEventKind.STORED, block_hashes=hashes, parent_hash=parent,
                       token_ids=doc[have * BS:n_blocks * BS], block_size=BS)

    def remove(self, rng: random.Random) -> KvEvent | None:
        if not self.blocks:
            return None
        victims = rng.sample(sorted(self.blocks), k=min(len(self.blocks), rng.randrange(1, 3)))
        for h in victims:
            del self.by_prefix[tuple(self.blocks.pop(h))]
        return KvEvent(KvEventKind.REMOVED, block_hashes=victims)

    def clear(self) -> KvEvent:
        self.blocks.clear()
        self.by_prefix.clear()
        return KvEvent(KvEventKind.CLEARED)

    def number(self, event: KvEvent) -> KvEvent:
        event.event_id = self.next_event
        self.next_event += 1
        return event


@dataclass
class Model:
    """What the index should know: per worker, engine hash -> router hash of blocks it could map."""

    known: dict[str, dict[int, int]] = field(default_factory=dict)
    gap: set[str] = field(default_factory=set)  # workers with a lost event the index has not noticed yet
    parents: dict[int, int | None] = field(default_factory=dict)  # router hash -> its parent's

    def apply(self, wid: str, engine: Engine, event: KvEvent) -> None:
        if wid in self.gap:  # this event's id shows the gap: the index starts the worker over
            self.gap.discard(wid)
            self.known.pop(wid, None)
        known = self.known.setdefault(wid, {})
        if event.kind is KvEventKind.STORED:
            if event.parent_hash is not None and event.parent_hash not in known:
                return
            for h in event.block_hashes:
                known[h] = router_hash(engine.blocks[h])
                self.parents[known[h]] = router_hash(engine.blocks[h][:-BS]) if len(engine.blocks[h]) > BS else None
        elif event.kind is KvEventKind.REMOVED:
            for h in event.block_hashes:
                known.pop(h, None)
        else:
            known.clear()

    def held(self, wid: str) -> set[int]:
        return set(self.known.get(wid, {}).values())

    def orphans(self, wid: str) -> int:
        """Held blocks whose parent block is not held (left by evictions in the middle of a chain)."""
        held = self.held(wid)
        return sum(1 for h in held if self.parents[h] is not None and self.parents[h] not in held)


OPS = st.lists(st.tuples(st.sampled_from(["store", "store", "store", "remove", "clear", "reconnect", "lose",
                                          "purge"]),
                         st.integers(0, 2), st.integers(0, len(DOCS) - 1), st.integers(1, 6)),
               min_size=1, max_size=60)


@settings(max_examples=150, deadline=None)
@given(ops=OPS, seed=st.integers(0, 1000))
def test_index_matches_a_brute_force_model(ops: list[tuple[str, int, int, int]], seed: int) -> None:
    rng = random.Random(seed)
    index = KvIndex()
    model = Model()
    engines: dict[str, Engine] = {}

    def worker(w: int) -> str:
        wid = f"w{w}"
        if wid not in engines:
            engines[wid] = Engine(seed=rng.getrandbits(32))
            index.add_worker(wid, BS)
            index.subscribed(wid, 0)
        return wid

    for op, w, doc, n in ops:
        wid = worker(w)
        engine = engines[wid]
        event: KvEvent | None
        if op == "store":
            event = engine.store(DOCS[doc], n)
        elif op == "remove":
            event = engine.remove(rng)
        elif op == "clear":
            event = engine.clear()
        elif op == "reconnect":  # a new subscription: the index starts this worker over
            index.subscribed(wid, engine.next_event)
            model.known.pop(wid, None)
            model.gap.discard(wid)
            continue
        elif op == "lose":  # an event the index never sees: the next one reveals the gap
            engine.number(engine.clear())
            model.gap.add(wid)
            continue
        else:  # the worker left discovery; it comes back as a new instance (same name here)
            index.remove_worker(wid)
            model.known.pop(wid, None)
            model.gap.discard(wid)
            del engines[wid]
            continue
        if event is None:
            continue
        model.apply(wid, engine, engine.number(event))
        index.apply(wid, event)
        state = index.summary()["workers"]
        for other in engines:
            assert index.held_by(other) == model.held(other), (op, other)
            assert state[other]["orphan_blocks"] == model.orphans(other), (op, other)  # type: ignore[index]
        assert_overlaps(index, model, list(engines))
    for wid in engines:
        assert index.held_by(wid) == model.held(wid)
    assert_overlaps(index, model, list(engines))


def assert_overlaps(index: KvIndex, model: Model, workers: list[str]) -> None:
    """Overlaps, asked for all workers at once (the bisection works on their masks together), equal
    the longest prefix of each prompt whose blocks each worker holds, gaps from evictions included."""
    for doc in DOCS:
        query = block_hashes(doc, BS)
        expected = {}
        for wid in workers:
            held, depth = model.held(wid), 0
            while depth < len(query) and query[depth] in held:
                depth += 1
            expected[wid] = depth
        assert index.overlaps(query, workers + ["unknown"]) == {**expected, "unknown": 0}


def test_bad_events_are_counted_and_skipped() -> None:
    index = KvIndex()
    index.add_worker("w", BS)
    index.subscribed("w", 0)
    good = KvEvent(KvEventKind.STORED, block_hashes=[11], token_ids=DOCS[0][:BS], block_size=BS, event_id=0)
    index.apply("w", good)
    bad = [
        KvEvent(KvEventKind.STORED, block_hashes=[12], parent_hash=999, token_ids=DOCS[0][BS:2 * BS],
                block_size=BS, event_id=1),  # a parent never seen
        KvEvent(KvEventKind.STORED, block_hashes=[13], token_ids=[], block_size=BS, event_id=2),  # no tokens
        KvEvent(KvEventKind.STORED, block_hashes=[14], token_ids=DOCS[1][:8], block_size=8, event_id=3),  # size
        KvEvent(KvEventKind.REMOVED, block_hashes=[777], event_id=4),  # never stored
    ]
    for event in bad:
        index.apply("w", event)
    index.apply("nobody", good)
    assert index.counters.events_applied == 1 and index.counters.events_dropped == 5
    assert index.overlaps(block_hashes(DOCS[0], BS), ["w"]) == {"w": 1}  # the good block is still there


def test_a_gap_resyncs_the_worker_and_guesses_expire() -> None:
    now = [0.0]
    index = KvIndex(clock=lambda: now[0])
    index.add_worker("w", BS)
    index.subscribed("w", 5)
    index.apply("w", KvEvent(KvEventKind.STORED, block_hashes=[1], token_ids=DOCS[0][:BS], event_id=5))
    assert index.held_by("w")
    index.apply("w", KvEvent(KvEventKind.STORED, block_hashes=[2], token_ids=DOCS[1][:BS], event_id=9))
    assert index.counters.resyncs == 1 and index.held_by("w") == {block_hashes(DOCS[1], BS)[0]}
    hashes = block_hashes(DOCS[2], BS)
    index.guess("w", hashes, ttl=10)
    assert index.overlaps(hashes, ["w"]) == {"w": len(hashes)}
    now[0] = 11
    index.expire()
    assert index.overlaps(hashes, ["w"]) == {"w": 0}


def test_guesses_are_indexed_at_checkpoints_and_finished_exactly() -> None:
    """A guessed prompt counts as held block for block (not only at checkpoints); another prompt
    sharing part of it overlaps exactly that part; expiry drops each guess's checkpoints unless a
    newer guess went through them."""
    from dynamo.frontend.router.index import GUESS_STRIDE

    now = [0.0]
    index = KvIndex(clock=lambda: now[0])
    index.add_worker("w", BS)
    index.add_worker("v", BS)
    rng = random.Random(7)
    base = [rng.randrange(1000) for _ in range(BS * GUESS_STRIDE * 3)]  # 48 blocks
    hashes = block_hashes(base, BS)
    index.guess("w", hashes[:40], ttl=10)
    for shared in (0, 1, 15, 16, 17, 31, 32, 39, 40, 47):
        prompt = base[:shared * BS] + [1000 + t for t in base[shared * BS:]]
        expected = min(shared, 40)
        assert index.overlaps(block_hashes(prompt, BS), ["w", "v"]) == {"w": expected, "v": 0}, shared
    now[0] = 5
    index.guess("w", hashes[:20], ttl=10)  # a newer guess through checkpoints 0 and 16
    now[0] = 10.5
    index.expire()  # the first guess expires: its checkpoint 32 goes, 0 and 16 stay with the newer one
    assert index.overlaps(hashes, ["w"]) == {"w": 20}
    now[0] = 15.5
    index.expire()
    assert index.overlaps(hashes, ["w"]) == {"w": 0}
    assert index.summary()["workers"]["w"]["guess_checkpoints"] == 0  # type: ignore[index]


def test_guesses_and_events_combine_as_the_longer_prefix() -> None:
    index = KvIndex()
    index.add_worker("w", BS)
    index.subscribed("w", 0)
    doc = DOCS[0]
    index.apply("w", KvEvent(KvEventKind.STORED, block_hashes=[1, 2], token_ids=doc[:2 * BS], event_id=0))
    hashes = block_hashes(doc, BS)
    assert index.overlaps(hashes, ["w"]) == {"w": 2}
    index.guess("w", hashes[:4], ttl=10)
    assert index.overlaps(hashes, ["w"]) == {"w": 4}
    index.apply("w", KvEvent(KvEventKind.REMOVED, block_hashes=[1], event_id=1))  # block 2 is now an orphan
    assert index.summary()["workers"]["w"]["orphan_blocks"] == 1  # type: ignore[index]
    # the guess covered blocks 2-3 only (0-1 were held): the eviction of block 0 shows at once
    assert index.held_depth(hashes, "w") == 0 and index.overlaps(hashes, ["w"]) == {"w": 0}


@settings(max_examples=150, deadline=None)
@given(ops=st.lists(st.tuples(st.sampled_from(["store", "store", "remove", "guess", "guess", "time"]),
                              st.integers(0, len(DOCS) - 1), st.integers(1, 6)), min_size=1, max_size=40),
       seed=st.integers(0, 1000))
def test_guesses_extend_what_events_hold_as_a_block_by_block_union_would(
        ops: list[tuple[str, int, int]], seed: int) -> None:
    """The overlap equals the longest prefix whose every block is held by events or inside a live
    guess (each from where the events left off when it was made, to its end): guesses of prompts
    that share a prefix at different lengths, made at different times, expiring one by one."""
    from dynamo.frontend.router import index as index_module

    rng = random.Random(seed)
    now = [0.0]
    index = KvIndex(clock=lambda: now[0])
    index.add_worker("w", BS)
    index.subscribed("w", 0)
    engine = Engine(seed=seed)
    model = Model()
    live: list[tuple[float, list[int]]] = []  # (expiry, the guessed blocks)
    long_docs = [doc * 8 for doc in DOCS]  # 48 blocks: guesses span several checkpoints
    assert index_module.GUESS_STRIDE < 48
    for op, doc, n in ops:
        if op in ("store", "remove"):
            event = engine.store(long_docs[doc], n * 7) if op == "store" else engine.remove(rng)
            if event is not None:
                model.apply("w", engine, engine.number(event))
                index.apply("w", event)
        elif op == "guess":
            if sum(1 for expiry, _ in live if expiry > now[0]) >= 8:  # (the index keeps 8 per checkpoint)
                continue
            prefix = long_docs[doc][:n * 7 * BS] + [rng.randrange(50) for _ in range(rng.randrange(0, 3) * BS)]
            chain = block_hashes(prefix, BS)
            index.guess("w", chain, ttl=10)
            held = model.held("w")
            start = 0
            while start < len(chain) and chain[start] in held:
                start += 1
            live.append((now[0] + 10, chain[start:]))
        else:
            now[0] += n * 1.5
            index.expire()
        held = model.held("w")
        guessed = {h for expiry, blocks in live if expiry > now[0] for h in blocks}
        for query_doc in long_docs:
            query = block_hashes(query_doc, BS)
            expected = 0
            while expected < len(query) and (query[expected] in held or query[expected] in guessed):
                expected += 1
            assert index.overlaps(query, ["w"]) == {"w": expected}, (op, doc, n)


def test_an_evicted_middle_block_stored_again_reconnects_its_chain() -> None:
    index = KvIndex()
    index.add_worker("w", BS)
    index.subscribed("w", 0)
    doc = DOCS[1]
    hashes = block_hashes(doc, BS)
    index.apply("w", KvEvent(KvEventKind.STORED, block_hashes=[10, 11, 12, 13], token_ids=doc[:4 * BS], event_id=0))
    index.apply("w", KvEvent(KvEventKind.REMOVED, block_hashes=[11], event_id=1))
    assert index.summary()["workers"]["w"]["orphan_blocks"] == 1  # type: ignore[index]
    assert index.overlaps(hashes, ["w"]) == {"w": 1}
    index.apply("w", KvEvent(KvEventKind.STORED, block_hashes=[21], parent_hash=10, token_ids=doc[BS:2 * BS],
                             event_id=2))
    assert index.summary()["workers"]["w"]["orphan_blocks"] == 0  # type: ignore[index]
    assert index.overlaps(hashes, ["w"]) == {"w": 4}
    index.apply("w", KvEvent(KvEventKind.REMOVED, block_hashes=[10], event_id=3))  # the first block: all orphaned
    assert index.summary()["workers"]["w"]["orphan_blocks"] == 1  # type: ignore[index]
    assert index.overlaps(hashes, ["w"]) == {"w": 0}
