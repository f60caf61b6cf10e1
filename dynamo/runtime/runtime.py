"""DistributedRuntime: one per process. Owns discovery, the gRPC server, the system server and the
shutdown order (NOT_SERVING and deregister at once -> drain in-flight calls -> stop)."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import grpc
from prometheus_client import CollectorRegistry

from dynamo.runtime.config import RuntimeConfig
from dynamo.runtime.discovery import Discovery, malformed, open_discovery
from dynamo.runtime.discovery.records import InstanceRecord
from dynamo.runtime.identity import EndpointAddress, new_instance_id
from dynamo.runtime.lifecycle import ShutdownSignal
from dynamo.runtime.rpc import local_socket
from dynamo.runtime.rpc import tls as rpc_tls
from dynamo.runtime.rpc.client import EndpointClient
from dynamo.runtime.rpc.server import RpcServer, default_advertise_host
from dynamo.runtime.system_server import SystemServer

log = logging.getLogger(__name__)

#: after a drain, how long grpc may take to send the final status of calls whose work is done
STATUS_FLUSH_S = 1.0


class DistributedRuntime:
    def __init__(self, config: RuntimeConfig, *, registry: CollectorRegistry | None = None) -> None:
        self.config = config
        self.registry = registry or CollectorRegistry()
        self.registry.register(malformed.COLLECTOR)  # what this process's discovery readers skipped
        self.discovery: Discovery = open_discovery(config.discovery)
        self.server = RpcServer(config.grpc_host, config.grpc_port,
                                local_socket.socket_path(config.grpc_local_socket), tls=config.tls)
        rpc_tls.configure_client(config.tls)  # this process's calls to other TLS instances
        self.shutdown_signal = ShutdownSignal()
        self._records: list[InstanceRecord] = []
        self._clients: list[EndpointClient] = []
        self._system: SystemServer | None = None
        self._ready = False
        self._draining = False
        self._health_checks: list[Callable[[], tuple[bool, str]]] = []
        self._closed = False

    @property
    def namespace(self) -> str:
        return self.config.namespace

    async def start(self) -> None:
        """Connect discovery and start the system server (if a port is configured)."""
        await self.discovery.start()
        if self.config.system_port is not None:
            self._system = SystemServer(self.registry, self._health, port=self.config.system_port)
            await self._system.start()

    @property
    def system_port(self) -> int | None:
        return self._system.port if self._system else None

    def add_service(self, add_fn: Callable[[Any, grpc.aio.Server], None], servicer: Any,
                    service_name: str) -> None:
        self.server.add_service(add_fn, servicer, service_name)

    async def start_server(self) -> int:
        return await self.server.start()

    def advertise_host(self) -> str:
        return self.config.advertise_host or default_advertise_host()

    async def register(self, address: EndpointAddress, metadata: dict[str, Any] | None = None
                       ) -> InstanceRecord:
        """Publish an instance of `address` served by this process's gRPC server."""
        if self.server.port is None:
            raise RuntimeError("start_server() before register()")
        rec = InstanceRecord(address.namespace, address.component, address.endpoint,
                             new_instance_id(), self.advertise_host(), self.server.port,
                             metadata or {}, pid=os.getpid(),
                             local_socket=str(self.server.local_socket or ""),
                             host_id=local_socket.host_id() if self.server.local_socket else "",
                             tls=self.server.tls is not None)
        await self.discovery.put(rec.key, rec.to_json())
        self._records.append(rec)
        return rec

    async def deregister_all(self) -> None:
        for rec in self._records:
            try:
                await self.discovery.delete(rec.key)
            except Exception:
                log.warning("could not deregister %s", rec.key, exc_info=True)
        self._records.clear()

    async def client(self, address: EndpointAddress) -> EndpointClient:
        client = EndpointClient(self.discovery, address)
        await client.start()
        self._clients.append(client)
        return client

    def add_health_check(self, check: Callable[[], tuple[bool, str]]) -> None:
        """check() -> (healthy, detail); all must pass for /health to answer 200."""
        self._health_checks.append(check)

    async def set_ready(self) -> None:
        self._ready = True
        await self.server.set_serving(True)

    def _health(self) -> tuple[bool, dict]:
        detail: dict[str, Any] = {"ready": self._ready, "draining": self._draining,
                                  "instances": [r.instance_id for r in self._records]}
        ok = self._ready and not self._draining
        failures = []
        for check in self._health_checks:
            good, why = check()
            if not good:
                failures.append(why)
        if failures:
            detail["failures"] = failures
        return ok and not failures, detail

    def install_signal_handlers(self) -> None:
        self.shutdown_signal.install()

    async def wait_for_shutdown(self) -> None:
        await self.shutdown_signal.wait()

    async def shutdown(self, grace: float | None = None,
                       before_stop: Callable[[], Any] | None = None) -> None:
        """NOT_SERVING + deregister at once, then let in-flight calls finish (up to `grace`)."""
        if self._closed:
            return
        self._closed = True
        self._draining = True
        grace = self.config.drain_timeout if grace is None else grace
        t0 = time.monotonic()
        if self.server.port is not None:
            await self.server.set_serving(False)
        await self.deregister_all()
        for client in self._clients:
            await client.close()
        if self.server.port is not None:
            log.info("draining %d in-flight call(s) for up to %.0f s", self.server.active_calls, grace)
            drained = await self.server.drain(grace)
            if not drained:
                log.warning("%d call(s) still running after %.0f s; cancelling them",
                            self.server.active_calls, grace)
            # A handler leaves the tracked part before grpc has sent its final status: stopping
            # with no grace would cancel those calls, and a client that got every message would
            # still see UNAVAILABLE. grpc's own grace waits for exactly them (and for untracked
            # calls, such as an idle GenerateStream, which it then cancels).
            flush = min(STATUS_FLUSH_S, max(0.0, grace - (time.monotonic() - t0))) if drained else 0.0
            await self.server.stop(flush)
        if before_stop is not None:
            result = before_stop()
            if asyncio.iscoroutine(result):
                await result
        if self._system is not None:
            await self._system.stop()
        await self.discovery.close()
        log.info("stopped after %.2f s of drain", time.monotonic() - t0)
