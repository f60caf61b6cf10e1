"""Run an app on uvicorn with the fastest event loop and HTTP parser installed."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import signal
from collections.abc import Callable, Iterator

import uvicorn
from starlette.applications import Starlette

log = logging.getLogger(__name__)


def _have(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def uvicorn_config(app: Starlette, host: str, port: int, log_level: str = "info") -> uvicorn.Config:
    return uvicorn.Config(
        app, host=host, port=port, log_level=log_level,
        loop="uvloop" if _have("uvloop") else "asyncio",
        http="httptools" if _have("httptools") else "h11",
        access_log=False,  # a log line per request costs more than the request at high rates
        proxy_headers=False,  # nothing reads the client's address: no middleware rewriting it per request
        lifespan="on",
        timeout_graceful_shutdown=30,
    )


class GracefulServer(uvicorn.Server):
    """uvicorn, but a SIGTERM/SIGINT ends `serve()` normally (uvicorn re-raises the signal after
    draining, which would kill the process before the backend is closed). A second signal forces
    the exit without waiting for open requests."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._on_signal, sig)
        try:
            yield
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    def _on_signal(self, sig: int) -> None:
        if self.should_exit:
            log.warning("second %s: closing open requests now", signal.Signals(sig).name)
            self.force_exit = True
        else:
            log.info("%s received: draining open requests, then stopping",
                     signal.Signals(sig).name)
            self.should_exit = True


def new_event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop factory when installed, else None (asyncio's default)."""
    if _have("uvloop"):
        import uvloop
        return uvloop.new_event_loop
    return None
