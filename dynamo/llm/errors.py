"""Errors a caller of LLM workers sees (the frontend maps them to HTTP statuses)."""

from __future__ import annotations


class WorkerError(RuntimeError):
    """A worker failed a request (engine error, crash, disconnect). `retryable`: the request may be
    migrated to another worker. `unreached`: the instance could not be reached and produced nothing
    for it, so the request may go to another instance whatever the migration limit."""

    def __init__(self, message: str, *, instance_id: str = "", retryable: bool = False,
                 unreached: bool = False) -> None:
        super().__init__(message)
        self.instance_id = instance_id
        self.retryable = retryable or unreached
        self.unreached = unreached


class NoWorkersError(RuntimeError):
    """No live worker serves the model (in the needed role)."""


class PrefillError(WorkerError):
    """The remote prefill failed or timed out."""
