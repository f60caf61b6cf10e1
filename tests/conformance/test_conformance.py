"""The backend conformance suite: every `python -m dynamo.<backend>` must pass it.

Each backend runs as real worker processes (registration in a file-discovery directory, the common
gRPC interface); the checks are the same for all backends.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import grpc
import jsonschema
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tokenizers import Tokenizer

from dynamo.llm import codec
from dynamo.llm.proto import worker_pb2 as pb
from dynamo.llm.proto import worker_pb2_grpc as pb_grpc
from dynamo.llm.protocol import (
    DisaggregatedParams,
    FinishReason,
    GenerateOutput,
    GenerateRequest,
    OutputOptions,
    SamplingOptions,
    StopConditions,
    StructuredKind,
    StructuredOutput,
)
from tests.support.backends import BACKENDS, BackendSpec
from tests.support.hf_reference import HfReference
from tests.support.processes import WorkerProcess

pytestmark = pytest.mark.timeout(900)


def prompt(seed: int, n: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(3, 1024) for _ in range(n)]


def tokens(outputs: list[GenerateOutput]) -> list[int]:
    return [t for o in outputs for t in o.token_ids]


def req(token_ids: list[int], max_tokens: int = 16, **kw: object) -> GenerateRequest:
    stop = StopConditions(max_tokens=max_tokens, ignore_eos=bool(kw.pop("ignore_eos", True)),
                          stop_token_ids=list(kw.pop("stop_token_ids", [])))  # type: ignore[arg-type]
    return GenerateRequest(request_id=f"t-{time.monotonic_ns()}", token_ids=token_ids, stop=stop, **kw)  # type: ignore[arg-type]


async def start_worker(spec: BackendSpec, model: Path, discovery: Path, role: str, *extra: str) -> WorkerProcess:
    reason = spec.available()
    if reason:
        pytest.skip(reason)
    role_args = [] if role == "agg" else ["--disaggregation-mode", role]
    w = WorkerProcess(spec.name, [*spec.args(model), *spec.role_args.get(role, []), *role_args, *extra], discovery,
                      env=spec.env.get(role, {}), name=f"{spec.id}-{role}")
    return await w.ready(spec.startup_timeout)


@pytest.fixture(scope="module", params=[s.param() for s in BACKENDS])
def spec(request: pytest.FixtureRequest) -> BackendSpec:
    return request.param


@pytest.fixture(scope="module")
def discovery_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("discovery")


@pytest.fixture(scope="module")
async def agg(spec: BackendSpec, tiny_model_dir: Path, discovery_dir: Path) -> AsyncIterator[WorkerProcess]:
    w = await start_worker(spec, tiny_model_dir, discovery_dir, "agg", "--drain-timeout", "60")
    yield w
    await w.close()


# --- registration and health -------------------------------------------------------------------

async def test_registers_with_model_card(agg: WorkerProcess, spec: BackendSpec, tiny_model_dir: Path) -> None:
    rec = agg.record
    assert rec is not None and rec.namespace == "test" and rec.component == "backend" and rec.endpoint == "generate"
    card = agg.card
    assert card["engine"] == spec.name and card["role"] == "agg"
    assert card["served_model_name"] and card["tokenizer"] == str(tiny_model_dir)
    assert card["context_length"] > 0 and card["kv_block_size"] > 0 and card["total_kv_blocks"] > 0
    assert card["vocab_size"] == 1024
    info = await agg.stub().ModelInfo(pb.ModelInfoRequest(), timeout=10)
    assert info.instance_id == rec.instance_id and '"served_model_name"' in info.model_card_json


async def test_health_and_metrics(agg: WorkerProcess, spec: BackendSpec) -> None:
    async with grpc.aio.insecure_channel(agg.record.target) as ch:  # type: ignore[union-attr]
        resp = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert resp.status == health_pb2.HealthCheckResponse.SERVING
    status, body = agg.http_get("/health")
    assert status == 200 and '"healthy"' in body
    assert agg.http_get("/live")[0] == 200
    _, metrics = agg.http_get("/metrics")
    assert "dynamo_worker_requests_total" in metrics and "dynamo_worker_kv_cache_blocks" in metrics
    assert "process_cpu_seconds_total" in metrics
    if spec.engine_metric is not None:
        assert spec.engine_metric in metrics, "the engine's own metrics must be exposed too"


# --- generation -----------------------------------------------------------------------------------

async def test_streams_exactly_max_tokens(agg: WorkerProcess) -> None:
    before = agg.metric("dynamo_worker_output_tokens_total")
    p = prompt(1, 40)
    outs = await agg.generate(req(p, max_tokens=24))
    assert len(tokens(outs)) == 24
    assert all(0 <= t < 1024 for t in tokens(outs))
    assert outs[-1].finish_reason is FinishReason.LENGTH
    assert all(o.finish_reason is None for o in outs[:-1])
    usage = outs[-1].usage
    assert usage is not None and usage.prompt_tokens == 40 and usage.completion_tokens == 24
    assert agg.metric("dynamo_worker_output_tokens_total") - before == 24


async def test_stop_token_ids(agg: WorkerProcess) -> None:
    p = prompt(2, 30)
    ref = tokens(await agg.generate(req(p, max_tokens=20)))
    stop_at = next(i for i in range(3, 20) if ref[i] not in ref[:i])  # first occurrence of that token
    outs = await agg.generate(req(p, max_tokens=20, stop_token_ids=[ref[stop_at]]))
    assert tokens(outs) == ref[:stop_at + 1], "output must end with the stop token, at its first occurrence"
    assert outs[-1].finish_reason is FinishReason.STOP


async def find_eos_prompt(agg: WorkerProcess, spec: BackendSpec, model_dir: Path, eos: int) -> list[int]:
    """A prompt whose greedy continuation reaches EOS: from the reference model where there are
    real weights, else by generating from candidate prompts."""
    if spec.real_weights:
        return await asyncio.to_thread(lambda: HfReference(model_dir).eos_prompt(eos))
    for seed in range(40):
        p = prompt(100 + seed, 16)
        if eos in tokens(await agg.generate(req(p, max_tokens=64, ignore_eos=True))):
            return p
    raise AssertionError("no prompt produced an EOS token within 64 tokens")


async def test_eos_ends_generation_unless_ignored(agg: WorkerProcess, spec: BackendSpec, tiny_model_dir: Path
                                                  ) -> None:
    eos_ids = agg.card["eos_token_ids"]
    assert eos_ids, "the model card must list the EOS token ids"
    p = await find_eos_prompt(agg, spec, tiny_model_dir, eos_ids[0])
    ref = tokens(await agg.generate(req(p, max_tokens=64, ignore_eos=True)))
    hit = ref.index(eos_ids[0])
    assert len(ref) == 64, "ignore_eos must generate past EOS"
    outs = await agg.generate(req(p, max_tokens=64, ignore_eos=False))
    assert tokens(outs) == ref[:hit + 1], "output must end with the EOS token, at its first occurrence"
    assert outs[-1].finish_reason is FinishReason.EOS


async def test_seeded_sampling_is_reproducible(agg: WorkerProcess, spec: BackendSpec) -> None:
    if spec.seeded_sampling:
        pytest.skip(spec.seeded_sampling)
    p = prompt(3, 20)
    sampling = SamplingOptions(temperature=1.0, top_p=0.95, top_k=50, seed=1234)
    a = tokens(await agg.generate(req(p, max_tokens=24, sampling=sampling)))
    b = tokens(await agg.generate(req(p, max_tokens=24, sampling=sampling)))
    other = SamplingOptions(temperature=1.0, top_p=0.95, top_k=50, seed=99)
    c = tokens(await agg.generate(req(p, max_tokens=24, sampling=other)))
    assert a == b
    assert a != c


async def test_logprobs(agg: WorkerProcess) -> None:
    outs = await agg.generate(req(prompt(4, 10), max_tokens=5, output=OutputOptions(logprobs=3)))
    lps = [lp for o in outs for lp in (o.logprobs or [])]
    assert [lp.token_id for lp in lps] == tokens(outs)
    assert all(lp.logprob <= 0 for lp in lps)
    assert all(len(lp.top) == 3 for lp in lps)


async def test_concurrent_requests_all_complete(agg: WorkerProcess) -> None:
    results = await asyncio.gather(*(agg.generate(req(prompt(10 + i, 20 + i), max_tokens=16)) for i in range(8)))
    assert [len(tokens(r)) for r in results] == [16] * 8


# --- structured output and logit bias ----------------------------------------------------------------

# Every value finite and every key required: a model with random weights must still end its JSON.
SCHEMA = {"type": "object", "additionalProperties": False, "required": ["ok", "color", "n"],
          "properties": {"ok": {"type": "boolean"}, "color": {"enum": ["red", "green", "blue"]},
                         "n": {"type": "integer", "minimum": 0, "maximum": 9}}}
CHOICES = ["yes", "no", "maybe so"]


def text_of(outputs: list[GenerateOutput], model_dir: Path) -> str:
    return Tokenizer.from_file(str(model_dir / "tokenizer.json")).decode(tokens(outputs), skip_special_tokens=True)


def constrained(p: list[int], kind: StructuredKind, value: str) -> GenerateRequest:
    # ignore_eos off: a completed constraint ends on EOS
    return req(p, max_tokens=96, ignore_eos=False, structured_output=StructuredOutput(kind, value))


async def test_json_schema_output_validates(agg: WorkerProcess, spec: BackendSpec, tiny_model_dir: Path) -> None:
    if spec.structured_output:
        pytest.skip(spec.structured_output)
    outs = await agg.generate(constrained(prompt(70, 12), StructuredKind.JSON_SCHEMA, json.dumps(SCHEMA)))
    text = text_of(outs, tiny_model_dir)
    assert outs[-1].finish_reason in (FinishReason.EOS, FinishReason.STOP), f"unfinished: {text!r}"
    jsonschema.validate(json.loads(text), SCHEMA)


async def test_choice_output_is_one_of_the_choices(agg: WorkerProcess, spec: BackendSpec,
                                                    tiny_model_dir: Path) -> None:
    if spec.structured_output:
        pytest.skip(spec.structured_output)
    for seed in (71, 72):
        outs = await agg.generate(constrained(prompt(seed, 12), StructuredKind.CHOICE, json.dumps(CHOICES)))
        assert text_of(outs, tiny_model_dir) in CHOICES
        assert outs[-1].finish_reason in (FinishReason.EOS, FinishReason.STOP)


async def test_every_constraint_kind_is_honoured_or_refused(agg: WorkerProcess, spec: BackendSpec) -> None:
    """A kind the worker cannot honour is INVALID_ARGUMENT naming it; every other kind runs to a
    finish (never an error, never silently unconstrained: the validating tests above check that)."""
    values = {"regex": "[ab]+", "grammar": 'root ::= "a"', "json_schema": json.dumps(SCHEMA),
              "choice": json.dumps(CHOICES), "json_object": ""}
    for kind, value in values.items():
        request = constrained(prompt(73, 8), StructuredKind(kind), value)
        if kind in spec.structured_refused:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await agg.generate(request, timeout=30)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert kind in (err.value.details() or ""), "the refusal names what is not supported"
        else:
            outs = await agg.generate(request, timeout=60)
            assert outs[-1].finish_reason in (FinishReason.EOS, FinishReason.STOP, FinishReason.LENGTH), kind


async def test_logit_bias_of_100_forces_the_token_under_greedy(agg: WorkerProcess, spec: BackendSpec) -> None:
    p = prompt(74, 10)
    ref = tokens(await agg.generate(req(p, max_tokens=4)))
    target = next(t for t in range(3, 1024) if t not in ref)
    outs = await agg.generate(req(p, max_tokens=4, sampling=SamplingOptions(logit_bias={target: 100.0})))
    if spec.logit_bias:  # an engine without logits (the mocker, the double): accepted, and the request runs
        assert len(tokens(outs)) == 4 and outs[-1].finish_reason is not FinishReason.ERROR, spec.logit_bias
        return
    assert tokens(outs) == [target] * 4


async def test_prefix_cache_and_kv_events(agg: WorkerProcess) -> None:
    block = agg.card["kv_block_size"]
    p = prompt(5, block * 4 + 3)
    call = agg.stub().SubscribeKvEvents(pb.SubscribeRequest(), timeout=60)
    stored: list[int] = []
    four_stored = asyncio.Event()

    async def collect() -> None:
        while (batch := await call.read()) is not grpc.aio.EOF:
            for e in batch.events:
                if e.kind == pb.KV_EVENT_KIND_STORED:
                    stored.extend(e.block_hashes)
            if len(stored) >= 4:
                four_stored.set()

    first = await asyncio.wait_for(call.read(), 10)  # the subscription is live: nothing is missed from here
    assert isinstance(first, pb.KvEventBatch) and not first.events and first.instance_id == agg.record.instance_id  # type: ignore[union-attr]
    collector = asyncio.create_task(collect())
    try:
        await agg.generate(req(p, max_tokens=4))
        second = await agg.generate(req(p, max_tokens=4))
        usage = second[-1].usage
        assert usage is not None and usage.cached_tokens >= block * 4 - block  # all but maybe the last full block
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(four_stored.wait(), 10)
        assert len(stored) >= 4, f"expected STORED events for the prompt's 4 full blocks, got {stored}"
    finally:
        call.cancel()
        collector.cancel()


async def test_clear_kv_blocks(agg: WorkerProcess, spec: BackendSpec) -> None:
    block = agg.card["kv_block_size"]
    p = prompt(6, block * 3 + 1)
    await agg.generate(req(p, max_tokens=2))
    if not spec.clears_kv_cache:  # the engine has no way to: say so, and keep serving
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await agg.stub().ClearKvBlocks(pb.ClearKvBlocksRequest(), timeout=30)
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED and spec.name in (err.value.details() or "")
        assert len(tokens(await agg.generate(req(p, max_tokens=2)))) == 2
        return
    await agg.stub().ClearKvBlocks(pb.ClearKvBlocksRequest(), timeout=30)
    again = await agg.generate(req(p, max_tokens=2))
    assert again[-1].usage is not None and again[-1].usage.cached_tokens == 0


# --- cancellation and bad input ---------------------------------------------------------------------

async def test_cancel_mid_stream_aborts_engine_request(agg: WorkerProcess) -> None:
    async def scenario() -> int:
        it = agg.stream(req(prompt(7, 20), max_tokens=900))
        got = 0
        async for out in it:
            got += len(out.token_ids)
            if got >= 2:
                break
        await it.aclose()  # cancels the gRPC call
        return 1

    await cancelled_in_time(agg, scenario)


# --- GenerateStream: many requests over one stream -------------------------------------------------

def request_outcomes(worker: WorkerProcess) -> str:
    """The worker's requests by final status, and its last log lines (for failure messages)."""
    _, text = worker.http_get("/metrics")
    counts = [line for line in text.splitlines() if line.startswith(("dynamo_worker_requests_total{",
                                                                        "dynamo_worker_request_errors_total{"))]
    return "\n".join(counts) + "\n--- worker log ---\n" + worker.log()[-4000:]


