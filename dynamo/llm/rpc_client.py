"""Calling a worker's Generate over gRPC with protocol types, and mapping its errors."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from dynamo.llm import codec
from dynamo.llm.errors import WorkerError
from dynamo.llm.proto import worker_pb2 as pb
from dynamo.llm.protocol import FinishReason, GenerateOutput, GenerateRequest, InvalidRequest
from dynamo.runtime.discovery.records import InstanceRecord
from dynamo.runtime.rpc.client import EndpointClient, InstanceUnreachableError

GENERATE_METHOD = "/dynamo.llm.v1.Worker/Generate"


async def generate_on(client: EndpointClient, record: InstanceRecord, request: GenerateRequest,
                      timeout: float | None = None) -> AsyncIterator[GenerateOutput]:
    """Stream `request` on one instance. Raises InvalidRequest (the worker refused it) or
    WorkerError (retryable when the worker vanished or dropped the stream before finishing)."""
    finished = False
    try:
        async for msg in client.stream(GENERATE_METHOD, codec.request_to_pb(request),
                                       request_serializer=pb.GenerateRequest.SerializeToString,
                                       response_deserializer=pb.GenerateResponse.FromString,
                                       timeout=timeout, record=record):
            out = codec.output_from_pb(msg)
            if out.finish_reason is FinishReason.ERROR:
                raise WorkerError(f"worker {record.instance_id} failed request {request.request_id}: "
                                  f"{out.error or 'engine error'}", instance_id=record.instance_id)
            finished = out.finish_reason is not None
            yield out
    except InstanceUnreachableError as e:
        raise WorkerError(str(e), instance_id=record.instance_id, retryable=True) from e
    except grpc.aio.AioRpcError as e:
        code = e.code()
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            raise InvalidRequest(e.details() or "invalid request") from None
        retryable = code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED,
                             grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN)
        raise WorkerError(f"worker {record.instance_id} at {record.target}: {code.name}: {e.details()}",
                          instance_id=record.instance_id, retryable=retryable) from e
    if not finished:
        raise WorkerError(f"worker {record.instance_id} ended request {request.request_id} without "
                          f"finishing it", instance_id=record.instance_id, retryable=True)
