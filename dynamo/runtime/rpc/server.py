"""The gRPC server of a worker process: its services, grpc.health.v1, reflection, and drain."""

from __future__ import annotations

import asyncio
import inspect
import logging
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from dynamo.runtime.config import TlsConfig, env_value
from dynamo.runtime.rpc import local_socket, tls

log = logging.getLogger(__name__)

# Keep streams alive through idle proxies, and notice dead peers within seconds.
SERVER_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.so_reuseport", 0),
]


def default_advertise_host() -> str:
    """An address other processes can reach this one at, when --advertise-host is not given.

    In a Kubernetes pod POD_IP (set by the downward API); else the address of this host's name if
    it resolves to a non-loopback address, else 127.0.0.1.
    """
    pod_ip = env_value("POD_IP", str, None)
    if pod_ip:
        return pod_ip
    try:
        addr = socket.gethostbyname(socket.gethostname())
        if not addr.startswith("127."):
            return addr
    except OSError:
        pass
    return "127.0.0.1"


class RpcServer:
    """One grpc.aio server per process; every endpoint of the process is served on its port.

    Health: the overall status ("") and each registered service start NOT_SERVING; `set_serving`
    flips them. `stop(grace)` reports NOT_SERVING, refuses new calls and lets in-flight calls
    finish for up to `grace` seconds.
    """

    def __init__(self, host: str = "0.0.0.0", port: int = 0, local_socket_path: Path | None = None,
                 tls: TlsConfig | None = None) -> None:
        """`local_socket_path`: also listen on this Unix socket (rpc/local_socket.py), unless `tls`
        says to serve TLS only (dynamo.runtime.rpc.tls)."""
        self._bind_host = host
        self._requested_port = port
        self.tls = tls if tls is not None and tls.serves_tls else None
        self._local_socket_path = local_socket_path if self.tls is None else None
        self.local_socket: Path | None = None  # once listening there
        self.draining = False
        self._server = grpc.aio.server(options=SERVER_OPTIONS, interceptors=[MalformedGate(), _DrainGate(self)])
        self._health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        self._service_names: list[str] = []
        self.port: int | None = None
        self._active_calls = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def add_service(self, add_fn: Callable[[Any, grpc.aio.Server], None], servicer: Any,
                    service_name: str) -> None:
        """Register a servicer, e.g. add_service(add_WorkerServicer_to_server, s, "pkg.Worker")."""
        if self.port is not None:
            raise RuntimeError("add services before start()")
        add_fn(servicer, self._server)
        self._service_names.append(service_name)

    async def start(self) -> int:
        names = [*self._service_names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                 reflection.SERVICE_NAME]
        reflection.enable_server_reflection(names, self._server)
        host = f"[{self._bind_host}]" if ":" in self._bind_host else self._bind_host
        address = f"{host}:{self._requested_port}"
        port = (self._server.add_secure_port(address, tls.server_credentials(self.tls)) if self.tls is not None
                else self._server.add_insecure_port(address))
        if port == 0:
            raise OSError(f"cannot bind gRPC server to {host}:{self._requested_port}")
        self._listen_locally()
        await self._server.start()
        self.port = port
        await self.set_serving(False)
        return port

    def _listen_locally(self) -> None:
        path = self._local_socket_path
        if path is None:
            return
        try:
            local_socket.prepare(path)
            if self._server.add_insecure_port(f"unix:{path}") == 0:
                raise OSError("grpc could not bind it")
        except (OSError, RuntimeError) as e:
            # only a shortcut for clients on this machine: TCP still serves everyone
            log.warning("gRPC server: not listening on local socket %s (%s); TCP only", path, e)
            return
        self.local_socket = path

    async def set_serving(self, serving: bool) -> None:
        status = (health_pb2.HealthCheckResponse.SERVING if serving
                  else health_pb2.HealthCheckResponse.NOT_SERVING)
        for name in ("", *self._service_names):
            await self._health.set(name, status)

    # In-flight accounting: streaming handlers wrap their work in `track()` so that drain and
    # metrics know what is running.
    def track(self) -> _CallTracker:
        return _CallTracker(self)

    @property
    def active_calls(self) -> int:
        return self._active_calls

    async def drain(self, grace: float) -> bool:
        """NOT_SERVING, refuse new calls (UNAVAILABLE) but keep the port open for health probes,
        and wait up to `grace` seconds for tracked calls to finish. True if all finished."""
        self.draining = True
        await self.set_serving(False)
        return await self.wait_idle(grace)

    async def stop(self, grace: float = 0.0) -> None:
        """Close the port; calls still running after `grace` are cancelled."""
        self.draining = True
        await self._server.stop(grace)
        if self.local_socket is not None:
            local_socket.remove(self.local_socket)

    async def wait_idle(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False


_ALWAYS_ALLOWED = ("/grpc.health.v1.Health/", "/grpc.reflection.")


class _DrainGate(grpc.aio.ServerInterceptor):
    """While draining, new calls (except health and reflection) fail with UNAVAILABLE so that
    clients go to another instance."""

    def __init__(self, server: RpcServer) -> None:
        self._server = server

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        handler = await continuation(details)
        if handler is None or not self._server.draining or details.method.startswith(_ALWAYS_ALLOWED):
            return handler

        async def refuse(request: Any, context: grpc.aio.ServicerContext) -> None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "instance is draining (shutting down); "
                                                             "retry on another instance")

        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                refuse, request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                refuse, request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)
        return handler