class RawStream:
    """One GenerateStream call driven message by message (the wire protocol, not our client)."""

    def __init__(self, worker: WorkerProcess) -> None:
        self._requests: asyncio.Queue[pb.StreamRequest | None] = asyncio.Queue()
        # A channel of its own, as a frontend has per worker (not shared with the test's other calls)
        assert worker.record is not None
        self.channel = grpc.aio.insecure_channel(worker.record.target)
        self.call = pb_grpc.WorkerStub(self.channel).GenerateStream(self._iter(), timeout=300)
        self.items: dict[int, list[pb.StreamItem]] = {}
        self.messages = 0
        self._changed = asyncio.Event()
        self.reader = asyncio.create_task(self._read())

    async def _iter(self) -> AsyncIterator[pb.StreamRequest]:
        while (msg := await self._requests.get()) is not None:
            yield msg

    async def _read(self) -> None:
        async for resp in self.call:
            self.messages += 1
            for item in resp.items:
                self.items.setdefault(item.stream_id, []).append(item)
            self._changed.set()

    def send(self, sid: int, request: GenerateRequest | pb.GenerateRequest) -> None:
        self.send_many({sid: request})

    def send_many(self, requests: dict[int, GenerateRequest | pb.GenerateRequest]) -> None:
        """All in one StreamRequest message."""
        msg = pb.StreamRequest()
        for sid, request in requests.items():
            req = request if isinstance(request, pb.GenerateRequest) else codec.request_to_pb(request)
            msg.items.add(stream_id=sid, generate=req)
        self._requests.put_nowait(msg)

    def cancel(self, sid: int) -> None:
        self._requests.put_nowait(pb.StreamRequest(items=[pb.StreamRequestItem(stream_id=sid, cancel=True)]))

    def half_close(self) -> None:
        self._requests.put_nowait(None)

    def tokens(self, sid: int) -> list[int]:
        return [t for i in self.items.get(sid, []) for t in i.output.token_ids]

    def end(self, sid: int) -> pb.StreamItem | None:
        return next((i for i in self.items.get(sid, []) if i.done), None)

    async def wait_for(self, cond: Callable[[], bool], timeout: float = 120) -> None:
        async with asyncio.timeout(timeout):
            while not cond():
                self._changed.clear()
                if self.reader.done():
                    self.reader.result()  # raises the call's error
                    assert cond(), "the stream ended before the condition held"
                await self._changed.wait()


