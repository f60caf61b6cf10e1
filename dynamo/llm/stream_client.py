"""The client end of `GenerateStream`: one long-lived stream per worker, shared by every request
this process sends there (the frontend, a decode worker asking prefill workers).

A request gets a stream id and a queue; one reader task hands each received item to its request's
queue. A request that stops early (its consumer went away) sends a cancel for its stream id. When the
stream breaks (the worker died or drained away), every request on it fails the way a `Generate`
call would have (InstanceUnreachableError or grpc.aio.AioRpcError), so callers handle both alike.

Outputs of one request that queue up before its consumer asks again are handed over joined, as one.
With an `OutputPacing` (the frontend's), a request's consumer is also handed outputs at most every
so often, however fast they arrive: a busy frontend writes fewer, larger SSE chunks instead of
spending itself on one write per token. A request's last output never waits for the pacing.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator
from typing import cast

import grpc

from dynamo.llm import codec
from dynamo.llm.proto import worker_pb2 as pb
from dynamo.llm.protocol import GenerateOutput, GenerateRequest
from dynamo.runtime.discovery.records import InstanceRecord
from dynamo.runtime.rpc.client import EndpointClient, translate_rpc_error

log = logging.getLogger(__name__)

GENERATE_STREAM_METHOD = "/dynamo.llm.v1.Worker/GenerateStream"
_NO_METADATA = grpc.aio.Metadata()


class _Broken:
    """Queued to every open request when the stream breaks."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


class OutputPacing:
    """A budget of deliveries per second for one process, shared by the requests open through it.

    Each request is handed its outputs at most every `open / rate` seconds (none below 1 ms, at most
    1 s): the more streams a process serves, the more tokens each delivery carries, so its writes per
    second stay near `rate` whatever the concurrency. A lone stream is not paced at all.
    """

    MIN_S = 0.001  # below this, pacing saves nothing and a timer per delivery would cost
    MAX_S = 1.0  # a stream never holds tokens back longer than this

    def __init__(self, rate: float) -> None:
        if rate <= 0:
            raise ValueError(f"a pacing rate must be positive, not {rate}")
        self.rate = rate
        self.open = 0  # requests being read through worker streams now

    def interval(self) -> float:
        s = self.open / self.rate
        return 0.0 if s < self.MIN_S else min(s, self.MAX_S)


def _ends(item: pb.StreamItem | _Broken) -> bool:
    """Whether nothing follows this item on its request (the last output, an error, a broken stream)."""
    return isinstance(item, _Broken) or item.done


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class _Inbox:
    """A request's received items: a deque the reader appends to and the request's consumer reads
    (and looks ahead in, to join outputs that queued up)."""

    __slots__ = ("items", "_waiter", "_paced")

    def __init__(self) -> None:
        self.items: deque[pb.StreamItem | _Broken] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._paced = False  # the consumer waits out its pacing: only a last item wakes it early

    def put_nowait(self, item: pb.StreamItem | _Broken) -> None:
        self.items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done() and (not self._paced or _ends(item)):
            waiter.set_result(None)

    async def get(self, not_before: float = 0.0) -> pb.StreamItem | _Broken:
        """The next item; with `not_before` (loop time), not before then unless the request's last
        item is already here or arrives meanwhile."""
        if not_before:
            loop = asyncio.get_running_loop()
            if loop.time() < not_before and not (self.items and _ends(self.items[-1])):
                waiter = self._waiter = loop.create_future()
                timer = loop.call_at(not_before, _wake, waiter)
                self._paced = True
                try:
                    await waiter
                finally:
                    timer.cancel()
                    self._waiter = None
                    self._paced = False
        while not self.items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self.items.popleft()


