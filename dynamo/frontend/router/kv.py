"""The KV-cache-aware router (`--router-mode kv`): send each request where its prompt's KV already is,
weighed against each worker's load (cost.py). The index (index.py) learns what workers hold from
their KV events (intake.py), or, without events (`--no-kv-events`), from its own past decisions.

One KvRouter serves every model of a frontend: workers of different models never share blocks, and
a decision only looks at the candidates it is given.
"""

from __future__ import annotations

import logging
import math
import random
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from functools import partial

from dynamo.frontend.router.cost import Candidate, choose, costs
from dynamo.frontend.router.hashing import prompt_hashes
from dynamo.frontend.router.index import KvIndex
from dynamo.frontend.router.load import LoadTracker
from dynamo.frontend.router.policies import Decision
from dynamo.frontend.router.settings import KvRouterSettings, RouterObserver
from dynamo.llm.model_card import ModelCard
from dynamo.llm.model_pool import card_of
from dynamo.llm.protocol import GenerateRequest, Usage
from dynamo.runtime.discovery.records import InstanceRecord

log = logging.getLogger(__name__)

_PREHASHED_KEPT = 64  # prompts hashed ahead and not routed yet (each routing takes its own out)


def _block_size_of(card: ModelCard | None) -> int:
    return card.kv_block_size if card is not None and card.kv_block_size > 0 else 16


class _Unobserved:
    def decided(self, candidate: Candidate, considered: int) -> None:
        pass

    def overlap_error_observed(self, predicted_tokens: int, cached_tokens: int) -> None:
        pass


class KvDecision(Decision):
    __slots__ = ("_router", "_request_id", "_predicted", "_done")

    def __init__(self, record: InstanceRecord, overlap_blocks: int, router: KvRouter, request_id: str,
                 predicted_cached_tokens: int | None) -> None:
        super().__init__(record, overlap_blocks)
        self._router = router
        self._request_id = request_id
        self._predicted = predicted_cached_tokens
        self._done = False

    def first_token(self) -> None:
        self._router.loads.first_token(self._request_id)

    def finished(self, usage: Usage | None) -> None:
        if self._done:
            return
        self._done = True
        self._router.loads.finished(self._request_id)
        if usage is not None and self._predicted is not None:
            self._router.observer.overlap_error_observed(self._predicted, usage.cached_tokens)