async def test_generate_stream_equals_generate_and_batches(agg: WorkerProcess) -> None:
    reqs = [req(prompt(300 + i, 16 + i), max_tokens=24) for i in range(8)]
    rs = RawStream(agg)
    # Equality one request at a time: a real engine's greedy output may depend on what else is in
    # its batch (floating-point order), on either transport.
    for sid, r in enumerate(reqs[:3], start=1):
        want = tokens(await agg.generate(r))
        rs.send(sid, r)
        await rs.wait_for(lambda: rs.end(sid) is not None)
        assert rs.tokens(sid) == want, f"stream {sid} differs from the same request on Generate"
    # Then all at once, in one message: every request completes, and outputs ready together share
    # messages.
    messages_before = rs.messages
    rs.send_many(dict(enumerate(reqs, start=11)))
    await rs.wait_for(lambda: all(rs.end(sid) for sid in range(11, 19)))
    for sid in range(11, 19):
        end = rs.end(sid)
        assert end is not None and end.status_code == 0 and end.status_message == ""
        assert len(rs.tokens(sid)) == 24
        assert end.output.finish_reason == pb.FINISH_REASON_LENGTH and end.output.usage.completion_tokens == 24
    items = sum(len(rs.items[sid]) for sid in range(11, 19))
    messages = rs.messages - messages_before
    assert messages < items, f"{items} items in {messages} messages: outputs ready together must share one"
    rs.half_close()
    await asyncio.wait_for(rs.reader, 30)  # the server ends the call once its requests are done
    assert await rs.call.code() == grpc.StatusCode.OK


