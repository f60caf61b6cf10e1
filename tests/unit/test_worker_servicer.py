"""The worker's Generate bookkeeping when the client goes away mid-stream (no server, no engine:
a context double that behaves as grpc.aio's does when a client cancels)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
from prometheus_client import CollectorRegistry

from dynamo.llm import codec
from dynamo.llm.model_card import ModelCard
from dynamo.llm.proto import worker_pb2 as pb
from dynamo.llm.protocol import EngineInfo, FinishReason, GenerateOutput, GenerateRequest, StopConditions
from dynamo.llm.worker.metrics import WorkerMetrics
from dynamo.llm.worker.servicer import WorkerServicer
from dynamo.llm.worker.stream_session import StreamSession
from dynamo.runtime.rpc.server import RpcServer


class ClientGoneContext:
    """grpc.aio ServicerContext double: the n-th write fails as it does when the client has reset
    the stream, while `cancelled()` may still say False (grpc marks the call cancelled later)."""

    def __init__(self, fail_on_write: int, error: BaseException) -> None:
        self.fail_on_write = fail_on_write
        self.error = error
        self.writes = 0
        self.aborted: tuple[grpc.StatusCode, str] | None = None

    async def write(self, message: object) -> None:
        self.writes += 1
        if self.writes == self.fail_on_write:
            raise self.error

    def cancelled(self) -> bool:
        return False

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.aborted = (code, details)
        raise grpc.aio.AbortError()


class CountingEngineStream:
    """Yields one token per step until closed; records that it was closed (the engine abort)."""

    name = "counting"
    bootstrap_handoff = False

    def __init__(self) -> None:
        self.closed = asyncio.Event()

    async def generate(self, request: GenerateRequest) -> AsyncIterator[GenerateOutput]:
        try:
            for i in range(1000):
                yield GenerateOutput(token_ids=[3 + i % 100])
                await asyncio.sleep(0)
        finally:
            self.closed.set()


class _Handler:
    def __init__(self, engine: CountingEngineStream) -> None:
        self.engine = engine

    def check(self, request: GenerateRequest) -> None:
        """Every request is fine here (the role's rules: dynamo.llm.worker.handlers)."""

    def generate(self, request: GenerateRequest) -> AsyncIterator[GenerateOutput]:
        return self.engine.generate(request)


def _servicer(engine: CountingEngineStream) -> tuple[WorkerServicer, WorkerMetrics, CollectorRegistry]:
    registry = CollectorRegistry()
    metrics = WorkerMetrics(registry, model="m", role="agg")
    servicer = WorkerServicer(RpcServer(), metrics.bind())
    info = EngineInfo(vocab_size=1024, context_length=1024, kv_block_size=16, total_kv_blocks=64)
    card = ModelCard(served_model_name="m", model_path="m", tokenizer="m", context_length=1024,
                     kv_block_size=16, total_kv_blocks=64)
    servicer.attach(engine, _Handler(engine), info, card, "inst-1")  # type: ignore[arg-type]
    return servicer, metrics, registry


def _value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, {"model": "m", "role": "agg", **labels}) or 0.0


def _request() -> object:
    return codec.request_to_pb(GenerateRequest(request_id="r1", token_ids=[5, 6, 7],
                                               stop=StopConditions(max_tokens=500, ignore_eos=True)))


@pytest.mark.parametrize("error", [grpc.aio.UsageError("client closed"), RuntimeError("write failed"),
                                   asyncio.CancelledError()], ids=["usage", "runtime", "cancelled"])
async def test_client_gone_mid_stream_counts_a_cancellation(error: BaseException) -> None:
    engine = CountingEngineStream()
    servicer, _, registry = _servicer(engine)
    ctx = ClientGoneContext(fail_on_write=3, error=error)
    with pytest.raises(BaseException):
        await servicer.Generate(_request(), ctx)  # type: ignore[arg-type]
    assert engine.closed.is_set(), "the engine stream was not closed (the request would keep running)"
    assert _value(registry, "dynamo_worker_request_cancellations_total") == 1
    assert _value(registry, "dynamo_worker_requests_total", status="cancelled") == 1
    assert _value(registry, "dynamo_worker_request_errors_total", kind="internal") == 0
    assert _value(registry, "dynamo_worker_inflight_requests") == 0
    assert _value(registry, "dynamo_worker_output_tokens_total") == 3
    assert ctx.aborted is None, "a client that went away is not answered with an error status"


async def test_engine_bug_is_internal_not_cancelled() -> None:
    class Broken(CountingEngineStream):
        async def generate(self, request: GenerateRequest) -> AsyncIterator[GenerateOutput]:
            yield GenerateOutput(token_ids=[3])
            raise ValueError("adapter bug")

    servicer, _, registry = _servicer(Broken())
    ctx = ClientGoneContext(fail_on_write=0, error=RuntimeError())
    with pytest.raises(grpc.aio.AbortError):
        await servicer.Generate(_request(), ctx)  # type: ignore[arg-type]
    assert ctx.aborted is not None and ctx.aborted[0] is grpc.StatusCode.INTERNAL
    assert "adapter bug" in ctx.aborted[1]
    assert _value(registry, "dynamo_worker_request_errors_total", kind="internal") == 1
    assert _value(registry, "dynamo_worker_request_cancellations_total") == 0


