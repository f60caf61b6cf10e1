"""What the KV router itself costs: a routing decision, taking in KV events, and the index's memory.

    .venv/bin/python -m benchmarks.kv_router_cost [--workers 32] [--prompt-tokens 16384] [--block-size 16]

In one process, no servers: the router the frontend runs (dynamo.frontend.router.kv.KvRouter), an
index filled through the same path KV events take (KvIndex.apply: STORED events with tokens, mapped
onto the router's own hashes), then:
- decision: `select()` for a prompt of --prompt-tokens over --workers candidates (hashing the prompt,
  the overlap walk, the cost of every worker), p50/p99 over many decisions; half the prompts share
  a prefix some workers hold, half are new;
- intake: blocks per second through `apply()` (one core: this process);
- memory: the index's bytes per million blocks (tracemalloc), held by one worker and shared by four.
Goals (issue "KV-cache-aware routing"): decision p99 <= 1 ms for 16k tokens over 32 workers; intake
>= 200k blocks/s.
"""

from __future__ import annotations

import argparse
import gc
import random
import time
import tracemalloc

from benchmarks._common import percentile
from dynamo.frontend.router.hashing import block_hashes
from dynamo.frontend.router.index import KvIndex
from dynamo.frontend.router.kv import KvRouter
from dynamo.frontend.router.settings import KvRouterSettings
from dynamo.llm.model_card import ModelCard
from dynamo.llm.protocol import GenerateRequest, KvEvent, KvEventKind
from dynamo.runtime.discovery.records import InstanceRecord
from dynamo.runtime.gc_heap import freeze_startup_heap