async def cancelled_in_time(agg: WorkerProcess, scenario: Callable[[], Awaitable[int]], attempts: int = 3) -> None:
    """Run a cancellation scenario (it returns how many requests it cancelled) until its cancels
    reached the worker while the requests still ran. On a starved 2-core machine a cancel can
    take longer to arrive than a 900-token request takes to finish (it did, by seconds, while the
    worker ran in a session of its own: see tests/support/processes.py); such an attempt tested
    nothing (the request simply succeeded) and is run again. Cancels that arrive must each abort
    the engine request and count as a cancellation, or the test fails."""
    for attempt in range(1, attempts + 1):
        cancels0 = agg.metric("dynamo_worker_request_cancellations_total")
        success0 = agg.metric("dynamo_worker_requests_total", status="success")
        n = await scenario()
        assert await agg.wait_unfinished(0, timeout=20) == 0, "the engine still holds cancelled requests"
        deadline = time.monotonic() + 5
        while (agg.metric("dynamo_worker_request_cancellations_total") - cancels0 < n
               and time.monotonic() < deadline):
            await asyncio.sleep(0.05)
        cancelled = agg.metric("dynamo_worker_request_cancellations_total") - cancels0
        finished_first = agg.metric("dynamo_worker_requests_total", status="success") - success0
        if cancelled == n:
            return
        assert cancelled + finished_first >= n, f"requests neither cancelled nor finished:\n{request_outcomes(agg)}"
        print(f"attempt {attempt}: {finished_first:.0f} request(s) finished before the cancel arrived; again")
    raise AssertionError(f"in {attempts} attempts the cancels never reached the worker in time:\n"
                         f"{request_outcomes(agg)}")


