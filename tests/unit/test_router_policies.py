"""The frontend's router modes pick among the candidates they are given."""

from __future__ import annotations

from collections import Counter

import pytest

from dynamo.frontend.router import ROUTER_MODES, make_router
from dynamo.llm.protocol import GenerateRequest
from dynamo.runtime.discovery.records import InstanceRecord

REQ = GenerateRequest("r", [1, 2, 3])


def records(n: int) -> list[InstanceRecord]:
    return [InstanceRecord("ns", "backend", "generate", f"{i:016x}", "127.0.0.1", 9000 + i) for i in range(n)]


def test_every_simple_mode_is_buildable_and_unknown_ones_are_refused() -> None:
    for mode in ROUTER_MODES:
        if mode != "kv":
            assert make_router(mode).select(records(2), REQ, lambda _: 0).record in records(2)
    with pytest.raises(ValueError, match="round-robin, random, least-loaded, kv"):
        make_router("fastest")


def test_round_robin_takes_turns() -> None:
    router, recs = make_router("round-robin"), records(3)
    picks = [router.select(recs, REQ, lambda _: 0).record.instance_id for _ in range(6)]
    assert picks == [r.instance_id for r in recs] * 2


def test_random_reaches_every_candidate() -> None:
    router, recs = make_router("random"), records(3)
    counts = Counter(router.select(recs, REQ, lambda _: 0).record.instance_id for _ in range(300))
    assert set(counts) == {r.instance_id for r in recs} and min(counts.values()) > 50


def test_least_loaded_prefers_the_idle_and_rotates_among_ties() -> None:
    router, recs = make_router("least-loaded"), records(3)
    load = {recs[0].instance_id: 2, recs[1].instance_id: 0, recs[2].instance_id: 0}
    picks = [router.select(recs, REQ, load.__getitem__).record.instance_id for _ in range(4)]
    assert picks == [recs[1].instance_id, recs[2].instance_id] * 2