# --- GenerateStream session ---------------------------------------------------------------------

class _GatedContext:
    """Writes wait for `gate` (a slow network); what was written is kept."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.batches: list[object] = []

    async def write(self, message: object) -> None:
        await self.gate.wait()
        self.batches.append(message)

    def peer(self) -> str:
        return "ipv4:127.0.0.1:1"


class _TwoTokenServer:
    def __init__(self) -> None:
        self.finished = asyncio.Event()

    async def serve_request(self, request, emit, client_cancelled=lambda: False):  # type: ignore[no-untyped-def]
        await emit(GenerateOutput(token_ids=[7]))
        await emit(GenerateOutput(token_ids=[8], finish_reason=FinishReason.LENGTH))
        self.finished.set()
        return None


async def test_stream_session_holds_drain_until_its_last_output_is_written() -> None:
    from contextlib import contextmanager


    held = 0

    @contextmanager
    def track():  # type: ignore[no-untyped-def]
        nonlocal held
        held += 1
        try:
            yield
        finally:
            held -= 1

    client_open = asyncio.Event()  # the client keeps the stream open (never set)

    async def requests():  # type: ignore[no-untyped-def]
        yield pb.StreamRequest(items=[pb.StreamRequestItem(stream_id=5, generate=_request())])
        await client_open.wait()

    server, ctx = _TwoTokenServer(), _GatedContext()
    session = asyncio.create_task(StreamSession(server, ctx, track).run(requests()))  # type: ignore[arg-type]
    await asyncio.wait_for(server.finished.wait(), 5)
    await asyncio.sleep(0)
    assert held == 1, "the request finished but its outputs are unsent: a drain must still wait"
    ctx.gate.set()
    async with asyncio.timeout(5):
        while held:
            await asyncio.sleep(0.01)
    items = [i for b in ctx.batches for i in b.items]  # type: ignore[attr-defined]
    # produced while nothing could be written: one message, the request's outputs joined in one item
    assert len(ctx.batches) == 1, "outputs produced together travel in one message"
    assert [list(i.output.token_ids) for i in items] == [[7, 8]]
    assert items[0].done and items[0].status_code == 0 and items[0].output.finish_reason
    session.cancel()
    await asyncio.gather(session, return_exceptions=True)
    assert held == 0


class _RecordingServer:
    def __init__(self) -> None:
        self.started: list[str] = []

    async def serve_request(self, request, emit, client_cancelled=lambda: False):  # type: ignore[no-untyped-def]
        self.started.append(request.request_id)
        await emit(GenerateOutput(token_ids=[7], finish_reason=FinishReason.LENGTH))
        return None


async def test_stream_session_runs_every_item_of_a_message_and_rejects_bad_ones_alone(
        caplog: pytest.LogCaptureFixture) -> None:
    from contextlib import nullcontext

    def item(sid: int, rid: str | None) -> pb.StreamRequestItem:
        if rid is None:
            return pb.StreamRequestItem(stream_id=sid)  # neither generate nor cancel
        return pb.StreamRequestItem(stream_id=sid, generate=pb.GenerateRequest(request_id=rid, token_ids=[5]))

    async def requests():  # type: ignore[no-untyped-def]
        yield pb.StreamRequest()  # as an older client's message parses: no items
        yield pb.StreamRequest(items=[item(1, "a"), item(1, "dup"), item(2, None), item(3, "b")])

    server, ctx = _RecordingServer(), _GatedContext()
    ctx.gate.set()
    await asyncio.wait_for(StreamSession(server, ctx, nullcontext).run(requests()), 5)  # type: ignore[arg-type]
    assert server.started == ["a", "b"]
    ends = [(i.stream_id, i.status_code, i.status_message) for b in ctx.batches for i in b.items  # type: ignore[attr-defined]
            if i.done]
    invalid = grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert sorted(e[:2] for e in ends) == [(1, 0), (1, invalid), (2, invalid), (3, 0)]
    messages = {e[0]: e[2] for e in ends if e[1] == invalid}
    assert "already in use" in messages[1] and "must carry" in messages[2]
    assert "without items" in caplog.text, "a message the server cannot read must not vanish silently"


class _SlowBookkeepingServer:
    """Emits a request's last output, then keeps its task busy (metrics, closing the engine
    stream) until `release` is set; `after` is what it does next."""

    def __init__(self, after: str = "return") -> None:
        self.release = asyncio.Event()
        self.after = after

    async def serve_request(self, request, emit, client_cancelled=lambda: False):  # type: ignore[no-untyped-def]
        await emit(GenerateOutput(token_ids=[7]))
        await emit(GenerateOutput(token_ids=[8], finish_reason=FinishReason.LENGTH))
        await self.release.wait()
        if self.after == "emit":
            await emit(GenerateOutput(token_ids=[9]))  # breaks the engine contract
        if self.after == "fail":
            return grpc.StatusCode.INTERNAL, "closing the engine stream failed"
        return None


async def _run_session(server: object) -> tuple[asyncio.Task[None], _GatedContext, asyncio.Event]:
    from contextlib import nullcontext

    client_open = asyncio.Event()

    async def requests():  # type: ignore[no-untyped-def]
        yield pb.StreamRequest(items=[pb.StreamRequestItem(stream_id=4, generate=_request())])
        await client_open.wait()

    ctx = _GatedContext()
    ctx.gate.set()
    session = asyncio.create_task(StreamSession(server, ctx, nullcontext).run(requests()))  # type: ignore[arg-type]
    return session, ctx, client_open


async def _items_when(ctx: _GatedContext, n: int) -> list[pb.StreamItem]:
    async with asyncio.timeout(5):
        while sum(len(b.items) for b in ctx.batches) < n:  # type: ignore[attr-defined]
            await asyncio.sleep(0.001)
    return [i for b in ctx.batches for i in b.items]  # type: ignore[attr-defined]


async def test_stream_session_sends_the_last_output_before_the_requests_bookkeeping() -> None:
    server = _SlowBookkeepingServer()
    session, ctx, client_open = await _run_session(server)
    items = await _items_when(ctx, 1)  # while serve_request has not returned
    assert [list(i.output.token_ids) for i in items] == [[7, 8]]  # produced together: joined
    assert items[-1].done and items[-1].status_code == grpc.StatusCode.OK.value[0]
    assert len(ctx.batches) == 1, "the last output travels with those produced beside it"
    server.release.set()
    client_open.set()
    await asyncio.wait_for(session, 5)
    assert sum(len(b.items) for b in ctx.batches) == 1, "no second end for the same stream id"  # type: ignore[attr-defined]


@pytest.mark.parametrize("after", ["emit", "fail"])
async def test_stream_session_sends_nothing_after_a_requests_end(after: str,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    server = _SlowBookkeepingServer(after)
    session, ctx, client_open = await _run_session(server)
    await _items_when(ctx, 1)
    server.release.set()
    client_open.set()
    await asyncio.wait_for(session, 5)
    items = [i for b in ctx.batches for i in b.items]  # type: ignore[attr-defined]
    assert [(list(i.output.token_ids), i.done, i.status_code) for i in items] == [([7, 8], True, 0)]
    assert ("after its last one" if after == "emit" else "failed after its last output") in caplog.text


class _ScriptedOutputsServer:
    """Emits each request's scripted outputs, one event-loop turn apart (requests interleave)."""

    def __init__(self, scripts: dict[str, list[GenerateOutput]]) -> None:
        self.scripts = scripts
        self.done = 0

    async def serve_request(self, request, emit, client_cancelled=lambda: False):  # type: ignore[no-untyped-def]
        for out in self.scripts[request.request_id]:
            await emit(out)
            await asyncio.sleep(0)
        self.done += 1
        return None