class WorkerStream:
    """One GenerateStream call to one worker instance."""

    def __init__(self, client: EndpointClient, record: InstanceRecord, pacing: OutputPacing | None = None) -> None:
        self.record = record
        self._pacing = pacing
        self.channel = client.channel(record)
        self._client = client
        self._queues: dict[int, _Inbox] = {}
        self._ids = itertools.count(1)
        self._outbox: asyncio.Queue[pb.StreamRequestItem] = asyncio.Queue()
        self.error: BaseException | None = None
        method = self.channel.stream_stream(GENERATE_STREAM_METHOD,
                                            request_serializer=pb.StreamRequest.SerializeToString,
                                            response_deserializer=pb.StreamResponse.FromString,
                                            _registered_method=True)  # type: ignore[call-arg]  # as grpc's generated stubs do
        self._call = method(self._requests())
        self._reader = asyncio.get_running_loop().create_task(self._read_loop())

    @property
    def broken(self) -> bool:
        return self.error is not None

    async def _requests(self) -> AsyncIterator[pb.StreamRequest]:
        """One message per write, carrying everything queued since the previous write: grpc asks
        for the next message only once the previous one is on its way, so requests that start
        together (e.g. as a batch of others finished) travel and start on the worker together."""
        while True:
            msg = pb.StreamRequest()
            msg.items.append(await self._outbox.get())
            while not self._outbox.empty():
                msg.items.append(self._outbox.get_nowait())
            yield msg

    async def _read_loop(self) -> None:
        error: BaseException
        try:
            while True:
                resp = await self._call.read()
                if resp is grpc.aio.EOF:
                    error = grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, _NO_METADATA, _NO_METADATA,
                                                 "the worker ended the stream")
                    break
                for item in cast(pb.StreamResponse, resp).items:
                    queue = self._queues.get(item.stream_id)
                    if queue is not None:
                        queue.put_nowait(item)
        except grpc.aio.AioRpcError as e:
            error = translate_rpc_error(e, self.record)
        except asyncio.CancelledError:
            error = grpc.aio.AioRpcError(grpc.StatusCode.CANCELLED, _NO_METADATA, _NO_METADATA,
                                         "the client closed the stream")
        except Exception as e:  # a bug; fail the requests rather than leave them waiting
            log.exception("GenerateStream to %s: reader failed", self.record.target)
            error = e
        self.error = error
        for queue in self._queues.values():
            queue.put_nowait(_Broken(error))

    async def generate(self, request: GenerateRequest, timeout: float | None = None
                       ) -> AsyncGenerator[GenerateOutput, None]:
        """The request's outputs. Raises as a Generate call to the same worker would."""
        if self.error is not None:
            raise self.error
        sid = next(self._ids)
        queue = _Inbox()
        self._queues[sid] = queue
        self._outbox.put_nowait(pb.StreamRequestItem(stream_id=sid, generate=codec.request_to_pb(request)))
        deadline = None if timeout is None else time.monotonic() + timeout
        done = False
        pacing = self._pacing
        not_before = 0.0  # loop time before which the next delivery waits (pacing)
        self._client.acquire(self.record.instance_id)
        if pacing is not None:
            pacing.open += 1
        try:
            while True:
                if deadline is None:
                    item = await queue.get(not_before)
                else:
                    try:
                        item = await asyncio.wait_for(queue.get(not_before), max(0.0, deadline - time.monotonic()))
                    except TimeoutError:
                        raise grpc.aio.AioRpcError(grpc.StatusCode.DEADLINE_EXCEEDED, _NO_METADATA,
                                                   _NO_METADATA, f"no answer within {timeout:g} s") from None
                if isinstance(item, _Broken):
                    done = True  # nothing left to cancel
                    raise item.error
                if item.HasField("output"):
                    output = codec.output_from_pb(item.output)
                    # Outputs that queued up meanwhile (the consumer is slower than the worker: a
                    # busy frontend) go on as one: one SSE chunk instead of several under load.
                    waiting = queue.items
                    while waiting and not item.done and output.open_run():
                        after = waiting[0]
                        if isinstance(after, _Broken) or not after.HasField("output"):
                            break
                        then = codec.output_from_pb(after.output)
                        if not output.takes(then):
                            break  # (decoded again in its turn: rare)
                        waiting.popleft()
                        item = after
                        output = _join(output, then)
                    yield output
                    if pacing is not None:
                        interval = pacing.interval()
                        not_before = asyncio.get_running_loop().time() + interval if interval else 0.0
                if item.done:
                    done = True
                    if item.status_code:
                        raise grpc.aio.AioRpcError(_status_code(item.status_code), _NO_METADATA,
                                                   _NO_METADATA, item.status_message)
                    return
        finally:
            if pacing is not None:
                pacing.open -= 1
            self._client.release(self.record.instance_id)
            self._queues.pop(sid, None)
            if not done and self.error is None:
                self._outbox.put_nowait(pb.StreamRequestItem(stream_id=sid, cancel=True))


def _join(first: GenerateOutput, then: GenerateOutput) -> GenerateOutput:
    first.token_ids.extend(then.token_ids)
    if first.logprobs is not None and then.logprobs is not None:
        first.logprobs.extend(then.logprobs)
    first.finish_reason, first.usage = then.finish_reason, then.usage
    first.disaggregated_params, first.error = then.disaggregated_params, then.error
    return first


_CODES = {code.value[0]: code for code in grpc.StatusCode}


def _status_code(value: int) -> grpc.StatusCode:
    return _CODES.get(value, grpc.StatusCode.UNKNOWN)


class WorkerStreams:
    """The open GenerateStream per worker instance of one EndpointClient (opened on first use,
    replaced when broken or when the instance's channel was replaced). Closing the client's
    channels ends them."""

    def __init__(self, client: EndpointClient, pacing: OutputPacing | None = None) -> None:
        self._client = client
        self._pacing = pacing
        self._streams: dict[str, WorkerStream] = {}

    def get(self, record: InstanceRecord) -> WorkerStream:
        stream = self._streams.get(record.instance_id)
        if stream is None or stream.broken or stream.channel is not self._client.channel(record):
            for iid in [i for i, s in self._streams.items() if s.broken]:  # instances gone since
                del self._streams[iid]
            stream = WorkerStream(self._client, record, self._pacing)
            self._streams[record.instance_id] = stream
        return stream
