"""Keep Python's full garbage collections short in long-running serving processes.

A worker or frontend imports torch, vLLM, transformers...: 600k+ objects that live as long as the
process. Every full (generation 2) collection walks all of them: ~350 ms measured here, a stall of
every stream the process serves, seen as TTFT and ITL outliers of hundreds of milliseconds. Moving
the start-up heap to the permanent generation (`gc.freeze`) takes it out of every later collection,
as vLLM's own API server does after start-up.

Serving also churns objects that live as long as a request (hundreds of milliseconds under load):
Python's default thresholds (700, 10, 10) promote them through every generation, so the frontend
spent ~10% of its CPU at 256 streams in collections, with full collections of ~50 ms each (measured:
gc.callbacks, benchmarks/frontend_mocker.py load). A young generation of 50,000 allocations lets them
die by reference count first: ~2% of its CPU, no full collection during the run, young collections
of ~15 ms about once a second. DYN_GC_THRESHOLD="a,b,c" sets other thresholds (`gc.set_threshold`);
"default" keeps Python's.
"""

from __future__ import annotations

import gc
import logging
import time

from dynamo.runtime.config import env_value, parse_bool

log = logging.getLogger(__name__)

SERVING_THRESHOLDS: tuple[int, ...] | None = (50_000, 20, 10)


def _thresholds(raw: str) -> tuple[int, ...] | None:
    if raw.strip().lower() == "default":
        return None
    values = tuple(int(v) for v in raw.split(","))
    if not 1 <= len(values) <= 3 or any(v < 0 for v in values):
        raise ValueError("expected one to three non-negative integers, e.g. 50000,20,10, or 'default'")
    return values


def freeze_startup_heap(collect: bool = True) -> None:
    """Call once start-up is done. With `collect` (the serving process's start-up call), also sets
    the serving thresholds (above) and first frees the start-up garbage (one full collection,
    a pause of its own); without it, whatever garbage exists now is kept for good (cheap; for
    processes that load more later, e.g. a frontend loading a tokenizer)."""
    if collect:
        thresholds = env_value("DYN_GC_THRESHOLD", _thresholds, SERVING_THRESHOLDS)
        if thresholds is not None:
            gc.set_threshold(*thresholds)
    if not env_value("DYN_GC_FREEZE", parse_bool, True):  # opt-out, e.g. to compare pause times
        return
    t0 = time.perf_counter()
    if collect:
        gc.collect()
    gc.freeze()
    log.debug("froze %d start-up objects out of the garbage collector's reach in %.0f ms",
              gc.get_freeze_count(), (time.perf_counter() - t0) * 1e3)
