"""Signals: the first SIGTERM/SIGINT starts a graceful shutdown, a second one exits at once."""

from __future__ import annotations

import asyncio
import logging
import os
import signal

log = logging.getLogger(__name__)


class ShutdownSignal:
    def __init__(self) -> None:
        self.requested = asyncio.Event()
        self._count = 0

    def install(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)

    def request(self, reason: str = "requested") -> None:
        if not self.requested.is_set():
            log.info("shutdown %s: draining", reason)
            self.requested.set()

    def _on_signal(self, sig: signal.Signals) -> None:
        self._count += 1
        if self._count == 1:
            self.request(f"on {sig.name}")
        else:
            log.warning("second %s: exiting now without draining", sig.name)
            os._exit(128 + sig.value)

    async def wait(self) -> None:
        await self.requested.wait()
