"""The KV router's choices: overlap against load, temperature, busy workers, approximate mode."""

from __future__ import annotations

from collections import Counter

from dynamo.frontend.router.hashing import block_hashes
from dynamo.frontend.router.kv import KvRouter
from dynamo.frontend.router.settings import CostWeights, KvRouterSettings
from dynamo.llm.model_card import ModelCard
from dynamo.llm.protocol import GenerateRequest, KvEvent, KvEventKind, Usage
from dynamo.runtime.discovery.records import InstanceRecord

BS = 16


def workers(n: int, total_blocks: int = 1000) -> list[InstanceRecord]:
    card = ModelCard("m", "/m", "/m", context_length=8192, kv_block_size=BS, total_kv_blocks=total_blocks).to_dict()
    return [InstanceRecord("ns", "backend", "generate", f"w{i}", "127.0.0.1", 9000 + i, {"model_card": card})
            for i in range(n)]


def prompt(shared: int, own: int, seed: int) -> list[int]:
    return [7] * shared + [100 + seed] * own


def store(router: KvRouter, wid: str, tokens: list[int], event_id: int) -> None:
    hashes = [hash((wid, i)) & (2**64 - 1) for i in range(len(tokens) // BS)]
    router.index.apply(wid, KvEvent(KvEventKind.STORED, block_hashes=hashes, token_ids=tokens[:len(hashes) * BS],
                                    block_size=BS, event_id=event_id))


def route(router: KvRouter, recs: list[InstanceRecord], tokens: list[int], rid: str, **kw: object):  # type: ignore[no-untyped-def]
    return router.select(recs, GenerateRequest(rid, tokens), lambda _: 0, **kw)  # type: ignore[arg-type]


def test_prefers_the_worker_holding_the_prefix_until_its_load_outweighs_it() -> None:
    router = KvRouter(KvRouterSettings(seed=1, predicted_ttl=0))
    recs = workers(3)
    p = prompt(BS * 20, 5, 0)
    for r in recs:
        router._block_size(r)
    router.index.subscribed("w1", 0)
    store(router, "w1", p, 0)
    d = route(router, recs, p, "a")
    assert d.record.instance_id == "w1" and d.overlap_blocks == 20
    # pile decode load on w1: a fresh prompt goes elsewhere, the shared one still to w1 while cheaper
    for i in range(5):
        router.loads.routed(f"busy{i}", "w1", 400, 0, BS)
    assert route(router, recs, prompt(0, 80, 1), "b").record.instance_id != "w1"
    router.loads.routed("huge", "w1", 4000, 0, BS)
    assert route(router, recs, p, "c").record.instance_id != "w1"  # 21 prefill blocks < ~400 decode blocks


def test_decisions_track_load_until_finished_and_report_the_overlap_error() -> None:
    seen: list[tuple[int, int]] = []

    class Observer:
        def decided(self, candidate: object, considered: int) -> None:
            pass

        def overlap_error_observed(self, predicted: int, cached: int) -> None:
            seen.append((predicted, cached))

    router = KvRouter(KvRouterSettings(seed=1), observer=Observer())
    recs = workers(2)
    p = prompt(BS * 4, 3, 0)
    first = route(router, recs, p, "a")
    load = router.loads.workers[first.record.instance_id]
    assert (load.prefill_tokens, load.active_blocks) == (len(p), 5)
    first.first_token()
    assert load.prefill_tokens == 0
    first.finished(Usage(prompt_tokens=len(p), completion_tokens=3, cached_tokens=0))
    assert load.active_blocks == 0 and seen == [(0, 0)]
    again = route(router, recs, p, "b")  # the guess from the first decision: same worker, 4 blocks held
    assert again.record.instance_id == first.record.instance_id and again.overlap_blocks == 4
    again.finished(Usage(cached_tokens=BS * 4))
    assert seen[-1] == (BS * 4, BS * 4)


def test_temperature_spreads_requests_wider() -> None:
    def spread(temperature: float) -> int:
        router = KvRouter(KvRouterSettings(weights=CostWeights(temperature=temperature), seed=3, predicted_ttl=0))
        recs = workers(4)
        for r in recs:
            router._block_size(r)
        router.index.subscribed("w0", 0)
        p = prompt(BS * 8, 0, 0)
        store(router, "w0", p, 0)
        counts: Counter[str] = Counter()
        for i in range(200):
            d = route(router, recs, p + [i], f"r{i}")
            d.finished(None)  # one at a time: no load builds up
            counts[d.record.instance_id] += 1
        return len(counts)

    assert spread(0.0) == 1
    assert spread(1.0) > 1


def test_busy_workers_are_left_out_while_others_are_free() -> None:
    router = KvRouter(KvRouterSettings(weights=CostWeights(busy_threshold=0.5), seed=1, predicted_ttl=0))
    recs = workers(2, total_blocks=100)
    p = prompt(BS * 10, 0, 0)
    for r in recs:
        router._block_size(r)
    router.index.subscribed("w0", 0)
    store(router, "w0", p, 0)
    router.loads.reported("w0", active_blocks=60, waiting=0, total_blocks=100)
    assert route(router, recs, p, "a").record.instance_id == "w1"  # w0 is over half full
    router.loads.reported("w1", active_blocks=90, waiting=0, total_blocks=100)
    assert route(router, recs, p, "b").record.instance_id == "w0"  # both busy: the cheaper one


def test_decode_after_remote_prefill_gets_no_overlap_credit_and_approximate_mode_learns() -> None:
    router = KvRouter(KvRouterSettings(kv_events=False, approximate_ttl=60, seed=2))
    recs = workers(2)
    p = prompt(BS * 6, 1, 0)
    first = route(router, recs, p, "a")
    first.finished(None)
    assert route(router, recs, p, "b").record.instance_id == first.record.instance_id  # learned from the decision
    decode = route(router, recs, p, "c", overlap_credit=False)
    assert decode.overlap_blocks == 0


def test_a_worker_that_leaves_is_forgotten() -> None:
    router = KvRouter(KvRouterSettings(seed=1))
    recs = workers(2)
    p = prompt(BS * 6, 1, 0)
    d = route(router, recs, p, "a")
    router.forget(d.record.instance_id)
    assert d.record.instance_id not in router.index.workers() and d.record.instance_id not in router.loads.workers
    d.finished(None)  # a late finish for a forgotten worker is harmless
    others = [r for r in recs if r.instance_id != d.record.instance_id]
    assert route(router, others, p, "b").record.instance_id == others[0].instance_id
    assert block_hashes(p, BS)  # (the prompt has full blocks)


def test_a_prompt_hashed_ahead_is_not_hashed_again_by_its_decision(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import threading

    import dynamo.frontend.router.kv as kv

    router = KvRouter(KvRouterSettings(seed=1))
    recs = workers(2)
    tokens = prompt(BS * 8, 3, 0)
    copy = list(tokens)
    worker_thread = threading.Thread(target=router.prehash, args=(tokens,), kwargs={"block_size": BS})
    worker_thread.start()
    worker_thread.join(timeout=10)
    calls: list[int] = []
    real = kv.prompt_hashes
    monkeypatch.setattr(kv, "prompt_hashes", lambda ids, size: calls.append(len(ids)) or real(ids, size))
    first = route(router, recs, tokens, "a")
    assert calls == [] and first.overlap_blocks == 0
    first.finished(None)
    # an equal prompt in another list object was not hashed ahead: its decision hashes it, and the
    # guess the first decision left makes it overlap in full on the same worker
    second = route(router, recs, copy, "b")
    assert calls == [len(copy)] and second.record.instance_id == first.record.instance_id
    assert second.overlap_blocks == len(copy) // BS
    for i in range(70):  # hashed ahead, never routed: bounded
        router.prehash(prompt(BS, 1, i), BS)
    assert len(router._prehashed) == 64
