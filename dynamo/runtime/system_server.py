"""The system HTTP server of a serving process: /health, /live and /metrics (Kubernetes probes,
Prometheus scrapes), on uvicorn, on the process's own event loop.

A minimal ASGI app, no web framework. Side by side with the hand-written responder it replaced
(benchmarks/RESULTS.md, "system server"): the same CPU per probe on a new connection, half the CPU
per request on a kept-alive connection, +60 ms of import time and +4 MB. uvicorn sets no deadline
on a client that never finishes its request headers: keep the system port inside the cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

log = logging.getLogger(__name__)

HealthCheck = Callable[[], tuple[bool, dict[str, Any]]]
_START_TIMEOUT_S = 10.0


class _OnRunningLoop(uvicorn.Server):
    """uvicorn without its signal handlers: the process's runtime owns SIGTERM/SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class SystemServer:
    def __init__(self, registry: CollectorRegistry, health: HealthCheck, host: str = "0.0.0.0",
                 port: int = 0) -> None:
        self._registry = registry
        self._health = health
        self._host = host
        self._port = port
        self._server: _OnRunningLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self.port: int | None = None

    async def _app(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        status, ctype, body = await self._route(scope["method"], scope["path"])
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", ctype.encode()), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})  # uvicorn sends no body for HEAD

    async def _route(self, method: str, path: str) -> tuple[int, str, bytes]:
        if method not in ("GET", "HEAD"):
            return 405, "text/plain", b"method not allowed\n"
        if path == "/live":
            return 200, "application/json", b'{"status":"live"}'
        if path == "/health":
            ok, detail = self._health()
            body = json.dumps({"status": "healthy" if ok else "unhealthy", **detail}).encode()
            return (200 if ok else 503), "application/json", body
        if path == "/metrics":
            # Ours, then the process-wide default registry: process metrics, and what an engine
            # library registers there (vLLM's vllm:* metrics). ~10 ms of rendering: off the loop.
            body = await asyncio.to_thread(lambda: generate_latest(self._registry) + generate_latest(REGISTRY))
            return 200, CONTENT_TYPE_LATEST, body
        return 404, "text/plain", b"not found; try /health, /live or /metrics\n"

    async def start(self) -> int:
        sock = socket.create_server((self._host, self._port))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self._app, loop="none", http="httptools", ws="none", lifespan="off", interface="asgi3",
            log_config=None, log_level="warning", access_log=False, proxy_headers=False,
            server_header=False, date_header=False, timeout_keep_alive=5, timeout_graceful_shutdown=2)
        self._server = _OnRunningLoop(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]), name="system server")
        deadline = time.monotonic() + _START_TIMEOUT_S
        while not self._server.started:
            if self._task.done():
                self._task.result()
                raise RuntimeError("the system server stopped while starting")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the system server did not start within {_START_TIMEOUT_S:g} s")
            await asyncio.sleep(0.005)
        return self.port

    async def stop(self) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            try:
                await asyncio.wait_for(self._task, 5)
            except TimeoutError:
                log.warning("the system server did not stop within 5 s; cancelling it")
                self._task.cancel()
                await asyncio.gather(self._task, return_exceptions=True)
        self._server = self._task = None