class KvRouter:
    def __init__(self, settings: KvRouterSettings | None = None, observer: RouterObserver | None = None,
                 clock: Callable[[], float] | None = None) -> None:
        self.settings = settings = settings or KvRouterSettings()
        self.observer: RouterObserver = observer or _Unobserved()
        self.index = KvIndex(clock) if clock is not None else KvIndex()
        self.loads = LoadTracker()
        self._rng = random.Random(settings.seed)
        self._hash_cache: tuple[tuple[str, int, int], Sequence[int]] | None = None  # (request id, size, length)
        # Prompts hashed ahead of their decision (prehash), by the identity of their token list:
        self._prehashed: OrderedDict[int, tuple[list[int], int, Sequence[int]]] = OrderedDict()
        self._prehashed_lock = threading.Lock()

    def _block_size(self, record: InstanceRecord) -> int:
        size = self.index.block_size(record.instance_id)
        if size is None:  # not announced by the intake yet: take it from the record's model card
            card = card_of(record)
            size = _block_size_of(card)
            self.index.add_worker(record.instance_id, size)
            if card is not None:
                self.loads.load(record.instance_id).total_blocks = card.total_kv_blocks
        return size

    def prompt_hasher(self, card: ModelCard) -> Callable[[list[int]], None]:
        """`prehash` for prompts of the model `card` describes (its workers' block size)."""
        return partial(self.prehash, block_size=_block_size_of(card))

    def prehash(self, token_ids: list[int], block_size: int) -> None:
        """Hash a prompt's blocks before its decision; called in the thread that has just tokenized
        it (thread-safe). Reading 16k fresh token ids costs a third of what it costs once they have
        left the CPU's cache, and the event loop runs meanwhile; the decision looks the hashes up by
        the token list's identity (the list is kept, so its id cannot be reused)."""
        hashes = prompt_hashes(token_ids, block_size)
        with self._prehashed_lock:
            self._prehashed[id(token_ids)] = (token_ids, block_size, hashes)
            while len(self._prehashed) > _PREHASHED_KEPT:  # prompts that were never routed (refused, cancelled)
                self._prehashed.popitem(last=False)

    def _hashes(self, request: GenerateRequest, block_size: int) -> Sequence[int]:
        # A disaggregated request is routed twice (prefill, decode) with the same prompt: hash once.
        key = (request.request_id, block_size, len(request.token_ids))
        cached = self._hash_cache
        if cached is not None and cached[0] == key:
            return cached[1]
        with self._prehashed_lock:
            ahead = self._prehashed.pop(id(request.token_ids), None)
        if ahead is not None and ahead[0] is request.token_ids and ahead[1] == block_size:
            hashes = ahead[2]
        else:
            hashes = prompt_hashes(request.token_ids, block_size)
        self._hash_cache = (key, hashes)
        return hashes

    def select(self, candidates: Sequence[InstanceRecord], request: GenerateRequest,
               inflight: Callable[[str], int], *, overlap_credit: bool = True) -> KvDecision:
        by_id = {r.instance_id: r for r in candidates}
        sizes = {r.instance_id: self._block_size(r) for r in candidates}
        self.index.expire()
        prompt = request.token_ids
        # Workers of one model share a block size; a fleet that mixes sizes is priced per size.
        overlaps: dict[str, int] = {}
        hashes_by_size: dict[int, Sequence[int]] = {}
        for size in set(sizes.values()):
            hashes_by_size[size] = self._hashes(request, size)
            if overlap_credit:
                ids = [wid for wid, s in sizes.items() if s == size]
                overlaps.update(self.index.overlaps(hashes_by_size[size], ids))
        priced: list[Candidate] = []
        for size, hashes in hashes_by_size.items():
            ids = [wid for wid, s in sizes.items() if s == size]
            priced += costs(ids, overlaps, self.loads.workers, math.ceil(len(prompt) / size), size,
                            self.settings.weights, 1.0 if overlap_credit else 0.0)
        chosen = choose(priced, self.loads.workers, self.settings.weights, self._rng)
        size = sizes[chosen.worker_id]
        cached = min(chosen.overlap_blocks * size, ((len(prompt) - 1) // size) * size)
        ttl = self.settings.predicted_ttl if self.settings.kv_events else self.settings.approximate_ttl
        if ttl > 0:
            self.index.guess(chosen.worker_id, hashes_by_size[size], ttl)
        self.loads.routed(request.request_id, chosen.worker_id, len(prompt), cached, size)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("[%s] routed to %s: overlap %d blocks; candidates %s", request.request_id,
                      chosen.worker_id, chosen.overlap_blocks,
                      ", ".join(f"{c.worker_id}(overlap {c.overlap_blocks}, prefill {c.prefill_blocks:.1f}, "
                                f"decode {c.decode_blocks}, cost {c.cost:.1f})" for c in priced))
        self.observer.decided(chosen, len(priced))
        return KvDecision(by_id[chosen.worker_id], chosen.overlap_blocks, self, request.request_id,
                          cached if overlap_credit else None)

    def forget(self, worker_id: str) -> None:
        """The worker left discovery: no request goes there, its blocks and load are forgotten."""
        self.index.remove_worker(worker_id)
        self.loads.forget(worker_id)

    def state(self) -> dict[str, object]:
        """The index and the predicted loads, for GET /v1/router/state."""
        summary = self.index.summary()
        workers = summary["workers"]
        assert isinstance(workers, dict)
        for wid, load in self.loads.workers.items():
            entry = workers.setdefault(wid, {})
            entry.update(prefill_tokens=load.prefill_tokens, active_blocks=load.active_blocks,
                         reported_active_blocks=load.reported_active_blocks, total_blocks=load.total_blocks)
        return {"mode": "kv", "kv_events": self.settings.kv_events, "weights": vars(self.settings.weights),
                **summary}
