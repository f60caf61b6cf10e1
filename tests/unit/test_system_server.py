"""The system HTTP server (/health, /live, /metrics) on uvicorn, on the caller's event loop."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import httpx
from prometheus_client import CollectorRegistry, Counter

from dynamo.runtime.system_server import SystemServer


async def test_probes_metrics_and_errors() -> None:
    registry = CollectorRegistry()
    Counter("dynamo_test_things", "things", registry=registry).inc(3)
    state: dict[str, Any] = {"ok": True}
    server = SystemServer(registry, lambda: (state["ok"], {"ready": state["ok"]}), host="127.0.0.1")
    sigterm_before = signal.getsignal(signal.SIGTERM)
    port = await server.start()
    try:
        assert port == server.port and port > 0
        assert signal.getsignal(signal.SIGTERM) is sigterm_before, "the runtime owns the signals"
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as c:
            r = await c.get("/live")
            assert (r.status_code, r.json()) == (200, {"status": "live"})
            r = await c.get("/health?verbose=1")  # query strings are ignored
            assert (r.status_code, r.json()) == (200, {"status": "healthy", "ready": True})
            state["ok"] = False
            r = await c.get("/health")
            assert (r.status_code, r.json()["status"]) == (503, "unhealthy")
            r = await c.get("/metrics")
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
            assert "dynamo_test_things_total 3.0" in r.text
            assert "process_cpu_seconds_total" in r.text or "python_info" in r.text  # the default registry too
            head = await c.head("/live")
            assert head.status_code == 200 and head.content == b""
            assert (await c.post("/live")).status_code == 405
            r = await c.get("/nope")
            assert r.status_code == 404 and "/health" in r.text
    finally:
        await asyncio.wait_for(server.stop(), 10)
    async with httpx.AsyncClient(timeout=2) as c:  # the port is closed once stopped
        try:
            await c.get(f"http://127.0.0.1:{port}/live")
            raise AssertionError("the stopped server still answers")
        except httpx.ConnectError:
            pass
