"""Keep Python's full garbage collections short in long-running serving processes.

A worker or frontend imports torch, vLLM, transformers...: 600k+ objects that live as long as the
process. Every full (generation 2) collection walks all of them: ~350 ms measured here, a stall of
every stream the process serves, seen as TTFT and ITL outliers of hundreds of milliseconds. Moving
the start-up heap to the permanent generation (`gc.freeze`) takes it out of every later collection,
as vLLM's own API server does after start-up.
"""

from __future__ import annotations

import gc
import logging
import time

from dynamo.runtime.config import env_value, parse_bool

log = logging.getLogger(__name__)


def freeze_startup_heap(collect: bool = True) -> None:
    """Call once start-up is done. `collect`: first free the start-up garbage (one full collection,
    a pause of its own); without it, whatever garbage exists now is kept for good (cheap; for
    processes that load more later, e.g. a frontend loading a tokenizer)."""
    if not env_value("DYN_GC_FREEZE", parse_bool, True):  # opt-out, e.g. to compare pause times
        return
    t0 = time.perf_counter()
    if collect:
        gc.collect()
    gc.freeze()
    log.debug("froze %d start-up objects out of the garbage collector's reach in %.0f ms",
              gc.get_freeze_count(), (time.perf_counter() - t0) * 1e3)