def stored_events(worker_seed: int, docs: list[list[int]], block_size: int, blocks_per_event: int
                  ) -> list[KvEvent]:
    """The STORED events an engine with its own hash seed would publish for `docs`."""
    rng = random.Random(worker_seed)
    events = []
    for doc in docs:
        parent = None
        for start in range(0, len(doc) - block_size + 1, block_size * blocks_per_event):
            tokens = doc[start:start + block_size * blocks_per_event]
            tokens = tokens[:len(tokens) // block_size * block_size]
            hashes = [rng.getrandbits(64) for _ in range(len(tokens) // block_size)]
            events.append(KvEvent(KvEventKind.STORED, block_hashes=hashes, parent_hash=parent, token_ids=tokens,
                                  block_size=block_size))
            parent = hashes[-1]
    return events


def measure_intake(block_size: int, blocks: int) -> tuple[float, int]:
    docs = [[random.randrange(32000) for _ in range(block_size * 64)] for _ in range(blocks // 64)]
    events = stored_events(1, docs, block_size, blocks_per_event=16)
    index = KvIndex()
    index.add_worker("w", block_size)
    gc.collect()
    t0 = time.perf_counter()
    for i, event in enumerate(events):
        event.event_id = i
        index.apply("w", event)
    elapsed = time.perf_counter() - t0
    total = sum(len(e.block_hashes) for e in events)
    assert len(index.held_by("w")) == total
    return total / elapsed, total


def measure_memory(block_size: int, blocks: int, sharers: int) -> float:
    docs = [[random.randrange(32000) for _ in range(block_size * 64)] for _ in range(blocks // 64)]
    per_worker = [stored_events(w, docs, block_size, 16) for w in range(sharers)]
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    index = KvIndex()
    for w, events in enumerate(per_worker):
        index.add_worker(f"w{w}", block_size)
        for i, event in enumerate(events):
            event.event_id = i
            index.apply(f"w{w}", event)
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    return used / (blocks / 1e6)


def measure_decisions(workers: int, prompt_tokens: int, block_size: int, decisions: int) -> dict[str, list[float]]:
    """Decision times, every other pair of prompts hashed ahead (as the frontend does in the thread
    that tokenized a long prompt: "ahead", the decision on the event loop, and "hashing ahead" apart)
    or not ("inline": the decision hashes the prompt itself); and beside each an A/A control, the
    same fixed work (hashing one prompt that never changes) timed in the same loop, whose spread is the
    machine's, not the router's."""
    card = ModelCard("m", "/m", "/m", context_length=prompt_tokens * 2, kv_block_size=block_size,
                     total_kv_blocks=100_000).to_dict()
    records = [InstanceRecord("ns", "backend", "generate", f"w{i:03d}", "10.0.0.1", 9000 + i, {"model_card": card})
               for i in range(workers)]
    router = KvRouter(KvRouterSettings(seed=0))
    shared = [[random.randrange(32000) for _ in range(prompt_tokens)] for _ in range(8)]
    for i, record in enumerate(records):  # each prefix held by a quarter of the workers, at varying depth
        router._block_size(record)
        router.index.subscribed(record.instance_id, 0)
        events = stored_events(i, [shared[i % 8][: prompt_tokens * (1 + i % 4) // 4]], block_size, 64)
        for n, event in enumerate(events):
            event.event_id = n
            router.index.apply(record.instance_id, event)
    fixed = [random.randrange(32000) for _ in range(prompt_tokens)]
    freeze_startup_heap()  # as the frontend does once started
    times: dict[str, list[float]] = {"inline": [], "ahead": [], "hashing ahead": [], "control": []}
    for n in range(decisions):
        prompt = shared[n % 8][:-1] + [n] if n % 2 == 0 else [random.randrange(32000) for _ in range(prompt_tokens)]
        request = GenerateRequest(f"r{n}", prompt)
        ahead = n // 2 % 2 == 1  # as the frontend does for a prompt it tokenized in a thread
        t0 = time.perf_counter()
        if ahead:
            router.prehash(prompt, block_size)
            times["hashing ahead"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
        decision = router.select(records, request, lambda _: 0)
        t1 = time.perf_counter()
        block_hashes(fixed, block_size)
        times["control"].append(time.perf_counter() - t1)
        times["ahead" if ahead else "inline"].append(t1 - t0)
        decision.finished(None)
    return times


def ms(samples: list[float]) -> str:
    return (f"p50 {percentile(samples, 50) * 1e3:.3f} ms, p90 {percentile(samples, 90) * 1e3:.3f} ms, "
            f"p99 {percentile(samples, 99) * 1e3:.3f} ms")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", type=int, default=32)
    p.add_argument("--prompt-tokens", type=int, default=16384)
    p.add_argument("--block-size", type=int, default=16)
    p.add_argument("--decisions", type=int, default=800)
    p.add_argument("--intake-blocks", type=int, default=200_000)
    a = p.parse_args()
    random.seed(0)
    times = measure_decisions(a.workers, a.prompt_tokens, a.block_size, a.decisions)
    print(f"decision, {a.prompt_tokens} tokens ({a.prompt_tokens // a.block_size} blocks of {a.block_size}) over "
          f"{a.workers} workers (goal: p99 <= 1 ms):")
    inline, ahead = times["inline"], times["ahead"]
    print(f"  on the event loop, the prompt hashed ahead in the tokenizing thread: {ms(ahead)}")
    print(f"    (prompts sharing a held prefix: {ms(ahead[0::2])}; new prompts: {ms(ahead[1::2])})")
    print(f"  hashing ahead, off the loop: {ms(times['hashing ahead'])}")
    print(f"  with the hashing inline (a prompt sent as token ids, or short): {ms(inline)}")
    print(f"    (prompts sharing a held prefix: {ms(inline[0::2])}; new prompts: {ms(inline[1::2])})")
    control = times["control"]
    print(f"  A/A control (hashing one unchanging prompt, timed beside each decision): {ms(control)}; "
          f"p99/p50 {percentile(control, 99) / percentile(control, 50):.2f} (the machine's own tail; the "
          f"decision's: inline {percentile(inline, 99) / percentile(inline, 50):.2f}, ahead "
          f"{percentile(ahead, 99) / percentile(ahead, 50):.2f})")
    rate, total = measure_intake(a.block_size, a.intake_blocks)
    print(f"intake: {rate / 1e3:,.0f}k blocks/s over {total:,} blocks (STORED events of 16 blocks; goal >= 200k)")
    for sharers in (1, 4):
        per_million = measure_memory(a.block_size, 100_000, sharers)
        print(f"index memory: {per_million / 2**20:,.0f} MiB per million blocks, each held by {sharers} worker(s)")


if __name__ == "__main__":
    main()