async def test_generate_stream_cancel_one_keeps_others(agg: WorkerProcess) -> None:
    async def scenario() -> int:
        rs = RawStream(agg)
        rs.send(1, req(prompt(310, 20), max_tokens=900))
        rs.send(2, req(prompt(311, 20), max_tokens=12))
        await rs.wait_for(lambda: len(rs.tokens(1)) >= 2)
        rs.cancel(1)
        await rs.wait_for(lambda: rs.end(1) is not None and rs.end(2) is not None)
        assert rs.end(2).status_code == 0 and len(rs.tokens(2)) == 12  # type: ignore[union-attr]
        end1 = rs.end(1)
        assert end1 is not None
        if end1.status_code == 0:
            assert len(rs.tokens(1)) == 900  # finished before the cancel arrived
        else:
            assert end1.status_code == grpc.StatusCode.CANCELLED.value[0] and len(rs.tokens(1)) < 900
        rs.half_close()
        await asyncio.wait_for(rs.reader, 30)
        return 1

    await cancelled_in_time(agg, scenario)


async def test_generate_stream_bad_request_fails_alone(agg: WorkerProcess) -> None:
    rs = RawStream(agg)
    # In one message: a bad request fails alone, not the good one that came with it.
    rs.send_many({1: pb.GenerateRequest(request_id="bad", token_ids=[]),
                  2: req(prompt(320, 10), max_tokens=8),
                  3: pb.GenerateRequest(request_id="bad-vocab", token_ids=[5, 1024])})
    await rs.wait_for(lambda: all(rs.end(sid) for sid in (1, 2, 3)))
    assert rs.end(1).status_code == grpc.StatusCode.INVALID_ARGUMENT.value[0]  # type: ignore[union-attr]
    assert "prompt is empty" in rs.end(1).status_message  # type: ignore[union-attr]
    assert rs.end(3).status_code == grpc.StatusCode.INVALID_ARGUMENT.value[0]  # type: ignore[union-attr]
    assert "outside the vocabulary" in rs.end(3).status_message  # type: ignore[union-attr]
    assert rs.end(2).status_code == 0 and len(rs.tokens(2)) == 8  # type: ignore[union-attr]
    rs.half_close()
    await asyncio.wait_for(rs.reader, 30)


