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
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from dynamo.frontend.router.hashing import block_hashes
from dynamo.llm.protocol import KvEvent, KvEventKind


@dataclass
class IndexCounters:
    events_applied: int = 0
    events_dropped: int = 0  # unusable: unknown parent, no tokens, wrong block size, unknown kind
    resyncs: int = 0  # a worker's entries dropped after a gap in its event ids or a new subscription
    purges: int = 0  # workers removed (left discovery)


@dataclass
class _Worker:
    bit: int
    block_size: int
    engine_to_router: dict[int, int] = field(default_factory=dict)  # engine block hash -> router hash
    held: dict[int, int] = field(default_factory=dict)  # router hash -> how many engine blocks map to it
    guessed: dict[int, float] = field(default_factory=dict)  # router hash -> latest expiry
    next_event_id: int | None = None


class KvIndex:
    def __init__(self, clock: object = time.monotonic) -> None:
        self._clock = clock  # callable returning seconds (tests pass a fake)
        self._workers: dict[str, _Worker] = {}
        self._free_bits: list[int] = []
        self._next_bit = 0
        self._held: dict[int, int] = {}  # router hash -> bitmask of workers whose events say they hold it
        self._guessed: dict[int, int] = {}  # router hash -> bitmask of workers guessed to hold it
        self._expiries: deque[tuple[float, str, Sequence[int]]] = deque()  # guesses in expiry order
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
        self._drop_all(worker)
        self._free_bits.append(worker.bit)
        self.counters.purges += 1

    def workers(self) -> list[str]:
        return list(self._workers)

    def _drop_all(self, worker: _Worker) -> None:
        mask = ~(1 << worker.bit)
        for h in worker.held:
            self._clear_bit(self._held, h, mask)
        for h in worker.guessed:
            self._clear_bit(self._guessed, h, mask)
        worker.held.clear()
        worker.engine_to_router.clear()
        worker.guessed.clear()

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
        ours = block_hashes(event.token_ids, bs, parent)
        bit = 1 << worker.bit
        for engine_hash, h in zip(event.block_hashes, ours):
            previous = worker.engine_to_router.get(engine_hash)
            if previous == h:
                continue  # stored again (a clear we did not hear of, or a duplicate event)
            if previous is not None:
                self._unhold(worker, previous)
            worker.engine_to_router[engine_hash] = h
            worker.held[h] = worker.held.get(h, 0) + 1
            self._held[h] = self._held.get(h, 0) | bit
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
        count = worker.held.get(h, 0) - 1
        if count > 0:
            worker.held[h] = count
            return
        worker.held.pop(h, None)
        self._clear_bit(self._held, h, ~(1 << worker.bit))

    # --- guesses -------------------------------------------------------------------------------

    def guess(self, worker_id: str, hashes: Sequence[int], ttl: float) -> None:
        """Assume `worker_id` holds `hashes` for `ttl` seconds (refreshing earlier guesses)."""
        worker = self._workers.get(worker_id)
        if worker is None or ttl <= 0 or not hashes:
            return
        expiry = self._clock() + ttl  # type: ignore[operator]
        bit = 1 << worker.bit
        table = self._guessed
        get = table.get
        worker.guessed.update(dict.fromkeys(hashes, expiry))  # (C loops: this runs on every decision)
        table.update({h: get(h, 0) | bit for h in hashes})
        self._expiries.append((expiry, worker_id, hashes))

    def expire(self) -> None:
        """Drop guesses past their TTL (a hash guessed again later keeps its newer expiry)."""
        now = self._clock()  # type: ignore[operator]
        expiries = self._expiries
        while expiries and expiries[0][0] <= now:
            expiry, worker_id, hashes = expiries.popleft()
            worker = self._workers.get(worker_id)
            if worker is None:
                continue  # purged since
            guessed, mask = worker.guessed, ~(1 << worker.bit)
            for h in hashes:
                if guessed.get(h) == expiry:
                    del guessed[h]
                    self._clear_bit(self._guessed, h, mask)

    # --- queries -------------------------------------------------------------------------------

    def block_size(self, worker_id: str) -> int | None:
        worker = self._workers.get(worker_id)
        return worker.block_size if worker is not None else None

    def overlaps(self, hashes: Sequence[int], worker_ids: Sequence[str]) -> dict[str, int]:
        """How many leading blocks of `hashes` each of `worker_ids` holds (or is guessed to)."""
        bits: dict[int, str] = {}
        alive = 0
        for wid in worker_ids:
            worker = self._workers.get(wid)
            if worker is not None:
                bits[worker.bit] = wid
                alive |= 1 << worker.bit
        result = dict.fromkeys(worker_ids, 0)
        held, guessed = self._held, self._guessed
        depth = 0
        for h in hashes:
            now = held.get(h, 0) & alive
            if now != alive:  # (a second lookup only where the events do not cover everyone)
                now |= guessed.get(h, 0) & alive
            gone = alive & ~now
            while gone:
                low = gone & -gone
                result[bits[low.bit_length() - 1]] = depth
                gone ^= low
            alive = now
            if not alive:
                break
            depth += 1
        while alive:
            low = alive & -alive
            result[bits[low.bit_length() - 1]] = depth
            alive ^= low
        return result

    def held_depth(self, hashes: Sequence[int], worker_id: str) -> int:
        """How many leading blocks of `hashes` the worker's own events say it holds."""
        worker = self._workers.get(worker_id)
        if worker is None:
            return 0
        held = worker.held
        depth = 0
        for h in hashes:
            if h not in held:
                break
            depth += 1
        return depth

    def summary(self) -> dict[str, object]:
        """For /v1/router/state and the metrics: sizes per worker and in all."""
        return {
            "blocks": len(self._held),
            "guessed_blocks": len(self._guessed),
            "workers": {wid: {"blocks": len(w.held), "guessed_blocks": len(w.guessed), "block_size": w.block_size,
                              "next_event_id": w.next_event_id} for wid, w in self._workers.items()},
            "counters": dict(vars(self.counters)),
        }

    def held_by(self, worker_id: str) -> set[int]:
        """The router hashes the worker's events say it holds (tests compare it with a model)."""
        worker = self._workers.get(worker_id)
        return set(worker.held) if worker is not None else set()
