"""Run an app on uvicorn with the fastest event loop and HTTP parser installed."""

from __future__ import annotations

import importlib.util

import uvicorn
from starlette.applications import Starlette


def _have(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def uvicorn_config(app: Starlette, host: str, port: int, log_level: str = "info") -> uvicorn.Config:
    return uvicorn.Config(
        app, host=host, port=port, log_level=log_level,
        loop="uvloop" if _have("uvloop") else "asyncio",
        http="httptools" if _have("httptools") else "h11",
        access_log=False,  # a log line per request costs more than the request at high rates
        lifespan="off",
        timeout_graceful_shutdown=30,
    )


def new_event_loop_factory():  # type: ignore[no-untyped-def]
    """uvloop's loop factory when installed, else None (asyncio's default)."""
    if _have("uvloop"):
        import uvloop
        return uvloop.new_event_loop
    return None
