"""The workers of one model in some roles, and Generate calls to them with protocol types.

A `WorkerGroup` wraps the runtime's EndpointClient (instances from discovery, channels, in-flight
counts) with the request transport (dynamo.llm.transport) and maps gRPC errors onto the
protocol's: InvalidRequest when the worker refused the request, WorkerError otherwise (retryable
when the worker vanished or dropped the stream before finishing). Who picks the instance is the
caller's business: the frontend's router, or round-robin (`select`).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Iterable

import grpc

from dynamo.llm import codec
from dynamo.llm.errors import WorkerError
from dynamo.llm.proto import worker_pb2 as pb
from dynamo.llm.protocol import FinishReason, GenerateOutput, GenerateRequest, InvalidRequest
from dynamo.llm.stream_client import OutputPacing, WorkerStreams
from dynamo.llm.transport import DEFAULT_TRANSPORT, check_transport
from dynamo.runtime.discovery.records import InstanceRecord
from dynamo.runtime.rpc.client import EndpointClient, InstanceUnreachableError

GENERATE_METHOD = "/dynamo.llm.v1.Worker/Generate"

_RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.INTERNAL,
              grpc.StatusCode.UNKNOWN)


# What a worker or grpc says when a request never reached the engine: the connection was refused,
# or the worker was draining and refused new work. (A stream that broke after the call was made
# may have reached it: that is a migration's business, not a reroute's.)
_NEVER_REACHED = ("failed to connect", "connection refused", "is draining")


def _never_reached(detail: str) -> bool:
    detail = detail.lower()
    return any(marker in detail for marker in _NEVER_REACHED)


class WorkerGroup:
    def __init__(self, endpoint: EndpointClient, transport: str = DEFAULT_TRANSPORT,
                 pacing: OutputPacing | None = None) -> None:
        """`pacing`: how often a request's outputs are handed over at most (the stream transport)."""
        self.endpoint = endpoint
        self.transport = check_transport(transport)
        self._streams = WorkerStreams(endpoint, pacing) if transport == "stream" else None

    @property
    def label(self) -> str:
        return str(self.endpoint.address)

    def instances(self) -> list[InstanceRecord]:
        return self.endpoint.instances()

    def inflight(self, instance_id: str) -> int:
        """Requests this process has open on the instance."""
        return self.endpoint.inflight(instance_id)

    def select(self, exclude: Iterable[str] = ()) -> InstanceRecord:
        """The next live instance, round-robin (raises NoInstancesError)."""
        return self.endpoint.select(exclude=exclude)

    async def generate(self, record: InstanceRecord, request: GenerateRequest,
                       timeout: float | None = None) -> AsyncIterator[GenerateOutput]:
        """Stream `request` on one instance. Closing the iterator early cancels it on the worker."""
        finished = produced = False
        outputs = self._outputs(record, request, timeout)
        try:
            async for out in outputs:
                if out.finish_reason is FinishReason.ERROR:
                    raise WorkerError(f"worker {record.instance_id} failed request {request.request_id}: "
                                      f"{out.error or 'engine error'}", instance_id=record.instance_id)
                finished = out.finish_reason is not None
                produced = True
                yield out
        except InstanceUnreachableError as e:
            self.endpoint.hold_out(record.instance_id)  # not chosen again while its record lingers
            raise WorkerError(str(e), instance_id=record.instance_id, retryable=True,
                              unreached=not produced and _never_reached(str(e))) from e
        except grpc.aio.AioRpcError as e:
            code = e.code()
            if code == grpc.StatusCode.INVALID_ARGUMENT:
                raise InvalidRequest(e.details() or "invalid request") from None
            if code == grpc.StatusCode.UNAVAILABLE and not produced and _never_reached(e.details() or ""):
                self.endpoint.hold_out(record.instance_id)
                raise WorkerError(f"worker {record.instance_id}: {e.details()}", instance_id=record.instance_id,
                                  unreached=True) from e
            raise WorkerError(f"worker {record.instance_id} at {record.target}: {code.name}: {e.details()}",
                              instance_id=record.instance_id, retryable=code in _RETRYABLE) from e
        finally:
            await outputs.aclose()  # cancels the request on the worker when it did not finish
        if not finished:
            raise WorkerError(f"worker {record.instance_id} ended request {request.request_id} without "
                              f"finishing it", instance_id=record.instance_id, retryable=True)

    def _outputs(self, record: InstanceRecord, request: GenerateRequest, timeout: float | None
                 ) -> AsyncGenerator[GenerateOutput, None]:
        if self._streams is not None:
            return self._streams.get(record).generate(request, timeout)
        return self._unary_outputs(record, request, timeout)

    async def _unary_outputs(self, record: InstanceRecord, request: GenerateRequest, timeout: float | None
                             ) -> AsyncGenerator[GenerateOutput, None]:
        messages = self.endpoint.stream(GENERATE_METHOD, codec.request_to_pb(request),
                                        request_serializer=pb.GenerateRequest.SerializeToString,
                                        response_deserializer=pb.GenerateResponse.FromString,
                                        timeout=timeout, record=record)
        async with contextlib.aclosing(messages):  # closing it cancels the call
            async for msg in messages:
                yield codec.output_from_pb(msg)
