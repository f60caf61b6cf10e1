"""One `GenerateStream` call on a worker: many requests over one stream, their outputs batched.

Each request runs as its own task through the same code as `Generate` (WorkerServicer.serve_request);
the requests of one client message are dispatched together, so a batch of them reaches the
engine in one go rather than one gRPC read apart;
its outputs go into one pending `StreamResponse`, which a single writer sends whenever the previous
write has completed. Outputs that become ready together (one engine step of many requests) thus
travel in one message, and a slow client gets bigger messages rather than more of them; a request's
outputs that pile up while a write is under way join its one item in the next message (a run of
tokens, like the client's own joining), so a slow client also gets fewer items to decode.
A request's last output (the one with a finish reason) carries its end (`done`, status OK) and
goes out before the request's own bookkeeping runs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractContextManager
from typing import Protocol

import grpc

from dynamo.llm import codec
from dynamo.llm.proto import worker_pb2 as pb
from dynamo.llm.protocol import GenerateOutput
from dynamo.runtime.rpc.server import Malformed

log = logging.getLogger(__name__)

#: how a request ends when it does not finish normally: a gRPC status code and what went wrong
Failure = tuple[grpc.StatusCode, str]


class RequestServer(Protocol):
    async def serve_request(self, request: pb.GenerateRequest,
                            emit: Callable[[GenerateOutput], Awaitable[None]],
                            client_cancelled: Callable[[], bool] = ...) -> Failure | None: ...


class StreamSession:
    def __init__(self, server: RequestServer, context: grpc.aio.ServicerContext,
                 track: Callable[[], AbstractContextManager[None]]) -> None:
        """`track`: the server's in-flight accounting (a drain waits for it). Each request holds
        it while it runs; the session holds it while outputs wait to be sent, so a draining worker
        stops only once the last output is on the wire, not merely produced."""
        self._server = server
        self._context = context
        self._track = track
        self._held: AbstractContextManager[None] | None = None
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._pending = pb.StreamResponse()
        # each request's last item in the pending message, and the last output that went into it
        self._latest: dict[int, tuple[pb.StreamItem, GenerateOutput | None]] = {}
        self._ready = asyncio.Event()
        self._write_error: BaseException | None = None
        self._closing = False
        self._warned_empty = False

    async def run(self, requests: AsyncIterator[pb.StreamRequest]) -> None:
        writer = asyncio.create_task(self._write_loop())
        try:
            async for msg in requests:
                if self._write_error is not None:
                    break
                if isinstance(msg, Malformed):  # garbage from the client: its error, said once
                    log.warning("GenerateStream from %s: a message that does not decode (%s); refused",
                                self._context.peer(), msg.error)
                    await self._context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                              f"the request message does not decode as a StreamRequest: {msg.error}")
                if not msg.items and not self._warned_empty:
                    # What a client built for the older worker.proto (one request per message,
                    # no `items`) sends: without this line its requests would vanish silently.
                    log.warning("GenerateStream from %s: a StreamRequest without items (a client built "
                                "for an older worker.proto?); ignored", self._context.peer())
                    self._warned_empty = True
                for item in msg.items:
                    self._dispatch(item)
            # The client half-closed (or went away: grpc reads that as the end of the requests too,
            # and then cancels this handler): what it sent runs to the end, then the call ends.
            if self._tasks:
                log.debug("GenerateStream from %s: no more requests; %d still running",
                          self._context.peer(), len(self._tasks))
            while self._tasks:
                await asyncio.wait(list(self._tasks.values()))
            self._closing = True  # the writer sends what is pending, then returns
            self._ready.set()
            await writer
        finally:
            # The client went away, or the call is being torn down: cancel every request still
            # running (each counts as a cancellation and aborts its engine request).
            tasks = list(self._tasks.values())
            if tasks:
                log.info("GenerateStream from %s ended with %d request(s) running: cancelling them",
                         self._context.peer(), len(tasks))
            for t in tasks:
                t.cancel()
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
            if not writer.done():
                writer.cancel()
                await asyncio.gather(writer, return_exceptions=True)
            self._release(force=True)

    def _hold(self) -> None:
        if self._held is None:
            self._held = self._track()
            self._held.__enter__()

    def _release(self, force: bool = False) -> None:
        if self._held is not None and (force or not self._pending.items):
            held, self._held = self._held, None
            held.__exit__(None, None, None)

    def _dispatch(self, msg: pb.StreamRequestItem) -> None:
        sid = msg.stream_id
        kind = msg.WhichOneof("kind")
        if kind == "generate":
            if sid in self._tasks:
                self._end(sid, grpc.StatusCode.INVALID_ARGUMENT,
                          f"stream_id {sid} is already in use by a running request on this stream")
                return
            self._tasks[sid] = asyncio.create_task(self._run_one(sid, msg.generate))
        elif kind == "cancel":
            task = self._tasks.get(sid)
            if task is not None:
                task.cancel()
        else:
            self._end(sid, grpc.StatusCode.INVALID_ARGUMENT, "a StreamRequestItem must carry `generate` or `cancel`")

    async def _run_one(self, sid: int, request: pb.GenerateRequest) -> None:
        ended = False

        async def emit(out: GenerateOutput) -> None:
            nonlocal ended
            if ended:  # an adapter that breaks the contract: nothing may follow the last output
                log.warning("GenerateStream: stream %d produced an output after its last one; dropped", sid)
                return
            codec.output_to_pb(out, self._item_for(sid, out).output)
            if out.finish_reason is not None:
                # The engine's last output (the engine contract): it ends the request for the
                # client now (_end marks this very item), and this task lets the writer send it
                # before its own bookkeeping (metrics, closing the engine stream). In a closed loop
                # the client's next request waits for this message; at c=16 the bookkeeping of a
                # whole wave would delay it.
                self._end(sid, grpc.StatusCode.OK, "")
                ended = True
                await asyncio.sleep(0)

        try:
            failure = await self._server.serve_request(request, emit)
        except asyncio.CancelledError:
            if not ended:
                self._end(sid, grpc.StatusCode.CANCELLED, "cancelled")
            raise
        finally:
            self._tasks.pop(sid, None)
        if ended:
            if failure is not None:  # too late to tell the client, which has its whole answer
                log.warning("GenerateStream: stream %d failed after its last output: %s", sid, failure[1])
        elif failure is None:
            self._end(sid, grpc.StatusCode.OK, "")
        else:
            self._end(sid, *failure)

    def _add(self, sid: int) -> pb.StreamItem:
        if not self._pending.items:
            self._ready.set()
            self._hold()
        item = self._pending.items.add(stream_id=sid)
        self._latest[sid] = item, None
        return item

    def _item_for(self, sid: int, out: GenerateOutput) -> pb.StreamItem:
        """Where `out` goes: the request's item still waiting in the pending message when `out` can
        be appended to what went into it last (GenerateOutput.takes), else a new one."""
        latest = self._latest.get(sid)
        if latest is not None and latest[1] is not None and not latest[0].done and latest[1].takes(out):
            item = latest[0]
        else:
            item = self._add(sid)
        self._latest[sid] = item, out
        return item

    def _end(self, sid: int, code: grpc.StatusCode, message: str) -> None:
        # Usually the request's last output is still waiting to be sent: mark it, no extra item.
        latest = self._latest.get(sid) if not message else None
        item = latest[0] if latest is not None and not latest[0].done else self._add(sid)
        item.done = True
        item.status_code = code.value[0]
        item.status_message = message

    async def _write_loop(self) -> None:
        try:
            while True:
                await self._ready.wait()
                self._ready.clear()
                if self._pending.items:
                    batch, self._pending = self._pending, pb.StreamResponse()
                    self._latest.clear()
                    await self._context.write(batch)
                self._release()
                if self._closing and not self._pending.items:
                    return
        except asyncio.CancelledError:
            raise
        except Exception as e:  # the client is gone: nobody can receive what the requests produce
            log.debug("GenerateStream: write failed (%r); cancelling the stream's requests", e)
            self._write_error = e
            for t in list(self._tasks.values()):
                t.cancel()