class Malformed:
    """A request message that did not decode (the client's bytes, not our bug). A request-streaming
    handler receives it in place of a message and ends the call with INVALID_ARGUMENT."""

    def __init__(self, error: Exception) -> None:
        self.error = error


def _tolerant(deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserialize is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserialize(data)
        except Exception as e:  # protobuf's DecodeError, or anything a custom deserializer raises
            return Malformed(e)
    return parse


class MalformedGate(grpc.aio.ServerInterceptor):
    """A request message that does not decode ends its call with INVALID_ARGUMENT and one warning
    line, not grpc's UNKNOWN and a traceback: garbage from a client is the client's error, and the
    server goes on serving everyone else."""

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        handler = await continuation(details)
        if handler is None:
            return handler
        if handler.request_streaming:
            # Only the deserializer is wrapped (one function call per message, no wrapper around
            # the handler on the hot path): the handler sees a Malformed and refuses the call.
            make_streaming = (grpc.stream_stream_rpc_method_handler if handler.response_streaming
                              else grpc.stream_unary_rpc_method_handler)
            behavior = handler.stream_stream if handler.response_streaming else handler.stream_unary
            return make_streaming(behavior, request_deserializer=_tolerant(handler.request_deserializer),
                                  response_serializer=handler.response_serializer)
        method = details.method
        kind = "unary_stream" if handler.response_streaming else "unary_unary"
        behavior = getattr(handler, kind)

        async def refuse(context: grpc.aio.ServicerContext, bad: Malformed) -> None:
            log.warning("%s: a request message that does not decode (%s); refused", method, bad.error)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"the request message does not decode as the method's type: {bad.error}")

        async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if isinstance(request, Malformed):
                await refuse(context, request)
            result = behavior(request, context)
            if inspect.isasyncgen(result):
                await _drain_into(result, context)
                return None
            return await result
        make = grpc.unary_stream_rpc_method_handler if handler.response_streaming else grpc.unary_unary_rpc_method_handler
        return make(unary, request_deserializer=_tolerant(handler.request_deserializer),
                    response_serializer=handler.response_serializer)


async def _drain_into(responses: Any, context: grpc.aio.ServicerContext) -> None:
    """An async-generator handler's responses, written through the context (the wrapper is a coroutine)."""
    async for response in responses:
        await context.write(response)


class _CallTracker:
    def __init__(self, server: RpcServer) -> None:
        self._server = server

    def __enter__(self) -> None:
        self._server._active_calls += 1
        self._server._idle.clear()

    def __exit__(self, *exc: object) -> None:
        self._server._active_calls -= 1
        if self._server._active_calls == 0:
            self._server._idle.set()
