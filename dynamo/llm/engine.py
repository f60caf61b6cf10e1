"""The contract every engine adapter implements (vLLM, SGLang, TensorRT-LLM, mocker).

The worker shell (`dynamo.llm.worker`) owns everything else: flags, registration, gRPC, health,
metrics, the KV-event relay, the rules of each role (dynamo.llm.disagg) and disaggregation
orchestration. An adapter only translates. Adding an engine = subclass `LLMEngine` (the
`*_cli_args` class methods included) and a `__main__` that calls `dynamo.llm.worker.serve_engine`.
"""

from __future__ import annotations

import abc
import argparse
from collections.abc import AsyncIterator

from dynamo.llm.model_card import ModelSource, Role
from dynamo.llm.protocol import EngineInfo, EngineStats, GenerateOutput, GenerateRequest, KvEvent


class EngineError(RuntimeError):
    """The engine failed (not the request's fault): -> gRPC INTERNAL / UNAVAILABLE."""


class LLMEngine(abc.ABC):
    """One started inference engine, driven by one worker process.

    `role` is the worker's role. The shell has already applied the role's rules to every request
    an adapter sees (a prefill request has max_tokens=1 and no disaggregated_params); the adapter
    uses the role only to translate (e.g. ask the engine to keep a prefill's KV for a decode).
    """

    #: short adapter name; also tags the DisaggregatedParams this engine produces ("vllm", "mocker", ...)
    name: str = "engine"
    #: one line for `python -m dynamo.<name> --help`
    description: str = ""
    #: whether the engine meets a prefill's KV in a bootstrap room (GenerateRequest.bootstrap;
    #: dynamo.llm.disagg); the shell refuses such requests for an engine that cannot
    bootstrap_handoff: bool = False
    #: whether the engine's decode role can only continue a prefill worker's KV (SGLang's): the
    #: shell then never prefills locally on it, and skips its generation canary
    decode_needs_handoff: bool = False
    #: whether an aggregated engine can also continue a prefill worker's handoff: a worker without a
    #: mode then serves as the decode side whenever prefill workers of its model are live (the
    #: plain decode + --is-prefill-worker pattern); its model card says so to the frontend
    accepts_remote_prefill: bool = False

    def __init__(self, role: Role = Role.AGGREGATED) -> None:
        if not isinstance(role, Role):
            raise TypeError(f"role must be a dynamo.llm.model_card.Role, got {role!r}")
        self.role = role

    # --- how the worker's command line builds the engine ---------------------------------------

    @classmethod
    def make_parser(cls, prog: str) -> argparse.ArgumentParser:
        """The parser of `python -m dynamo.<name>` (an engine may need its own parser class)."""
        return argparse.ArgumentParser(prog=prog, description=cls.description)

    @classmethod
    def add_cli_args(cls, parser: argparse.ArgumentParser) -> None:
        """Add the engine's own flags, as the engine defines them (the shell adds the worker's)."""

    @classmethod
    def from_cli_args(cls, ns: argparse.Namespace, role: Role) -> LLMEngine:
        """The engine the parsed flags describe (not started). ValueError: flags it cannot use."""
        raise NotImplementedError(f"{cls.__name__} cannot be built from command-line flags")

    @property
    @abc.abstractmethod
    def model_source(self) -> ModelSource:
        """The served model's name, weights and tokenizer, as the flags gave them."""

    # --- lifecycle and requests ------------------------------------------------------------------

    @abc.abstractmethod
    async def start(self) -> EngineInfo:
        """Start the engine; return once it can generate."""

    @abc.abstractmethod
    def generate(self, request: GenerateRequest) -> AsyncIterator[GenerateOutput]:
        """Stream the request's outputs.

        Each output carries the token ids that are new since the previous one. The last output has
        `finish_reason` set and `usage` filled. When the role is prefill, the last output carries
        `disaggregated_params`. Raises `InvalidRequest` for engine-specific bad input (before
        yielding anything), `EngineError` when the engine fails. If the consumer stops iterating
        (the client cancelled), the adapter must abort the engine request (e.g. in a `finally`),
        so the engine keeps no unfinished request.
        """

    @abc.abstractmethod
    async def abort(self, request_id: str) -> None:
        """Abort a running request; a no-op for an unknown id."""

    async def clear_kv_blocks(self) -> None:
        """Drop every cached (unused) KV block, e.g. the prefix cache. An engine without a way to
        do so keeps this default: ClearKvBlocks then answers UNIMPLEMENTED."""
        raise NotImplementedError(f"the {self.name} engine offers no way to drop its cached KV blocks")

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
        stats = self.stats()
        return stats.running_requests + stats.waiting_requests

    @abc.abstractmethod
    async def shutdown(self) -> None:
        """Stop the engine and free its resources. Called once, after in-flight requests drained."""
