"""The load the KV router predicts on each worker, from its own decisions, corrected by the workers'
stats stream.

A request routed to a worker adds its prompt's uncached tokens as pending prefill until its first
token, and its KV blocks as active until it finishes. A worker's own report (SubscribeStats) counts
what other frontends sent it too: the router takes the larger of the two.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass
class _Routed:
    worker_id: str
    prefill_tokens: int  # uncached prompt tokens still to prefill (0 once the first token came)
    blocks: int  # KV blocks the request occupies


@dataclass
class WorkerLoad:
    prefill_tokens: int = 0
    active_blocks: int = 0
    reported_active_blocks: int = 0  # the worker's own count (every frontend's requests)
    reported_waiting: int = 0
    total_blocks: int = 0

    @property
    def decode_blocks(self) -> int:
        return max(self.active_blocks, self.reported_active_blocks)

    @property
    def usage(self) -> float:
        return self.decode_blocks / self.total_blocks if self.total_blocks else 0.0


@dataclass
class LoadTracker:
    workers: dict[str, WorkerLoad] = field(default_factory=dict)
    _requests: dict[str, _Routed] = field(default_factory=dict)

    def load(self, worker_id: str) -> WorkerLoad:
        load = self.workers.get(worker_id)
        if load is None:
            load = self.workers[worker_id] = WorkerLoad()
        return load

    def routed(self, request_id: str, worker_id: str, prompt_tokens: int, cached_tokens: int,
               block_size: int) -> None:
        """The request's uncached tokens are pending prefill; the blocks it adds to what the worker
        holds (not the shared prefix, counted once) are active."""
        entry = _Routed(worker_id, max(0, prompt_tokens - cached_tokens),
                        math.ceil(prompt_tokens / block_size) - cached_tokens // block_size)
        self.finished(request_id)  # a retried id replaces its earlier routing
        self._requests[request_id] = entry
        load = self.load(worker_id)
        load.prefill_tokens += entry.prefill_tokens
        load.active_blocks += entry.blocks

    def first_token(self, request_id: str) -> None:
        entry = self._requests.get(request_id)
        if entry is not None and entry.prefill_tokens:
            self.load(entry.worker_id).prefill_tokens -= entry.prefill_tokens
            entry.prefill_tokens = 0

    def finished(self, request_id: str) -> None:
        entry = self._requests.pop(request_id, None)
        if entry is None:
            return
        load = self.load(entry.worker_id)
        load.prefill_tokens -= entry.prefill_tokens
        load.active_blocks -= entry.blocks

    def reported(self, worker_id: str, active_blocks: int, waiting: int, total_blocks: int) -> None:
        load = self.load(worker_id)
        load.reported_active_blocks, load.reported_waiting = active_blocks, waiting
        if total_blocks:
            load.total_blocks = total_blocks

    def forget(self, worker_id: str) -> None:
        self.workers.pop(worker_id, None)
        for rid in [rid for rid, e in self._requests.items() if e.worker_id == worker_id]:
            del self._requests[rid]
