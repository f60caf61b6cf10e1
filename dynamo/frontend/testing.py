"""Test doubles for the HTTP layer: a scripted ServingBackend and an in-thread uvicorn server.

`ScriptedBackend` is a double, not a worker: it yields pre-set token ids so tests can drive the
real app (validation, templates, detokenization, stop strings, SSE) over real HTTP.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import uvicorn

from dynamo.llm.model_card import ModelCard
from dynamo.llm.protocol import FinishReason, GenerateOutput, GenerateRequest, TokenLogprob, Usage

from .backend import NoWorkers, UnknownModel


@dataclass
class Script:
    """What the double answers with for a request."""

    token_ids: list[int]  # produced in order; cut at max_tokens
    tokens_per_output: int = 1
    finish: FinishReason = FinishReason.EOS  # when token_ids run out before max_tokens
    delay_s: float = 0.0  # before each output
    fail_after_outputs: int | None = None  # raise `failure` after this many outputs
    failure: Exception | None = None
    cached_tokens: int = 0
    hang_after_outputs: int | None = None  # stop producing (until cancelled) after this many


@dataclass
class ScriptedBackend:
    cards: list[ModelCard]
    script: Callable[[GenerateRequest], Script] | Script = field(
        default_factory=lambda: Script(token_ids=[]))
    requests: list[GenerateRequest] = field(default_factory=list)
    closed: list[str] = field(default_factory=list)  # request ids whose stream was closed early
    finished: list[str] = field(default_factory=list)  # request ids that ran to their end
    no_workers: set[str] = field(default_factory=set)  # model names that have no live worker

    def models(self) -> list[ModelCard]:
        return [c for c in self.cards if c.served_model_name not in self.no_workers]

    def prompt_hasher(self, card: ModelCard) -> Callable[[list[int]], None] | None:
        return None

    def card(self, model: str) -> ModelCard:
        for card in self.cards:
            if card.served_model_name == model:
                if model in self.no_workers:
                    raise NoWorkers(f"model {model!r} has no live worker right now; retry later")
                return card
        served = ", ".join(repr(c.served_model_name) for c in self.models()) or "none"
        raise UnknownModel(f"model {model!r} is not served here; served models: {served}")

    async def generate(self, request: GenerateRequest) -> AsyncIterator[GenerateOutput]:
        self.requests.append(request)
        script = self.script(request) if callable(self.script) else self.script
        max_tokens = request.stop.max_tokens or len(script.token_ids)
        ids = script.token_ids[:max_tokens]
        finish = FinishReason.LENGTH if len(script.token_ids) >= max_tokens else script.finish
        step = max(1, script.tokens_per_output)
        want_logprobs = request.output.logprobs
        completed = False
        try:
            outputs = 0
            for start in range(0, max(len(ids), 1), step):
                if script.fail_after_outputs is not None and outputs == script.fail_after_outputs:
                    assert script.failure is not None
                    raise script.failure
                if script.hang_after_outputs is not None and outputs == script.hang_after_outputs:
                    await asyncio.sleep(3600)
                if script.delay_s:
                    await asyncio.sleep(script.delay_s)
                chunk = ids[start:start + step]
                last = start + step >= len(ids)
                out = GenerateOutput(token_ids=chunk)
                if want_logprobs is not None:
                    out.logprobs = [TokenLogprob(t, -0.5, [(t, -0.5), ((t + 1) % 64, -1.5),
                                                            ((t + 2) % 64, -2.5)][:want_logprobs])
                                    for t in chunk]
                if last:
                    out.finish_reason = finish
                    out.usage = Usage(len(request.token_ids), len(ids), script.cached_tokens)
                outputs += 1
                completed = last  # a close after the last output is not a cancellation
                yield out
        finally:
            (self.finished if completed else self.closed).append(request.request_id)


class ThreadedServer:
    """uvicorn on 127.0.0.1:<ephemeral port> in a background thread, with its own event loop."""

    def __init__(self, app: Any) -> None:
        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning",
                                lifespan="on", access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="test-uvicorn", daemon=True)
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 10.0) -> None:
        self.thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"uvicorn did not start within {timeout_s} s")
            time.sleep(0.01)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]

    def stop(self, timeout_s: float = 10.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout_s)
        if self.thread.is_alive():
            self.server.force_exit = True
            self.thread.join(timeout_s)


@contextmanager
def serve_in_thread(app: object) -> Iterator[ThreadedServer]:
    server = ThreadedServer(app)
    server.start()
    try:
        yield server
    finally:
        server.stop()
