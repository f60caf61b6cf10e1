"""The mocker's bootstrap-mode handoff (as SGLang does it): a prefill worker serves a rendezvous
endpoint; a decode worker given the same room meets the prefill's KV there.

The prefill side publishes each room's result (the same payload as a pull-mode handoff, see
disagg.py) when its request finishes, or a failure; the decode side connects, names its room and
waits. One JSON line each way on a TCP connection:
    decode -> prefill  {"room": R}
    prefill -> decode  {"ok": true, "payload": {...}, "first_token_ids": [...]}   or   {"ok": false, "error": "..."}
A decode side whose prefill worker dies mid-handoff sees its connection reset at once; one that
never hears back gives up after its timeout. Results wait for their decode side `keep_s` seconds.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

log = logging.getLogger(__name__)

_LINE_LIMIT = 1 << 20  # a room's payload carries the prompt's block hashes


class BootstrapError(RuntimeError):
    """The rendezvous failed: the prefill worker is gone, failed the room, or never answered."""


class BootstrapServer:
    def __init__(self, host: str = "0.0.0.0", port: int = 0, keep_s: float = 60.0) -> None:
        self._host, self._port, self._keep_s = host, port, keep_s
        self._rooms: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._born: dict[int, float] = {}
        self._server: asyncio.base_events.Server | None = None
        self.port: int | None = None

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, self._host, self._port, limit=_LINE_LIMIT)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    def _room(self, room: int) -> asyncio.Future[dict[str, Any]]:
        self._forget_old()
        fut = self._rooms.get(room)
        if fut is None:
            fut = self._rooms[room] = asyncio.get_running_loop().create_future()
            self._born[room] = time.monotonic()
        return fut

    def _forget_old(self) -> None:
        cutoff = time.monotonic() - self._keep_s
        for room in [r for r, born in self._born.items() if born < cutoff]:
            self._born.pop(room, None)
            fut = self._rooms.pop(room, None)
            if fut is not None and not fut.done():
                fut.cancel()

    def publish(self, room: int, payload: dict[str, Any], first_token_ids: list[int]) -> None:
        fut = self._room(room)
        if not fut.done():
            fut.set_result({"ok": True, "payload": payload, "first_token_ids": first_token_ids})

    def fail(self, room: int, error: str) -> None:
        fut = self._room(room)
        if not fut.done():
            fut.set_result({"ok": False, "error": error})

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            ask = json.loads(await asyncio.wait_for(reader.readline(), 10))
            room = ask["room"]
            if not isinstance(room, int):
                raise ValueError("room must be an integer")
            fut = self._room(room)
            answer = await asyncio.wait_for(asyncio.shield(fut), self._keep_s)
            self._rooms.pop(room, None)
            self._born.pop(room, None)
        except (ValueError, KeyError, TypeError, TimeoutError, asyncio.IncompleteReadError) as e:
            answer = {"ok": False, "error": f"bad or unanswered rendezvous: {e!r}"}
        except (ConnectionError, asyncio.CancelledError):
            writer.close()
            return
        try:
            writer.write(json.dumps(answer).encode() + b"\n")
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for fut in self._rooms.values():
            fut.cancel()


async def meet(host: str, port: int, room: int, timeout: float) -> dict[str, Any]:
    """The prefill side's answer for `room` (the decode side's wait). Raises BootstrapError."""
    writer = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port, limit=_LINE_LIMIT)
            writer.write(json.dumps({"room": room}).encode() + b"\n")
            await writer.drain()
            line = await reader.readline()
    except TimeoutError:
        raise BootstrapError(f"the prefill worker at {host}:{port} did not hand over room {room} within "
                             f"{timeout:g} s") from None
    except OSError as e:
        raise BootstrapError(f"cannot meet the prefill worker at {host}:{port} (room {room}): {e}") from None
    finally:
        if writer is not None:
            writer.close()
    if not line:
        raise BootstrapError(f"the prefill worker at {host}:{port} went away before handing over room {room}")
    answer = json.loads(line)
    if not answer.get("ok"):
        raise BootstrapError(f"the prefill worker at {host}:{port} failed room {room}: {answer.get('error')}")
    return answer
