"""The contract between the HTTP layer and whatever finds workers and talks to them.

The HTTP layer (this package) only ever sees a `ServingBackend`; `dynamo.frontend.worker_backend` provides
the real one (discovery + routing + gRPC + migration), tests provide doubles. Errors a backend raises
carry the HTTP status and OpenAI error type the frontend answers with.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Protocol, runtime_checkable

from dynamo.llm.model_card import ModelCard
from dynamo.llm.protocol import GenerateOutput, GenerateRequest


class BackendError(Exception):
    """A request the backend could not serve; the message says what is wrong and what to do."""

    http_status: int = 500
    error_type: str = "internal_error"


class UnknownModel(BackendError):
    """No worker serves this model name; the message names it and lists the served ones."""

    http_status = 404
    error_type = "model_not_found"


class NoWorkers(BackendError):
    """The model is known but no worker for it is live right now."""

    http_status = 503
    error_type = "service_unavailable"


class Overloaded(BackendError):
    """Every worker is full; the client should retry later."""

    http_status = 429
    error_type = "rate_limit_exceeded"


class WorkerFailed(BackendError):
    """The worker's stream broke and could not be migrated to another worker."""

    http_status = 502
    error_type = "internal_error"


@runtime_checkable
class ServingBackend(Protocol):
    def models(self) -> list[ModelCard]:
        """One card per served model name, for the models that have at least one live worker."""
        ...

    def card(self, model: str) -> ModelCard:
        """The card of `model`; raises UnknownModel or NoWorkers."""
        ...

    def prompt_hasher(self, card: ModelCard) -> Callable[[list[int]], None] | None:
        """What to do with a long prompt's token ids in the thread that tokenized them, before the
        request is built (the KV router hashes its blocks there: off the event loop, while the ids
        are still in the CPU's cache); None: nothing."""
        ...

    def generate(self, request: GenerateRequest) -> AsyncIterator[GenerateOutput]:
        """Stream the outputs of `request` (request.model is the served model name).

        May raise `dynamo.llm.protocol.InvalidRequest` (a worker rejected it: HTTP 400) or any
        BackendError, before or during the stream. Closing the iterator (aclose) cancels the
        request on the worker.
        """
        ...
