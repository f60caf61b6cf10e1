"""Calling a worker's Generate over gRPC with protocol types, and mapping its errors.

Two transports, the same behaviour: `stream` (default) sends every request to a worker over one
shared GenerateStream call (see stream_client.py); `unary` opens one Generate call per request.
`DYN_GENERATE_TRANSPORT` picks one for the whole process (the frontend also has a flag for it).
"""

from __future__ import annotations

import contextlib
import os
import weakref
from collections.abc import AsyncIterator

import grpc

from dynamo.llm import codec
from dynamo.llm.errors import WorkerError
from dynamo.llm.proto import worker_pb2 as pb
from dynamo.llm.protocol import FinishReason, GenerateOutput, GenerateRequest, InvalidRequest
from dynamo.llm.stream_client import WorkerStreams
from dynamo.runtime.discovery.records import InstanceRecord
from dynamo.runtime.rpc.client import EndpointClient, InstanceUnreachableError

GENERATE_METHOD = "/dynamo.llm.v1.Worker/Generate"
TRANSPORTS = ("stream", "unary")
TRANSPORT_ENV = "DYN_GENERATE_TRANSPORT"

_transport = os.environ.get(TRANSPORT_ENV) or "stream"
_streams: weakref.WeakKeyDictionary[EndpointClient, WorkerStreams] = weakref.WeakKeyDictionary()


def set_transport(transport: str) -> None:
    """`stream` or `unary`, for every later request of this process."""
    global _transport
    if transport not in TRANSPORTS:
        raise ValueError(f"unknown transport {transport!r}; choose one of {', '.join(TRANSPORTS)}")
    _transport = transport


async def _unary_outputs(client: EndpointClient, record: InstanceRecord, request: GenerateRequest,
                         timeout: float | None) -> AsyncIterator[GenerateOutput]:
    messages = client.stream(GENERATE_METHOD, codec.request_to_pb(request),
                             request_serializer=pb.GenerateRequest.SerializeToString,
                             response_deserializer=pb.GenerateResponse.FromString,
                             timeout=timeout, record=record)
    async with contextlib.aclosing(messages):  # closing it cancels the call
        async for msg in messages:
            yield codec.output_from_pb(msg)


def _outputs(client: EndpointClient, record: InstanceRecord, request: GenerateRequest,
             timeout: float | None) -> AsyncIterator[GenerateOutput]:
    if _transport == "unary":
        return _unary_outputs(client, record, request, timeout)
    if _transport != "stream":
        raise ValueError(f"{TRANSPORT_ENV}={_transport!r}: choose one of {', '.join(TRANSPORTS)}")
    streams = _streams.get(client)
    if streams is None:
        streams = _streams[client] = WorkerStreams(client)
    return streams.get(record).generate(request, timeout)


async def generate_on(client: EndpointClient, record: InstanceRecord, request: GenerateRequest,
                      timeout: float | None = None) -> AsyncIterator[GenerateOutput]:
    """Stream `request` on one instance. Raises InvalidRequest (the worker refused it) or
    WorkerError (retryable when the worker vanished or dropped the stream before finishing)."""
    finished = False
    outputs = _outputs(client, record, request, timeout)
    try:
        async for out in outputs:
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
    finally:
        await outputs.aclose()  # cancels the request on the worker when it did not finish
    if not finished:
        raise WorkerError(f"worker {record.instance_id} ended request {request.request_id} without "
                          f"finishing it", instance_id=record.instance_id, retryable=True)
