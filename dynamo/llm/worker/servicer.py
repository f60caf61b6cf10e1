"""The gRPC `dynamo.llm.v1.Worker` service of a worker process."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc

from dynamo.llm import codec
from dynamo.llm.disagg import check_handoff_mode
from dynamo.llm.engine import EngineError, LLMEngine
from dynamo.llm.errors import NoWorkersError, PrefillError
from dynamo.llm.model_card import ModelCard
from dynamo.llm.proto import worker_pb2 as pb
from dynamo.llm.proto import worker_pb2_grpc as pb_grpc
from dynamo.llm.protocol import EngineInfo, FinishReason, GenerateOutput, InvalidRequest
from dynamo.llm.worker.handlers import RequestHandler
from dynamo.llm.worker.kv_relay import KvEventRelay
from dynamo.llm.worker.metrics import BoundWorkerMetrics
from dynamo.llm.worker.stream_session import Failure, StreamSession
from dynamo.runtime.rpc.server import RpcServer

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Worker"].full_name
_STATUS_OF_FINISH = {FinishReason.ERROR: "error", FinishReason.CANCELLED: "cancelled"}


class WorkerServicer(pb_grpc.WorkerServicer):
    def __init__(self, server: RpcServer, metrics: BoundWorkerMetrics) -> None:
        self._server = server
        self._metrics = metrics
        self._relay = KvEventRelay()
        # Set by attach() once the engine is up; until then Generate answers UNAVAILABLE.
        self._engine: LLMEngine | None = None
        self._handler: RequestHandler | None = None
        self._info: EngineInfo | None = None
        self._card: ModelCard | None = None
        self.instance_id = ""
        self.last_request_end = time.monotonic()

    @property
    def relay(self) -> KvEventRelay:
        return self._relay

    def attach(self, engine: LLMEngine, handler: RequestHandler, info: EngineInfo, card: ModelCard,
               instance_id: str) -> None:
        self._engine, self._handler, self._info, self._card = engine, handler, info, card
        self.instance_id = instance_id

    async def Generate(self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext) -> None:
        async def emit(out: GenerateOutput) -> None:
            await context.write(codec.output_to_pb(out))

        failure = await self.serve_request(request, emit, context.cancelled)
        if failure is not None:
            await context.abort(*failure)

    async def GenerateStream(self, request_iterator: AsyncIterator[pb.StreamRequest],
                             context: grpc.aio.ServicerContext) -> None:
        await StreamSession(self, context, self._server.track).run(request_iterator)

    async def serve_request(self, request: pb.GenerateRequest, emit: Callable[[GenerateOutput], Awaitable[None]],
                            client_cancelled: Callable[[], bool] = lambda: False) -> Failure | None:
        """Run one request, handing each output to `emit`; the same for both transports.

        Returns None when the request finished, or the status to end it with (bad input, prefill
        or engine failure). A client that goes away (cancellation, or `emit` failing) propagates.
        """
        if self._handler is None or self._info is None or self._card is None:
            return grpc.StatusCode.UNAVAILABLE, "worker is starting; the engine is not ready"
        if self._server.draining:
            return grpc.StatusCode.UNAVAILABLE, "worker is draining; send the request to another worker"
        try:
            req = codec.request_from_pb(request)
            req.validate_common(vocab_size=self._info.vocab_size, context_length=self._info.context_length,
                                served_model=self._card.served_model_name)
            check_handoff_mode(req, self._handler.engine.name, self._handler.engine.bootstrap_handoff)
            self._handler.check(req)
        except InvalidRequest as e:
            self._metrics.request_done("invalid")
            return grpc.StatusCode.INVALID_ARGUMENT, str(e)
        rid = req.request_id
        m = self._metrics
        m.prompt_tokens.inc(len(req.token_ids))
        t0 = time.perf_counter()
        first = True
        status = "cancelled"
        failure: Failure | None = None
        produced = 0  # metrics are updated once per request, not per message (hot path)
        emit_failed = False
        stream = self._handler.generate(req)
        with self._server.track():
            m.inflight.inc()
            try:
                async for out in stream:
                    if first and out.token_ids:
                        m.ttft.observe(time.perf_counter() - t0)
                        first = False
                    produced += len(out.token_ids)
                    if out.usage is not None and out.usage.cached_tokens:
                        m.cached_tokens.inc(out.usage.cached_tokens)
                    try:
                        await emit(out)
                    except Exception:
                        # The client went away: under load, grpc can fail the write before it
                        # marks the call cancelled, so a failed write is a cancellation too.
                        emit_failed = True
                        raise
                    if out.finish_reason is not None:
                        status = _STATUS_OF_FINISH.get(out.finish_reason, "success")
            except InvalidRequest as e:
                status = "invalid"
                failure = grpc.StatusCode.INVALID_ARGUMENT, str(e)
            except PrefillError as e:
                status = "error"
                m.error("prefill")
                log.warning("[%s] %s", rid, e)
                failure = grpc.StatusCode.UNAVAILABLE, str(e)
            except NoWorkersError as e:
                status = "error"
                m.error("no_prefill_worker")
                failure = grpc.StatusCode.UNAVAILABLE, str(e)
            except EngineError as e:
                status = "error"
                m.error("engine")
                log.error("[%s] engine error: %s", rid, e)
                failure = grpc.StatusCode.INTERNAL, f"engine error: {e}"
            except asyncio.CancelledError:
                log.debug("[%s] cancelled by the client", rid)
                raise
            except Exception as e:
                # A client that cancels while we write can surface as a failed write, not as
                # CancelledError; anything else is a bug in an adapter or the shell.
                if emit_failed or client_cancelled():
                    log.debug("[%s] cancelled by the client", rid)
                    raise
                status = "error"
                m.error("internal")
                log.exception("[%s] request failed", rid)
                failure = grpc.StatusCode.INTERNAL, f"worker error: {e!r}"
            finally:
                # Bookkeeping first: closing the stream awaits the engine and may itself fail.
                m.output_tokens.inc(produced)
                m.inflight.dec()
                if status == "cancelled":  # the client went away, or the engine aborted the request
                    m.cancellations.inc()
                m.request_done(status)
                self.last_request_end = time.monotonic()
                aclose = getattr(stream, "aclose", None)
                if aclose is not None:
                    await aclose()  # aborts the engine request if it is still running
        return failure

    async def ClearKvBlocks(self, request: pb.ClearKvBlocksRequest, context: grpc.aio.ServicerContext
                            ) -> pb.ClearKvBlocksResponse:
        if self._engine is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "worker is starting")
        assert self._engine is not None  # abort() raised otherwise
        try:
            await self._engine.clear_kv_blocks()
        except NotImplementedError as e:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, str(e))
        except EngineError as e:  # e.g. an engine that flushes only when idle
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"engine error: {e}")
        return pb.ClearKvBlocksResponse()

    async def ModelInfo(self, request: pb.ModelInfoRequest, context: grpc.aio.ServicerContext
                        ) -> pb.ModelInfoResponse:
        if self._card is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "worker is starting")
        assert self._card is not None  # abort() raised otherwise
        return pb.ModelInfoResponse(model_card_json=self._card.to_json(), instance_id=self.instance_id)

    async def SubscribeKvEvents(self, request: pb.SubscribeRequest, context: grpc.aio.ServicerContext
                                ) -> None:
        with self._relay.subscribe() as queue:
            # Subscribed before this first (empty) batch goes out: the client knows from here on
            # it misses nothing, and from which event id.
            await context.write(pb.KvEventBatch(instance_id=self.instance_id,
                                                next_event_id=self._relay.next_event_id))
            while True:
                event = await queue.get()
                batch = pb.KvEventBatch(instance_id=self.instance_id)
                codec.kv_event_to_pb(event, batch.events.add())
                while not queue.empty() and len(batch.events) < 256:
                    codec.kv_event_to_pb(queue.get_nowait(), batch.events.add())
                batch.next_event_id = self._relay.next_event_id
                await context.write(batch)

    async def SubscribeStats(self, request: pb.SubscribeRequest, context: grpc.aio.ServicerContext) -> None:
        interval = (request.interval_ms or 1000) / 1000
        while True:
            if self._engine is not None:
                await context.write(codec.stats_to_pb(self._engine.stats(), self.instance_id,
                                                      self._server.active_calls,
                                                      self._engine.num_unfinished_requests()))
            await asyncio.sleep(interval)
