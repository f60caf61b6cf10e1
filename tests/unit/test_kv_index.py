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
        elif event.kind is KvEventKind.REMOVED:
            for h in event.block_hashes:
                known.pop(h, None)
        else:
            known.clear()

    def held(self, wid: str) -> set[int]:
        return set(self.known.get(wid, {}).values())


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
        for other in engines:
            assert index.held_by(other) == model.held(other), (op, other)
    for wid in engines:
        assert index.held_by(wid) == model.held(wid)
        for doc in DOCS:  # overlaps: the longest prefix of the prompt whose blocks the worker holds
            query = block_hashes(doc, BS)
            expected = 0
            while expected < len(query) and query[expected] in model.held(wid):
                expected += 1
            assert index.overlaps(query, [wid])[wid] == expected


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
