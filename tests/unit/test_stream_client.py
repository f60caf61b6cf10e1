"""The GenerateStream client's hand-over: outputs of one request that queued up while its consumer
was busy go on as one output (one SSE chunk under load), in order, ending as the last one ended;
outputs that cannot join (a prefill's handoff parameters) stay apart. A real grpc.aio server on
loopback plays the worker, scripted per test."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import grpc
import pytest

from dynamo.llm import codec
from dynamo.llm.proto import worker_pb2 as pb
from dynamo.llm.protocol import DisaggregatedParams, FinishReason, GenerateOutput, GenerateRequest, Usage
from dynamo.llm.stream_client import GENERATE_STREAM_METHOD, WorkerStream
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


async def outputs_with(script: Script) -> tuple[list[GenerateOutput], int]:
    """Run one request against a worker following `script`: the first output is read as soon as it
    comes; `go` is then set, and the rest is read only once every message has reached the client."""
    go = asyncio.Event()
    sent = 0

    async def handler(requests: AsyncIterator[pb.StreamRequest], context: grpc.aio.ServicerContext
                      ) -> AsyncIterator[pb.StreamResponse]:
        nonlocal sent
        async for request in requests:
            for entry in request.items:
                if entry.HasField("generate"):
                    async for msg in script(entry.stream_id, go):
                        sent += 1
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
        stream = WorkerStream(client, InstanceRecord("ns", "backend", "generate", "w", "127.0.0.1", port))  # type: ignore[arg-type]
        outputs = stream.generate(GenerateRequest("r", [5, 6, 7]))
        got = [await outputs.__anext__()]
        go.set()
        deadline = asyncio.get_running_loop().time() + 10
        while not any(i.done for i in stream._queues[1].items if isinstance(i, pb.StreamItem)):
            assert asyncio.get_running_loop().time() < deadline, "the rest never reached the client"
            await asyncio.sleep(0.005)
        got += [o async for o in outputs]
        return got, sent
    finally:
        await client._channel.close()
        await server.stop(None)


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
