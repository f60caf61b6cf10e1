"""The contract every engine adapter implements (vLLM, SGLang, TensorRT-LLM, mocker).

The worker shell (`dynamo.llm.worker`) owns everything else: flags, registration, gRPC, health,
metrics, the KV-event relay and disaggregation orchestration. An adapter only translates.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator

from dynamo.llm.protocol import EngineInfo, EngineStats, GenerateOutput, GenerateRequest, KvEvent


class EngineError(RuntimeError):
    """The engine failed (not the request's fault): -> gRPC INTERNAL / UNAVAILABLE."""


class LLMEngine(abc.ABC):
    """One started inference engine, driven by one worker process."""

    #: short adapter name; also tags the DisaggregatedParams this engine produces ("vllm", "mocker", ...)
    name: str = "engine"

    @abc.abstractmethod
    async def start(self) -> EngineInfo:
        """Start the engine; return once it can generate."""

    @abc.abstractmethod
    def generate(self, request: GenerateRequest) -> AsyncIterator[GenerateOutput]:
        """Stream the request's outputs.

        Each output carries the token ids that are new since the previous one. The last output has
        `finish_reason` set and `usage` filled. When the worker's role is prefill, the request has
        max_tokens=1 and the last output carries `disaggregated_params`. Raises `InvalidRequest` for
        engine-specific bad input (before yielding anything), `EngineError` when the engine fails.
        If the consumer stops iterating (the client cancelled), the adapter must abort the engine
        request (e.g. in a `finally`), so the engine keeps no unfinished request.
        """

    @abc.abstractmethod
    async def abort(self, request_id: str) -> None:
        """Abort a running request; a no-op for an unknown id."""

    async def clear_kv_blocks(self) -> None:
        """Drop every cached (unused) KV block, e.g. the prefix cache."""

    async def check_health(self) -> None:
        """Raise if the engine is dead. The worker adds a generation canary on top of this."""

    def stats(self) -> EngineStats:
        return EngineStats()

    def kv_events(self) -> AsyncIterator[KvEvent] | None:
        """An async iterator of the engine's KV events, or None if it does not publish any.

        Called once by the worker after start(); the worker relays what it yields.
        """
        return None

    def num_unfinished_requests(self) -> int:
        """Requests the engine still holds (tests use it to prove aborts reach the engine)."""
        return self.stats().running_requests + self.stats().waiting_requests

    @abc.abstractmethod
    async def shutdown(self) -> None:
        """Stop the engine and free its resources. Called once, after in-flight requests drained."""
