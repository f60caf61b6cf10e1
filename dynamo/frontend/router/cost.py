"""The KV router's cost of sending a request to a worker, and the choice among workers.

    new_blocks(w)     = request_blocks - overlap_credit * overlap(w)
    prefill_blocks(w) = pending_prefill_tokens(w) / block_size + new_blocks(w)
    decode_blocks(w)  = active_blocks(w) + new_blocks(w)
    cost(w)           = overlap_weight * prefill_blocks(w) + decode_blocks(w)

`overlap(w)` is how many leading blocks of the prompt w already holds; `overlap_credit` is 1, or 0 for a
decode worker after a remote prefill (its prompt arrives with the KV). `active_blocks(w)` is the KV of
the requests running on w: the router's prediction (a request adds only the blocks it does not share
with what w holds), or w's own report when that is larger. A worker holding the prefix saves the
blocks twice: it prefills fewer, and its cache grows by fewer (the others would hold a second copy). A worker whose decode blocks fill
more than `busy_threshold` of its KV cache is left out while any other is not. Temperature 0 picks the
cheapest (ties at random); above 0 a worker is drawn with probability proportional to
exp(-(cost - min) / ((max - min) * temperature)), which spreads requests wider as it grows.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from dynamo.frontend.router.load import WorkerLoad
from dynamo.frontend.router.settings import CostWeights


@dataclass(slots=True)
class Candidate:
    worker_id: str
    overlap_blocks: int
    prefill_blocks: float
    decode_blocks: float
    cost: float


_IDLE = WorkerLoad()


def costs(worker_ids: Sequence[str], overlaps: Mapping[str, int], loads: Mapping[str, WorkerLoad],
          request_blocks: int, block_size: int, weights: CostWeights, overlap_credit: float = 1.0
          ) -> list[Candidate]:
    out: list[Candidate] = []
    append = out.append
    overlap_weight = weights.overlap_weight
    for wid in worker_ids:  # (per decision, per worker: kept to plain arithmetic)
        load = loads.get(wid) or _IDLE
        overlap = overlaps.get(wid, 0)
        new = request_blocks - overlap_credit * overlap
        if new < 0:
            new = 0.0
        prefill = load.prefill_tokens / block_size + new
        decode = load.decode_blocks + new
        append(Candidate(wid, overlap, prefill, decode, overlap_weight * prefill + decode))
    return out


def choose(candidates: list[Candidate], loads: Mapping[str, WorkerLoad], weights: CostWeights,
           rng: random.Random) -> Candidate:
    pool = candidates
    if weights.busy_threshold is not None:
        free = [c for c in candidates
                if (load := loads.get(c.worker_id)) is None or load.usage <= weights.busy_threshold]
        pool = free or candidates  # all busy: still serve, on the cheapest
    low = min(c.cost for c in pool)
    if weights.temperature <= 0:
        return rng.choice([c for c in pool if c.cost == low])
    high = max(c.cost for c in pool)
    if high == low:
        return rng.choice(pool)
    scale = (high - low) * weights.temperature
    probabilities = [math.exp(-(c.cost - low) / scale) for c in pool]
    return rng.choices(pool, weights=probabilities)[0]
