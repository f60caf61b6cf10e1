"""Bootstrap-mode disaggregation (SGLang's way) through dynamo.llm.disagg.disaggregated() and two
mocker engines in bootstrap mode: prefill and decode run at the same time and meet in a room on the
prefill engine's rendezvous port (a real TCP server). Failures on either side fail both, in time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from dynamo.llm.disagg import bootstrap_endpoint, check_handoff_mode, disaggregated
from dynamo.llm.errors import PrefillError, WorkerError
from dynamo.llm.model_card import ModelCard, Role
from dynamo.llm.protocol import (
    Bootstrap,
    FinishReason,
    GenerateOutput,
    GenerateRequest,
    InvalidRequest,
    SamplingOptions,
    StopConditions,
)
from dynamo.llm.worker.handlers import PrefillHandler
from dynamo.llm.worker.metrics import WorkerMetrics
from dynamo.mocker.args import MockerConfig
from dynamo.mocker.bootstrap import BootstrapError, BootstrapServer, meet
from dynamo.mocker.engine import MockerEngine
from dynamo.runtime.discovery.records import InstanceRecord

PROMPT = [(11 * i) % 997 + 1 for i in range(90)]
DEADLINE_S = 10.0


def config(**kw: Any) -> MockerConfig:
    base: dict[str, Any] = dict(vocab_size=1000, max_model_len=1024, block_size=16, num_gpu_blocks=256,
                                speedup_ratio=1000.0, eos_token_ids=[0], handoff="bootstrap")
    base.update(kw)
    return MockerConfig(**base)


def request(rid: str, max_tokens: int = 12) -> GenerateRequest:
    return GenerateRequest(rid, list(PROMPT), stop=StopConditions(max_tokens=max_tokens),
                           sampling=SamplingOptions(temperature=0.8, seed=3))


def prefill_record(port: int) -> InstanceRecord:
    card = ModelCard(served_model_name="m", model_path="m", tokenizer="m", context_length=1024, kv_block_size=16,
                     total_kv_blocks=256, role=Role.PREFILL, engine="mocker", bootstrap_endpoint=f"127.0.0.1:{port}")
    return InstanceRecord("ns", "prefill", "generate", "p1", "127.0.0.1", 1, metadata={"model_card": card.to_dict()})


class PrefillGroup:
    """The prefill worker as the orchestrator sees it (WorkerGroup.generate), here the worker
    shell's PrefillHandler over a mocker engine in this process; `before` runs first (a hook to
    make the prefill wait, fail or hang)."""

    def __init__(self, engine: MockerEngine, before: Callable[[GenerateRequest], Any] | None = None) -> None:
        self.handler = PrefillHandler(engine, WorkerMetrics(CollectorRegistry(), "m", "prefill").bind(), "p1")
        self.before = before
        self.cancelled = asyncio.Event()
        self.requests: list[GenerateRequest] = []

    async def generate(self, record: InstanceRecord, req: GenerateRequest,
                       timeout: float | None = None) -> AsyncIterator[GenerateOutput]:
        self.requests.append(req)
        try:
            if self.before is not None:
                await self.before(req)
            async for out in self.handler.generate(req):
                yield out
        except asyncio.CancelledError:
            self.cancelled.set()
            raise


@pytest.fixture
async def engines() -> AsyncIterator[tuple[MockerEngine, MockerEngine, MockerEngine]]:
    agg = MockerEngine(config(), Role.AGGREGATED)
    prefill = MockerEngine(config(), Role.PREFILL)
    decode = MockerEngine(config(bootstrap_timeout=DEADLINE_S), Role.DECODE)
    for e in (agg, prefill, decode):
        await e.start()
    yield agg, prefill, decode
    for e in (agg, prefill, decode):
        await e.shutdown()


async def run(outputs: AsyncIterator[GenerateOutput]) -> tuple[list[int], GenerateOutput]:
    tokens: list[int] = []
    last = None
    async for out in outputs:
        tokens += out.token_ids
        last = out
    assert last is not None and last.finish_reason is not None
    return tokens, last


async def until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.005)


async def test_only_a_bootstrap_prefill_engine_serves_rooms(
        engines: tuple[MockerEngine, MockerEngine, MockerEngine]) -> None:
    agg, prefill, decode = engines
    assert prefill.info.bootstrap_port and agg.info.bootstrap_port is None and decode.info.bootstrap_port is None
    assert bootstrap_endpoint(prefill_record(prefill.info.bootstrap_port)) == ("127.0.0.1", prefill.info.bootstrap_port)
    pull = MockerEngine(config(handoff="pull"), Role.PREFILL)
    await pull.start()
    try:
        assert pull.info.bootstrap_port is None
        req = request("r")
        req.bootstrap = Bootstrap("127.0.0.1", 1, 5)
        with pytest.raises(InvalidRequest, match="pull mode"):
            await run(pull.generate(req))
    finally:
        await pull.shutdown()


def test_the_worker_shell_refuses_rooms_for_a_pull_mode_engine() -> None:
    req = request("r")
    check_handoff_mode(req, "vllm", False)  # no room: fine
    req.bootstrap = Bootstrap("127.0.0.1", 8998, 1)
    check_handoff_mode(req, "mocker", True)
    with pytest.raises(InvalidRequest, match="vllm worker hands KV over in pull mode"):
        check_handoff_mode(req, "vllm", False)


async def test_bootstrap_prefill_and_decode_equal_aggregated(
        engines: tuple[MockerEngine, MockerEngine, MockerEngine]) -> None:
    agg, prefill, decode = engines
    expected, _ = await run(agg.generate(request("agg")))
    group = PrefillGroup(prefill)
    record = prefill_record(prefill.info.bootstrap_port or 0)
    tokens, last = await run(disaggregated(group, record, request("d"), DEADLINE_S, decode.generate))  # type: ignore[arg-type]
    assert tokens == expected and last.finish_reason is FinishReason.LENGTH
    assert last.usage is not None and last.usage.cached_tokens == len(PROMPT)  # its KV came from the prefill
    sent = group.requests[0]
    assert sent.stop.max_tokens == 1 and sent.bootstrap is not None and sent.bootstrap.port == prefill.info.bootstrap_port
    assert prefill.num_unfinished_requests() == 0 and decode.num_unfinished_requests() == 0


async def test_a_prefill_that_waits_for_its_decode_partner_does_not_deadlock(
        engines: tuple[MockerEngine, MockerEngine, MockerEngine]) -> None:
    """SGLang's prefill waits for the decode side's bootstrap before it sends KV: an orchestrator
    that sent the decode request only after the prefill finished would hang here."""
    agg, prefill, decode = engines
    expected, _ = await run(agg.generate(request("agg")))

    async def wait_for_decode(req: GenerateRequest) -> None:
        await until(lambda: decode.stats().waiting_requests == 1, "the decode side to enter its room")

    tokens, _ = await run(disaggregated(PrefillGroup(prefill, wait_for_decode), prefill_record(prefill.info.bootstrap_port or 0),  # type: ignore[arg-type]
                                        request("d"), DEADLINE_S, decode.generate))
    assert tokens == expected


async def test_a_failed_prefill_fails_the_request_and_frees_the_decode_side(
        engines: tuple[MockerEngine, MockerEngine, MockerEngine]) -> None:
    _, prefill, decode = engines

    async def die(req: GenerateRequest) -> None:
        await until(lambda: decode.stats().waiting_requests == 1, "the decode side to enter its room")
        raise WorkerError("prefill worker p1 went away (connection reset)")

    t0 = time.monotonic()
    with pytest.raises(PrefillError, match="went away"):
        await run(disaggregated(PrefillGroup(prefill, die), prefill_record(prefill.info.bootstrap_port or 0),  # type: ignore[arg-type]
                                request("d"), DEADLINE_S, decode.generate))
    assert time.monotonic() - t0 < DEADLINE_S / 2
    await until(lambda: decode.num_unfinished_requests() == 0, "the decode side to drop the request")


async def test_a_dead_prefill_engine_ends_the_decode_wait_at_once(
        engines: tuple[MockerEngine, MockerEngine, MockerEngine]) -> None:
    _, prefill, decode = engines
    group = PrefillGroup(prefill, lambda req: asyncio.Event().wait())  # the prefill never answers...
    outputs = disaggregated(group, prefill_record(prefill.info.bootstrap_port or 0), request("d"),  # type: ignore[arg-type]
                            DEADLINE_S, decode.generate)
    consumer = asyncio.create_task(run(outputs))
    await until(lambda: decode.stats().waiting_requests == 1, "the decode side to enter its room")
    t0 = time.monotonic()
    await prefill.shutdown()  # ...and its engine dies, closing its rendezvous port
    with pytest.raises(PrefillError, match="went away|cannot meet"):
        await consumer
    assert time.monotonic() - t0 < DEADLINE_S / 2
    assert group.cancelled.is_set()  # the orchestrator cancelled the prefill side too
    assert decode.num_unfinished_requests() == 0


async def test_no_first_token_within_the_prefill_timeout_fails_both_sides(
        engines: tuple[MockerEngine, MockerEngine, MockerEngine]) -> None:
    _, prefill, decode = engines
    group = PrefillGroup(prefill, lambda req: asyncio.Event().wait())  # a prefill worker that hangs
    t0 = time.monotonic()
    with pytest.raises(PrefillError, match="no first token within 0.5 s"):
        await run(disaggregated(group, prefill_record(prefill.info.bootstrap_port or 0), request("d"), 0.5,  # type: ignore[arg-type]
                                decode.generate))
    assert 0.5 <= time.monotonic() - t0 < DEADLINE_S / 2
    assert group.cancelled.is_set()
    await until(lambda: decode.num_unfinished_requests() == 0, "the decode side to drop the request")


async def test_a_failed_decode_side_cancels_the_prefill(
        engines: tuple[MockerEngine, MockerEngine, MockerEngine]) -> None:
    _, prefill, _ = engines
    started = asyncio.Event()

    async def prefill_waits(req: GenerateRequest) -> None:
        started.set()
        await asyncio.Event().wait()

    async def broken_decode(req: GenerateRequest) -> AsyncIterator[GenerateOutput]:
        await started.wait()
        raise WorkerError("decode worker d1 failed")
        yield  # pragma: no cover

    group = PrefillGroup(prefill, prefill_waits)
    with pytest.raises(WorkerError, match="d1 failed"):
        await run(disaggregated(group, prefill_record(prefill.info.bootstrap_port or 0), request("d"), DEADLINE_S,  # type: ignore[arg-type]
                                broken_decode))
    assert group.cancelled.is_set()


async def test_a_cancelled_prefill_fails_its_room() -> None:
    server = BootstrapServer(host="127.0.0.1")
    port = await server.start()
    try:
        waiting = asyncio.create_task(meet("127.0.0.1", port, 7, DEADLINE_S))
        server.fail(7, "the prefill request was cancelled")
        with pytest.raises(BootstrapError, match="failed room 7: the prefill request was cancelled"):
            await waiting
        server.publish(8, {"k": 1}, [5])  # a result published before its decode side arrives waits for it
        assert (await meet("127.0.0.1", port, 8, DEADLINE_S))["first_token_ids"] == [5]
        t0 = time.monotonic()
        with pytest.raises(BootstrapError, match="did not hand over room 9 within 0.2 s"):
            await meet("127.0.0.1", port, 9, 0.2)
        assert time.monotonic() - t0 < DEADLINE_S / 2
    finally:
        await server.stop()
    with pytest.raises(BootstrapError, match="cannot meet"):
        await meet("127.0.0.1", port, 10, DEADLINE_S)


async def test_a_client_that_goes_away_cancels_both_sides(
        engines: tuple[MockerEngine, MockerEngine, MockerEngine]) -> None:
    _, prefill, decode = engines
    group = PrefillGroup(prefill, lambda req: asyncio.Event().wait())
    consumer = asyncio.create_task(run(disaggregated(group, prefill_record(prefill.info.bootstrap_port or 0),  # type: ignore[arg-type]
                                                     request("d"), DEADLINE_S, decode.generate)))
    await until(lambda: decode.stats().waiting_requests == 1, "the decode side to enter its room")
    consumer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await consumer
    assert group.cancelled.is_set()
    await until(lambda: decode.num_unfinished_requests() == 0, "the decode side to drop the request")