async def test_generate_stream_client_gone_aborts_every_request(agg: WorkerProcess) -> None:
    async def scenario() -> int:
        rs = RawStream(agg)
        for sid in (1, 2, 3):
            rs.send(sid, req(prompt(330 + sid, 20), max_tokens=900))
        await rs.wait_for(lambda: all(len(rs.tokens(sid)) >= 1 for sid in (1, 2, 3)))
        rs.call.cancel()
        await asyncio.gather(rs.reader, return_exceptions=True)
        return 3

    await cancelled_in_time(agg, scenario)


BAD_REQUESTS = [
    ("empty prompt", lambda r: setattr(r, "token_ids", []), "prompt is empty"),
    ("token outside vocabulary", lambda r: setattr(r, "token_ids", [5, 1024]), "outside the vocabulary"),
    ("over context", lambda r: setattr(r.stop, "max_tokens", 5000), "context"),
    ("negative temperature", lambda r: setattr(r.sampling, "temperature", -0.5), "temperature"),
    ("NaN top_p", lambda r: setattr(r.sampling, "top_p", float("nan")), "top_p"),
    ("negative penalty", lambda r: setattr(r.sampling, "repetition_penalty", -1.0), "repetition_penalty"),
    ("unknown model", lambda r: setattr(r, "model", "no-such-model"), "unknown model"),
    ("logit_bias outside vocabulary", lambda r: setattr(r.sampling, "logit_bias", {1024: 1.0}), "logit_bias"),
    ("foreign disagg params", lambda r: setattr(r, "disaggregated_params", DisaggregatedParams("other", {})), "other"),
]


