"""Which worker holds which prompt blocks: the KV router's index.

Keyed by the router's own block hashes (hashing.py). Two sources, queried together:
- the workers' KV events (STORED / REMOVED / CLEARED): what each worker's engine really holds. The
  engine's block hashes are mapped onto the router's from the tokens a STORED event carries, through
  the parent block's mapping; a REMOVED event is resolved through the same per-worker map.
- guesses: on every routing decision the chosen worker is assumed to hold the request's prompt blocks
  for a short TTL, until its engine's events say so (a burst of requests sharing a new prefix then
  lands on one worker), or, without events (approximate mode), for a longer TTL.

A worker's events are numbered; a gap (events lost) or a new subscription drops what the index knew
about that worker, since it can no longer tell what is current. A worker that leaves discovery is
purged at once; a restarted worker registers under a new instance id and starts empty.

Why a decision does not walk the prompt block by block: a worker's overlap is the longest prefix of
the prompt it holds. The index keeps, per worker, how many held blocks have no held parent
("orphans", left by an eviction in the middle of a chain). A worker without orphans holds a
prefix-closed set, so along the prompt's chain the set of such workers holding block i only shrinks
as i grows, and bisection finds where each one drops out (~10 lookups per distinct depth instead of
one per block); a worker with orphans is walked block by block, exactly.

A guess covers the prompt from where the chosen worker's events left off (what they vouch for is not
guessed, so an eviction there shows at once) to its end. It is indexed only at every
GUESS_STRIDE-th block from the stretch it starts in, with a reference to the guessed prompt's hashes:
a decision records ~64 entries for a 1024-block prompt instead of 1024. A worker's overlap is its
held prefix, extended through the guesses found at the checkpoint at or before the end of what is
covered so far when they start within it (each compared with the prompt checkpoint by checkpoint,
then block by block), and through held blocks past a gap: the block-by-block union of events and
guesses. Up to _GUESSES_PER_CHECKPOINT live guesses per worker and checkpoint are kept (the newest).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from dynamo.frontend.router.hashing import block_hashes
from dynamo.llm.protocol import KvEvent, KvEventKind

GUESS_STRIDE = 16  # guesses are indexed at blocks 0, 16, 32, ...
_GUESSES_PER_CHECKPOINT = 8  # live guesses kept per worker and checkpoint (the newest)


@dataclass
class IndexCounters:
    events_applied: int = 0
    events_dropped: int = 0  # unusable: unknown parent, no tokens, wrong block size, unknown kind
    resyncs: int = 0  # a worker's entries dropped after a gap in its event ids or a new subscription
    purges: int = 0  # workers removed (left discovery)


@dataclass
class _Guess:
    expiry: float
    hashes: Sequence[int]
    start: int  # the first guessed block (the blocks before it were held by the worker's events)


@dataclass
class _Worker:
    bit: int
    block_size: int
    engine_to_router: dict[int, int] = field(default_factory=dict)  # engine block hash -> router hash
    held: dict[int, int | None] = field(default_factory=dict)  # router hash -> its parent's (None: first block)
    copies: dict[int, int] = field(default_factory=dict)  # router hash -> engine blocks mapped beyond the first
    children: dict[int, int] = field(default_factory=dict)  # router hash -> held blocks naming it as parent
    orphans: int = 0  # held blocks whose parent is not held: while > 0, overlaps walk this worker exactly
    # checkpoint hash -> the live guess through it, or a list of them when several (rare: a new
    # container per checkpoint and decision would feed the garbage collector ~64 objects a decision)
    guessed: dict[int, _Guess | list[_Guess]] = field(default_factory=dict)
    next_event_id: int | None = None


class KvIndex:
    def __init__(self, clock: object = time.monotonic) -> None:
        self._clock = clock  # callable returning seconds (tests pass a fake)
        self._workers: dict[str, _Worker] = {}
        self._free_bits: list[int] = []
        self._next_bit = 0
        self._held: dict[int, int] = {}  # router hash -> bitmask of workers whose events say they hold it
        self._expiries: deque[tuple[str, _Guess]] = deque()  # guesses in expiry order
        self.counters = IndexCounters()

    # --- workers -------------------------------------------------------------------------------

    def add_worker(self, worker_id: str, block_size: int) -> None:
        if worker_id in self._workers:
            return
        if self._free_bits:
            bit = self._free_bits.pop()
        else:
            bit, self._next_bit = self._next_bit, self._next_bit + 1
        self._workers[worker_id] = _Worker(bit=bit, block_size=block_size)

    def remove_worker(self, worker_id: str) -> None:
        """Forget a worker (it left discovery): none of its blocks is offered again."""
        worker = self._workers.pop(worker_id, None)
        if worker is None:
            return
        self._drop_all_events(worker)
        worker.guessed.clear()
        self._free_bits.append(worker.bit)
        self.counters.purges += 1

    def workers(self) -> list[str]:
        return list(self._workers)

    @staticmethod
    def _clear_bit(table: dict[int, int], h: int, mask: int) -> None:
        left = table.get(h, 0) & mask
        if left:
            table[h] = left
        else:
            table.pop(h, None)

    # --- events --------------------------------------------------------------------------------

    def subscribed(self, worker_id: str, next_event_id: int) -> None:
        """A (new) event subscription to the worker starts at `next_event_id`: whatever the index
        knew from an earlier one may have missed events in between, so it starts over."""
        worker = self._workers.get(worker_id)
        if worker is None:
            return
        if worker.held:
            self._drop_all_events(worker)
            self.counters.resyncs += 1
        worker.next_event_id = next_event_id

    def _drop_all_events(self, worker: _Worker) -> None:
        mask = ~(1 << worker.bit)
        for h in worker.held:
            self._clear_bit(self._held, h, mask)
        worker.held.clear()
        worker.copies.clear()
        worker.children.clear()
        worker.orphans = 0
        worker.engine_to_router.clear()

    def apply(self, worker_id: str, event: KvEvent) -> None:
        worker = self._workers.get(worker_id)
        if worker is None:
            self.counters.events_dropped += 1
            return
        expected = worker.next_event_id
        if expected is not None and event.event_id != expected:
            # Lost events (a slow subscription, a restarted relay): what we hold may be stale.
            self._drop_all_events(worker)
            self.counters.resyncs += 1
        worker.next_event_id = event.event_id + 1
        if event.kind is KvEventKind.STORED:
            ok = self._stored(worker, event)
        elif event.kind is KvEventKind.REMOVED:
            ok = self._removed(worker, event.block_hashes)
        elif event.kind is KvEventKind.CLEARED:
            self._drop_all_events(worker)
            ok = True
        else:
            ok = False
        if ok:
            self.counters.events_applied += 1
        else:
            self.counters.events_dropped += 1

    def _stored(self, worker: _Worker, event: KvEvent) -> bool:
        bs = worker.block_size
        if (event.block_size and event.block_size != bs) or len(event.token_ids) != len(event.block_hashes) * bs:
            return False  # a block size the worker's card does not announce, or no tokens to hash
        parent: int | None = None
        if event.parent_hash is not None:
            parent = worker.engine_to_router.get(event.parent_hash)
            if parent is None:
                return False  # its parent never reached us (or was removed): the chain is unknown
        engine_to_router, held, children, table = worker.engine_to_router, worker.held, worker.children, self._held
        bit = 1 << worker.bit
        orphans = 0  # change in the worker's orphan count
        for engine_hash, h in zip(event.block_hashes, block_hashes(event.token_ids, bs, parent)):
            previous = engine_to_router.get(engine_hash)
            if previous != h:  # (equal: stored again, after a clear we did not hear of, or a duplicate)
                if previous is not None:
                    worker.orphans += orphans
                    orphans = 0
                    self._unhold(worker, previous)
                engine_to_router[engine_hash] = h
                if h in held:  # a second engine block with the same content and prefix
                    worker.copies[h] = worker.copies.get(h, 0) + 1
                else:  # (inlined: this loop is the event intake's cost)
                    held[h] = parent
                    if parent is not None:
                        children[parent] = children.get(parent, 0) + 1
                        if parent not in held:
                            orphans += 1
                    adopted = children.get(h)
                    if adopted:  # its children were held without it: no longer orphans
                        orphans -= adopted
                    table[h] = table.get(h, 0) | bit
            parent = h
        worker.orphans += orphans
        return True

    def _removed(self, worker: _Worker, engine_hashes: Iterable[int]) -> bool:
        ok = True
        for engine_hash in engine_hashes:
            h = worker.engine_to_router.pop(engine_hash, None)
            if h is None:
                ok = False  # never stored as far as we know (dropped before, or a resync): harmless
                continue
            self._unhold(worker, h)
        return ok

    def _unhold(self, worker: _Worker, h: int) -> None:
        copies = worker.copies.get(h)
        if copies:
            if copies > 1:
                worker.copies[h] = copies - 1
            else:
                del worker.copies[h]
            return
        held, children = worker.held, worker.children
        parent = held.pop(h)
        if parent is not None:
            left = children[parent] - 1
            if left:
                children[parent] = left
            else:
                del children[parent]
            if parent not in held:
                worker.orphans -= 1
        orphaned = children.get(h)
        if orphaned:
            worker.orphans += orphaned
        self._clear_bit(self._held, h, ~(1 << worker.bit))

    # --- guesses -------------------------------------------------------------------------------

    def guess(self, worker_id: str, hashes: Sequence[int], ttl: float) -> None:
        """Assume `worker_id` holds `hashes` (a prompt's chain, from its first block) for `ttl`
        seconds: from where its events leave off to the end."""
        worker = self._workers.get(worker_id)
        if worker is None or ttl <= 0 or not hashes:
            return
        start = self._held_depth(hashes, worker)
        if start >= len(hashes):
            return  # all vouched for by its events
        entry = _Guess(self._clock() + ttl, hashes, start)  # type: ignore[operator]
        guessed = worker.guessed
        for h in hashes[start - start % GUESS_STRIDE::GUESS_STRIDE]:
            there = guessed.get(h)
            if there is None:
                guessed[h] = entry
            elif isinstance(there, _Guess):
                guessed[h] = [there, entry]
            else:
                there.append(entry)
                if len(there) > _GUESSES_PER_CHECKPOINT:
                    del there[0]  # the oldest (it expires first anyway)
        self._expiries.append((worker_id, entry))

    def expire(self) -> None:
        """Drop guesses past their TTL."""
        now = self._clock()  # type: ignore[operator]
        expiries = self._expiries
        while expiries and expiries[0][1].expiry <= now:
            worker_id, entry = expiries.popleft()
            worker = self._workers.get(worker_id)
            if worker is None:
                continue  # purged since
            guessed, start = worker.guessed, entry.start
            for h in entry.hashes[start - start % GUESS_STRIDE::GUESS_STRIDE]:
                there = guessed.get(h)
                if there is entry:
                    del guessed[h]
                elif isinstance(there, list):
                    for i, other in enumerate(there):
                        if other is entry:
                            del there[i]
                            break
                    if len(there) == 1:
                        guessed[h] = there[0]

    # --- queries -------------------------------------------------------------------------------

    def block_size(self, worker_id: str) -> int | None:
        worker = self._workers.get(worker_id)
        return worker.block_size if worker is not None else None

    def overlaps(self, hashes: Sequence[int], worker_ids: Sequence[str]) -> dict[str, int]:
        """How many leading blocks of `hashes` each of `worker_ids` holds (or is guessed to)."""
        result = dict.fromkeys(worker_ids, 0)
        if not hashes:
            return result
        workers = [(wid, w) for wid in worker_ids if (w := self._workers.get(wid)) is not None]
        closed: dict[int, str] = {}  # bit -> worker id, of workers whose held blocks are prefix-closed
        for wid, worker in workers:
            if worker.orphans:
                result[wid] = self._held_depth(hashes, worker)
            else:
                closed[worker.bit] = wid
        if closed:
            for mask, depth in _drop_outs(self._held, hashes, sum(1 << bit for bit in closed)):
                while mask:
                    low = mask & -mask
                    result[closed[low.bit_length() - 1]] = depth
                    mask ^= low
        for wid, worker in workers:
            if worker.guessed:
                result[wid] = self._extend_by_guesses(worker, hashes, result[wid])
        return result

    @staticmethod
    def _extend_by_guesses(worker: _Worker, hashes: Sequence[int], depth: int) -> int:
        """From `depth` (what the worker holds), on through the guesses that start within what is
        covered so far, and through held blocks past a gap: the block-by-block union of the two."""
        n = len(hashes)
        while depth < n:
            checkpoint = depth - depth % GUESS_STRIDE
            reach = depth
            there = worker.guessed.get(hashes[checkpoint])
            for entry in (() if there is None else (there,) if isinstance(there, _Guess) else there):
                if entry.start <= depth:
                    reach = max(reach, _common_prefix(entry.hashes, hashes, checkpoint))
            if worker.orphans:
                reach = _held_run(worker.held, hashes, reach)
            if reach == depth:
                break
            depth = reach
        return depth

    def held_depth(self, hashes: Sequence[int], worker_id: str) -> int:
        """How many leading blocks of `hashes` the worker's own events say it holds."""
        worker = self._workers.get(worker_id)
        return self._held_depth(hashes, worker) if worker is not None else 0

    def _held_depth(self, hashes: Sequence[int], worker: _Worker) -> int:
        if not hashes:
            return 0
        if not worker.orphans:  # prefix-closed: bisect
            drop_outs = _drop_outs(self._held, hashes, 1 << worker.bit)
            return drop_outs[0][1] if drop_outs else 0
        return _held_run(worker.held, hashes, 0)

    def summary(self) -> dict[str, object]:
        """For /v1/router/state and the metrics: sizes per worker and in all."""
        return {
            "blocks": len(self._held),
            "guesses": len(self._expiries),
            "workers": {wid: {"blocks": len(w.held), "orphan_blocks": w.orphans,
                              "guess_checkpoints": len(w.guessed), "block_size": w.block_size,
                              "next_event_id": w.next_event_id} for wid, w in self._workers.items()},
            "counters": dict(vars(self.counters)),
        }

    def held_by(self, worker_id: str) -> set[int]:
        """The router hashes the worker's events say it holds (tests compare it with a model)."""
        worker = self._workers.get(worker_id)
        return set(worker.held) if worker is not None else set()


def _drop_outs(table: dict[int, int], chain: Sequence[int], alive: int) -> list[tuple[int, int]]:
    """For workers (bits of `alive`) whose entries in `table` are prefix-closed along `chain`: how many
    leading entries of `chain` each has, as (mask of workers, count) pairs (workers absent: 0).

    The mask at position i only loses workers as i grows, so bisection between two positions whose
    masks differ finds every drop-out in ~log2(len) lookups each."""
    first = table.get(chain[0], 0) & alive
    if not first:
        return []
    last_at = len(chain) - 1
    last = table.get(chain[last_at], 0) & first if last_at else first
    out = [(last, last_at + 1)] if last else []
    pending = [(0, first, last_at, last)] if last != first else []
    while pending:
        lo, lo_mask, hi, hi_mask = pending.pop()
        if hi - lo == 1:
            out.append((lo_mask & ~hi_mask, hi))  # held through lo, not hi: lo + 1 blocks
            continue
        mid = (lo + hi) >> 1
        mid_mask = table.get(chain[mid], 0) & lo_mask
        if mid_mask != lo_mask:
            pending.append((lo, lo_mask, mid, mid_mask))
        if mid_mask != hi_mask:
            pending.append((mid, mid_mask, hi, hi_mask))
    return out


def _held_run(held: dict[int, int | None], hashes: Sequence[int], start: int) -> int:
    """Where the run of held blocks of `hashes` from `start` ends (block by block)."""
    n = len(hashes)
    while start < n and hashes[start] in held:
        start += 1
    return start


def _common_prefix(a: Sequence[int], b: Sequence[int], start: int) -> int:
    """How many leading entries two chains (equal through `start`) share: bisection over the
    checkpoints after `start` (equal chain entries mean equal prefixes), then block by block."""
    stop = min(len(a), len(b))
    lo, hi = start // GUESS_STRIDE, (stop - 1) // GUESS_STRIDE  # checkpoint lo matches; find the last that does
    while lo < hi:
        mid = (lo + hi + 1) >> 1
        if a[mid * GUESS_STRIDE] == b[mid * GUESS_STRIDE]:
            lo = mid
        else:
            hi = mid - 1
    i = lo * GUESS_STRIDE
    while i < stop and a[i] == b[i]:
        i += 1
    return i
