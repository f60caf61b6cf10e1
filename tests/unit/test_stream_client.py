"""The GenerateStream client's hand-over: outputs of one request that queued up while its consumer
was busy go on as one output (one SSE chunk under load), in order, ending as the last one ended;
outputs that cannot join (a prefill's handoff parameters) stay apart. With pacing, a request's
outputs are handed over at most every interval, joined, except its last one, which never waits.
A real grpc.aio server on loopback plays the worker, scripted per test."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import grpc
import pytest

from dynamo.llm import codec
from dynamo.llm.proto import worker_pb2 as pb
from dynamo.llm.protocol import DisaggregatedParams, FinishReason, GenerateOutput, GenerateRequest, Usage
from dynamo.llm.stream_client import GENERATE_STREAM_METHOD, OutputPacing, WorkerStream
from dynamo.runtime.discovery.records import InstanceRecord

Script = Callable[[int, asyncio.Event], AsyncIterator[pb.StreamResponse]]


def item(sid: int, output: GenerateOutput | None = None, done: bool = False) -> pb.StreamResponse:
    msg = pb.StreamResponse()
    entry = msg.items.add(stream_id=sid, done=done)
    if output is not None:
        entry.output.CopyFrom(codec.output_to_pb(output))
    return msg


class _Client:
    """What WorkerStream needs of an EndpointClient: a channel, and in-flight counting."""

    def __init__(self, target: str) -> None:
        self._channel = grpc.aio.insecure_channel(target)

    def channel(self, record: InstanceRecord) -> grpc.aio.Channel:
        return self._channel

    def acquire(self, instance_id: str) -> None:
        pass

    def release(self, instance_id: str) -> None:
        pass


@contextlib.asynccontextmanager
async def scripted_worker(script: Script, go: asyncio.Event, pacing: OutputPacing | None = None
                          ) -> AsyncIterator[tuple[WorkerStream, list[int]]]:
    """A real grpc.aio server playing a worker that answers a request's stream id with `script`,
    and a WorkerStream to it; the list counts the messages sent."""
    sent = [0]

    async def handler(requests: AsyncIterator[pb.StreamRequest], context: grpc.aio.ServicerContext
                      ) -> AsyncIterator[pb.StreamResponse]:
        async for request in requests:
            for entry in request.items:
                if entry.HasField("generate"):
                    async for msg in script(entry.stream_id, go):
                        sent[0] += 1
                        yield msg
                    return

    server = grpc.aio.server()
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("dynamo.llm.v1.Worker", {
        "GenerateStream": grpc.stream_stream_rpc_method_handler(
            handler, request_deserializer=pb.StreamRequest.FromString,
            response_serializer=pb.StreamResponse.SerializeToString)})])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    client = _Client(f"127.0.0.1:{port}")
    assert GENERATE_STREAM_METHOD.endswith("/GenerateStream")
    try:
        yield WorkerStream(client, InstanceRecord("ns", "backend", "generate", "w", "127.0.0.1", port),  # type: ignore[arg-type]
                           pacing), sent
    finally:
        await client._channel.close()
        await server.stop(None)


async def outputs_with(script: Script) -> tuple[list[GenerateOutput], int]:
    """Run one request against a worker following `script`: the first output is read as soon as it
    comes; `go` is then set, and the rest is read only once every message has reached the client."""
    go = asyncio.Event()
    async with scripted_worker(script, go) as (stream, sent):
        outputs = stream.generate(GenerateRequest("r", [5, 6, 7]))
        got = [await outputs.__anext__()]
        go.set()
        deadline = asyncio.get_running_loop().time() + 10
        while not any(i.done for i in stream._queues[1].items if isinstance(i, pb.StreamItem)):
            assert asyncio.get_running_loop().time() < deadline, "the rest never reached the client"
            await asyncio.sleep(0.005)
        got += [o async for o in outputs]
        return got, sent[0]


async def test_outputs_that_queued_up_arrive_as_one() -> None:
    async def script(sid: int, go: asyncio.Event) -> AsyncIterator[pb.StreamResponse]:
        yield item(sid, GenerateOutput(token_ids=[10]))
        await go.wait()
        for t in range(11, 19):
            yield item(sid, GenerateOutput(token_ids=[t, t + 100]))
        yield item(sid, GenerateOutput(token_ids=[19], finish_reason=FinishReason.LENGTH,
                                       usage=Usage(prompt_tokens=3, completion_tokens=18)), done=True)

    got, sent = await outputs_with(script)
    assert sent == 10 and len(got) == 2
    assert got[0].token_ids == [10]
    assert got[1].token_ids == [x for t in range(11, 19) for x in (t, t + 100)] + [19]
    assert got[1].finish_reason is FinishReason.LENGTH and got[1].usage is not None
    assert got[1].usage.completion_tokens == 18


async def test_a_handoff_and_what_follows_a_finish_do_not_join() -> None:
    params = DisaggregatedParams("vllm", {"remote_block_ids": [1, 2]})

    async def script(sid: int, go: asyncio.Event) -> AsyncIterator[pb.StreamResponse]:
        yield item(sid, GenerateOutput(token_ids=[1]))
        await go.wait()
        yield item(sid, GenerateOutput(token_ids=[2]))
        yield item(sid, GenerateOutput(token_ids=[3], disaggregated_params=params))  # joins, as the last
        yield item(sid, GenerateOutput(token_ids=[4]))  # after handoff parameters: apart
        yield item(sid, GenerateOutput(token_ids=[], finish_reason=FinishReason.STOP), done=True)

    got, _ = await outputs_with(script)
    assert [o.token_ids for o in got] == [[1], [2, 3], [4]]
    assert got[1].disaggregated_params == params and got[2].finish_reason is FinishReason.STOP


@pytest.mark.parametrize("first_logprobs", [True, False])
async def test_outputs_with_and_without_logprobs_stay_apart(first_logprobs: bool) -> None:
    from dynamo.llm.protocol import TokenLogprob

    def lp(t: int) -> list[TokenLogprob]:
        return [TokenLogprob(token_id=t, logprob=-0.5)]

    async def script(sid: int, go: asyncio.Event) -> AsyncIterator[pb.StreamResponse]:
        yield item(sid, GenerateOutput(token_ids=[1], logprobs=lp(1)))
        await go.wait()
        yield item(sid, GenerateOutput(token_ids=[2], logprobs=lp(2) if first_logprobs else None))
        yield item(sid, GenerateOutput(token_ids=[3], logprobs=None if first_logprobs else lp(3)))
        yield item(sid, GenerateOutput(token_ids=[], finish_reason=FinishReason.STOP), done=True)

    got, _ = await outputs_with(script)
    assert [t for o in got for t in o.token_ids] == [1, 2, 3]
    assert all(not o.logprobs or len(o.logprobs) == len(o.token_ids) for o in got)  # never a mix
    assert [o.token_ids for o in got][:3] == [[1], [2], [3]]


def test_pacing_spreads_a_rate_over_the_open_requests() -> None:
    pacing = OutputPacing(8000)
    assert pacing.interval() == 0.0
    pacing.open = 7  # 0.875 ms: below a millisecond, not worth a timer
    assert pacing.interval() == 0.0
    pacing.open = 80
    assert pacing.interval() == pytest.approx(0.01)
    pacing.open = 100_000  # never more than a second
    assert pacing.interval() == OutputPacing.MAX_S == 1.0
    with pytest.raises(ValueError, match="positive"):
        OutputPacing(0)


def _trickle(tokens: int, every_s: float, end: FinishReason | None = FinishReason.LENGTH) -> Script:
    """A worker that sends one token every `every_s`, then (with `end`) a last output."""
    async def script(sid: int, go: asyncio.Event) -> AsyncIterator[pb.StreamResponse]:
        for t in range(tokens):
            yield item(sid, GenerateOutput(token_ids=[100 + t]))
            await asyncio.sleep(every_s)
        if end is not None:
            yield item(sid, GenerateOutput(token_ids=[], finish_reason=end), done=True)
    return script


async def _timed(stream: WorkerStream) -> list[tuple[float, GenerateOutput]]:
    loop = asyncio.get_running_loop()
    return [(loop.time(), o) async for o in stream.generate(GenerateRequest("r", [5, 6, 7]))]


async def test_paced_outputs_are_handed_over_joined_at_most_every_interval() -> None:
    pacing = OutputPacing(5)  # one open request: every 0.2 s
    async with scripted_worker(_trickle(30, 0.01), asyncio.Event(), pacing) as (stream, _):
        paced = await asyncio.wait_for(_timed(stream), 30)
    assert pacing.open == 0  # the request is closed: it no longer shares the budget
    assert [t for _, o in paced for t in o.token_ids] == list(range(100, 130))
    assert paced[0][1].token_ids == [100]  # the first output never waits
    assert paced[-1][1].finish_reason is FinishReason.LENGTH
    gaps = [later - earlier for (earlier, _), (later, _) in zip(paced, paced[1:-1])]
    assert all(gap >= 0.19 for gap in gaps), gaps  # the last one may come sooner
    # ~0.3 s of tokens: the first, one or two paced, the last (unpaced, every token comes alone)
    assert len(paced) <= 4, [o.token_ids for _, o in paced]
    async with scripted_worker(_trickle(30, 0.01), asyncio.Event()) as (stream, _):
        unpaced = await asyncio.wait_for(_timed(stream), 30)
    assert len(unpaced) >= 2 * len(paced)


async def test_the_last_output_and_a_broken_stream_do_not_wait_for_pacing() -> None:
    pacing = OutputPacing(1)  # one open request: every second (the cap)
    async with scripted_worker(_trickle(2, 0.02), asyncio.Event(), pacing) as (stream, _):
        got = await asyncio.wait_for(_timed(stream), 30)
    assert [o.token_ids for _, o in got] == [[100], [101]]
    assert got[1][1].finish_reason is FinishReason.LENGTH
    assert got[1][0] - got[0][0] < 0.5  # ~0.04 s: the finish woke the paced wait

    async def breaks(sid: int, go: asyncio.Event) -> AsyncIterator[pb.StreamResponse]:
        yield item(sid, GenerateOutput(token_ids=[1]))
        await asyncio.sleep(0.02)
        raise RuntimeError("the worker fails")  # grpc ends the call: UNKNOWN

    async with scripted_worker(breaks, asyncio.Event(), pacing) as (stream, _):
        outputs = stream.generate(GenerateRequest("r", [5]))
        loop = asyncio.get_running_loop()
        assert (await outputs.__anext__()).token_ids == [1]
        first = loop.time()
        with pytest.raises(grpc.aio.AioRpcError):
            await asyncio.wait_for(outputs.__anext__(), 30)
        assert loop.time() - first < 0.5
    assert pacing.open == 0