@pytest.mark.parametrize("case", BAD_REQUESTS, ids=[c[0] for c in BAD_REQUESTS])
async def test_bad_input_is_invalid_argument(agg: WorkerProcess, case: tuple) -> None:  # type: ignore[type-arg]
    _, mutate, message = case
    bad = req(prompt(8, 10), max_tokens=4)
    mutate(bad)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await agg.generate(bad, timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in (err.value.details() or "")
    good = await agg.generate(req(prompt(8, 10), max_tokens=4))
    assert len(tokens(good)) == 4


@pytest.mark.parametrize("method, streaming", [("Generate", False), ("GenerateStream", True)])
async def test_bytes_that_do_not_decode_are_invalid_argument(agg: WorkerProcess, method: str, streaming: bool) -> None:
    """Garbage where a protobuf message belongs: INVALID_ARGUMENT with one warning line in the
    worker's log (no UNKNOWN, no traceback), and the worker goes on serving."""
    assert agg.record is not None
    logged = len(agg.log())
    garbage = b"\xff\xff\xff\xff\x0f" + bytes(range(40))
    async with grpc.aio.insecure_channel(agg.record.target) as channel:
        path = f"/{pb.DESCRIPTOR.services_by_name['Worker'].full_name}/{method}"
        if streaming:
            call = channel.stream_stream(path)(iter([garbage]), timeout=30)
        else:
            call = channel.unary_stream(path)(garbage, timeout=30)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for _ in call:
                pass
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value
    assert "does not decode" in (err.value.details() or "")
    said = agg.log()[logged:]
    assert "does not decode" in said and "Traceback" not in said
    good = await agg.generate(req(prompt(8, 10), max_tokens=4))
    assert len(tokens(good)) == 4


# --- greedy equality with the engine's reference (real weights only) ----------------------------------

@pytest.mark.real_weights
async def test_greedy_equals_reference(agg: WorkerProcess, tiny_model_dir: Path) -> None:
    prompts = [prompt(20 + i, 12 + 7 * i) for i in range(4)]
    got = [tokens(await agg.generate(req(p, max_tokens=32))) for p in prompts]
    reference = await asyncio.to_thread(HfReference, tiny_model_dir)
    expected = [await asyncio.to_thread(reference.greedy, p, 32) for p in prompts]
    assert got == expected


@pytest.mark.real_weights
@pytest.mark.engine_reference
async def test_greedy_equals_the_engine_in_process(agg: WorkerProcess, spec: BackendSpec, tiny_model_dir: Path
                                                   ) -> None:
    """The worker through gRPC against the engine's own Python API in a process of its own (same flags)."""
    prompts = [prompt(30 + i, 10 + 9 * i) for i in range(4)]
    got = [tokens(await agg.generate(req(p, max_tokens=24))) for p in prompts]
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", str(spec.engine_reference), json.dumps(spec.args(tiny_model_dir)),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **spec.env.get("agg", {})}, process_group=0)
    try:
        out, err = await asyncio.wait_for(child.communicate(json.dumps({"prompts": prompts, "max_tokens": 24}).encode()),
                                          spec.startup_timeout)
    finally:
        if child.returncode is None:
            os.killpg(child.pid, signal.SIGKILL)
            await child.wait()
    assert child.returncode == 0, err.decode(errors="replace")[-3000:]
    expected = json.loads(out.decode().strip().splitlines()[-1])["outputs"]
    assert got == expected


# --- disaggregated prefill/decode ---------------------------------------------------------------------

@pytest.fixture(scope="module")
async def disagg(spec: BackendSpec, tiny_model_dir: Path, discovery_dir: Path
                 ) -> AsyncIterator[tuple[WorkerProcess, WorkerProcess]]:
    prefill = await start_worker(spec, tiny_model_dir, discovery_dir, "prefill")
    try:
        decode = await start_worker(spec, tiny_model_dir, discovery_dir, "decode", "--prefill-timeout", "20")
    except BaseException:
        await prefill.close()
        raise
    yield prefill, decode
    await decode.close()
    await prefill.close()


@pytest.mark.disagg
async def test_prefill_decode_equals_aggregated(agg: WorkerProcess, disagg: tuple[WorkerProcess, WorkerProcess],
                                               spec: BackendSpec) -> None:
    prefill, decode = disagg
    assert prefill.card["role"] == "prefill" and prefill.record.component == "prefill"  # type: ignore[union-attr]
    remote_before = decode.metric("dynamo_worker_prefills_total", location="remote")
    lengths = [100, 220, 350, 480, 600]
    for i, n in enumerate(lengths):
        p = prompt(40 + i, n)
        expected = tokens(await agg.generate(req(p, max_tokens=16)))
        got = await decode.generate(req(p, max_tokens=16))
        assert tokens(got) == expected, f"prompt of {n} tokens: disaggregated output differs"
        assert got[-1].usage is not None and got[-1].usage.prompt_tokens == n
    assert decode.metric("dynamo_worker_prefills_total", location="remote") - remote_before == len(lengths)
    assert prefill.metric("dynamo_worker_requests_total", status="success") >= len(lengths)
    if spec.transfer_log is not None:
        deadline = time.monotonic() + 15
        while spec.transfer_log not in decode.log() and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
        assert spec.transfer_log in decode.log(), f"the decode engine never logged {spec.transfer_log!r}"


@pytest.mark.disagg
@pytest.mark.pull_handoff
async def test_prefill_worker_gets_one_token_requests(disagg: tuple[WorkerProcess, WorkerProcess]) -> None:
    prefill, _ = disagg
    outs = await prefill.generate(req(prompt(60, 50), max_tokens=16))
    assert len(tokens(outs)) == 1
    params = outs[-1].disaggregated_params
    assert params is not None and params.payload and params.prefill_instance_id == prefill.record.instance_id  # type: ignore[union-attr]
    # a request that already carries a prefill result belongs on a decode worker (the shell's rule)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await prefill.generate(req(prompt(60, 50), max_tokens=4, disaggregated_params=params), timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "prefill worker" in (err.value.details() or "")


@pytest.mark.disagg
async def test_garbage_disaggregated_params_rejected(disagg: tuple[WorkerProcess, WorkerProcess],
                                                     spec: BackendSpec) -> None:
    _, decode = disagg
    bad = req(prompt(61, 40), max_tokens=4, disaggregated_params=DisaggregatedParams(spec.name, {"junk": True}))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await decode.generate(bad, timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    ok = await decode.generate(req(prompt(61, 40), max_tokens=4))
    assert len(tokens(ok)) == 4


@pytest.mark.disagg
async def test_dead_prefill_worker_fails_decode_fast(disagg: tuple[WorkerProcess, WorkerProcess]) -> None:
    """Runs last of the disaggregation tests: it kills the prefill worker."""
    prefill, decode = disagg
    prefill.signal(signal.SIGSTOP)  # the next prefill hangs ...
    task = asyncio.create_task(decode.generate(req(prompt(62, 200), max_tokens=8), timeout=60))
    deadline = time.monotonic() + 20  # until the decode worker holds the request (waiting on the prefill)
    while (await decode.stats()).inflight_requests < 1 and not task.done() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert not task.done(), "the decode request should be waiting on the stopped prefill worker"
    assert (await decode.stats()).inflight_requests == 1
    t0 = time.monotonic()
    prefill.signal(signal.SIGKILL)  # ... until the prefill worker dies
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await asyncio.wait_for(task, 10)
    assert time.monotonic() - t0 < 10
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE and "prefill" in (err.value.details() or "")
    assert await decode.wait_unfinished(0, timeout=10) == 0, "decode side leaked a request"


# --- lifecycle (last: stops the aggregated worker) ------------------------------------------------------

async def test_sigterm_drains_then_deregisters(agg: WorkerProcess) -> None:
    streams = [asyncio.create_task(agg.generate(req(prompt(70 + i, 20), max_tokens=64))) for i in range(4)]
    shared = RawStream(agg)  # and two requests on one GenerateStream
    for sid in (1, 2):
        shared.send(sid, req(prompt(80 + sid, 20), max_tokens=64))
    await shared.wait_for(lambda: bool(shared.tokens(1) and shared.tokens(2)), timeout=30)
    deadline = time.monotonic() + 30
    while (await agg.stats()).inflight_requests < 6 and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    agg.signal(signal.SIGTERM)
    results = await asyncio.wait_for(asyncio.gather(*streams), 120)
    assert [len(tokens(r)) for r in results] == [64] * 4
    await shared.wait_for(lambda: bool(shared.end(1) and shared.end(2)))
    assert [len(shared.tokens(sid)) for sid in (1, 2)] == [64, 64]
    assert [shared.end(sid).status_code for sid in (1, 2)] == [0, 0]  # type: ignore[union-attr]
    with pytest.raises(grpc.aio.AioRpcError) as stopped:  # the worker ends the stream once drained
        await asyncio.wait_for(shared.reader, 60)
    assert stopped.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
    assert await asyncio.to_thread(agg.wait, 60) == 0
    live = await agg.registered()
    assert agg.record.instance_id not in [r.instance_id for r in live], "still registered after exit"  # type: ignore[union-attr]