async def test_stream_session_joins_what_piles_up_behind_a_write_per_request() -> None:
    from contextlib import nullcontext

    from dynamo.llm.protocol import TokenLogprob

    lp = [TokenLogprob(token_id=1, logprob=-0.1)]
    server = _ScriptedOutputsServer({
        "a": [GenerateOutput(token_ids=[1], logprobs=lp), GenerateOutput(token_ids=[2]),  # logprobs, then none: apart
              GenerateOutput(token_ids=[3]), GenerateOutput(token_ids=[4], finish_reason=FinishReason.LENGTH)],
        "b": [GenerateOutput(token_ids=[10]), GenerateOutput(token_ids=[], text="x"),  # text: apart
              GenerateOutput(token_ids=[11]), GenerateOutput(token_ids=[12], finish_reason=FinishReason.STOP)],
    })
    client_open = asyncio.Event()

    async def requests():  # type: ignore[no-untyped-def]
        yield pb.StreamRequest(items=[
            pb.StreamRequestItem(stream_id=sid, generate=codec.request_to_pb(GenerateRequest(rid, [5, 6])))
            for sid, rid in ((1, "a"), (2, "b"))])
        await client_open.wait()

    ctx = _GatedContext()  # the first write waits: everything after it piles up
    session = asyncio.create_task(StreamSession(server, ctx, nullcontext).run(requests()))  # type: ignore[arg-type]
    async with asyncio.timeout(5):
        while server.done < 2:
            await asyncio.sleep(0.001)
    ctx.gate.set()
    client_open.set()
    await asyncio.wait_for(session, 5)
    items = [i for b in ctx.batches for i in b.items]  # type: ignore[attr-defined]

    def of(sid: int) -> list[tuple[list[int], str, bool]]:
        return [(list(i.output.token_ids), i.output.text, i.done) for i in items if i.stream_id == sid]
    # the first write took each request's first output alone; the rest piled up and joined where it could
    assert of(1) == [([1], "", False), ([2, 3, 4], "", True)]
    assert of(2) == [([10], "", False), ([], "x", False), ([11, 12], "", True)]
    assert len(ctx.batches) == 2
    assert [i.output.finish_reason for i in items if i.done] == [pb.FINISH_REASON_LENGTH, pb.FINISH_REASON_STOP]
