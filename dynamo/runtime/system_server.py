"""A tiny HTTP server for /health, /live and /metrics (Kubernetes probes, Prometheus scrapes).

Plain asyncio so that the runtime needs no web framework.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

log = logging.getLogger(__name__)


class SystemServer:
    def __init__(self, registry: CollectorRegistry, health: Callable[[], tuple[bool, dict]],
                 host: str = "0.0.0.0", port: int = 0) -> None:
        self._registry = registry
        self._health = health
        self._host = host
        self._port = port
        self._server: asyncio.base_events.Server | None = None
        self.port: int | None = None

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._handle, self._host, self._port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            method, path, *_ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
            path = path.split("?", 1)[0]
            if method not in ("GET", "HEAD"):
                status, ctype, body = 405, "text/plain", b"method not allowed\n"
            elif path == "/live":
                status, ctype, body = 200, "application/json", b'{"status":"live"}'
            elif path == "/health":
                ok, detail = self._health()
                status, ctype = (200 if ok else 503), "application/json"
                body = json.dumps({"status": "healthy" if ok else "unhealthy", **detail}).encode()
            elif path == "/metrics":
                # Ours, then the process-wide default registry: process metrics, and what an engine
                # library registers there (vLLM's vllm:* metrics).
                body = generate_latest(self._registry) + generate_latest(REGISTRY)
                status, ctype = 200, CONTENT_TYPE_LATEST
            else:
                status, ctype, body = 404, "text/plain", b"not found; try /health, /live or /metrics\n"
            reason = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}[status]
            writer.write(f"HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\n"
                         f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode())
            if method != "HEAD":
                writer.write(body)
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError,
                ConnectionError, ValueError):
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
